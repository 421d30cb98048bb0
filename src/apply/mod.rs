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

//!
//! Modules: [`settings`] (options, lock TTL, drain), [`effects`] (the trait every
//! effect goes through, and the real backends), [`rollout`] (one app's steps),
//! [`traffic`] (serving set, registry, LB, drain), [`records`] (etcd config keys and
//! the history), [`pin`] (rollback pins).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use tokio::sync::Mutex;

use crate::backend::etcd;
use crate::model::ObservedState;
use crate::placement::Assignment;
use crate::plan::Plan;
use crate::plan::instance::InstanceSpec;
use crate::secret::Secret;
use crate::spec::Env;

pub mod canary;
pub mod effects;
mod error;
#[cfg(test)]
mod memory;
pub mod pin;
pub mod records;
pub mod report;
pub mod rollout;
pub mod session;
pub mod settings;
#[cfg(test)]
mod tests;
mod traffic;

pub use effects::{Backends, Check, Effects, LogTail};
pub use error::StepError;
pub use records::HistoryKind;
pub use session::{Hooks, Outcome, Pinning, Request, RunError, Target, observe_and_plan, run};
pub use settings::{Drain, LB_DRAIN, LOCK_TTL, Options, lb_drain, lock, lock_ttl};

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

/// Progress lines (stderr): plain lines, one per step, in CI and on a terminal.
pub type Progress = Arc<dyn Fn(String) + Send + Sync>;

/// What one apply works on.
pub struct Job<'a> {
    pub env: &'a Env,
    pub files: Arc<BTreeMap<String, Vec<u8>>>,
    pub plan: &'a Plan,
    /// Real specs of the containers to create, by spec-hash (`plan::plan_with_specs`).
    pub specs: &'a BTreeMap<String, InstanceSpec>,
    /// What the plan was made against.
    pub observed: &'a ObservedState,
    /// The environment's resolved secrets: masked in whatever apply reports of an
    /// app's own output.
    pub secrets: &'a BTreeMap<String, Secret>,
}

/// The state of one apply, shared by the apps it works on concurrently.
struct Shared<'a, E> {
    env: &'a Env,
    files: Arc<BTreeMap<String, Vec<u8>>>,
    plan: &'a Plan,
    specs: &'a BTreeMap<String, InstanceSpec>,
    opts: Options,
    progress: Progress,
    fx: &'a E,
    /// Secret values, masked in container output.
    secret_values: Vec<String>,
    /// Instances that should receive traffic now.
    serving: Mutex<BTreeSet<Assignment>>,
    /// Serialises LB writes and reloads.
    lb_lock: Mutex<()>,
    /// Wait between an LB reload taking instances out of traffic and stopping them.
    drain: Drain,
    /// The LBs this apply has reloaded: from then on each runs what its config says.
    lb_reloaded: std::sync::Mutex<BTreeSet<String>>,
    /// Where the instances' milestones are recorded (`apply --report`).
    timeline: Option<Arc<report::Timeline>>,
    /// Per host, `parallelism` permits for a new container's Docker calls (image check,
    /// create with its files, start): apps of a level run at once and each creates up to
    /// `parallelism` instances, so without this a host's daemon got up to `parallelism`²
    /// of them at once. Not held during the health wait.
    docker_slots: BTreeMap<String, tokio::sync::Semaphore>,
}

/// Apply `plan` (made against `observed`, while holding `guard` from [`lock`]) with
/// the real `specs` from `plan::plan_with_specs`. Releases the lock at the end. With a
/// `timeline`, every instance's milestones are recorded in it (`apply --report`).
///
/// # Errors
/// Only when nothing could be done (etcd unreachable, a bad setting); failures
/// of apps, hosts, etcd writes or the LB are in the report, with everything
/// independent of them done.
pub async fn apply(
    guard: Option<etcd::LockGuard>,
    job: Job<'_>,
    opts: Options,
    progress: Progress,
    timeline: Option<Arc<report::Timeline>>,
) -> Result<Report, ApplyError> {
    // A way out before any work still frees the lock at once (else it blocks the next
    // apply until its lease expires).
    let drain = match lb_drain(job.env) {
        Ok(d) => d,
        Err(e) => return Err(release_on_error(guard, e).await),
    };
    let mut fx = match Backends::connect(job.env, job.plan, opts.timeout, guard.as_ref()).await {
        Ok(fx) => fx,
        Err(e) => return Err(release_on_error(guard, e).await),
    };
    fx.pull(job.env, job.plan, job.specs, &progress).await;
    let mut report = execute_recorded(&fx, job, opts, drain, progress, timeline).await;
    drop(fx);
    if let Some(g) = guard
        && let Err(e) = g.release().await
    {
        report.errors.push(format!("releasing the apply lock: {e}"));
    }
    Ok(report)
}

/// Walk `job.plan` through `fx`: etcd config first, apps level by level, the rest of
/// the registry and the final LB file, then the history record. Never fails as a
/// whole: what went wrong is in the report.
pub async fn execute<E: Effects>(fx: &E, job: Job<'_>, opts: Options, drain: Drain, progress: Progress) -> Report {
    execute_recorded(fx, job, opts, drain, progress, None).await
}

/// [`execute`], recording every instance's milestones in `timeline`.
pub async fn execute_recorded<E: Effects>(
    fx: &E,
    job: Job<'_>,
    opts: Options,
    drain: Drain,
    progress: Progress,
    timeline: Option<Arc<report::Timeline>>,
) -> Report {
    let Job { env, files, plan, specs, observed, secrets } = job;
    let started = Instant::now();
    let secret_values: Vec<String> = secrets.values().map(|s| s.expose().to_string()).collect();
    let shared = Shared {
        env,
        files,
        plan,
        specs,
        opts,
        progress,
        fx,
        secret_values,
        serving: Mutex::new(traffic::initial_serving(env, plan, observed)),
        lb_lock: Mutex::new(()),
        drain,
        lb_reloaded: std::sync::Mutex::new(BTreeSet::new()),
        timeline,
        docker_slots: env
            .spec
            .hosts
            .iter()
            .map(|h| (h.name.clone(), tokio::sync::Semaphore::new(opts.parallelism.max(1))))
            .collect(),
    };
    let mut report = Report::default();

    // Config center and desired copies first: apps may read their config at start.
    if let Some(e) = shared.etcd_non_registry().await {
        report.errors.push(e);
    }

    // Images were pulled before anything stopped: an app whose pull failed is not touched.
    let pull_failed = fx.pull_failures();

    // Apps, dependency level by level.
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for level in levels(env, plan) {
        let runs = level.iter().map(|app| {
            let blocked: Vec<&str> = env
                .apps
                .get(app)
                .map(|a| a.spec.depends_on.iter().filter(|d| failed.contains(*d)).map(String::as_str).collect())
                .unwrap_or_default();
            let shared = &shared;
            let pull_failed = pull_failed.get(app);
            async move {
                if let Some(e) = pull_failed {
                    return (app.clone(), AppOutcome { done: vec![], error: Some(e.clone()) });
                }
                if !blocked.is_empty() {
                    let error = Some(format!("not started: dependency {} failed", blocked.join(", ")));
                    return (app.clone(), AppOutcome { done: vec![], error });
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

    // Registry entries of untouched instances, and the final LB file.
    if let Err(e) = shared.locked() {
        // Another apply may be at work: write nothing more (not even the record).
        report.errors.push(e.to_string());
    } else {
        if let Some(e) = shared.etcd_registry_rest(&failed).await {
            report.errors.push(e);
        }
        report.errors.extend(shared.final_lb(failed.is_empty()).await);
        match shared.locked() {
            Ok(()) => shared.record(&mut report, started).await,
            Err(e) => report.errors.push(format!("not recorded in the history: {e}")),
        }
    }
    report
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

impl<E: Effects> Shared<'_, E> {
    fn say(&self, s: String) {
        (self.progress)(s);
    }

    /// Record that `slot` reached `m` (`apply --report`).
    fn mark(&self, m: report::Milestone, slot: &Assignment) {
        if let Some(t) = &self.timeline {
            t.mark(m, slot);
        }
    }

    /// `Err` once the apply lock's lease can no longer be proven alive (etcd unreachable,
    /// or this process stalled longer than the TTL): another apply may hold the lock
    /// now, so nothing more may be written. (etcd writes are fenced besides: one made
    /// after the lock was lost fails in etcd itself, whatever this saw just before.)
    fn locked(&self) -> Result<(), StepError> {
        match self.fx.lock_lost() {
            Some(key) => Err(StepError::LockLost { key }),
            None => Ok(()),
        }
    }
}
