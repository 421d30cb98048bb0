//! The knobs of an apply: [`Options`] from the command line, the lock's lease TTL
//! and the LB drain wait (the environment's `lb.drain`, overridden by the process
//! environment for tests and soak runs), and taking the apply lock.

use std::collections::BTreeMap;
use std::time::Duration;

use super::records::HistoryKind;
use super::{ApplyError, Progress};
use crate::backend::etcd;
use crate::spec::Env;

/// Knobs of one apply.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Apps (of one dependency level) and hosts worked on at once.
    pub parallelism: usize,
    /// Per Docker/etcd call.
    pub timeout: Duration,
    /// How long to wait for another apply's lock.
    pub lock_timeout: Duration,
    /// What the history records this as.
    pub kind: HistoryKind,
}

/// The apply lock's lease TTL: how long a crashed apply (killed, host lost) keeps
/// blocking the next one. `RECONCILE_LOCK_TTL` (a duration, at least 2s) overrides it —
/// for tests and soak runs that kill applies on purpose.
pub const LOCK_TTL: Duration = Duration::from_secs(15);
const LOCK_TTL_VAR: &str = "RECONCILE_LOCK_TTL";

/// How long the executor waits after an LB reload that took instances out of traffic
/// before it stops them (see the module docs of `apply`), unless the environment's
/// `lb.drain` says otherwise. `RECONCILE_LB_DRAIN` (a duration, `0s` disables it)
/// overrides both.
pub const LB_DRAIN: Duration = Duration::from_millis(1500);
const LB_DRAIN_VAR: &str = "RECONCILE_LB_DRAIN";

/// The lease TTL of locks: [`LOCK_TTL`], or `RECONCILE_LOCK_TTL` when it is valid.
pub fn lock_ttl() -> Duration {
    duration_var(LOCK_TTL_VAR, LOCK_TTL, Duration::from_secs(2)).unwrap_or(LOCK_TTL)
}

/// The drain wait of each LB: `default` for an LB without its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drain {
    pub default: Duration,
    /// Per LB name, from its `drain`.
    pub per_lb: BTreeMap<String, Duration>,
}

impl Drain {
    /// LB `lb`'s wait.
    pub fn of(&self, lb: &str) -> Duration {
        self.per_lb.get(lb).copied().unwrap_or(self.default)
    }
}

impl From<Duration> for Drain {
    /// The same wait for every LB.
    fn from(default: Duration) -> Self {
        Self { default, per_lb: BTreeMap::new() }
    }
}

/// The drain waits, per LB: `RECONCILE_LB_DRAIN` if set (for every LB), else the LB's
/// `drain` (`lb.drain`, `lbs.<name>.drain`), else [`LB_DRAIN`].
///
/// # Errors
/// [`ApplyError::Setting`]: a `drain` or `RECONCILE_LB_DRAIN` is not a duration.
pub fn lb_drain(env: &Env) -> Result<Drain, ApplyError> {
    let mut per_lb = BTreeMap::new();
    for (name, lb) in env.spec.load_balancers() {
        if let Some(text) = lb.drain.as_deref() {
            let d = crate::spec::units::duration(text).map_err(|e| ApplyError::Setting {
                name: "lb.drain",
                value: text.to_string(),
                message: e.message,
            })?;
            per_lb.insert(name.to_string(), d);
        }
    }
    if std::env::var_os(LB_DRAIN_VAR).is_some() {
        return Ok(duration_var(LB_DRAIN_VAR, LB_DRAIN, Duration::ZERO)?.into());
    }
    Ok(Drain { default: LB_DRAIN, per_lb })
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
