//! Planning: `plan(desired, observed) -> Plan`, a pure function.
//!
//! The plan is a value (Terraform's model): typed actions, each with the reason
//! it exists and what it changes, serialisable to JSON and carrying the
//! fingerprint of the observation it was made against. Reasons and diffs are for
//! people; apply acts on the actions only.
//!
//! Rules (the contract's "Plan semantics"):
//! - minimal: an instance whose spec-hash matches is left alone (or started when it
//!   is not running); an etcd key is written only when its value differs; the LB
//!   file only when its rendered content differs;
//! - stable: existing instances keep host and port while allowed (`placement`);
//!   a rolling replacement gets a fresh pool port so old and new can run side by side;
//! - safe: containers are identified by `(app, ordinal)` from their labels; extra
//!   containers of one instance (a replace cut short by a crash) are removed.
//!
//! Invariant: pure and deterministic. No I/O, no clock; `BTreeMap` order everywhere.

pub mod canary;
mod changes;
mod context;
pub mod decide;
pub mod digest;
mod etcd;
mod fingerprint;
pub mod group;
pub mod instance;
mod lb;
mod place;
pub mod render;
pub mod simulate;
#[cfg(test)]
mod tests;
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use changes::changes;
pub use fingerprint::fingerprint;
pub use lb::{is_default_lb, lb_content, lb_content_with};
pub use traffic::{health_marks, out_of_traffic};

use crate::model::{InstanceId, ObservedInstance, ObservedState, keys, labels as keys_labels};
use crate::secret::Secret;
use crate::spec::load::Env;
use crate::spec::snapshot::Origin;
use crate::spec::template::TemplateError;
use crate::spec::types::Strategy;
use instance::InstanceSpec;

/// Version of the plan's JSON form (schema/plan.schema.json).
pub const FORMAT_VERSION: u32 = 1;

/// A plan for one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub env: String,
    /// The repo revision the desired state came from.
    pub origin: Origin,
    /// Fingerprint of the observed state the plan was made against (`fingerprint`).
    pub against: String,
    pub actions: Vec<Action>,
    pub summary: Summary,
    /// The canaries this plan starts, keeps, replaces, promotes or aborts (`plan::canary`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canaries: Vec<canary::CanaryStep>,
}

/// One step. Apply matches on this; `reason` and `changes` are for display only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create and start a new instance.
    Create { app: String, instance: String, reason: Reason, new: NewInstance },
    /// Start a new instance, then remove the old one (rolling), or the other way round (recreate).
    Replace {
        app: String,
        instance: String,
        reason: Reason,
        changes: Vec<Change>,
        old: OldInstance,
        new: NewInstance,
        strategy: Strategy,
    },
    /// Remove an instance.
    Remove { app: String, instance: String, reason: Reason, old: OldInstance },
    /// Start an existing, up-to-date instance that is not running.
    Start { app: String, instance: String, reason: Reason, old: OldInstance },
    /// Write an etcd key.
    PutKey { key: String, value: String, old: Option<String> },
    /// Delete an etcd key.
    DeleteKey { key: String, old: String },
    /// Write LB `lb`'s config (checked before it replaces the old one): the file at
    /// `path`, or for an LB in containers `<path> in <app>`, into every running instance.
    WriteLb {
        #[serde(default = "lb::default_lb", skip_serializing_if = "lb::is_default_lb")]
        lb: String,
        path: String,
        content: String,
        old: Option<String>,
    },
    /// Make LB `lb` load its config (every instance of an LB in containers).
    ReloadLb {
        #[serde(default = "lb::default_lb", skip_serializing_if = "lb::is_default_lb")]
        lb: String,
    },
}

impl Action {
    /// The app an action belongs to, if any.
    pub fn app(&self) -> Option<&str> {
        match self {
            Action::Create { app, .. }
            | Action::Replace { app, .. }
            | Action::Remove { app, .. }
            | Action::Start { app, .. } => Some(app),
            _ => None,
        }
    }
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInstance {
    pub host: String,
    pub address: String,
    pub port: Option<u16>,
    pub container_name: String,
    pub spec_hash: String,
    /// The instance spec, secrets masked.
    pub spec: Value,
}

/// An existing container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldInstance {
    pub host: String,
    pub container_id: String,
    pub container_name: String,
    pub port: Option<u16>,
    pub spec_hash: String,
    pub state: crate::model::ContainerState,
}

/// Why an action exists (for people).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// No container for this instance.
    Missing,
    /// The spec-hash differs.
    SpecChanged,
    /// Up to date but not running.
    NotRunning,
    /// The app is no longer in the repo.
    NotInSpec,
    /// The instance's ordinal is beyond `replicas`.
    ScaledDown,
    /// The host or port is no longer allowed.
    Moved { why: String },
    /// Another container is the instance (leftover of an interrupted replace).
    Duplicate,
    /// A container with the environment's label but no usable app/instance labels.
    Unrecognised,
    /// `pull: always`: the image's tag points to another digest than the container runs.
    ImageDigest { digest: String },
    /// A canary is started, kept, promoted or aborted (`plan::canary`).
    Canary { why: String },
}

/// One field that differs, as shown (masked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Dotted path into the masked spec, e.g. `env.LOG_LEVEL`, `files./etc/app.conf`.
    pub field: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
    /// The value depends on a secret: show "(sensitive value changed)".
    pub sensitive: bool,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub add: usize,
    pub replace: usize,
    pub remove: usize,
    pub start: usize,
    pub etcd_put: usize,
    pub etcd_delete: usize,
    pub lb_write: bool,
    pub lb_reload: bool,
}

impl Summary {
    pub fn of(actions: &[Action]) -> Self {
        let mut s = Summary::default();
        for a in actions {
            match a {
                Action::Create { .. } => s.add += 1,
                Action::Replace { .. } => s.replace += 1,
                Action::Remove { .. } => s.remove += 1,
                Action::Start { .. } => s.start += 1,
                Action::PutKey { .. } => s.etcd_put += 1,
                Action::DeleteKey { .. } => s.etcd_delete += 1,
                Action::WriteLb { .. } => s.lb_write = true,
                Action::ReloadLb { .. } => s.lb_reload = true,
            }
        }
        s
    }
    pub fn is_empty(&self) -> bool {
        *self == Summary::default()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(f, "No changes: the environment matches the repo.");
        }
        write!(
            f,
            "{} to add, {} to replace, {} to remove, {} to start",
            self.add, self.replace, self.remove, self.start
        )?;
        write!(f, "; etcd: {} to put, {} to delete", self.etcd_put, self.etcd_delete)?;
        let lb = match (self.lb_write, self.lb_reload) {
            (true, _) => "rewrite and reload",
            (false, true) => "reload",
            (false, false) => "unchanged",
        };
        write!(f, "; lb: {lb}.")
    }
}

/// What the planner needs besides the observation.
pub struct Desired<'a> {
    pub env: &'a Env,
    /// The snapshot's files (templates are read from it).
    pub files: Arc<BTreeMap<String, Vec<u8>>>,
    pub origin: &'a Origin,
    /// Resolved secrets; a missing one renders as `(sensitive)`.
    pub secrets: &'a BTreeMap<String, Secret>,
    /// `pull: always`: image reference → the digest its tag points to now (empty:
    /// no digest check). See `plan::digest`.
    pub digests: BTreeMap<String, String>,
}

/// Planning failed: the desired state cannot be rendered or placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("app `{app}`: {message}")]
    Template { app: String, message: String },
    #[error("lb `{lb}`: template: {message}")]
    LbTemplate { lb: String, message: String },
    #[error("{0}")]
    Placement(String),
    #[error("host `{host}`: invalid port pool: {message}")]
    Pool { host: String, message: String },
    /// Promote or abort without a running canary.
    #[error("{0}")]
    Canary(String),
}

fn template_error(app: &str, e: TemplateError) -> PlanError {
    PlanError::Template { app: app.into(), message: format!("{} ({})", e.message, e.file.unwrap_or_default()) }
}

/// `<env>-<app>-<ordinal>-<hash8>`: unique while old and new of one instance coexist.
pub fn container_name(env: &str, app: &str, ordinal: u32, hash: &str) -> String {
    format!("{env}-{app}-{ordinal}-{}", hash.get(..8).unwrap_or(hash))
}

/// Compute the plan.
///
/// # Errors
/// A template fails or placement is impossible (both are caught by `validate` first).
pub fn plan(d: &Desired<'_>, observed: &ObservedState) -> Result<Plan, PlanError> {
    plan_with_specs(d, observed).map(|(p, _)| p)
}

/// The plan and, for apply, the real (unmasked) spec of every container it creates,
/// keyed by spec-hash. The specs never leave the process.
///
/// # Errors
/// As [`plan`].
pub fn plan_with_specs(
    d: &Desired<'_>,
    observed: &ObservedState,
) -> Result<(Plan, BTreeMap<String, InstanceSpec>), PlanError> {
    plan_holding(d, observed, &BTreeSet::new())
}

/// [`plan_with_specs`], leaving the instances named in `hold` (`<app>-<ordinal>`) as they
/// are when they are missing or stopped: not created, not started, not in the registry or
/// the LB. `watch` holds crash-looping instances back this way while they back off.
///
/// The phases, each a pure function over the previous one's output: group the observed
/// containers into instances (`group`), place (`place`), decide per instance (`decide`),
/// choose what serves (`traffic`), diff etcd (`etcd`) and the LB (`lb`), fingerprint.
///
/// # Errors
/// As [`plan`].
pub fn plan_holding(
    d: &Desired<'_>,
    observed: &ObservedState,
    hold: &BTreeSet<String>,
) -> Result<(Plan, BTreeMap<String, InstanceSpec>), PlanError> {
    plan_mode(d, observed, hold, &canary::Mode::Normal)
}

/// [`plan_holding`] for `mode`: the normal plan, or a canary's promote or abort
/// (`plan::canary`, phases 1b and 3b).
///
/// # Errors
/// As [`plan`]; and promote or abort of an app that has no canary running.
pub fn plan_mode(
    d: &Desired<'_>,
    observed: &ObservedState,
    hold: &BTreeSet<String>,
    mode: &canary::Mode,
) -> Result<(Plan, BTreeMap<String, InstanceSpec>), PlanError> {
    let env = d.env;
    let cx = context::Context::new(d)?;
    let records = match (&env.spec.etcd, &observed.etcd) {
        (Some(spec), Some(obs)) => canary::records(&obs.keys, &spec.prefix, &env.name),
        _ => BTreeMap::new(),
    };
    let mut grouped = group::group(observed, |o| registered(&cx, observed, o));
    let live = canary::regroup(&cx, &mut grouped, &records, mode);
    let assignments = place::place(&cx, &grouped.primary)?;
    let mut ports = place::Ports::taken(&assignments, &grouped.all);
    let hold: BTreeSet<InstanceId> = hold.iter().filter_map(|h| InstanceId::parse(h).ok()).collect();
    let mut decided = decide::decide_all(&cx, &grouped, &assignments, &mut ports, &hold)?;
    let prefix = env.spec.etcd.as_ref().map(|s| s.prefix.as_str());
    let canaries = canary::adjust(&cx, &mut decided, &live, &records, mode, prefix)?;
    let mut actions = grouped.removals;
    actions.extend(decided.actions);
    actions.sort_by_key(action_key);

    // Health marks (written by `watch`) of containers that stay: those instances are out of
    // traffic (registry and LB). Marks of containers that go are deleted.
    let marks = match (&env.spec.etcd, &observed.etcd) {
        (Some(spec), Some(obs)) => health_marks(&obs.keys, &spec.prefix, &env.name),
        _ => BTreeMap::new(),
    };
    let serving = traffic::serving(&decided.finals, &decided.kept, &marks);
    let lbs = env.spec.load_balancers();
    let mut reload_pending = BTreeSet::new();
    if let (Some(spec), Some(obs)) = (&env.spec.etcd, &observed.etcd) {
        let mut desired = etcd::etcd_keys(&cx, &spec.prefix, &spec.registry_prefix, &serving)?;
        // Canary records are apply's and the canary phase's (which deletes them itself).
        let dir = keys::canary_dir(&spec.prefix, &env.name);
        desired.extend(
            obs.keys.range(dir.clone()..).take_while(|(k, _)| k.starts_with(&dir)).map(|(k, v)| (k.clone(), v.clone())),
        );
        let pending: Vec<String> =
            lbs.keys().map(|lb| keys::lb_reload_pending_for(&spec.prefix, &env.name, lb)).collect();
        for (lb, key) in lbs.keys().zip(&pending) {
            if obs.keys.contains_key(key) {
                reload_pending.insert(*lb);
            }
        }
        // Only the marks' containers are looked up in it: no set of every kept name without marks.
        let staying = match marks.is_empty() {
            true => BTreeSet::new(),
            false => decided.kept.values().chain(&canaries.staying).map(String::as_str).collect(),
        };
        actions.extend(etcd::diff(desired, obs, &etcd::Carried { staying, marks: &marks, pending }));
    }
    for (name, spec) in &lbs {
        if let Some(current) = observed.lbs.get(*name) {
            let content = lb_content_with(env, Arc::clone(&d.files), name, &serving, &canaries.canaries)?;
            let pending = reload_pending.contains(name);
            actions.extend(lb::lb_actions(name, &spec.describe(), content, current.as_ref(), pending));
        }
    }
    let summary = Summary::of(&actions);
    let plan = Plan {
        format_version: FORMAT_VERSION,
        env: env.name.clone(),
        origin: d.origin.clone(),
        against: fingerprint(observed),
        actions,
        summary,
        canaries: canaries.steps,
    };
    Ok((plan, decided.specs))
}

/// A container whose address is in the etcd registry (it is serving traffic).
fn registered(cx: &context::Context<'_>, observed: &ObservedState, o: &ObservedInstance) -> bool {
    match (&cx.env.spec.etcd, &observed.etcd, o.port, cx.address(&o.host)) {
        (Some(spec), Some(obs), Some(p), Some(address)) => {
            obs.keys.contains_key(&keys::registry(&spec.registry_prefix, &o.app, &cx.env.name, address, p))
        }
        _ => false,
    }
}

/// Instances first (by app, ordinal), then etcd keys, then the LB.
fn action_key(a: &Action) -> (u8, String, u32, String) {
    // Unrecognised containers (no instance name) sort last within their app.
    let ord = |i: &str| InstanceId::parse(i).map_or(u32::MAX, |id| id.ordinal);
    match a {
        Action::Create { app, instance, .. }
        | Action::Replace { app, instance, .. }
        | Action::Start { app, instance, .. } => (0, app.clone(), ord(instance), String::new()),
        Action::Remove { app, instance, old, .. } => (0, app.clone(), ord(instance), old.container_id.clone()),
        Action::PutKey { key, .. } | Action::DeleteKey { key, .. } => (1, key.clone(), 0, String::new()),
        Action::WriteLb { lb, .. } => (2, lb.clone(), 0, String::new()),
        Action::ReloadLb { lb } => (2, lb.clone(), 1, String::new()),
    }
}

/// The labels of a container created for `new`: ownership, identity, spec-hash,
/// commit, port, and the masked spec (so plans can show field-level diffs from
/// the list call alone).
pub fn container_labels(
    env: &str,
    app: &str,
    instance: &str,
    new: &NewInstance,
    commit: Option<&str>,
) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(keys_labels::ENV.to_string(), env.to_string());
    l.insert(keys_labels::APP.to_string(), app.to_string());
    l.insert(keys_labels::INSTANCE.to_string(), instance.to_string());
    l.insert(keys_labels::SPEC_HASH.to_string(), new.spec_hash.clone());
    l.insert(keys_labels::COMMIT.to_string(), commit.unwrap_or_default().to_string());
    if let Some(p) = new.port {
        l.insert(keys_labels::PORT.to_string(), p.to_string());
    }
    l.insert(keys_labels::SPEC.to_string(), serde_json::to_string(&new.spec).unwrap_or_default());
    l
}
