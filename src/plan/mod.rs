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

pub mod digest;
pub mod instance;
pub mod render;
pub mod simulate;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::{ObservedInstance, ObservedState, keys, labels as keys_labels};
use crate::placement::{self, Assignment, Existing, HostSlot};
use crate::secret::Secret;
use crate::spec::check::{demand, lb_apps};
use crate::spec::load::Env;
use crate::spec::model::Strategy;
use crate::spec::snapshot::Origin;
use crate::spec::template::{TemplateError, Templates};
use crate::spec::units;
use instance::{InstanceSpec, Slot, contexts, hex};

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
    /// Write the LB config file (checked before it replaces the old one).
    WriteLb { path: String, content: String, old: Option<String> },
    /// Make the LB load its config.
    ReloadLb,
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
                Action::ReloadLb => s.lb_reload = true,
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
    #[error("lb template: {message}")]
    LbTemplate { message: String },
    #[error("{0}")]
    Placement(String),
    #[error("host `{host}`: invalid port pool: {message}")]
    Pool { host: String, message: String },
}

fn template_error(app: &str, e: TemplateError) -> PlanError {
    PlanError::Template { app: app.into(), message: format!("{} ({})", e.message, e.file.unwrap_or_default()) }
}

/// `<env>-<app>-<ordinal>-<hash8>`: unique while old and new of one instance coexist.
pub fn container_name(env: &str, app: &str, ordinal: u32, hash: &str) -> String {
    format!("{env}-{app}-{ordinal}-{}", hash.get(..8).unwrap_or(hash))
}

/// A stable digest of what was observed (ids, states, hashes, ports, etcd values,
/// the LB file), ignoring what changes by itself (status text, uptime).
pub fn fingerprint(o: &ObservedState) -> String {
    let mut h = Sha256::new();
    h.update(o.env.as_bytes());
    for (host, obs) in &o.hosts {
        h.update(b"\0host\0");
        h.update(host.as_bytes());
        let mut rows: Vec<String> = obs
            .instances
            .iter()
            .map(|i| format!("{}|{}|{}|{:?}|{}|{:?}", i.container_id, i.app, i.instance, i.state, i.spec_hash, i.port))
            .collect();
        rows.sort();
        for r in rows {
            h.update(r.as_bytes());
            h.update(b"\n");
        }
    }
    if let Some(e) = &o.etcd {
        h.update(b"\0etcd\0");
        for (k, v) in &e.keys {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
    }
    match &o.lb {
        Some(Some(c)) => {
            h.update(b"\0lb\0");
            h.update(c.as_bytes());
        }
        Some(None) => h.update(b"\0lb-missing\0"),
        None => {}
    }
    hex(&h.finalize())
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
/// # Errors
/// As [`plan`].
pub fn plan_holding(
    d: &Desired<'_>,
    observed: &ObservedState,
    hold: &BTreeSet<String>,
) -> Result<(Plan, BTreeMap<String, InstanceSpec>), PlanError> {
    let mut specs: BTreeMap<String, InstanceSpec> = BTreeMap::new();
    let env = d.env;
    let name = env.name.as_str();
    let mut t = Templates::new(env.dirs.clone(), Arc::clone(&d.files));
    let secret_names: Vec<String> = env.spec.secrets.keys().cloned().collect();
    let ctx = contexts(name, &env.spec.vars, d.secrets, &secret_names);

    let mut slots = Vec::new();
    for h in &env.spec.hosts {
        let pool =
            units::port_range(&h.ports).map_err(|e| PlanError::Pool { host: h.name.clone(), message: e.message })?;
        slots.push(HostSlot { name: h.name.clone(), address: h.address.clone(), labels: h.labels.clone(), pool });
    }
    let addresses: BTreeMap<&str, &str> = slots.iter().map(|s| (s.name.as_str(), s.address.as_str())).collect();
    let address_of = |host: &str| addresses.get(host).map_or_else(String::new, |a| a.to_string());
    let mut prepared = BTreeMap::new();
    for (n, app) in &env.apps {
        prepared.insert(n.as_str(), instance::prepare(app, &ctx, &mut t).map_err(|e| template_error(n, e))?);
    }
    let t = t;

    // 1. Group observed containers by instance; pick one per instance, the rest are duplicates.
    let mut all: Vec<&ObservedInstance> = observed.hosts.values().flat_map(|h| h.instances.iter()).collect();
    all.sort_by(|a, b| {
        (&a.app, a.ordinal, &a.host, &a.container_id).cmp(&(&b.app, b.ordinal, &b.host, &b.container_id))
    });
    let mut groups: BTreeMap<(String, u32), Vec<&ObservedInstance>> = BTreeMap::new();
    let mut actions = Vec::new();
    for o in &all {
        match o.ordinal.filter(|_| !o.app.is_empty() && o.instance == format!("{}-{}", o.app, o.ordinal.unwrap_or(0))) {
            Some(ord) => groups.entry((o.app.clone(), ord)).or_default().push(o),
            None => actions.push(Action::Remove {
                app: o.app.clone(),
                instance: o.instance.clone(),
                reason: Reason::Unrecognised,
                old: old_of(o),
            }),
        }
    }
    // A duplicate whose address is in the etcd registry is serving traffic.
    let registered = |o: &ObservedInstance| match (&env.spec.etcd, &observed.etcd, o.port) {
        (Some(spec), Some(obs), Some(p)) => {
            obs.keys.contains_key(&keys::registry(&spec.registry_prefix, &o.app, name, &address_of(&o.host), p))
        }
        _ => false,
    };
    let mut primary: BTreeMap<(String, u32), &ObservedInstance> = BTreeMap::new();
    for (k, list) in &groups {
        let mut list = list.clone();
        // Running first, then registered (serving), then the OLDEST, then by id: after an
        // interrupted rolling replace the old, proven instance stays and the half-made new
        // one goes, even when both were created within the same second (Docker's list gives
        // whole seconds); deterministic whatever the observation order.
        list.sort_by(|a, b| {
            (b.state.is_running(), registered(b), a.created, &a.container_id).cmp(&(
                a.state.is_running(),
                registered(a),
                b.created,
                &b.container_id,
            ))
        });
        primary.insert(k.clone(), list[0]);
        for dup in &list[1..] {
            actions.push(Action::Remove {
                app: dup.app.clone(),
                instance: dup.instance.clone(),
                reason: Reason::Duplicate,
                old: old_of(dup),
            });
        }
    }

    // 2. Placement, keeping existing instances where allowed.
    let existing: Vec<Existing> = primary
        .iter()
        .map(|((app, ord), o)| Existing { app: app.clone(), ordinal: *ord, host: o.host.clone(), port: o.port })
        .collect();
    let demands: Vec<_> = env.apps.values().map(|a| demand(&a.spec)).collect();
    let (assignments, errors) = placement::place(&demands, &slots, &existing);
    if let Some(e) = errors.first() {
        return Err(PlanError::Placement(e.to_string()));
    }

    // Ports in use per address: every assignment and every observed container.
    let mut used: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for a in &assignments {
        if let Some(p) = a.port {
            used.entry(address_of(&a.host)).or_default().insert(p);
        }
    }
    for o in &all {
        if let Some(p) = o.port {
            used.entry(address_of(&o.host)).or_default().insert(p);
        }
    }

    // 3. Render every placed instance (the bulk of planning: in parallel, still pure),
    //    then decide per instance: create, keep, start, replace.
    let render_one = |a: &Assignment, port: Option<u16>, mask: bool| -> Result<(InstanceSpec, String), PlanError> {
        let address = address_of(&a.host);
        let slot = Slot { ordinal: a.ordinal, host: &a.host, address: &address, port };
        let spec = instance::render(&env.apps[&a.app], &slot, &prepared[a.app.as_str()], &ctx, &t, name, mask)
            .map_err(|e| template_error(&a.app, e))?;
        let hash = spec.hash();
        Ok((spec, hash))
    };
    let workers = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 8);
    let chunk = assignments.len().div_ceil(workers).max(64);
    // Only the hashes leave the workers: the specs are dropped there, in parallel (what the
    // plan shows is rendered again, masked, for the few instances that change).
    let rendered: Vec<Result<String, PlanError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = assignments
            .chunks(chunk)
            .map(|part| {
                scope.spawn(|| part.iter().map(|a| render_one(a, a.port, false).map(|(_, h)| h)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| vec![Err(PlanError::Placement("a render worker panicked".into()))])
            })
            .collect()
    });
    let mut rendered = rendered.into_iter();
    let mut finals: Vec<Assignment> = Vec::new();
    let mut handled: BTreeSet<(String, u32)> = BTreeSet::new();
    // Instances whose container stays as it is (kept or started): container name.
    let mut kept: BTreeMap<(String, u32), String> = BTreeMap::new();
    for a in &assignments {
        let app = &env.apps[&a.app];
        let key = (a.app.clone(), a.ordinal);
        let instance_name = format!("{}-{}", a.app, a.ordinal);
        let address = address_of(&a.host);
        let first = rendered.next().unwrap_or_else(|| Err(PlanError::Placement("render results out of step".into())));
        let mut first = Some(first);
        // Unmasked first (enough to compare hashes); anything the plan shows is rendered masked.
        let mut render_at = |port: Option<u16>| -> Result<String, PlanError> {
            match first.take() {
                Some(r) if port == a.port => r,
                _ => render_one(a, port, false).map(|(_, h)| h),
            }
        };
        let masked_at = |port: Option<u16>| render_one(a, port, true).map(|(spec, _)| spec);
        // `spec` must be a masked rendering (`masked_at`): it is what the plan shows.
        let mut new_of = |spec: InstanceSpec, hash: &str, port: Option<u16>| {
            let n = NewInstance {
                host: a.host.clone(),
                address: address.clone(),
                port,
                container_name: container_name(name, &a.app, a.ordinal, hash),
                spec_hash: hash.to_string(),
                spec: spec.masked(),
            };
            specs.insert(hash.to_string(), spec);
            n
        };
        handled.insert(key.clone());
        let held = hold.contains(&instance_name);
        match primary.get(&key) {
            None if held => {}
            None => {
                let hash = render_at(a.port)?;
                let spec = masked_at(a.port)?;
                actions.push(Action::Create {
                    app: a.app.clone(),
                    instance: instance_name,
                    reason: Reason::Missing,
                    new: new_of(spec, &hash, a.port),
                });
                finals.push(a.clone());
            }
            Some(o) if o.host == a.host && (a.port.is_none() || o.port == a.port) => {
                let hash = render_at(a.port)?;
                let stale = match app.spec.pull {
                    crate::spec::model::PullPolicy::Always => digest::stale(o, &app.spec.image, &d.digests),
                    crate::spec::model::PullPolicy::Missing => None,
                };
                let unchanged = hash == o.spec_hash;
                if unchanged && stale.is_none() {
                    kept.insert(key.clone(), o.name.clone());
                    if held && !o.state.is_running() {
                        continue;
                    }
                    if !o.state.is_running() {
                        actions.push(Action::Start {
                            app: a.app.clone(),
                            instance: instance_name,
                            reason: Reason::NotRunning,
                            old: old_of(o),
                        });
                    }
                    finals.push(a.clone());
                    continue;
                }
                // Rolling: the new instance needs its own port while the old one serves.
                let strategy = app.spec.update.strategy;
                let port = match (a.port, strategy) {
                    (Some(_), Strategy::Rolling | Strategy::Canary) => {
                        let pool = slots.iter().find(|s| s.name == a.host).map(|s| s.pool);
                        let taken = used.entry(address.clone()).or_default();
                        let fresh = pool.and_then(|p| (p.start..=p.end).find(|x| !taken.contains(x)));
                        match fresh {
                            Some(f) => {
                                taken.insert(f);
                                Some(f)
                            }
                            None => {
                                return Err(PlanError::Placement(format!(
                                    "no free port on host `{}` to replace `{instance_name}` side by side",
                                    a.host
                                )));
                            }
                        }
                    }
                    (p, _) => p,
                };
                let hash = if port == a.port { hash } else { render_at(port)? };
                let spec = masked_at(port)?;
                let changes = changes(o.spec.as_ref(), &spec);
                let mut new = new_of(spec, &hash, port);
                let reason = match stale {
                    Some(digest) if unchanged => {
                        digest::rename(&mut new, &o.name, &digest);
                        Reason::ImageDigest { digest }
                    }
                    _ => Reason::SpecChanged,
                };
                actions.push(Action::Replace {
                    app: a.app.clone(),
                    instance: instance_name,
                    reason,
                    changes,
                    old: old_of(o),
                    new,
                    strategy,
                });
                finals.push(Assignment { port, ..a.clone() });
            }
            Some(o) => {
                let why = if o.host != a.host {
                    format!("host `{}` is no longer eligible", o.host)
                } else {
                    "its port is no longer available".to_string()
                };
                let hash = render_at(a.port)?;
                let spec = masked_at(a.port)?;
                let changes = changes(o.spec.as_ref(), &spec);
                actions.push(Action::Replace {
                    app: a.app.clone(),
                    instance: instance_name,
                    reason: Reason::Moved { why },
                    changes,
                    old: old_of(o),
                    new: new_of(spec, &hash, a.port),
                    strategy: app.spec.update.strategy,
                });
                finals.push(a.clone());
            }
        }
    }
    for (key, o) in &primary {
        if handled.contains(key) {
            continue;
        }
        let reason = if env.apps.contains_key(&key.0) { Reason::ScaledDown } else { Reason::NotInSpec };
        actions.push(Action::Remove { app: o.app.clone(), instance: o.instance.clone(), reason, old: old_of(o) });
    }
    actions.sort_by_key(action_key);

    // Health marks (written by `watch`) of containers that stay: those instances are out of
    // traffic (registry and LB). Marks of containers that go are deleted.
    let marks = match (&env.spec.etcd, &observed.etcd) {
        (Some(spec), Some(obs)) => health_marks(&obs.keys, &spec.prefix, name),
        _ => BTreeMap::new(),
    };
    let excluded = out_of_traffic(&finals, &kept, &marks);
    let traffic: Vec<Assignment> =
        finals.iter().filter(|a| !excluded.contains(&(a.app.clone(), a.ordinal))).cloned().collect();

    // 4. etcd.
    if let (Some(spec), Some(obs)) = (&env.spec.etcd, &observed.etcd) {
        let mut desired = etcd_keys(env, &spec.prefix, &spec.registry_prefix, &traffic, &address_of);
        let staying: BTreeSet<&String> = kept.values().collect();
        for (container, key) in &marks {
            if let (true, Some(v)) = (staying.contains(container), obs.keys.get(key)) {
                desired.insert(key.clone(), v.clone());
            }
        }
        // The reload-pending mark is apply's own bookkeeping: apply deletes it after a reload.
        let pending = keys::lb_reload_pending(&spec.prefix, name);
        if let Some(v) = obs.keys.get(&pending) {
            desired.insert(pending, v.clone());
        }
        for (k, v) in &desired {
            match obs.keys.get(k) {
                Some(old) if old == v => {}
                old => actions.push(Action::PutKey { key: k.clone(), value: v.clone(), old: old.cloned() }),
            }
        }
        for (k, old) in &obs.keys {
            if !desired.contains_key(k) {
                actions.push(Action::DeleteKey { key: k.clone(), old: old.clone() });
            }
        }
    }

    // 5. The LB file, rendered over the final instances (after replacements).
    if let (Some(lb), Some(current)) = (&env.spec.lb, &observed.lb) {
        let content = lb_content(env, Arc::clone(&d.files), &traffic)?;
        if current.as_deref() != Some(content.as_str()) {
            actions.push(Action::WriteLb { path: lb.path.clone(), content, old: current.clone() });
            actions.push(Action::ReloadLb);
        } else if let (Some(spec), Some(obs)) = (&env.spec.etcd, &observed.etcd)
            && obs.keys.contains_key(&keys::lb_reload_pending(&spec.prefix, name))
        {
            // An earlier apply wrote this file but did not see the LB reload it.
            actions.push(Action::ReloadLb);
        }
    }

    let summary = Summary::of(&actions);
    let plan = Plan {
        format_version: FORMAT_VERSION,
        env: name.into(),
        origin: d.origin.clone(),
        against: fingerprint(observed),
        actions,
        summary,
    };
    Ok((plan, specs))
}

/// The health marks among observed etcd keys: container name → key.
pub fn health_marks(keys: &BTreeMap<String, String>, prefix: &str, env: &str) -> BTreeMap<String, String> {
    let dir = keys::health_dir(prefix, env);
    keys.range(dir.clone()..)
        .take_while(|(k, _)| k.starts_with(&dir))
        .filter_map(|(k, _)| k.strip_prefix(&dir).filter(|c| !c.is_empty()).map(|c| (c.to_string(), k.clone())))
        .collect()
}

/// Instances `(app, ordinal)` to keep out of traffic: those whose kept container has a
/// health mark — unless every instance of the app has one: then none (fail open; an LB
/// with no backend serves nobody, and nginx refuses an empty upstream).
pub fn out_of_traffic(
    finals: &[Assignment],
    kept: &BTreeMap<(String, u32), String>,
    marks: &BTreeMap<String, String>,
) -> BTreeSet<(String, u32)> {
    type Marked = Vec<(String, u32)>;
    let mut per_app: BTreeMap<&str, (usize, Marked)> = BTreeMap::new();
    for a in finals {
        let e = per_app.entry(a.app.as_str()).or_default();
        e.0 += 1;
        let key = (a.app.clone(), a.ordinal);
        if kept.get(&key).is_some_and(|c| marks.contains_key(c)) {
            e.1.push(key);
        }
    }
    per_app.into_values().filter(|(n, marked)| marked.len() < *n).flat_map(|(_, marked)| marked).collect()
}

fn old_of(o: &ObservedInstance) -> OldInstance {
    OldInstance {
        host: o.host.clone(),
        container_id: o.container_id.clone(),
        container_name: o.name.clone(),
        port: o.port,
        spec_hash: o.spec_hash.clone(),
        state: o.state,
    }
}

/// Instances first (by app, ordinal), then etcd keys, then the LB.
fn action_key(a: &Action) -> (u8, String, u32, String) {
    let ord = |i: &str| i.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(u32::MAX);
    match a {
        Action::Create { app, instance, .. }
        | Action::Replace { app, instance, .. }
        | Action::Start { app, instance, .. } => (0, app.clone(), ord(instance), String::new()),
        Action::Remove { app, instance, old, .. } => (0, app.clone(), ord(instance), old.container_id.clone()),
        Action::PutKey { key, .. } | Action::DeleteKey { key, .. } => (1, key.clone(), 0, String::new()),
        Action::WriteLb { .. } => (2, String::new(), 0, String::new()),
        Action::ReloadLb => (3, String::new(), 0, String::new()),
    }
}

/// The etcd keys an environment should have.
pub fn etcd_keys(
    env: &Env,
    prefix: &str,
    registry_prefix: &str,
    finals: &[Assignment],
    address_of: &dyn Fn(&str) -> String,
) -> BTreeMap<String, String> {
    let mut by_app: BTreeMap<&str, Vec<&Assignment>> = BTreeMap::new();
    for a in finals {
        by_app.entry(a.app.as_str()).or_default().push(a);
    }
    let mut out = BTreeMap::new();
    for (name, app) in &env.apps {
        for (k, v) in &app.spec.config {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(keys::config(prefix, &env.name, name, k), text);
        }
        out.insert(keys::app(prefix, &env.name, name), serde_json::to_string(&app.spec).unwrap_or_default());
        if app.spec.registry {
            for a in by_app.get(name.as_str()).map(Vec::as_slice).unwrap_or_default() {
                if let Some(p) = a.port {
                    let ip = address_of(&a.host);
                    out.insert(keys::registry(registry_prefix, name, &env.name, &ip, p), format!("{ip}:{p}"));
                }
            }
        }
    }
    out
}

/// Field-level differences between an old masked spec (from the container's
/// label) and the new spec. Masked text is compared as is; a field whose secrets
/// changed (by digest) is marked sensitive, with or without a visible change.
pub fn changes(old: Option<&Value>, new: &InstanceSpec) -> Vec<Change> {
    let Some(old) = old else {
        return vec![Change { field: "spec".into(), old: None, new: None, sensitive: false }];
    };
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    flatten_spec(old, &mut a);
    flatten_spec(&new.masked(), &mut b);
    let fields: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out: Vec<Change> = Vec::new();
    // Plain fields first, then mark the ones whose secrets changed.
    for f in fields.iter().filter(|f| !f.starts_with("sensitive.") && a.get(**f) != b.get(**f)) {
        out.push(Change { field: (*f).clone(), old: a.get(*f).cloned(), new: b.get(*f).cloned(), sensitive: false });
    }
    for f in fields.iter().filter(|f| a.get(**f) != b.get(**f)) {
        let Some(field) = f.strip_prefix("sensitive.") else { continue };
        match out.iter_mut().find(|c| c.field == field) {
            Some(c) => c.sensitive = true,
            None => out.push(Change { field: field.to_string(), old: None, new: None, sensitive: true }),
        }
    }
    out.sort_by(|x, y| x.field.cmp(&y.field));
    out.dedup_by(|x, y| x.field == y.field);
    out
}

/// Flatten a masked spec to dotted fields; `sensitive` digests keep their field names
/// (`sensitive.env.DB_PASSWORD`), since those names contain dots themselves.
fn flatten_spec(v: &Value, out: &mut BTreeMap<String, Value>) {
    let Value::Object(o) = v else { return };
    for (k, c) in o {
        if k == "sensitive"
            && let Value::Object(d) = c
        {
            for (field, digest) in d {
                out.insert(format!("sensitive.{field}"), digest.clone());
            }
        } else {
            flatten(c, k.clone(), out);
        }
    }
}

/// `{"env": {"A": "1"}}` → `env.A = "1"`. Lists are compared whole; file maps by path.
fn flatten(v: &Value, at: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, c) in o {
                let p = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                flatten(c, p, out);
            }
        }
        Value::Null => {}
        other => {
            out.insert(at, other.clone());
        }
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

/// Render the LB config for an arbitrary set of serving instances (apply renders
/// intermediate configs during a rolling replace: new instance added, old removed).
///
/// # Errors
/// The LB template fails, or the environment has no LB.
pub fn lb_content(
    env: &Env,
    files: Arc<BTreeMap<String, Vec<u8>>>,
    serving: &[Assignment],
) -> Result<String, PlanError> {
    let Some(lb) = &env.spec.lb else {
        return Err(PlanError::LbTemplate { message: "the environment has no lb".into() });
    };
    let t = Templates::new(env.dirs.clone(), files);
    let names: Vec<String> = env.spec.secrets.keys().cloned().collect();
    let ctx = contexts(&env.name, &env.spec.vars, &BTreeMap::new(), &names);
    let mut slots = Vec::new();
    for h in &env.spec.hosts {
        let pool =
            units::port_range(&h.ports).map_err(|e| PlanError::Pool { host: h.name.clone(), message: e.message })?;
        slots.push(HostSlot { name: h.name.clone(), address: h.address.clone(), labels: h.labels.clone(), pool });
    }
    let apps = minijinja::Value::from(minijinja::value::Serde(lb_apps(env, &slots, serving)));
    let c = minijinja::context! { apps => apps, ..ctx.masked };
    t.render_value(&lb.template, &c).map_err(|e| PlanError::LbTemplate { message: e.message })
}
