//! Apply: carry out a plan against the hosts, etcd and the LB, in dependency
//! order, without taking a serving app down.
//!
//! The executor walks the plan's actions; it decides nothing the plan did not
//! say, except *when*: dependencies first (each healthy before its dependents
//! start), apps of one dependency level concurrently, and for LB-backed apps the
//! contract's zero-downtime sequence per batch:
//! start new → healthy → register (registry + LB reload) → deregister old (LB
//! reload) → drain → stop old. A failed health check stops that app's rollout, removes
//! the failed new container and leaves the old ones serving and registered.
//!
//! Drain: an LB reload is asynchronous (nginx's old workers, haproxy's old process
//! keep routing with the old upstreams for a moment after the reload command
//! returns), so after a reload that took instances out of traffic the executor waits
//! the environment's `lb.drain` (default [`LB_DRAIN`], 1.5 s; `RECONCILE_LB_DRAIN`, e.g.
//! `0s` or `5s`, overrides it) before stopping them.
//! Only LB-backed apps wait, and only when the LB was reloaded.
//!
//! Crash safety (safe to re-run after a kill at any step): every step is
//! idempotent or undone by the next plan — a half-made new container is a
//! duplicate of its instance and the planner keeps the older, proven one;
//! registry entries and the LB file are recomputed from what runs. The LB file
//! may have been written by a killed apply that never reloaded, so the first time
//! an apply takes instances out of traffic it reloads even an unchanged file.
//! Besides, `<prefix>/<env>/lb/reload-pending` is set before the file is written and
//! deleted after the reload: a leftover mark makes the next plan reload.
//! The apply lock ([`lock`], lease TTL [`LOCK_TTL`], `RECONCILE_LOCK_TTL` for tests)
//! is checked before every write: an apply that lost it (stalled longer than the
//! TTL, etcd unreachable) stops writing, since another apply may hold it now.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard_free::*;
use futures::StreamExt as _;
use tokio::sync::Mutex;

use crate::backend::{docker, etcd, lb, probe};
use crate::model::{ObservedState, keys};
use crate::placement::Assignment;
use crate::plan::instance::InstanceSpec;
use crate::plan::{self, Action, Plan};
use crate::spec::Env;
use crate::spec::model::Strategy;

/// Names used here without importing bollard (only `backend::docker` may).
mod bollard_free {
    pub use crate::backend::docker::Client as DockerClient;
}

/// Knobs of one apply.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Apps (of one dependency level) and hosts worked on at once.
    pub parallelism: usize,
    /// Per Docker/etcd call.
    pub timeout: Duration,
    /// How long to wait for another apply's lock.
    pub lock_timeout: Duration,
    /// What the history records this as: `apply`, or `rollback to <ref>`.
    pub record_as: &'static str,
}

/// What happened to one app.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AppOutcome {
    /// One line per step done.
    pub done: Vec<String>,
    /// Why the app's rollout stopped, if it did.
    pub error: Option<String>,
}

/// The result of an apply: per app, plus etcd and LB problems.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub apps: BTreeMap<String, AppOutcome>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.apps.values().all(|a| a.error.is_none())
    }
    /// One line: `ok` or `failed: app a (why); etcd: …`.
    pub fn result_line(&self) -> String {
        if self.ok() {
            return "ok".into();
        }
        let mut parts: Vec<String> =
            self.apps.iter().filter_map(|(n, a)| a.error.as_ref().map(|e| format!("app {n}: {e}"))).collect();
        parts.extend(self.errors.iter().cloned());
        format!("failed: {}", parts.join("; "))
    }
}

pub mod pin;

/// Apply could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A rollback pinned the environment to another commit.
    #[error(
        "environment `{env}` is pinned to {} ({}) by a rollback ({} on {} at {}); applying {commit} would \
         undo it. Once the environment may follow the repo again, release the pin: \
         `reconcile rollback --env {env} --release`",
        pin::short(&pin.commit), pin.reference, pin.who, pin.host, pin.time
    )]
    Pinned { env: String, pin: Box<crate::model::Pin>, commit: String },
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    /// A tuning value (a `RECONCILE_*` variable of the process environment, or `lb.drain`)
    /// is bad.
    #[error("{name}={value:?}: {message}")]
    Setting { name: &'static str, value: String, message: String },
}

/// The apply lock's lease TTL: how long a crashed apply (killed, host lost) keeps
/// blocking the next one. `RECONCILE_LOCK_TTL` (a duration, at least 2s) overrides it —
/// for tests and soak runs that kill applies on purpose.
pub const LOCK_TTL: Duration = Duration::from_secs(15);
const LOCK_TTL_VAR: &str = "RECONCILE_LOCK_TTL";

/// How long the executor waits after an LB reload that took instances out of traffic
/// before it stops them (see the module docs), unless the environment's `lb.drain`
/// says otherwise. `RECONCILE_LB_DRAIN` (a duration, `0s` disables it) overrides both.
pub const LB_DRAIN: Duration = Duration::from_millis(1500);
const LB_DRAIN_VAR: &str = "RECONCILE_LB_DRAIN";

/// The lease TTL of locks: [`LOCK_TTL`], or `RECONCILE_LOCK_TTL` when it is valid.
pub fn lock_ttl() -> Duration {
    duration_var(LOCK_TTL_VAR, LOCK_TTL, Duration::from_secs(2)).unwrap_or(LOCK_TTL)
}

/// The drain wait: `RECONCILE_LB_DRAIN` if set, else the environment's `lb.drain`, else
/// [`LB_DRAIN`].
fn lb_drain(env: &Env) -> Result<Duration, ApplyError> {
    let default = match env.spec.lb.as_ref().and_then(|lb| lb.drain.as_deref()) {
        Some(text) => crate::spec::units::duration(text).map_err(|e| ApplyError::Setting {
            name: "lb.drain",
            value: text.to_string(),
            message: e.message,
        })?,
        None => LB_DRAIN,
    };
    duration_var(LB_DRAIN_VAR, default, Duration::ZERO)
}

/// A duration from the process environment, `default` when unset.
fn duration_var(name: &'static str, default: Duration, min: Duration) -> Result<Duration, ApplyError> {
    let Ok(value) = std::env::var(name) else { return Ok(default) };
    let bad = |message: String| ApplyError::Setting { name, value: value.clone(), message };
    let d = crate::spec::units::duration(value.trim()).map_err(|e| bad(e.message))?;
    if d < min {
        return Err(bad(format!("must be at least {min:?}")));
    }
    Ok(d)
}

/// Progress lines (stderr): plain lines, one per step, in CI and on a terminal.
pub type Progress = Arc<dyn Fn(String) + Send + Sync>;

struct Shared<'a> {
    env: &'a Env,
    files: Arc<BTreeMap<String, Vec<u8>>>,
    plan: &'a Plan,
    specs: &'a BTreeMap<String, InstanceSpec>,
    opts: Options,
    progress: Progress,
    clients: BTreeMap<String, Result<DockerClient, String>>,
    /// Instances that should receive traffic now.
    serving: Mutex<BTreeSet<Assignment>>,
    etcd: Option<Mutex<etcd::Client>>,
    /// Serialises LB writes and reloads.
    lb_lock: Mutex<()>,
    /// Wait between an LB reload taking instances out of traffic and stopping them.
    drain: Duration,
    /// This apply has reloaded the LB: from then on the LB runs what the file says.
    lb_reloaded: std::sync::atomic::AtomicBool,
    /// The apply lock: every write first checks it is still held.
    lock: Option<&'a etcd::LockGuard>,
}

/// What one apply works on.
pub struct Job<'a> {
    pub env: &'a Env,
    pub files: Arc<BTreeMap<String, Vec<u8>>>,
    pub plan: &'a Plan,
    /// Real specs of the containers to create, by spec-hash (`plan::plan_with_specs`).
    pub specs: &'a BTreeMap<String, InstanceSpec>,
    /// What the plan was made against.
    pub observed: &'a ObservedState,
}

/// Apply `plan` (made against `observed`, while holding `guard` from [`lock`]) with
/// the real `specs` from `plan::plan_with_specs`. Releases the lock at the end.
///
/// # Errors
/// Only when nothing could be done (etcd unreachable, lock not acquired); failures
/// of apps, hosts, etcd writes or the LB are in the report, with everything
/// independent of them done.
pub async fn apply(
    guard: Option<etcd::LockGuard>,
    job: Job<'_>,
    opts: Options,
    progress: Progress,
) -> Result<Report, ApplyError> {
    let Job { env, files, plan, specs, observed } = job;
    let started = Instant::now();
    // A way out before any work still frees the lock at once (else it blocks the next
    // apply until its lease expires).
    let drain = match lb_drain(env) {
        Ok(d) => d,
        Err(e) => return Err(release_on_error(guard, e).await),
    };
    let etcd_client = match &env.spec.etcd {
        Some(spec) => match etcd::connect(spec, opts.timeout).await {
            Ok(c) => Some(c),
            Err(e) => return Err(release_on_error(guard, e.into()).await),
        },
        None => None,
    };

    // 2. Docker clients for the hosts the plan touches.
    let hosts: BTreeSet<&str> = plan
        .actions
        .iter()
        .flat_map(|a| match a {
            Action::Create { new, .. } => vec![new.host.as_str()],
            Action::Replace { old, new, .. } => vec![old.host.as_str(), new.host.as_str()],
            Action::Remove { old, .. } | Action::Start { old, .. } => vec![old.host.as_str()],
            _ => vec![],
        })
        .collect();
    let mut clients = BTreeMap::new();
    for h in &env.spec.hosts {
        if hosts.contains(h.name.as_str()) {
            clients.insert(h.name.clone(), docker::connect(h, opts.timeout).await.map_err(|e| e.to_string()));
        }
    }

    // 2b. Every image the plan needs, on its hosts, before anything stops (an app whose
    // pull fails is not touched at all).
    let pull_failed = docker::pull_for_plan(env, plan, specs, &clients, &*progress).await;

    let shared = Shared {
        env,
        files,
        plan,
        specs,
        opts,
        progress: Arc::clone(&progress),
        clients,
        serving: Mutex::new(initial_serving(env, plan, observed)),
        etcd: etcd_client.map(Mutex::new),
        lb_lock: Mutex::new(()),
        drain,
        lb_reloaded: std::sync::atomic::AtomicBool::new(false),
        lock: guard.as_ref(),
    };
    let mut report = Report::default();

    // 3. Config center and desired copies first: apps may read their config at start.
    if let Some(e) = shared.etcd_non_registry().await {
        report.errors.push(e);
    }

    // 4. Apps, dependency level by level.
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for level in levels(env, plan) {
        let runs = level.iter().map(|app| {
            let blocked: Vec<&String> = env
                .apps
                .get(app)
                .map(|a| a.spec.depends_on.iter().filter(|d| failed.contains(*d)).collect())
                .unwrap_or_default();
            let shared = &shared;
            let pull_failed = pull_failed.get(app);
            async move {
                if let Some(e) = pull_failed {
                    return (app.clone(), AppOutcome { done: vec![], error: Some(e.clone()) });
                }
                if !blocked.is_empty() {
                    let names: Vec<&str> = blocked.iter().map(|s| s.as_str()).collect();
                    return (
                        app.clone(),
                        AppOutcome {
                            done: vec![],
                            error: Some(format!("not started: dependency {} failed", names.join(", "))),
                        },
                    );
                }
                (app.clone(), shared.app(app).await)
            }
        });
        let results = futures::stream::iter(runs).buffer_unordered(opts.parallelism.max(1)).collect::<Vec<_>>().await;
        for (app, outcome) in results {
            if outcome.error.is_some() {
                failed.insert(app.clone());
            }
            report.apps.insert(app, outcome);
        }
    }

    // 5. Registry entries of untouched instances, and the final LB file.
    if let Err(e) = shared.locked() {
        // Another apply may be at work: write nothing more (not even the record).
        report.errors.push(e);
    } else {
        if let Some(e) = shared.etcd_registry_rest(&failed).await {
            report.errors.push(e);
        }
        if let Some(e) = shared.final_lb(failed.is_empty()).await {
            report.errors.push(e);
        }
        // 6. Record and unlock.
        shared.record(&mut report, started).await;
    }
    if let Some(g) = guard
        && let Err(e) = g.release().await
    {
        report.errors.push(format!("releasing the apply lock: {e}"));
    }
    Ok(report)
}

impl Shared<'_> {
    /// The apply's `applied` / `history` entry in etcd.
    async fn record(&self, report: &mut Report, started: Instant) {
        let (env, plan) = (self.env, self.plan);
        let (Some(c), Some(spec)) = (&self.etcd, &env.spec.etcd) else { return };
        let who = etcd::current_holder("reconcile apply");
        let entry = serde_json::json!({
            "kind": self.opts.record_as,
            "reference": plan.origin.reference,
            "commit": plan.origin.commit,
            "dirty": plan.origin.dirty,
            "time": now_rfc3339(),
            "who": who.who,
            "host": who.host,
            "summary": plan.summary.to_string(),
            "result": report.result_line(),
            "duration_ms": started.elapsed().as_millis() as u64,
        });
        let mut client = c.lock().await;
        let fence = self.lock.map(etcd::LockGuard::fence);
        if let Err(e) = etcd::record_apply(&mut client, &spec.prefix, &env.name, &entry, fence.as_ref()).await {
            report.errors.push(format!("recording the apply in etcd: {e}"));
        }
    }
}

/// Take the environment's apply lock (when it has etcd) — before observing, so that
/// a second apply plans only after the first is done. Says who holds it while waiting.
///
/// The lease TTL is [`LOCK_TTL`] or `RECONCILE_LOCK_TTL`.
///
/// # Errors
/// etcd unreachable, the lock still held after `opts.lock_timeout`, or a bad
/// `RECONCILE_LOCK_TTL` / `RECONCILE_LB_DRAIN`.
pub async fn lock(env: &Env, opts: Options, progress: Progress) -> Result<Option<etcd::LockGuard>, ApplyError> {
    // Bad tuning values are errors before anything is planned or asked.
    lb_drain(env)?;
    let Some(spec) = &env.spec.etcd else { return Ok(None) };
    let ttl = duration_var(LOCK_TTL_VAR, LOCK_TTL, Duration::from_secs(2))?;
    let client = etcd::connect(spec, opts.timeout).await?;
    let holder = etcd::current_holder("reconcile apply");
    let mut waiting = move |h: &etcd::Holder| {
        progress(format!(
            "waiting for the apply lock held by {} on {} (pid {}, since {})",
            h.who, h.host, h.pid, h.since
        ));
    };
    let guard =
        etcd::acquire_lock(&client, &spec.prefix, &env.name, &holder, ttl, opts.lock_timeout, &mut waiting).await?;
    Ok(Some(guard))
}

/// Release `guard` (best effort: it expires with its lease anyway) and return `e`.
async fn release_on_error(guard: Option<etcd::LockGuard>, e: ApplyError) -> ApplyError {
    if let Some(g) = guard
        && let Err(r) = g.release().await
    {
        tracing::warn!(error = %r, "releasing the apply lock after an error; it expires with its lease");
    }
    e
}

fn now_rfc3339() -> String {
    etcd::now_rfc3339()
}

/// Write `content` to the LB file (checked) and reload, unless it is already there (and
/// `force` is false). `Ok(true)` when it reloaded. The LB commands block, so they run off
/// the async workers (which also keep the lock's lease alive).
async fn lb_write_and_reload(
    lbspec: &crate::spec::model::LbSpec,
    content: String,
    force: bool,
    pending: Option<(&Mutex<etcd::Client>, String, Option<etcd::Fence>)>,
) -> Result<bool, String> {
    let (path, check, reload) = (lbspec.path.clone(), lbspec.check.clone(), lbspec.reload.clone());
    let current = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || lb::read(&path).ok().flatten())
            .await
            .map_err(|e| format!("the LB update task failed: {e}"))?
    };
    let same = current.as_deref() == Some(content.as_str());
    if same && !force {
        return Ok(false);
    }
    // Mark the reload pending before the file changes: a crash before the reload leaves the
    // mark, and the next plan reloads. Deleted once the reload command succeeded.
    let mark = |write: etcd::Write| async {
        let Some((client, _, fence)) = &pending else { return Ok(()) };
        let mut c = client.lock().await;
        etcd::batch_fenced(&mut c, &[write], fence.as_ref()).await.map_err(|e| format!("lb reload-pending mark: {e}"))
    };
    if let Some((_, key, _)) = &pending
        && !same
    {
        mark(etcd::Write::Put { key: key.clone(), value: now_rfc3339() }).await?;
    }
    let work = move || -> Result<(), String> {
        if !same {
            lb::write_checked(&path, &content, check.as_deref()).map_err(|e| e.to_string())?;
        }
        lb::reload(&reload).map_err(|e| e.to_string())
    };
    tokio::task::spawn_blocking(work).await.map_err(|e| format!("the LB update task failed: {e}"))??;
    if let Some((_, key, _)) = &pending {
        mark(etcd::Write::Delete { key: key.clone() }).await?;
    }
    Ok(true)
}

/// Instances that receive traffic before anything changes: the observed running
/// containers the plan keeps or replaces (not duplicates or unrecognised ones).
fn initial_serving(env: &Env, plan: &Plan, observed: &ObservedState) -> BTreeSet<Assignment> {
    let dropped: BTreeSet<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { old, reason: plan::Reason::Duplicate | plan::Reason::Unrecognised, .. } => {
                Some(old.container_id.as_str())
            }
            Action::Start { old, .. } => Some(old.container_id.as_str()),
            _ => None,
        })
        .collect();
    let running: Vec<(Assignment, String)> = observed
        .hosts
        .values()
        .flat_map(|h| h.instances.iter())
        .filter(|i| i.state.is_running() && !dropped.contains(i.container_id.as_str()))
        .filter_map(|i| {
            let a = Assignment { app: i.app.clone(), ordinal: i.ordinal?, host: i.host.clone(), port: i.port };
            Some((a, i.name.clone()))
        })
        .collect();
    // Instances `watch` marked unhealthy are not serving (as in the plan's own LB content).
    let marks = match (&env.spec.etcd, &observed.etcd) {
        (Some(spec), Some(obs)) => plan::health_marks(&obs.keys, &spec.prefix, &env.name),
        _ => BTreeMap::new(),
    };
    let assignments: Vec<Assignment> = running.iter().map(|(a, _)| a.clone()).collect();
    let kept: BTreeMap<(String, u32), String> =
        running.iter().map(|(a, c)| ((a.app.clone(), a.ordinal), c.clone())).collect();
    let excluded = plan::out_of_traffic(&assignments, &kept, &marks);
    assignments.into_iter().filter(|a| !excluded.contains(&(a.app.clone(), a.ordinal))).collect()
}

/// Apps with instance actions, grouped in dependency levels (dependencies first).
fn levels(env: &Env, plan: &Plan) -> Vec<Vec<String>> {
    let mut todo: BTreeSet<String> =
        plan.actions.iter().filter_map(|a| a.app().map(str::to_string)).filter(|a| !a.is_empty()).collect();
    let mut done: BTreeSet<String> = env.apps.keys().filter(|a| !todo.contains(*a)).cloned().collect();
    let mut out = Vec::new();
    while !todo.is_empty() {
        let ready: Vec<String> = todo
            .iter()
            .filter(|a| {
                env.apps
                    .get(*a)
                    .is_none_or(|s| s.spec.depends_on.iter().all(|d| done.contains(d) || !env.apps.contains_key(d)))
            })
            .cloned()
            .collect();
        // A cycle cannot pass validate; take everything left rather than loop forever.
        let ready = if ready.is_empty() { todo.iter().cloned().collect() } else { ready };
        for a in &ready {
            todo.remove(a);
            done.insert(a.clone());
        }
        out.push(ready);
    }
    out
}

impl Shared<'_> {
    fn say(&self, s: String) {
        (self.progress)(s);
    }

    /// `Err` once the apply lock's lease can no longer be proven alive (etcd unreachable,
    /// or this process stalled longer than the TTL): another apply may hold the lock
    /// now, so nothing more may be written.
    /// The etcd client, reload-pending key and fence for LB updates (when there is etcd).
    fn pending(&self) -> Option<(&Mutex<etcd::Client>, String, Option<etcd::Fence>)> {
        let (c, spec) = (self.etcd.as_ref()?, self.env.spec.etcd.as_ref()?);
        Some((c, keys::lb_reload_pending(&spec.prefix, &self.env.name), self.lock.map(etcd::LockGuard::fence)))
    }

    /// Write to etcd, fenced by the apply lock when there is one: a write made after the
    /// lock was lost fails in etcd itself, whatever [`Shared::locked`] saw just before.
    async fn write(&self, client: &mut etcd::Client, writes: &[etcd::Write]) -> Result<(), etcd::EtcdError> {
        etcd::batch_fenced(client, writes, self.lock.map(etcd::LockGuard::fence).as_ref()).await
    }

    fn locked(&self) -> Result<(), String> {
        match self.lock {
            Some(g) if g.lost() => Err(format!(
                "the apply lock {} was lost (its lease expired: etcd unreachable or this process stalled); \
                 stopped writing so that another apply can take over; run apply again",
                g.key()
            )),
            _ => Ok(()),
        }
    }

    fn client(&self, host: &str) -> Result<&DockerClient, String> {
        match self.clients.get(host) {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("host `{host}` is not part of the environment")),
        }
    }

    fn registry_prefix(&self) -> Option<&str> {
        self.env.spec.etcd.as_ref().map(|e| e.registry_prefix.as_str())
    }

    fn is_registry_key(&self, key: &str) -> Option<String> {
        let rp = self.registry_prefix()?;
        self.env
            .apps
            .keys()
            .chain(self.plan.actions.iter().filter_map(|a| a.app().map(str::to_string)).collect::<Vec<_>>().iter())
            .find(|app| key.starts_with(&keys::registry_dir(rp, app, &self.env.name)))
            .cloned()
    }

    /// Plan's etcd writes outside the registry, in transactions of at most 128.
    async fn etcd_non_registry(&self) -> Option<String> {
        let c = self.etcd.as_ref()?;
        if let Err(e) = self.locked() {
            return Some(e);
        }
        let writes: Vec<etcd::Write> = self
            .plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::PutKey { key, value, .. } if self.is_registry_key(key).is_none() => {
                    Some(etcd::Write::Put { key: key.clone(), value: value.clone() })
                }
                Action::DeleteKey { key, .. } if self.is_registry_key(key).is_none() => {
                    Some(etcd::Write::Delete { key: key.clone() })
                }
                _ => None,
            })
            .collect();
        let mut client = c.lock().await;
        for chunk in writes.chunks(etcd::MAX_TXN_OPS) {
            if let Err(e) = self.write(&mut client, chunk).await {
                return Some(format!("etcd: {e}"));
            }
        }
        if !writes.is_empty() {
            self.say(format!("etcd: {} config/spec keys written", writes.len()));
        }
        None
    }

    /// Registry writes the executor did not do itself (hand-edited or stale entries),
    /// except for apps whose rollout failed (their registry stays as the executor left it).
    async fn etcd_registry_rest(&self, failed: &BTreeSet<String>) -> Option<String> {
        let c = self.etcd.as_ref()?;
        if let Err(e) = self.locked() {
            return Some(e);
        }
        let mut client = c.lock().await;
        for a in &self.plan.actions {
            let r = match a {
                Action::PutKey { key, value, .. } => match self.is_registry_key(key) {
                    Some(app) if !failed.contains(&app) => {
                        self.write(&mut client, &[etcd::Write::Put { key: key.clone(), value: value.clone() }]).await
                    }
                    _ => Ok(()),
                },
                Action::DeleteKey { key, .. } => match self.is_registry_key(key) {
                    Some(app) if !failed.contains(&app) => {
                        self.write(&mut client, &[etcd::Write::Delete { key: key.clone() }]).await
                    }
                    _ => Ok(()),
                },
                _ => Ok(()),
            };
            if let Err(e) = r {
                return Some(format!("etcd registry: {e}"));
            }
        }
        None
    }

    fn address_of(&self, host: &str) -> String {
        self.env.spec.hosts.iter().find(|h| h.name == host).map(|h| h.address.clone()).unwrap_or_default()
    }

    /// Put `a` into (or take it out of) the registry, then the serving set (which the
    /// next LB update renders). An app removed from the repo has its entries deleted
    /// too, before its instances stop.
    async fn register(&self, a: &Assignment, on: bool) -> Result<(), String> {
        self.locked()?;
        let registry = match self.env.apps.get(&a.app) {
            Some(x) => x.spec.registry,
            None => !on,
        };
        if let (true, Some(c), Some(rp), Some(port)) = (registry, &self.etcd, self.registry_prefix(), a.port) {
            let ip = self.address_of(&a.host);
            let key = keys::registry(rp, &a.app, &self.env.name, &ip, port);
            let mut client = c.lock().await;
            let r = if on {
                self.write(&mut client, &[etcd::Write::Put { key, value: format!("{ip}:{port}") }]).await
            } else {
                self.write(&mut client, &[etcd::Write::Delete { key }]).await
            };
            r.map_err(|e| format!("registry: {e}"))?;
        }
        let mut s = self.serving.lock().await;
        if on {
            s.insert(a.clone());
        } else {
            s.remove(a);
        }
        Ok(())
    }

    /// Rewrite and reload the LB for the current serving set, when the app is LB-backed.
    /// `Ok(true)` when the LB was reloaded (its content changed).
    async fn lb_update(&self, app: &str) -> Result<bool, String> {
        self.lb_update_with(app, false).await
    }

    /// [`Shared::lb_update`]; with `unsure`, also reload an unchanged file unless this
    /// apply reloaded already.
    async fn lb_update_with(&self, app: &str, unsure: bool) -> Result<bool, String> {
        let (Some(lbspec), true) = (&self.env.spec.lb, self.env.apps.get(app).is_some_and(|a| a.spec.lb.is_some()))
        else {
            return Ok(false);
        };
        self.locked()?;
        let _one_at_a_time = self.lb_lock.lock().await;
        let serving: Vec<Assignment> =
            self.serving.lock().await.iter().filter(|a| self.env.apps.contains_key(&a.app)).cloned().collect();
        let content = plan::lb_content(self.env, Arc::clone(&self.files), &serving).map_err(|e| e.to_string())?;
        let force = unsure && !self.lb_reloaded.load(std::sync::atomic::Ordering::SeqCst);
        let reloaded = lb_write_and_reload(lbspec, content, force, self.pending()).await?;
        if reloaded {
            self.lb_reloaded.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(reloaded)
    }

    /// After instances of `app` left the serving set: reload the LB and, when it was
    /// reloaded, wait [`Shared::drain`] before anything is stopped — a reload is
    /// asynchronous (nginx's old workers keep the old upstreams until they exit), so
    /// stopping at once fails the requests still routed to the leaving instances.
    ///
    /// The first time in an apply this reloads even when the file already has the
    /// wanted content: an apply killed between writing the file and reloading leaves a
    /// right file and a running LB that still routes to the instances about to stop.
    async fn leave_traffic(&self, app: &str) -> Result<(), String> {
        if self.lb_update_with(app, true).await? && !self.drain.is_zero() {
            self.say(format!("lb: waiting {:?} for the reload to drain {app}'s leaving instances", self.drain));
            tokio::time::sleep(self.drain).await;
        }
        Ok(())
    }

    /// The LB file after all apps: the plan's content when everything succeeded,
    /// else the rendering of what serves now.
    async fn final_lb(&self, all_ok: bool) -> Option<String> {
        let lbspec = self.env.spec.lb.as_ref()?;
        if let Err(e) = self.locked() {
            return Some(format!("lb: not updated: {e}"));
        }
        let _one_at_a_time = self.lb_lock.lock().await;
        let content = if all_ok {
            self.plan
                .actions
                .iter()
                .find_map(|a| if let Action::WriteLb { content, .. } = a { Some(content.clone()) } else { None })
        } else {
            None
        };
        let content = match content {
            Some(c) => c,
            None => {
                let serving: Vec<Assignment> =
                    self.serving.lock().await.iter().filter(|a| self.env.apps.contains_key(&a.app)).cloned().collect();
                match plan::lb_content(self.env, Arc::clone(&self.files), &serving) {
                    Ok(c) => c,
                    Err(e) => return Some(format!("lb: {e}")),
                }
            }
        };
        // The plan asks for a reload without a write when an earlier apply left one pending.
        let force = self.plan.actions.iter().any(|a| matches!(a, Action::ReloadLb))
            && !self.lb_reloaded.load(std::sync::atomic::Ordering::SeqCst);
        lb_write_and_reload(lbspec, content, force, self.pending()).await.err().map(|e| format!("lb: {e}"))
    }

    /// Start a new container for `new` and wait until it is healthy. On failure the
    /// container is removed again.
    async fn bring_up(
        &self,
        app: &str,
        instance: &str,
        new: &plan::NewInstance,
    ) -> Result<(Assignment, String), String> {
        let spec = self
            .specs
            .get(&new.spec_hash)
            .ok_or_else(|| format!("{instance}: the plan's spec is missing (plan again)"))?;
        self.locked()?;
        let client = self.client(&new.host)?;
        let mut progress = |line: String| self.say(line);
        docker::ensure_image(client, &new.host, &spec.image, &mut progress).await.map_err(|e| e.to_string())?;
        let labels = plan::container_labels(&self.env.name, app, instance, new, self.plan.origin.commit.as_deref());
        let id = docker::create_instance(client, &new.host, &new.container_name, spec, &labels)
            .await
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let health = async {
            docker::start(client, &new.host, &id).await.map_err(|e| e.to_string())?;
            self.wait_healthy(client, &new.host, &id, spec, &new.address, new.port).await
        };
        if let Err(why) = health.await {
            let grace = Duration::from_secs(spec.stop_timeout_secs);
            let _ = docker::stop_and_remove(client, &new.host, &id, grace).await;
            return Err(format!("{instance} on {}: {why}; the new container was removed", new.host));
        }
        self.say(format!(
            "{}: {instance} started ({}) and healthy in {:.1}s",
            new.host,
            &id[..12.min(id.len())],
            t0.elapsed().as_secs_f64()
        ));
        let ordinal = instance.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok((Assignment { app: app.to_string(), ordinal, host: new.host.clone(), port: new.port }, id))
    }

    async fn wait_healthy(
        &self,
        client: &DockerClient,
        host: &str,
        id: &str,
        spec: &InstanceSpec,
        address: &str,
        port: Option<u16>,
    ) -> Result<(), String> {
        let running = || docker::still_running(client, host, id);
        let Some(h) = &spec.health else {
            // No health check: running a moment after start counts as healthy.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return running().await;
        };
        let probe = probe::Probe::from_spec(h, address, port, |argv| {
            docker::cmd_runner(client.clone(), host.to_string(), id.to_string(), argv)
        })?;
        let schedule = probe::Schedule::from_spec(h)?;
        probe::wait_healthy(&probe, &schedule, running).await
    }

    async fn take_down(&self, app: &str, old: &plan::OldInstance) -> Result<(), String> {
        self.locked()?;
        let client = self.client(&old.host)?;
        let grace = self
            .env
            .apps
            .get(app)
            .and_then(|a| a.spec.stop_timeout.as_deref())
            .and_then(|d| crate::spec::units::duration(d).ok())
            .unwrap_or(Duration::from_secs(10));
        docker::stop_and_remove(client, &old.host, &old.container_id, grace).await.map_err(|e| e.to_string())
    }

    fn old_assignment(app: &str, instance: &str, old: &plan::OldInstance) -> Assignment {
        let ordinal = instance.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        Assignment { app: app.to_string(), ordinal, host: old.host.clone(), port: old.port }
    }

    /// All of one app's instance actions, in the contract's order.
    async fn app(&self, app: &str) -> AppOutcome {
        let mut out = AppOutcome::default();
        match self.app_steps(app, &mut out.done).await {
            Ok(()) => {}
            Err(e) => {
                self.say(format!("app {app}: FAILED: {e}"));
                out.error = Some(e);
            }
        }
        out
    }

    async fn app_steps(&self, app: &str, done: &mut Vec<String>) -> Result<(), String> {
        let actions: Vec<&Action> = self.plan.actions.iter().filter(|a| a.app() == Some(app)).collect();
        let batch = self.env.apps.get(app).map_or(1, |a| a.spec.update.batch.max(1) as usize);
        // Removals first (scaled down, gone from the repo, duplicates): out of traffic, then stopped.
        for a in &actions {
            if let Action::Remove { instance, old, reason, .. } = a {
                let asg = Self::old_assignment(app, instance, old);
                self.register(&asg, false).await?;
                self.leave_traffic(app).await?;
                self.take_down(app, old).await?;
                let line = format!(
                    "{}: removed {} ({})",
                    old.host,
                    if instance.is_empty() { &old.container_name } else { instance },
                    plan::render::reason_text(reason)
                );
                self.say(line.clone());
                done.push(line);
            }
        }
        // Starts: existing, up-to-date instances that were not running.
        for a in &actions {
            if let Action::Start { instance, old, .. } = a {
                self.locked()?;
                let client = self.client(&old.host)?;
                docker::start(client, &old.host, &old.container_id).await.map_err(|e| e.to_string())?;
                let spec_health = self.env.apps.get(app).and_then(|x| x.spec.health.clone());
                if let Some(h) = spec_health {
                    let address = self.address_of(&old.host);
                    let probe = probe::Probe::from_spec(&h, &address, old.port, |argv| {
                        docker::cmd_runner(client.clone(), old.host.clone(), old.container_id.clone(), argv)
                    })?;
                    let schedule = probe::Schedule::from_spec(&h)?;
                    probe::wait_healthy(&probe, &schedule, || {
                        docker::still_running(client, &old.host, &old.container_id)
                    })
                    .await
                    .map_err(|e| format!("{instance}: {e}"))?;
                }
                self.register(&Self::old_assignment(app, instance, old), true).await?;
                self.lb_update(app).await?;
                done.push(format!("{}: started {instance}", old.host));
            }
        }
        // Creates: nothing of these instances serves yet, so `batch` (which paces
        // replacements) does not apply: up to `parallelism` at once (at least `batch`),
        // no new one started after a failure, the LB updated once at the end.
        let creates: Vec<(&String, &plan::NewInstance)> = actions
            .iter()
            .filter_map(|a| if let Action::Create { instance, new, .. } = a { Some((instance, new)) } else { None })
            .collect();
        if !creates.is_empty() {
            let stop = std::sync::atomic::AtomicBool::new(false);
            let stop = &stop;
            let mut ups = futures::stream::iter(creates.iter().map(|(i, n)| async move {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return None;
                }
                let r = self.bring_up(app, i, n).await;
                if r.is_err() {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Some(r)
            }))
            .buffer_unordered(self.opts.parallelism.max(batch).max(1));
            let mut first_err = None;
            while let Some(r) = ups.next().await {
                match r {
                    None => {}
                    Some(Ok((asg, _))) => {
                        self.register(&asg, true).await?;
                        done.push(format!("{}: created {}-{}", asg.host, asg.app, asg.ordinal));
                    }
                    Some(Err(e)) => first_err = first_err.or(Some(e)),
                }
            }
            self.lb_update(app).await?;
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        // Replaces, a batch at a time.
        let replaces: Vec<(&String, &plan::OldInstance, &plan::NewInstance, Strategy)> = actions
            .iter()
            .filter_map(|a| {
                if let Action::Replace { instance, old, new, strategy, .. } = a {
                    Some((instance, old, new, *strategy))
                } else {
                    None
                }
            })
            .collect();
        for chunk in replaces.chunks(batch) {
            let recreate = chunk.iter().any(|(_, _, _, s)| *s == Strategy::Recreate);
            if recreate {
                // Cannot run twice: old out of traffic and stopped first.
                for (i, old, _, _) in chunk {
                    self.register(&Self::old_assignment(app, i, old), false).await?;
                }
                self.leave_traffic(app).await?;
                for (_, old, _, _) in chunk {
                    self.take_down(app, old).await?;
                }
            }
            let ups = futures::future::join_all(chunk.iter().map(|(i, _, n, _)| self.bring_up(app, i, n))).await;
            let mut first_err = None;
            let mut up = Vec::new();
            let mut new_ids = Vec::new();
            for (r, (i, old, _, _)) in ups.into_iter().zip(chunk.iter()) {
                match r {
                    Ok((asg, id)) => {
                        new_ids.push((asg.clone(), id));
                        up.push((asg, *i, *old));
                    }
                    Err(e) => first_err = first_err.or(Some(e)),
                }
            }
            // Healthy new instances take traffic first…
            for (asg, _, _) in &up {
                self.register(asg, true).await?;
            }
            if let Err(e) = self.lb_update(app).await {
                // The LB refused the config with the new instances (its file is unchanged):
                // undo as for a failed health check — the new ones leave the registry and
                // are removed, the old ones keep serving. (With `recreate` the old ones are
                // gone already, so the new ones stay.)
                if !recreate {
                    for (asg, id) in &new_ids {
                        self.register(asg, false).await?;
                        let grace = Duration::from_secs(2);
                        let client = self.client(&asg.host)?;
                        let _ = docker::stop_and_remove(client, &asg.host, id, grace).await;
                    }
                    return Err(format!("{e}; the new instances were removed, the old ones keep serving"));
                }
                return Err(e);
            }
            if let Some(e) = first_err {
                // …but a failed batch stops here: its old instances keep serving.
                return Err(e);
            }
            // …then the old ones leave traffic, and only then stop.
            if !recreate {
                for (_, i, old) in &up {
                    self.register(&Self::old_assignment(app, i, old), false).await?;
                }
                self.leave_traffic(app).await?;
                for (_, _, old) in &up {
                    self.take_down(app, old).await?;
                }
            }
            for (asg, i, old) in &up {
                let line = format!(
                    "{}: replaced {i} ({} → {}{})",
                    asg.host,
                    &old.container_id[..12.min(old.container_id.len())],
                    asg.host,
                    asg.port.map(|p| format!(":{p}")).unwrap_or_default()
                );
                self.say(line.clone());
                done.push(line);
            }
        }
        Ok(())
    }
}
