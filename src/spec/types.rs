//! Typed specs, deserialised from merged, schema-valid documents.
//!
//! Fields mirror `schema/*.schema.json` one to one (unknown fields are rejected
//! twice: by the schema, with a position, and by serde as a backstop). Quantities
//! stay as written (`"256Mi"`, `"2s"`); `spec::units` parses them and the semantic
//! checks report bad ones with their position.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    #[serde(default, rename = "abstract")]
    pub is_abstract: bool,
    #[serde(default)]
    pub vars: serde_json::Map<String, Value>,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    #[serde(default)]
    pub hosts: Vec<HostSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<LbSpec>,
    // --- several named LBs (issue 10, item 1): `lb:` alone means `lbs: {default: …}` ---
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lbs: BTreeMap<String, LbSpec>,
    // -- etcdsec: age recipients --
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<AgeSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationSpec>,
    // --- private registries (issue 9, item 1) ---
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<RegistrySpec>,
}

/// Where `apply`, `rollback` and `watch` send what happened (`crate::notify`).
/// Credentials and URLs that carry tokens are names of entries in `secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSpec {
    pub kind: NotifyKind,
    /// webhook, slack: the name of the secret holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// webhook: the name of the secret whose value signs the body (HMAC-SHA256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// github_status, gitlab_status: the name of the secret holding the API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// github_status: `owner/name` of the config repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// gitlab_status: the project's id or `group/name` path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// github_status, gitlab_status: the API base URL (GitHub Enterprise, self-hosted GitLab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// github_status, gitlab_status: the status's name; default `reconcile/<env>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Only these events; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<crate::notify::EventKind>,
    /// A problem that persists is sent again at most this often (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<String>,
    /// Per delivery, retries included (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    Webhook,
    Slack,
    GithubStatus,
    GitlabStatus,
}

/// Credentials for one image registry. `password` names an entry of `secrets`; the
/// value is resolved only when pulling or resolving a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    /// As in image references: `HOST` or `HOST:PORT`.
    pub host: String,
    pub username: String,
    /// The name of a secret.
    pub password: String,
}

/// Where a secret's value comes from. Never holds the value itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    FromEnv(String),
    FromFile(String),
    /// An age-encrypted file, relative to the environment directory (looked up along the
    /// extends chain, child first).
    FromAge(String),
    /// argv of a program (no shell) whose standard output is the value.
    FromCommand(Vec<String>),
}

// -- etcdsec: secrets as handed to the backends --

/// Who can decrypt this environment's `from_age` secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeSpec {
    /// X25519 recipients (`age1…`), as `age-keygen -y` prints them.
    pub recipients: Vec<String>,
}

/// An age-encrypted file of the config repo, as found along the extends chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeFile {
    /// Repo-relative path, e.g. `environments/prod/secrets/db.age`.
    pub path: String,
    pub bytes: std::sync::Arc<Vec<u8>>,
}

/// A secret with everything needed to resolve it outside the spec layer: its name, its
/// source and, for `from_age`, the encrypted file (`None` when it is not in the repo).
/// Made by `spec::load`; never deserialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub source: SecretSource,
    pub age_file: Option<AgeFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    pub docker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ports: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSpec {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub registry_prefix: String,
    // -- etcdsec: TLS and auth --
    /// CA, client certificate and key (PEM), paths on the machine running reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The name of an entry in `secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `password` linked to its secret by `spec::load` (not part of the document).
    #[serde(skip)]
    pub password_secret: Option<SecretRef>,
}

/// Every secret of `spec` as a [`SecretRef`], `from_age` files looked up in `files` along
/// `dirs` (the chain's directories, child first); links `etcd.password` to its secret.
pub fn link_secrets(
    spec: &mut EnvironmentSpec,
    dirs: &[String],
    files: &BTreeMap<String, Vec<u8>>,
) -> BTreeMap<String, SecretRef> {
    let refs: BTreeMap<String, SecretRef> = spec
        .secrets
        .iter()
        .map(|(name, source)| {
            let age_file = match source {
                SecretSource::FromAge(rel) => age_file(rel, dirs, files),
                _ => None,
            };
            (name.clone(), SecretRef { name: name.clone(), source: source.clone(), age_file })
        })
        .collect();
    if let Some(etcd) = spec.etcd.as_mut() {
        etcd.password_secret = etcd.password.as_ref().and_then(|p| refs.get(p)).cloned();
    }
    refs
}

/// The file `rel` (relative to an environment directory) of the nearest directory of the
/// chain that has it. Absolute paths and `..` find nothing (the checks report them).
pub fn age_file(rel: &str, dirs: &[String], files: &BTreeMap<String, Vec<u8>>) -> Option<AgeFile> {
    let rel = rel.trim_start_matches("./");
    if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
        return None;
    }
    dirs.iter().find_map(|d| {
        let path = format!("{d}/{rel}");
        files.get(&path).map(|b| AgeFile { path, bytes: std::sync::Arc::new(b.clone()) })
    })
}

/// etcd client TLS: `ca` alone verifies the server; `cert` + `key` add client-certificate
/// auth. Relative paths are relative to the working directory of reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn default_prefix() -> String {
    "/reconcile".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSpec {
    pub template: String,
    /// A file LB: the config file on the machine that runs `reconcile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An LB inside every running instance of a managed app (exactly one of `path`
    /// and `container`; the schema and validate say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<LbContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Vec<String>>,
    pub reload: Vec<String>,
    /// Wait after a reload that took instances out of traffic, before stopping them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
}

/// Where a container LB's config lives: `path` inside every running instance of `app`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbContainer {
    pub app: String,
    pub path: String,
}

/// The name `lb:` (the single LB of the contract) has among `lbs`.
pub const DEFAULT_LB: &str = "default";

/// Where an LB's config goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbTarget<'a> {
    /// A file on the machine that runs `reconcile`.
    File(&'a str),
    /// `path` inside every running instance of `app`.
    Container { app: &'a str, path: &'a str },
}

impl LbSpec {
    /// The file or the containers (`None` only for a spec validate refuses: neither or both).
    pub fn target(&self) -> Option<LbTarget<'_>> {
        match (&self.path, &self.container) {
            (Some(p), None) => Some(LbTarget::File(p)),
            (None, Some(c)) => Some(LbTarget::Container { app: &c.app, path: &c.path }),
            _ => None,
        }
    }
    /// How the target reads in plans and messages: the path, or `<path> in <app>`.
    pub fn describe(&self) -> String {
        match self.target() {
            Some(LbTarget::File(p)) => p.to_string(),
            Some(LbTarget::Container { app, path }) => format!("{path} in {app}"),
            None => "(no target)".into(),
        }
    }
}

/// Why an app's LB cannot be chosen (validate reports it; the planner skips the app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbChoice {
    /// The environment has no LB at all.
    NoLb,
    /// `via` names no LB.
    Unknown { via: String, choices: Vec<String> },
    /// No `via`, several LBs and none named `default`.
    Ambiguous { choices: Vec<String> },
}

impl EnvironmentSpec {
    /// The environment's LBs by name: `lbs`, or `lb` as `default` (validate refuses both).
    pub fn load_balancers(&self) -> BTreeMap<&str, &LbSpec> {
        let mut out: BTreeMap<&str, &LbSpec> = self.lbs.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if let Some(lb) = &self.lb {
            out.entry(DEFAULT_LB).or_insert(lb);
        }
        out
    }

    /// The LB that routes an app with `lb: {via}`: `via` itself; without it, the only LB,
    /// else the one named `default`.
    ///
    /// # Errors
    /// [`LbChoice`]: no LB, an unknown name, or several LBs and no `default`.
    pub fn lb_for(&self, via: Option<&str>) -> Result<&str, LbChoice> {
        let lbs = self.load_balancers();
        let choices = || lbs.keys().map(|k| (*k).to_string()).collect::<Vec<_>>();
        match via {
            Some(v) => lbs
                .get_key_value(v)
                .map(|(k, _)| *k)
                .ok_or_else(|| LbChoice::Unknown { via: v.into(), choices: choices() }),
            None if lbs.is_empty() => Err(LbChoice::NoLb),
            None if lbs.len() == 1 => Ok(lbs.keys().next().copied().unwrap_or(DEFAULT_LB)),
            None => {
                lbs.get_key_value(DEFAULT_LB).map(|(k, _)| *k).ok_or_else(|| LbChoice::Ambiguous { choices: choices() })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, Value>,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub network: Network,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<AppLb>,
    #[serde(default)]
    pub registry: bool,
    #[serde(default)]
    pub update: UpdateSpec,
    #[serde(default = "yes")]
    pub init: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<String>,
    // --- pull policy (issue 9, item 2) ---
    /// Not serialised when `missing`, so desired copies of existing apps stay byte-identical.
    #[serde(default, skip_serializing_if = "PullPolicy::is_missing")]
    pub pull: PullPolicy,
    // --- container user, working directory, labels (issue 12 leftovers) ---
    // Not serialised when unset, so desired copies of existing apps stay byte-identical.
    /// `docker run --user`: `name`, `uid`, `uid:gid` or `name:group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `docker run --workdir`: an absolute path in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Container labels besides reconcile's own (`reconcile.` keys are refused).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// When an image is pulled (compose's `pull_policy` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Only when the host lacks the image.
    #[default]
    Missing,
    /// `plan` resolves the tag's digest in the registry; instances running another
    /// digest are replaced.
    Always,
}

impl PullPolicy {
    pub fn is_missing(&self) -> bool {
        *self == Self::Missing
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub spread: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    Host,
    Bridge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub template: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppLb {
    /// The LB that routes the app (`EnvironmentSpec::lb_for`); not serialised when
    /// absent, so desired copies and spec hashes of existing apps stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub host: String,
    #[serde(default = "root_path")]
    pub path: String,
    /// Maintenance mode: the instances keep running, the LB template gets
    /// `app.maintenance` (the example templates answer 503). Not serialised when false,
    /// so desired copies of existing apps stay byte-identical.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintenance: bool,
}

fn root_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default = "one")]
    pub batch: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// With strategy canary: `watch` promotes after this long of continuous health (a
    /// duration, e.g. `10m`); without it only `reconcile promote` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<String>,
    /// With strategy canary: the share of requests the canaries get together, `P%`
    /// (1–99); without it every instance has LB weight 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<String>,
}

impl Default for UpdateSpec {
    fn default() -> Self {
        Self { strategy: Strategy::Rolling, batch: 1, canary: None, auto_promote: None, traffic: None }
    }
}

impl UpdateSpec {
    /// The number of canaries, when the strategy is canary.
    pub fn canaries(&self) -> Option<u32> {
        if self.strategy == Strategy::Canary { Some(self.canary.unwrap_or(1).max(1)) } else { None }
    }

    /// `traffic` as a percentage (1–99), when it is one.
    pub fn traffic_percent(&self) -> Option<u32> {
        self.traffic.as_deref().and_then(parse_percent)
    }
}

/// `P%` with P an integer from 1 to 99.
pub fn parse_percent(s: &str) -> Option<u32> {
    let digits = s.trim().strip_suffix('%')?.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 2 {
        return None;
    }
    digits.parse().ok().filter(|p| (1..=99).contains(p))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Rolling,
    Recreate,
    Canary,
}

#[cfg(test)]
mod lb_choice_tests {
    use super::*;

    fn env(lb: bool, lbs: &[&str]) -> EnvironmentSpec {
        let spec = LbSpec {
            template: "t".into(),
            path: Some("/x".into()),
            container: None,
            check: None,
            reload: vec!["true".into()],
            drain: None,
        };
        EnvironmentSpec {
            api_version: "reconcile/v1".into(),
            kind: "Environment".into(),
            name: "e".into(),
            extends: None,
            is_abstract: false,
            vars: Default::default(),
            secrets: BTreeMap::new(),
            hosts: vec![],
            etcd: None,
            lb: lb.then(|| spec.clone()),
            lbs: lbs.iter().map(|n| (n.to_string(), spec.clone())).collect(),
            age: None,
            notifications: vec![],
            registries: vec![],
        }
    }

    #[test]
    fn without_via_the_only_lb_or_the_default_one_routes() {
        assert_eq!(env(true, &[]).lb_for(None), Ok("default"));
        assert_eq!(env(false, &["edge"]).lb_for(None), Ok("edge"));
        assert_eq!(env(false, &["default", "edge"]).lb_for(None), Ok("default"));
        assert_eq!(
            env(false, &["edge", "internal"]).lb_for(None),
            Err(LbChoice::Ambiguous { choices: vec!["edge".into(), "internal".into()] })
        );
        assert_eq!(env(false, &[]).lb_for(None), Err(LbChoice::NoLb));
    }

    #[test]
    fn via_names_one_lb_or_fails_with_the_choices() {
        assert_eq!(env(false, &["edge", "internal"]).lb_for(Some("internal")), Ok("internal"));
        assert_eq!(env(true, &[]).lb_for(Some("default")), Ok("default"));
        assert_eq!(
            env(false, &["edge"]).lb_for(Some("egde")),
            Err(LbChoice::Unknown { via: "egde".into(), choices: vec!["edge".into()] })
        );
    }
}
