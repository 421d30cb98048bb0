//! The observed state model and the ownership labels: what the backends report
//! and what the planner compares the desired state against.
//!
//! Invariant: pure data. Only containers carrying `reconcile.env=<env>` are ever
//! represented here (the Docker backend filters on that label in its one list
//! call per host), so nothing else can reach a plan.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Labels on every managed container.
pub mod labels {
    /// Every label reconcile sets starts with this; apps may not set such labels.
    pub const PREFIX: &str = "reconcile.";
    /// The environment that owns the container. Containers without it are never touched.
    pub const ENV: &str = "reconcile.env";
    pub const APP: &str = "reconcile.app";
    /// `<app>-<ordinal>`: the instance's identity, stable across replacements.
    pub const INSTANCE: &str = "reconcile.instance";
    /// Hash of everything that defines the instance (rendered files and secret values included).
    pub const SPEC_HASH: &str = "reconcile.spec-hash";
    /// The commit the container was created from (empty when not from Git).
    pub const COMMIT: &str = "reconcile.commit";
    /// The pool port given to the instance (absent when the app has no port).
    pub const PORT: &str = "reconcile.port";
    /// The instance's spec as JSON, secrets masked: lets `plan` show field-level
    /// diffs from one list call, without inspecting each container.
    pub const SPEC: &str = "reconcile.spec";
}

/// One instance of an app: `(app, ordinal)`, written `<app>-<ordinal>` (the
/// `reconcile.instance` label, the plan's `instance`). Built and parsed only here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId {
    pub app: String,
    pub ordinal: u32,
}

/// A string that is not `<app>-<ordinal>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an instance name (`<app>-<ordinal>`, e.g. `api-0`)")]
pub struct InstanceIdError {
    pub text: String,
}

impl InstanceId {
    pub fn new(app: impl Into<String>, ordinal: u32) -> Self {
        Self { app: app.into(), ordinal }
    }

    /// Parse `<app>-<ordinal>`; app names may contain `-`, so the ordinal is the part
    /// after the last one.
    ///
    /// # Errors
    /// No `-`, an empty app, or an ordinal that is not a `u32`.
    pub fn parse(text: &str) -> Result<Self, InstanceIdError> {
        let bad = || InstanceIdError { text: text.to_string() };
        let (app, ordinal) = text.rsplit_once('-').ok_or_else(bad)?;
        // Canonical digits only (no sign, no leading zero), so that `parse(s)` prints as `s`.
        let canonical = ordinal == "0" || (!ordinal.starts_with('0') && !ordinal.is_empty());
        if app.is_empty() || !canonical || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Self { app: app.to_string(), ordinal: ordinal.parse().map_err(|_| bad())? })
    }

    /// `text` names an instance of `app` (not merely any instance).
    pub fn parse_of(app: &str, text: &str) -> Option<Self> {
        Self::parse(text).ok().filter(|id| id.app == app)
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.app, self.ordinal)
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InstanceIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

/// Container state as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Unknown,
}

impl ContainerState {
    pub fn parse(s: &str) -> Self {
        match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            _ => Self::Unknown,
        }
    }
    pub fn is_running(self) -> bool {
        matches!(self, Self::Running | Self::Restarting)
    }
}

/// One managed container seen on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub container_id: String,
    /// Container name without the leading `/`.
    pub name: String,
    pub host: String,
    pub app: String,
    /// `<app>-<ordinal>` from the instance label.
    pub instance: String,
    pub ordinal: Option<u32>,
    pub spec_hash: String,
    pub commit: String,
    pub image: String,
    pub state: ContainerState,
    /// Docker's human status, e.g. `Up 5 minutes (healthy)`. Not part of the fingerprint.
    pub status: String,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    pub port: Option<u16>,
    /// The masked spec from the `reconcile.spec` label, if present and valid JSON.
    pub spec: Option<serde_json::Value>,
    /// The container's image ID (`sha256:…`, from the list call).
    #[serde(default)]
    pub image_id: String,
    /// That image's repo digests (`registry/name@sha256:…`), filled in only for apps
    /// with `pull: always` (`backend::docker::fill_repo_digests`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repo_digests: Vec<String>,
}

impl ObservedInstance {
    /// Parse `<app>-<ordinal>` into the ordinal.
    pub fn ordinal_of(app: &str, instance: &str) -> Option<u32> {
        InstanceId::parse_of(app, instance).map(|id| id.ordinal)
    }

    /// The instance this container is, when its labels name one consistently.
    pub fn id(&self) -> Option<InstanceId> {
        InstanceId::parse_of(&self.app, &self.instance).filter(|id| Some(id.ordinal) == self.ordinal)
    }
}

/// What one host runs for an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostObservation {
    /// Sorted by (app, instance, created, container id).
    pub instances: Vec<ObservedInstance>,
}

/// The keys reconcile manages in etcd for an environment, with their values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdObservation {
    /// Full key → value (UTF-8), for `<prefix>/<env>/config/…`, `<prefix>/<env>/apps/…`,
    /// `<prefix>/<env>/health/…`, `<prefix>/<env>/lb/…` and the registry entries `<registry_prefix>/<app>_<env>/…` of every app that is
    /// desired or has a desired copy in etcd.
    pub keys: BTreeMap<String, String>,
}

/// What `watch` writes to `<prefix>/<env>/health/<container-name>` when a running
/// instance fails its health check `retries` times in a row; deleted when it is healthy
/// again. The planner keeps marked instances out of the registry and the LB (unless
/// every instance of the app is marked: then none is taken out, as an LB with no
/// backends serves nobody).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthMark {
    pub app: String,
    pub instance: String,
    pub container_id: String,
    /// RFC 3339.
    pub since: String,
    /// The last probe's error.
    pub error: String,
}

/// A rollback's hold on an environment (`<prefix>/<env>/pin`): `watch` converges to
/// `commit` instead of the repo's head, and `apply` of any other commit is refused, until
/// `reconcile rollback --release` deletes it. Argo CD answers the same conflict by
/// refusing rollbacks while auto-sync is on; a pin keeps self-healing working during the
/// incident that caused the rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The `--to` revision as given (branch, tag or commit).
    pub reference: String,
    /// The commit it resolved to.
    pub commit: String,
    pub who: String,
    pub host: String,
    /// RFC 3339.
    pub time: String,
}

/// A running canary (`<prefix>/<env>/canary/<app>`): written by apply once the canaries
/// are healthy and serving beside the old instances, deleted by promote and abort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// The commit the canaries were created from.
    pub commit: Option<String>,
    /// The spec-hash of the first canary (each canary's own is in `instances`: the hash
    /// covers its port).
    pub spec_hash: String,
    pub instances: Vec<CanaryInstance>,
    /// RFC 3339: when the canaries started serving.
    pub since: String,
}

/// One canary container: the new version of instance `instance`, beside its old container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryInstance {
    pub instance: String,
    pub container: String,
    pub host: String,
    pub port: Option<u16>,
    pub spec_hash: String,
}

/// Everything observed for one environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedState {
    pub env: String,
    /// By host name; every host of the environment is present (an unreachable host
    /// is an error, never a missing entry).
    pub hosts: BTreeMap<String, HostObservation>,
    /// `None` when the environment has no etcd.
    pub etcd: Option<EtcdObservation>,
    /// Per LB of the environment (`EnvironmentSpec::load_balancers`), its config as
    /// observed: `None` when the file does not exist — or, for an LB in containers, when
    /// its running instances do not all hold the same readable file (or none runs).
    pub lbs: BTreeMap<String, Option<String>>,
}

/// The etcd key layout of the contract.
pub mod keys {
    fn base(prefix: &str, env: &str) -> String {
        format!("{}/{env}", prefix.trim_end_matches('/'))
    }
    /// `<prefix>/<env>/config/` — the config center of an environment.
    pub fn config_dir(prefix: &str, env: &str) -> String {
        format!("{}/config/", base(prefix, env))
    }
    /// `<prefix>/<env>/config/<app>/<key>`.
    pub fn config(prefix: &str, env: &str, app: &str, key: &str) -> String {
        format!("{}{app}/{key}", config_dir(prefix, env))
    }
    /// `<prefix>/<env>/apps/` — desired copies of the app specs.
    pub fn apps_dir(prefix: &str, env: &str) -> String {
        format!("{}/apps/", base(prefix, env))
    }
    /// `<prefix>/<env>/apps/<app>`.
    pub fn app(prefix: &str, env: &str, app: &str) -> String {
        format!("{}{app}", apps_dir(prefix, env))
    }
    /// `<prefix>/<env>/applied`.
    pub fn applied(prefix: &str, env: &str) -> String {
        format!("{}/applied", base(prefix, env))
    }
    /// `<prefix>/<env>/history/`.
    pub fn history_dir(prefix: &str, env: &str) -> String {
        format!("{}/history/", base(prefix, env))
    }
    /// `<prefix>/<env>/lock`.
    pub fn lock(prefix: &str, env: &str) -> String {
        format!("{}/lock", base(prefix, env))
    }
    /// `<prefix>/<env>/pin` — a rollback's [`Pin`](super::Pin).
    pub fn pin(prefix: &str, env: &str) -> String {
        format!("{}/pin", base(prefix, env))
    }
    /// `<prefix>/<env>/watch-leader` — held (lease based) by the one `watch` that acts.
    pub fn watch_leader(prefix: &str, env: &str) -> String {
        format!("{}/watch-leader", base(prefix, env))
    }
    /// `<prefix>/<env>/lb/` — the LB's state in etcd.
    pub fn lb_dir(prefix: &str, env: &str) -> String {
        format!("{}/lb/", base(prefix, env))
    }
    /// `<prefix>/<env>/lb/reload-pending`: set by apply before it writes the LB file and
    /// deleted once the LB reloaded, so that a crash in between is seen (and the reload
    /// redone) by the next plan.
    pub fn lb_reload_pending(prefix: &str, env: &str) -> String {
        format!("{}reload-pending", lb_dir(prefix, env))
    }
    /// The reload-pending mark of LB `lb`: [`lb_reload_pending`] for `default` (the
    /// key an environment with one `lb:` always had), `<prefix>/<env>/lb/<lb>/reload-pending`
    /// for the others.
    pub fn lb_reload_pending_for(prefix: &str, env: &str, lb: &str) -> String {
        if lb == crate::spec::types::DEFAULT_LB {
            lb_reload_pending(prefix, env)
        } else {
            format!("{}{lb}/reload-pending", lb_dir(prefix, env))
        }
    }
    /// `<prefix>/<env>/canary/` — running canaries.
    pub fn canary_dir(prefix: &str, env: &str) -> String {
        format!("{}/canary/", base(prefix, env))
    }
    /// `<prefix>/<env>/canary/<app>` — a [`CanaryRecord`](super::CanaryRecord).
    pub fn canary(prefix: &str, env: &str, app: &str) -> String {
        format!("{}{app}", canary_dir(prefix, env))
    }
    /// `<prefix>/<env>/health/` — health marks written by `watch`.
    pub fn health_dir(prefix: &str, env: &str) -> String {
        format!("{}/health/", base(prefix, env))
    }
    /// `<prefix>/<env>/health/<container-name>`: the container failed its health check
    /// (value: [`crate::model::HealthMark`] JSON); it stays out of the registry and the LB.
    pub fn health(prefix: &str, env: &str, container: &str) -> String {
        format!("{}{container}", health_dir(prefix, env))
    }
    /// `<registry_prefix>/<app>_<env>/` — an app's service registry directory.
    pub fn registry_dir(registry_prefix: &str, app: &str, env: &str) -> String {
        format!("{}/{app}_{env}/", registry_prefix.trim_end_matches('/'))
    }
    /// `<registry_prefix>/<app>_<env>/<ip>-<port>` (its value is `<ip>:<port>`).
    pub fn registry(registry_prefix: &str, app: &str, env: &str, ip: &str, port: u16) -> String {
        format!("{}{ip}-{port}", registry_dir(registry_prefix, app, env))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn instance_ids_round_trip_and_refuse_what_is_not_one() {
            use crate::model::InstanceId;
            let id = InstanceId::parse("my-api-12").unwrap();
            assert_eq!((id.app.as_str(), id.ordinal), ("my-api", 12));
            assert_eq!(id.to_string(), "my-api-12");
            for bad in ["", "api", "api-", "-3", "api-x", "api-+1", "api-01", "api-99999999999"] {
                assert!(InstanceId::parse(bad).is_err(), "{bad:?} parsed");
            }
            assert_eq!(InstanceId::parse_of("api", "my-api-1"), None);
            let json = serde_json::to_string(&InstanceId::new("web", 3)).unwrap();
            assert_eq!(json, "\"web-3\"");
            assert!(serde_json::from_str::<InstanceId>("\"web\"").is_err());
        }

        #[test]
        fn layout() {
            assert_eq!(config("/reconcile", "staging", "api", "timeout"), "/reconcile/staging/config/api/timeout");
            assert_eq!(app("/reconcile/", "staging", "api"), "/reconcile/staging/apps/api");
            assert_eq!(registry("", "api", "staging", "10.0.0.1", 20000), "/api_staging/10.0.0.1-20000");
            assert_eq!(registry("/services", "api", "prod", "10.0.0.1", 20000), "/services/api_prod/10.0.0.1-20000");
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS…Z` → Unix seconds: the UTC timestamps reconcile writes
/// (`backend::etcd::now_rfc3339`: canary records, marks, history) and Docker reports
/// (`State.StartedAt`, with fractional seconds). `None` for anything else.
pub fn unix_seconds(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod time_tests {
    use super::unix_seconds;

    #[test]
    fn rfc3339_reads_back_what_apply_and_docker_write() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2026-12-02T00:30:05Z"), Some(1_796_171_405));
        assert_eq!(unix_seconds("2000-02-29T12:00:00.123Z"), Some(951_825_600));
        assert_eq!(unix_seconds("yesterday"), None);
        assert_eq!(unix_seconds("2026-13-02T00:30:05Z"), None);
    }
}
