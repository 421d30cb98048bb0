//! One apply from start to end, the one entry point of `apply`, `rollback` and every
//! `watch` run: lock → pin → observe → plan → confirm (the caller's [`Hooks`]) →
//! pin (rollback) → execute → record → unlock. And [`observe_and_plan`], the
//! load-observe-plan path `plan` and `status` share with it.
//!
//! **Invariant:** the pin is read, checked and set, the world observed and the plan
//! made while holding the lock, so nothing changes between the plan that was confirmed
//! and the one executed; every way out releases the lock at once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use super::report::Timeline;
use super::{ApplyError, Job, Options, Progress, Report, pin};
use crate::backend::etcd;
use crate::model::{ObservedState, Pin};
use crate::observe::{self, ObserveError};
use crate::plan::instance::InstanceSpec;
use crate::plan::{self, Desired, Plan, PlanError};
use crate::secret::Secret;
use crate::spec::{Env, Origin};

/// A desired state to apply: one environment of a repo revision, with its secrets.
pub struct Target {
    pub env: Env,
    pub files: Arc<BTreeMap<String, Vec<u8>>>,
    pub origin: Origin,
    pub secrets: BTreeMap<String, Secret>,
}

impl Target {
    pub fn desired(&self) -> Desired<'_> {
        Desired {
            env: &self.env,
            files: Arc::clone(&self.files),
            origin: &self.origin,
            secrets: &self.secrets,
            digests: BTreeMap::new(),
        }
    }
}

/// What a rollback's pin (`apply::pin`) means for this apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// `apply`: a commit other than the pinned one is refused ([`ApplyError::Pinned`]).
    Refuse,
    /// `rollback`: once confirmed, the environment is pinned to the target's commit.
    Set,
    /// `watch`: [`Hooks::follow_pin`] says what to apply instead (the pinned commit).
    Follow,
}

/// The caller's part of an apply.
pub trait Hooks: Send {
    /// With [`Pinning::Follow`], under the lock: the target to apply given the pin
    /// (`None`: `target` itself).
    ///
    /// # Errors
    /// The pinned revision cannot be loaded.
    fn follow_pin(
        &mut self,
        pin: Option<&Pin>,
        target: &Target,
    ) -> impl Future<Output = Result<Option<Target>, String>> + Send {
        let _ = (pin, target);
        async { Ok(None) }
    }

    /// Instances to leave alone this time (watch: crash-looping ones in back-off).
    fn hold(&mut self, target: &Target) -> BTreeSet<String> {
        let _ = target;
        BTreeSet::new()
    }

    /// What the plan is made for: the normal plan, or a canary's promote or abort
    /// (`reconcile promote` / `abort`, watch's automatic ones).
    fn canary_mode(&mut self) -> plan::canary::Mode {
        plan::canary::Mode::Normal
    }

    /// The plan is made: `Ok(true)` to apply it, `Ok(false)` to stop without changing
    /// anything (a dry run).
    ///
    /// # Errors
    /// Why the caller refuses it (stale saved plan, not confirmed): nothing is changed.
    fn confirm(
        &mut self,
        target: &Target,
        plan: &Plan,
        observed: &ObservedState,
    ) -> impl Future<Output = Result<bool, String>> + Send;

    /// Where to record the instances' milestones (`apply --report`); `None`: nowhere.
    fn timeline(&self) -> Option<Arc<Timeline>> {
        None
    }
}

/// Why an apply stopped before executing. [`RunError::stage`] names the step.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Taking the lock failed (`ApplyError::Etcd(EtcdError::LockTimeout)`: held by another).
    #[error(transparent)]
    Lock(ApplyError),
    /// Reading or checking the pin failed, or it is pinned to another commit.
    #[error(transparent)]
    Pin(ApplyError),
    /// The pinned revision could not be loaded.
    #[error("{0}")]
    FollowPin(String),
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The caller refused the plan.
    #[error("{0}")]
    Refused(String),
    /// Setting a rollback's pin, or starting the execution, failed.
    #[error(transparent)]
    Apply(ApplyError),
}

impl RunError {
    /// The step that failed: `lock`, `pin`, `observe`, `plan`, `confirm`, `apply`.
    pub fn stage(&self) -> &'static str {
        match self {
            Self::Lock(_) => "lock",
            Self::Pin(_) | Self::FollowPin(_) => "pin",
            Self::Observe(_) => "observe",
            Self::Plan(_) => "plan",
            Self::Refused(_) => "confirm",
            Self::Apply(_) => "apply",
        }
    }

    /// The lock is held by another apply (a run that may simply be retried later).
    pub fn busy(&self) -> Option<&etcd::Holder> {
        match self {
            Self::Lock(ApplyError::Etcd(etcd::EtcdError::LockTimeout { holder, .. })) => Some(holder),
            _ => None,
        }
    }
}

/// How far an apply went.
pub struct Outcome {
    /// The target applied: the one given, or the pinned one ([`Pinning::Follow`]).
    pub target: Target,
    pub observed: ObservedState,
    pub plan: Plan,
    /// `None` when nothing was executed (nothing to do, or the hooks stopped it).
    pub report: Option<Report>,
    /// The pin this apply set ([`Pinning::Set`]).
    pub pinned: Option<Pin>,
}

/// What an apply needs besides its target.
#[derive(Clone, Copy)]
pub struct Request {
    pub opts: Options,
    pub observe: observe::Options,
    pub pinning: Pinning,
    /// Take the lock (everything but a dry run).
    pub lock: bool,
}

/// Observe the environment and plan `target` against it, without the lock (`plan`,
/// `status`); the rollback pin is read alongside the observation, over its etcd
/// connection (`observe::observe_with_pin`).
///
/// # Errors
/// A host, etcd or the LB file cannot be observed, the plan cannot be made, or the pin
/// cannot be read ([`RunError::Pin`]).
pub async fn observe_and_plan(
    target: &Target,
    opts: observe::Options,
) -> Result<(ObservedState, Plan, Option<Pin>), RunError> {
    let (mut observed, pin) = observe::observe_with_pin(&target.env, opts).await?;
    let (p, _) = plan_observed(target, &mut observed, opts, &BTreeSet::new(), &plan::canary::Mode::Normal).await?;
    let pin = pin.map_err(|e| RunError::Pin(e.into()))?;
    Ok((observed, p, pin))
}

/// Observe the environment and plan `target` against it for a canary `mode`
/// (`plan::plan_mode`), holding back `hold`.
///
/// # Errors
/// A host, etcd or the LB file cannot be observed, or the plan cannot be made (promote
/// or abort of an app without a running canary).
pub async fn observe_and_plan_mode(
    target: &Target,
    opts: observe::Options,
    hold: &BTreeSet<String>,
    mode: &plan::canary::Mode,
) -> Result<(ObservedState, Plan, BTreeMap<String, InstanceSpec>), RunError> {
    let mut observed = observe::observe(&target.env, opts).await?;
    let (p, specs) = plan_observed(target, &mut observed, opts, hold, mode).await?;
    Ok((observed, p, specs))
}

/// The digests `pull: always` needs, then the plan against `observed`.
async fn plan_observed(
    target: &Target,
    observed: &mut ObservedState,
    opts: observe::Options,
    hold: &BTreeSet<String>,
    mode: &plan::canary::Mode,
) -> Result<(Plan, BTreeMap<String, InstanceSpec>), RunError> {
    let digests = image_digests(&target.env, observed, opts).await?;
    let d = Desired { digests, ..target.desired() };
    let started = std::time::Instant::now();
    let planned = plan::plan_mode(&d, observed, hold, mode)?;
    tracing::debug!(env = %target.env.name, elapsed = ?started.elapsed(), "planned");
    Ok(planned)
}

/// `pull: always`: the tags' current digests (`observe::image_digests`), or none with
/// `--offline-images` (a warning naming the apps left unchecked).
async fn image_digests(
    env: &Env,
    observed: &mut ObservedState,
    opts: observe::Options,
) -> Result<BTreeMap<String, String>, ObserveError> {
    if !opts.offline_images {
        return observe::image_digests(env, observed, opts).await;
    }
    let always: Vec<&str> = env
        .apps
        .values()
        .filter(|a| a.spec.pull == crate::spec::types::PullPolicy::Always)
        .map(|a| a.spec.name.as_str())
        .collect();
    if !always.is_empty() {
        eprintln!(
            "warning: --offline-images: no registry digest check for `pull: always` app(s) {}",
            always.join(", ")
        );
    }
    Ok(BTreeMap::new())
}

/// Apply `target`: lock → pin → observe → plan → `hooks.confirm` → pin (rollback) →
/// execute → record → unlock.
///
/// # Errors
/// Anything before the execution ([`RunError`]); the lock is released first. Failures
/// during the execution are in the outcome's report.
pub async fn run(
    target: Target,
    req: Request,
    hooks: &mut impl Hooks,
    progress: Progress,
) -> Result<Outcome, RunError> {
    let guard = if req.lock {
        super::lock(&target.env, req.opts, Arc::clone(&progress)).await.map_err(RunError::Lock)?
    } else {
        None
    };
    match prepare(target, req, hooks, guard.as_ref(), &progress).await {
        Ok(Ready::Stop(outcome)) => {
            release(guard).await;
            Ok(outcome)
        }
        Ok(Ready::Go(mut outcome, specs)) => {
            let target = &outcome.target;
            let job = Job {
                env: &target.env,
                files: Arc::clone(&target.files),
                plan: &outcome.plan,
                specs: &specs,
                observed: &outcome.observed,
                secrets: &target.secrets,
            };
            let timeline = hooks.timeline();
            if let Some(t) = &timeline {
                t.execution_started();
            }
            let report = super::apply(guard, job, req.opts, progress, timeline).await.map_err(RunError::Apply)?;
            outcome.report = Some(report);
            Ok(outcome)
        }
        Err(e) => {
            release(guard).await;
            Err(e)
        }
    }
}

enum Ready {
    Go(Outcome, BTreeMap<String, InstanceSpec>),
    Stop(Outcome),
}

/// Everything under the lock before the execution.
async fn prepare(
    target: Target,
    req: Request,
    hooks: &mut impl Hooks,
    guard: Option<&etcd::LockGuard>,
    progress: &Progress,
) -> Result<Ready, RunError> {
    let pin = pin::read(&target.env, guard, req.observe.timeout).await.map_err(RunError::Pin)?;
    let target = match req.pinning {
        Pinning::Refuse => {
            pin::check(&target.env.name, pin.as_ref(), &target.origin).map_err(RunError::Pin)?;
            target
        }
        Pinning::Set => target,
        Pinning::Follow => {
            hooks.follow_pin(pin.as_ref(), &target).await.map_err(RunError::FollowPin)?.unwrap_or(target)
        }
    };
    let hold = hooks.hold(&target);
    let mode = hooks.canary_mode();
    let (observed, plan, specs) = observe_and_plan_mode(&target, req.observe, &hold, &mode).await?;
    let go = hooks.confirm(&target, &plan, &observed).await.map_err(RunError::Refused)?;
    let mut outcome = Outcome { target, observed, plan, report: None, pinned: None };
    if !go || outcome.plan.summary.is_empty() {
        return Ok(Ready::Stop(outcome));
    }
    if req.pinning == Pinning::Set
        && let Some(g) = guard
    {
        let t = &outcome.target;
        outcome.pinned = pin::set(&t.env, g, &t.origin).await.map_err(RunError::Apply)?;
        if let Some(p) = &outcome.pinned {
            let env = &t.env.name;
            progress(format!(
                "pinned environment `{env}` to {} ({}): watch keeps it there and apply of another commit is \
                 refused until `reconcile rollback --env {env} --release`",
                pin::short(&p.commit),
                p.reference
            ));
        }
    }
    Ok(Ready::Go(outcome, specs))
}

/// Release `guard` (best effort: it expires with its lease anyway).
async fn release(guard: Option<etcd::LockGuard>) {
    if let Some(g) = guard
        && let Err(e) = g.release().await
    {
        tracing::warn!(error = %e, "releasing the apply lock; it expires with its lease");
    }
}
