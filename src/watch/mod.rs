//! `reconcile watch`: keep converging (Argo CD's auto-sync and self-heal, kube-runtime's
//! level-triggered controller).
//!
//! Every run is the same, whatever triggered it: load the repo, take the apply lock,
//! observe everything, plan, apply — through the same code as `reconcile apply`.
//! Triggers only decide *when*: file events in a local checkout, Docker events from
//! every host (managed containers that die, are removed, are OOM-killed), health
//! transitions, back-off expiry and a periodic resync (which also polls a remote repo).
//! A burst of triggers coalesces into one run ([`schedule::next_batch`]).
//!
//! - Self-healing: a missing or stopped instance is in the plan like any drift.
//!   Instances healed again and again are held back with exponential back-off
//!   ([`schedule::Backoff`], passed to the planner as its `hold` set).
//! - Health: [`health::monitor`] probes running instances and writes health marks to
//!   etcd; the planner keeps marked instances out of the registry and the LB.
//! - Safety: only the leader acts (a lease-held `<prefix>/<env>/watch-leader` key; the
//!   others stand by and take over within the lease TTL); each run takes the apply
//!   lock, so watch never interleaves with a manual `apply`; `dry_run` only reports.
//! - Notifications ([`notify`]): heals, crash loops, unhealthy instances, failed runs,
//!   drift in a dry run and their recovery go to the environment's targets, repeats
//!   de-duplicated, delivered in the background (never delaying a run).
//! - Shutdown: the current run finishes, the leader key is released, `run` returns.

mod canary;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::apply;
use crate::backend::{docker, etcd};
use crate::model::{InstanceId, Pin};
use crate::model::{ObservedState, keys};
use crate::notify::EventKind;
use crate::plan::{self, Action, Plan, Reason};
use crate::spec::{Env, Origin};
use schedule::{Backoff, HealthTracker, Trigger};

/// What one run works from: the environment as the repo says now.
pub type Snapshot = apply::Target;

/// Reads the repo (fetching a remote) and validates the environment, at the watched ref,
/// or at the given commit (a rollback's pin). Blocking.
pub type Loader = Arc<dyn Fn(Option<String>) -> anyhow::Result<Snapshot> + Send + Sync>;

/// Knobs of `watch`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Periodic resync (and remote poll) interval.
    pub interval: Duration,
    /// Quiet time that closes a burst of triggers.
    pub debounce: Duration,
    /// Longest a burst can delay a run.
    pub max_delay: Duration,
    /// Report drift, change nothing (no lock, no health marks).
    pub dry_run: bool,
    /// Where to serve `/metrics` and `/healthz`.
    pub metrics_addr: Option<SocketAddr>,
    /// A local checkout to watch for file changes.
    pub watch_path: Option<PathBuf>,
    pub apply: apply::Options,
    pub observe: crate::observe::Options,
    /// Crash-loop back-off: first wait, longest wait.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Health: successes in a row to come back, and the least time out of traffic.
    pub health_rise: u32,
    pub health_hold: Duration,
}

/// Why `watch` stopped (it only stops on its own for bad input at start).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0:#}")]
    Load(anyhow::Error),
    #[error("metrics address {addr}: {cause}")]
    Metrics { addr: SocketAddr, cause: std::io::Error },
}

/// Run until `shutdown` resolves. The first load must succeed (bad input at start is an
/// error, exit 1); later failures are logged, counted and retried.
///
/// # Errors
/// The repo cannot be loaded at start, or the metrics address cannot be bound.
pub async fn run(
    cfg: Config,
    load: Loader,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WatchError> {
    let first = {
        let load = Arc::clone(&load);
        tokio::task::spawn_blocking(move || load(None)).await.map_err(|e| WatchError::Load(e.into()))?
    }
    .map_err(WatchError::Load)?;
    let env_name = first.env.name.clone();
    let m: metrics::Shared =
        Arc::new(std::sync::Mutex::new(metrics::Metrics { env: env_name.clone(), ..metrics::Metrics::default() }));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |rx: &watch::Receiver<bool>| *rx.borrow();
    if let Some(addr) = cfg.metrics_addr {
        let mut rx = stop_rx.clone();
        let (bound, _task) = metrics::serve(addr, Arc::clone(&m), async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await
        .map_err(|cause| WatchError::Metrics { addr, cause })?;
        tracing::info!(%bound, "serving /metrics, /healthz and the status page (/, /status.json)");
    }

    let (notes, _notes_task) = notify::Notes::start(&env_name);
    notes.targets(&first);
    let backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max, Duration::from_secs(600));
    let mut w = Watcher {
        cfg,
        load,
        metrics: m,
        backoff,
        seen: BTreeSet::new(),
        env_name,
        hosts: None,
        pin: None,
        deaths: schedule::Deaths::new(Duration::from_secs(60)),
        probe_clients: BTreeMap::new(),
        notes,
        looping_told: BTreeSet::new(),
        canary_held: canary::Held::new(),
    };
    let mut stop = stop_rx.clone();
    loop {
        if stopped(&stop) {
            return Ok(());
        }
        // Leadership (only with etcd: without it there is no shared place to elect in).
        let leader = match &first.env.spec.etcd {
            Some(spec) if !w.cfg.dry_run => {
                tokio::select! {
                    g = campaign(spec, &w.env_name) => Some(g),
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
            }
            _ => None,
        };
        if let Ok(mut mm) = w.metrics.lock() {
            mm.leader = true;
        }
        w.lead(&first.env, leader.as_ref(), stop_rx.clone()).await;
        if let Ok(mut mm) = w.metrics.lock() {
            mm.leader = false;
        }
        if let Some(g) = leader
            && let Err(e) = g.release().await
        {
            tracing::warn!(error = %e, "releasing the watch leader key (it expires with its lease)");
        }
        if stopped(&stop) {
            tracing::info!("stopped");
            return Ok(());
        }
        tracing::warn!("lost the watch leadership; standing by");
    }
}

/// Wait until this process holds the leader key (retrying through etcd outages).
async fn campaign(spec: &crate::spec::types::EtcdSpec, env: &str) -> etcd::LockGuard {
    let ttl = apply::lock_ttl();
    let holder = etcd::current_holder("reconcile watch");
    let key = keys::watch_leader(&spec.prefix, env);
    loop {
        let attempt = async {
            let client = etcd::connect(spec, Duration::from_secs(10)).await?;
            let mut say = |h: &etcd::Holder| {
                tracing::info!(leader = %h, "standing by: another watcher leads this environment");
            };
            etcd::acquire_lock_key(&client, key.clone(), &holder, ttl, Duration::from_secs(3600), &mut say).await
        };
        match attempt.await {
            Ok(g) => {
                tracing::info!(key, "leading: this watcher acts for the environment");
                return g;
            }
            Err(etcd::EtcdError::LockTimeout { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot campaign for the watch leadership; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

struct Watcher {
    cfg: Config,
    load: Loader,
    metrics: metrics::Shared,
    backoff: Backoff,
    /// Instances seen in the last observation (a missing one of these is a heal).
    seen: BTreeSet<String>,
    env_name: String,
    /// Docker clients for command probes, by host (connected once, kept across runs).
    probe_clients: BTreeMap<String, docker::Client>,
    /// Recent deaths per instance (crash-loop reports).
    deaths: schedule::Deaths,
    /// The hosts of the last loaded snapshot (to follow host changes in the repo).
    hosts: Option<Vec<crate::spec::types::HostSpec>>,
    /// The rollback pin seen by the last run (logged when it changes).
    pin: Option<crate::model::Pin>,
    /// Notifications.
    notes: notify::Notes,
    /// Instances told as crash-looping and not yet told recovered.
    looping_told: BTreeSet<String>,
    /// Apps whose canary this watch aborted: no canary is started for them again until
    /// the commit or the app's spec changes (`canary::Held`).
    canary_held: canary::Held,
}

impl Watcher {
    /// Act as the leader until `stop` or the leadership is lost.
    async fn lead(&mut self, env: &Env, leader: Option<&etcd::LockGuard>, mut stop: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::channel::<Trigger>(1024);
        let mut tasks = Vec::new();
        // Docker events, one stream per host, reconnecting; redone when the repo's hosts change.
        let mut watched_hosts = env.spec.hosts.clone();
        let (env_name, shared) = (self.env_name.clone(), Arc::clone(&self.metrics));
        let spawn_events = |hosts: &[crate::spec::types::HostSpec]| -> Vec<tokio::task::JoinHandle<()>> {
            hosts
                .iter()
                .map(|h| tokio::spawn(docker_events(h.clone(), env_name.clone(), tx.clone(), Arc::clone(&shared))))
                .collect()
        };
        let mut event_tasks = spawn_events(&watched_hosts);
        // Periodic resync (first one at once: converge on start).
        {
            let (tx, every) = (tx.clone(), self.cfg.interval);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if tx.send(Trigger::Resync).await.is_err() {
                        return;
                    }
                }
            }));
        }
        // File events in a local checkout.
        let _repo_watcher = self.cfg.watch_path.as_ref().and_then(|p| match repo_events(p, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot watch the repo for changes; relying on --interval");
                None
            }
        });
        // Health monitor.
        let (targets_tx, targets_rx) = watch::channel(Vec::new());
        if !self.cfg.dry_run {
            let tracker = HealthTracker::new(
                self.cfg.health_rise,
                self.cfg.health_hold,
                (self.cfg.health_hold * 8).max(Duration::from_secs(60)),
                Duration::from_secs(120),
            );
            tasks.push(tokio::spawn(health::monitor(
                Arc::new(env.clone()),
                targets_rx,
                tracker,
                tx.clone(),
                Arc::clone(&self.metrics),
                self.cfg.observe.timeout,
                self.notes.clone(),
            )));
        }
        // The leader gauge (and the status page) says "standing by" as soon as the lease is
        // lost, even in the middle of a run; another watcher may lead from then on.
        if let Some(g) = leader {
            let (lost, shared) = (g.when_lost(), Arc::clone(&self.metrics));
            tasks.push(tokio::spawn(async move {
                lost.await;
                if let Ok(mut m) = shared.lock() {
                    m.leader = false;
                }
            }));
        }
        let mut wake: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let lost = async {
                match leader {
                    Some(g) => g.when_lost().await,
                    None => std::future::pending().await,
                }
            };
            let batch = tokio::select! {
                b = schedule::next_batch(&mut rx, self.cfg.debounce, self.cfg.max_delay) => b,
                _ = stop.wait_for(|s| *s) => None,
                // Waiting for work while the lease runs out: step down now, not at the next trigger.
                () = lost => None,
            };
            let Some(batch) = batch else { break };
            if leader.is_some_and(etcd::LockGuard::lost) {
                break;
            }
            if let Ok(mut m) = self.metrics.lock() {
                for t in &batch {
                    *m.triggers.entry(t.kind()).or_default() += 1;
                }
            }
            let now = Instant::now();
            for t in &batch {
                if let Trigger::Docker { instance, container, action, .. } = t
                    && (action == "die" || action == "oom")
                    && !instance.is_empty()
                {
                    let n = self.deaths.record(instance, now);
                    if n >= schedule::CRASH_LOOP_DEATHS {
                        tracing::warn!(
                            instance,
                            container,
                            deaths = n,
                            window = ?self.deaths.window,
                            "crash-looping: restarts are backed off (see `reconcile status` for restarts and uptime)"
                        );
                        let app = InstanceId::parse(instance).ok().map(|i| i.app);
                        let message = format!(
                            "{instance} died {n} times within {:?}: its restarts are backed off",
                            self.deaths.window
                        );
                        self.notes.tell(
                            vec![self.notes.event(EventKind::CrashLoop, app.as_deref(), Some(instance), message)],
                            true,
                        );
                        self.looping_told.insert(instance.clone());
                    }
                }
            }
            if let Ok(mut m) = self.metrics.lock() {
                m.crash_looping = self.deaths.looping(now).len() as u64;
            }
            let kinds: BTreeSet<&str> = batch.iter().map(Trigger::kind).collect();
            tracing::info!(triggers = batch.len(), kinds = ?kinds, "run");
            let next_wake = self.run_once(&targets_tx).await;
            self.tell_loops_ended();
            if let Some(hosts) = self.hosts.take()
                && hosts != watched_hosts
            {
                tracing::info!("the environment's hosts changed: following the new hosts' Docker events");
                self.probe_clients.clear();
                for t in event_tasks.drain(..) {
                    t.abort();
                }
                event_tasks = spawn_events(&hosts);
                watched_hosts = hosts;
            }
            // A back-off's end or a retry wakes the loop once more.
            if let Some((at, why)) = next_wake {
                if let Some(h) = wake.take() {
                    h.abort();
                }
                let tx = tx.clone();
                wake = Some(tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let _ = tx.send(why).await;
                }));
            }
            if stop.borrow().to_owned() {
                break;
            }
        }
        for t in tasks.into_iter().chain(event_tasks).chain(wake) {
            t.abort();
        }
    }

    /// One full run. Returns when the loop must run again without a trigger, and why:
    /// a held instance's back-off ends (or, when the lock was busy, a retry after 5 s), or
    /// this run failed and is retried after [`schedule::retry_delay`].
    async fn run_once(&mut self, targets: &watch::Sender<Vec<health::Target>>) -> Option<(Instant, Trigger)> {
        let t0 = Instant::now();
        let (result, wake) = self.converge(targets).await;
        let secs = t0.elapsed().as_secs_f64();
        let mut failures = 0;
        if let Ok(mut m) = self.metrics.lock() {
            *m.runs.entry(result.as_str()).or_default() += 1;
            match result {
                RunResult::Failed => m.consecutive_failures += 1,
                RunResult::Busy => {}
                RunResult::Ok | RunResult::DryRun => m.consecutive_failures = 0,
            }
            failures = m.consecutive_failures;
            m.run_seconds_sum += secs;
            m.run_seconds_last = secs;
        }
        tracing::info!(result = result.as_str(), seconds = secs, "run done");
        page::run_done(&self.metrics, result);
        let retry = match result {
            RunResult::Failed => {
                let cap = self.cfg.interval.min(self.cfg.backoff_max);
                let delay = schedule::retry_delay(failures.max(1), self.cfg.backoff_base, cap);
                tracing::info!(?delay, failures, "retrying");
                Some((Instant::now() + delay, Trigger::Retry))
            }
            RunResult::Ok | RunResult::Busy | RunResult::DryRun => None,
        };
        let wake = wake.map(|at| (at, Trigger::BackoffEnded));
        match (wake, retry) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Crash loops that ended (fewer deaths in the window, or the instance is gone)
    /// are told as recovered.
    fn tell_loops_ended(&mut self) {
        let looping: BTreeSet<String> = self.deaths.looping(Instant::now()).into_iter().collect();
        let ended: Vec<String> = self.looping_told.difference(&looping).cloned().collect();
        let events = ended
            .iter()
            .map(|i| {
                let app = InstanceId::parse(i).ok().map(|x| x.app);
                let message = format!("{i} no longer crash-looping");
                self.notes.event(EventKind::Recovered, app.as_deref(), Some(i), message)
            })
            .collect();
        self.notes.tell(events, true);
        self.looping_told = looping.intersection(&self.looping_told).cloned().collect();
    }

    /// A failed run: logged, counted and told (`apply_failed` for the environment).
    fn fail(&self, stage: &'static str, e: impl std::fmt::Display) -> (RunResult, Option<Instant>) {
        let message = format!("watch run failed at {stage}: {e}");
        self.notes.tell(vec![self.notes.event(EventKind::ApplyFailed, None, None, message)], true);
        self.failed(stage, e)
    }

    /// A failed run, logged and counted (the caller told what failed).
    fn failed(&self, stage: &'static str, e: impl std::fmt::Display) -> (RunResult, Option<Instant>) {
        tracing::error!(stage, error = %e, "watch run failed; retrying with back-off");
        page::failed(&self.metrics, stage, &e.to_string());
        if let Ok(mut m) = self.metrics.lock() {
            *m.failures.entry(stage).or_default() += 1;
        }
        (RunResult::Failed, None)
    }

    /// Load, then one apply through [`apply::run`] (lock → pin → observe → plan → this
    /// run's hooks → execute → record → unlock).
    async fn converge(&mut self, targets: &watch::Sender<Vec<health::Target>>) -> (RunResult, Option<Instant>) {
        let snap = match self.load(None).await {
            Ok(s) => s,
            Err(e) => return self.fail("load", e),
        };
        self.notes.targets(&snap);
        page::secrets(&self.metrics, &snap.secrets);
        let progress: apply::Progress = Arc::new(|line: String| tracing::info!("{line}"));
        let mut opts = self.cfg.apply;
        opts.kind = apply::HistoryKind::Watch;
        let req = apply::Request {
            opts,
            observe: self.cfg.observe,
            pinning: apply::Pinning::Follow,
            lock: !self.cfg.dry_run,
        };
        let now = Instant::now();
        let mut hooks = RunHooks { w: self, targets, now, next_wake: None, heals: Vec::new(), held: false };
        let result = apply::run(snap, req, &mut hooks, progress).await;
        let RunHooks { next_wake, heals, held, .. } = hooks;
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                if let Some(holder) = e.busy() {
                    tracing::info!(%holder, "the apply lock is held; this run is skipped");
                    return (RunResult::Busy, Some(Instant::now() + Duration::from_secs(5)));
                }
                return self.fail(e.stage(), e);
            }
        };
        let (p, target) = (&outcome.plan, &outcome.target);
        let Some(report) = &outcome.report else {
            if p.summary.is_empty() {
                if !held {
                    self.tell_ok(p, &target.origin, false);
                }
                self.synced(&target.origin);
                return self.canary_step(outcome, next_wake).await;
            }
            return (RunResult::DryRun, next_wake);
        };
        let now = Instant::now();
        for i in &heals {
            let failed = p.actions.iter().any(|a| {
                matches!(a, Action::Create { instance, app, .. } | Action::Start { instance, app, .. }
                    if instance == i && report.apps.get(app).is_some_and(|o| o.error.is_some()))
            });
            let wait = self.backoff.record(i, now);
            tracing::info!(instance = i, failed, next_backoff = ?wait, "healed");
            if !failed {
                let created = p.actions.iter().any(|a| matches!(a, Action::Create { instance, .. } if instance == i));
                let how = if created {
                    "re-created (its container was gone)"
                } else {
                    "restarted (its container had stopped)"
                };
                let app = InstanceId::parse(i).ok().map(|x| x.app);
                self.notes
                    .tell(vec![self.notes.event(EventKind::Heal, app.as_deref(), Some(i), format!("{i} {how}"))], true);
            }
        }
        if let Ok(mut m) = self.metrics.lock() {
            m.heals += heals.len() as u64;
        }
        if !report.ok() {
            for (app, o) in &report.apps {
                if let Some(e) = &o.error {
                    tracing::error!(app, error = e, "app failed");
                }
            }
            let errors = report.errors.join("; ");
            let mut told: Vec<crate::notify::Event> = report
                .apps
                .iter()
                .filter_map(|(app, o)| {
                    o.error.as_ref().map(|e| self.notes.event(EventKind::ApplyFailed, Some(app), None, e.to_string()))
                })
                .collect();
            if !report.errors.is_empty() {
                told.push(self.notes.event(EventKind::ApplyFailed, None, None, errors.clone()));
            }
            for e in &mut told {
                e.summary = p.summary.to_string();
            }
            self.notes.tell(told, true);
            return self.failed("apply", format!("apply incomplete: {} {errors}", p.summary));
        }
        if !held {
            self.tell_ok(p, &target.origin, true);
        }
        self.synced(&target.origin);
        let wake = self.backoff.held(Instant::now()).values().min().copied().or(next_wake);
        self.canary_step(outcome, wake).await
    }

    /// Load the repo (at `commit`, else the watched ref) off the async threads.
    async fn load(&self, commit: Option<String>) -> Result<Snapshot, String> {
        let load = Arc::clone(&self.load);
        match tokio::task::spawn_blocking(move || load(commit)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `None` (apply `snap`), or the snapshot of the commit a rollback pinned the
    /// environment to.
    async fn follow_pin(&mut self, pin: Option<&Pin>, snap: &Snapshot) -> Result<Option<Snapshot>, String> {
        if let Ok(mut m) = self.metrics.lock() {
            m.pinned = pin.is_some();
        }
        if pin != self.pin.as_ref() {
            match pin {
                Some(p) => tracing::warn!(
                    commit = apply::pin::short(&p.commit),
                    reference = p.reference,
                    by = p.who,
                    since = p.time,
                    "pinned by a rollback: converging to the pinned commit, not the repo's head \
                     (`reconcile rollback --release` ends it)"
                ),
                None => tracing::info!("the rollback pin was released: following the repo again"),
            }
            self.pin = pin.cloned();
        }
        let Some(pin) = pin else { return Ok(None) };
        if snap.origin.commit.as_deref() == Some(pin.commit.as_str()) && !snap.origin.dirty {
            return Ok(None);
        }
        let pinned = self.load(Some(pin.commit.clone())).await;
        pinned.map(Some).map_err(|e| format!("loading the pinned commit {}: {e}", pin.commit))
    }

    /// A run that converged: `apply_succeeded` for the environment, which resolves
    /// every failure told before. Sent on its own (not only as a resolution) when this
    /// run applied a commit other than the last one synced.
    fn tell_ok(&self, p: &Plan, origin: &Origin, applied: bool) {
        let last = self.metrics.lock().ok().and_then(|m| m.last_sync_commit.clone());
        let new_commit = applied && last.as_deref() != Some(origin.commit.as_deref().unwrap_or("(not in git)"));
        let what = origin.commit.as_deref().map(apply::pin::short).unwrap_or("a directory outside Git");
        let mut e = self.notes.event(EventKind::ApplySucceeded, None, None, format!("in sync at {what}"));
        e.summary = p.summary.to_string();
        e.commit.clone_from(&origin.commit);
        e.reference = origin.reference.clone().unwrap_or_default();
        self.notes.tell(vec![e], !new_commit);
    }

    fn synced(&self, origin: &Origin) {
        if let Ok(mut m) = self.metrics.lock() {
            m.last_sync_commit = Some(origin.commit.clone().unwrap_or_else(|| "(not in git)".into()));
            m.last_sync_time =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64());
        }
    }

    async fn update_targets(
        &mut self,
        env: &Env,
        observed: &ObservedState,
        targets: &watch::Sender<Vec<health::Target>>,
    ) {
        if self.cfg.dry_run {
            return;
        }
        // Docker clients only for hosts with command probes, connected once.
        for h in &env.spec.hosts {
            if self.probe_clients.contains_key(&h.name) {
                continue;
            }
            let needs = observed.hosts.get(&h.name).is_some_and(|o| {
                o.instances
                    .iter()
                    .any(|i| env.apps.get(&i.app).and_then(|a| a.spec.health.as_ref()).is_some_and(|x| x.cmd.is_some()))
            });
            if needs && let Ok(c) = docker::connect(h, self.cfg.observe.timeout).await {
                self.probe_clients.insert(h.name.clone(), c);
            }
        }
        let _ = targets.send(health::targets(env, observed, &self.probe_clients));
    }
}

/// How one watch run ended (the `result` label of `reconcile_watch_runs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Converged (or nothing to do).
    Ok,
    /// Another apply held the lock: skipped, retried shortly.
    Busy,
    /// Something failed: retried with back-off.
    Failed,
    /// `--dry-run` found drift and changed nothing.
    DryRun,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::DryRun => "dry_run",
        }
    }
}

/// Watch's part of one apply: follow the pin, hold crash-looping instances back,
/// update the probe targets and metrics from the observation, and print instead of
/// applying in a dry run.
struct RunHooks<'w> {
    w: &'w mut Watcher,
    targets: &'w watch::Sender<Vec<health::Target>>,
    now: Instant,
    /// When the earliest back-off of a held instance ends.
    next_wake: Option<Instant>,
    /// Instances this run brings back.
    heals: Vec<String>,
    /// Crash-looping instances were held back (so the run did not converge them).
    held: bool,
}

impl apply::Hooks for RunHooks<'_> {
    async fn follow_pin(&mut self, pin: Option<&Pin>, target: &Snapshot) -> Result<Option<Snapshot>, String> {
        self.w.follow_pin(pin, target).await
    }

    fn hold(&mut self, target: &Snapshot) -> BTreeSet<String> {
        let desired: BTreeSet<String> = target
            .env
            .apps
            .iter()
            .flat_map(|(n, a)| (0..a.spec.replicas).map(move |i| InstanceId::new(n.clone(), i).to_string()))
            .collect();
        self.w.backoff.retain(|i| desired.contains(i));
        let hold: BTreeSet<String> = self.w.backoff.held(self.now).into_keys().collect();
        for i in &hold {
            tracing::warn!(instance = i, "crash-looping: held back until its back-off ends");
        }
        self.next_wake = self.w.backoff.held(self.now).values().min().copied();
        self.held = !hold.is_empty();
        for app in canary::release(&mut self.w.canary_held, target) {
            tracing::info!(
                app,
                "the commit or the app's spec changed since watch aborted its canary: canaries start again"
            );
        }
        hold
    }

    fn canary_mode(&mut self) -> crate::plan::canary::Mode {
        canary::run_mode(&self.w.canary_held)
    }

    async fn confirm(&mut self, target: &Snapshot, p: &Plan, observed: &ObservedState) -> Result<bool, String> {
        let w = &mut *self.w;
        w.hosts = Some(target.env.spec.hosts.clone());
        w.update_targets(&target.env, observed, self.targets).await;
        page::observed(&w.metrics, &target.env, &target.origin, p, observed, w.pin.as_ref(), w.cfg.observe.timeout);
        if let Ok(mut m) = w.metrics.lock() {
            m.drift_actions = p.actions.len() as u64;
            m.backoff = w.backoff.held(self.now).len() as u64;
            m.instances = BTreeMap::new();
            for i in observed.hosts.values().flat_map(|h| h.instances.iter()) {
                let state = serde_json::to_value(i.state).ok().and_then(|v| v.as_str().map(String::from));
                *m.instances.entry(state.unwrap_or_else(|| "unknown".into())).or_default() += 1;
            }
        }
        self.heals = heals(&p.actions, &w.seen);
        w.seen = observed.hosts.values().flat_map(|h| h.instances.iter().map(|i| i.instance.clone())).collect();
        w.seen.extend(p.actions.iter().filter_map(|a| match a {
            Action::Create { instance, .. } => Some(instance.clone()),
            _ => None,
        }));
        if p.summary.is_empty() {
            if w.cfg.dry_run {
                let e = w.notes.event(EventKind::Recovered, None, None, "in sync with the repo again".into());
                w.notes.tell(vec![e], true);
            }
            return Ok(true);
        }
        if w.cfg.dry_run {
            tracing::warn!(summary = %p.summary, "drift (dry run: nothing changed)");
            let mut e = w.notes.event(EventKind::Drift, None, None, format!("drift: {}", p.summary));
            e.summary = p.summary.to_string();
            w.notes.tell(vec![e], true);
            eprint!("{}", plan::render::text(p, false));
            return Ok(false);
        }
        tracing::info!(summary = %p.summary, "applying");
        Ok(true)
    }
}

/// Instances a plan brings back: created because their container vanished (they were
/// seen before), or started because they stopped.
fn heals(actions: &[Action], seen: &BTreeSet<String>) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { instance, reason: Reason::Missing, .. } if seen.contains(instance) => {
                Some(instance.clone())
            }
            Action::Start { instance, .. } => Some(instance.clone()),
            _ => None,
        })
        .collect()
}

/// Docker events of one host, forever: each event of a managed container is a trigger;
/// a broken stream is reconnected (and followed by a resync, since events were missed).
async fn docker_events(
    host: crate::spec::types::HostSpec,
    env: String,
    tx: mpsc::Sender<Trigger>,
    metrics: metrics::Shared,
) {
    let mut first = true;
    loop {
        match docker::connect(&host, Duration::from_secs(10)).await {
            Ok(client) => {
                if !first {
                    let _ = tx.send(Trigger::Resync).await;
                }
                let mut events = std::pin::pin!(docker::container_events(&client, &host.name, &env));
                while let Some(e) = events.next().await {
                    match e {
                        Ok(ev) if ev.action == "start" => {
                            tracing::debug!(host = ev.host, container = ev.name, "container started");
                        }
                        Ok(ev) => {
                            tracing::info!(host = ev.host, container = ev.name, action = ev.action, "container event");
                            let t = Trigger::Docker {
                                host: ev.host,
                                container: ev.name,
                                instance: ev.instance,
                                action: ev.action,
                            };
                            if tx.send(t).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "docker event stream broke; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect for docker events; retrying"),
        }
        if let Ok(mut m) = metrics.lock() {
            *m.failures.entry("events").or_default() += 1;
        }
        first = false;
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Watch a local checkout (working tree and `.git`, minus object and lock churn):
/// any change is a [`Trigger::Repo`]. The returned watcher must be kept alive.
fn repo_events(path: &std::path::Path, tx: mpsc::Sender<Trigger>) -> ::notify::Result<::notify::RecommendedWatcher> {
    use ::notify::{EventKind, RecursiveMode, Watcher as _};
    let mut w = ::notify::recommended_watcher(move |res: ::notify::Result<::notify::Event>| {
        let Ok(ev) = res else { return };
        if !matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)) {
            return;
        }
        let relevant = ev.paths.iter().any(|p| {
            let s = p.to_string_lossy();
            !(s.contains("/.git/objects/") || s.ends_with(".lock") || s.contains("/target/"))
        });
        if relevant {
            let _ = tx.try_send(Trigger::Repo);
        }
    })?;
    w.watch(path, RecursiveMode::Recursive)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NewInstance, OldInstance};

    #[test]
    fn heals_are_re_creations_of_seen_instances_and_starts() {
        let new = NewInstance {
            host: "h".into(),
            address: "127.0.0.1".into(),
            port: None,
            container_name: "c".into(),
            spec_hash: "x".into(),
            spec: serde_json::Value::Null,
        };
        let old = OldInstance {
            host: "h".into(),
            container_id: "id".into(),
            container_name: "c".into(),
            port: None,
            spec_hash: "x".into(),
            state: crate::model::ContainerState::Exited,
        };
        let actions = vec![
            Action::Create { app: "a".into(), instance: "a-0".into(), reason: Reason::Missing, new: new.clone() },
            Action::Create { app: "a".into(), instance: "a-1".into(), reason: Reason::Missing, new },
            Action::Start { app: "b".into(), instance: "b-0".into(), reason: Reason::NotRunning, old },
        ];
        let seen: BTreeSet<String> = ["a-0".to_string()].into();
        assert_eq!(heals(&actions, &seen), vec!["a-0".to_string(), "b-0".to_string()]);
    }
}
