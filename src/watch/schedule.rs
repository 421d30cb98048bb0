//! When `watch` acts: coalescing triggers into runs, backing off crash-looping
//! instances, damping flapping health. Pure state machines over an explicit `now`
//! (plus one tokio function, [`next_batch`], tested on tokio's paused clock), so
//! every rule is tested without waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// Why a run happens. Any trigger leads to the same full observe → plan → apply run
/// (level-triggered); the kinds are only counted and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The config repo changed (a file event in a local checkout).
    Repo,
    /// A managed container died, was removed or was OOM-killed: `host`, `container`
    /// (name), `instance` (`<app>-<ordinal>`), `action`.
    Docker { host: String, container: String, instance: String, action: String },
    /// An instance's health changed (it was marked or unmarked).
    Health { instance: String },
    /// The periodic resync (and, for a remote repo, the poll).
    Resync,
    /// A crash-looping instance's back-off ended.
    BackoffEnded,
    /// The last run failed; try again ([`retry_delay`] after it).
    Retry,
}

impl Trigger {
    /// A short label (for logs and the `reconcile_watch_triggers_total` metric).
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Repo => "repo",
            Trigger::Docker { .. } => "docker",
            Trigger::Health { .. } => "health",
            Trigger::Resync => "resync",
            Trigger::BackoffEnded => "backoff",
            Trigger::Retry => "retry",
        }
    }
}

/// After `failures` failed runs in a row, how long until the next try: `base`, doubling
/// with each further failure, at most `max` (the resync would come by then anyway).
pub fn retry_delay(failures: u64, base: Duration, max: Duration) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1)).unwrap_or(u32::MAX).min(31);
    base.checked_mul(1u32 << doublings).unwrap_or(max).min(max)
}

/// Wait for a trigger, then gather the ones that follow until `quiet` passes without a
/// new one, or `max` has passed since the first: one run for a burst (a `git pull`
/// touching many files, a host's containers dying together). `None` when every
/// sender is gone.
pub async fn next_batch(rx: &mut mpsc::Receiver<Trigger>, quiet: Duration, max: Duration) -> Option<Vec<Trigger>> {
    let first = rx.recv().await?;
    let deadline = Instant::now() + max;
    let mut batch = vec![first];
    loop {
        let until = (Instant::now() + quiet).min(deadline);
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(t)) => batch.push(t),
            Ok(None) | Err(_) => return Some(batch),
        }
    }
}

/// Exponential back-off for instances that keep needing to be healed (a crash loop):
/// the first heal is immediate; each further heal within `reset_after` of the previous
/// one waits twice as long as the last wait, from `base` up to `max`. An instance left
/// alone for `reset_after` starts again from zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub reset_after: Duration,
    state: BTreeMap<String, Heals>,
}

/// The heal record of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heals {
    /// Heals in the current streak.
    pub count: u32,
    pub last: Instant,
    /// No heal before this.
    pub not_before: Instant,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, reset_after: Duration) -> Self {
        Self { base, max, reset_after, state: BTreeMap::new() }
    }

    /// `Ok(())` when `instance` may be healed at `now`, else the instant it may.
    pub fn check(&self, instance: &str, now: Instant) -> Result<(), Instant> {
        match self.state.get(instance) {
            Some(h) if now < h.not_before && now.duration_since(h.last) < self.reset_after => Err(h.not_before),
            _ => Ok(()),
        }
    }

    /// Record a heal of `instance` at `now`; returns the wait before the next one.
    pub fn record(&mut self, instance: &str, now: Instant) -> Duration {
        let count = match self.state.get(instance) {
            Some(h) if now.duration_since(h.last) < self.reset_after => h.count + 1,
            _ => 1,
        };
        let wait = if count <= 1 {
            Duration::ZERO
        } else {
            let factor = 1u32.checked_shl(count - 2).unwrap_or(u32::MAX);
            self.base.checked_mul(factor).unwrap_or(self.max).min(self.max)
        };
        self.state.insert(instance.to_string(), Heals { count, last: now, not_before: now + wait });
        wait
    }

    /// The heal record of `instance`, if any.
    pub fn get(&self, instance: &str) -> Option<&Heals> {
        self.state.get(instance)
    }

    /// Instances currently held back at `now`, with the instant each may be healed again.
    pub fn held(&self, now: Instant) -> BTreeMap<String, Instant> {
        self.state.iter().filter(|(i, _)| self.check(i, now).is_err()).map(|(i, h)| (i.clone(), h.not_before)).collect()
    }

    /// Forget instances not in `alive` (removed from the repo or scaled down).
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) {
        self.state.retain(|i, _| alive(i));
    }
}

/// Deaths of one instance within a window: `CRASH_LOOP_DEATHS` or more within
/// `window` is a crash loop (reported; Docker's own restart back-off and [`Backoff`]
/// keep it from restarting in a tight loop).
#[derive(Debug, Clone)]
pub struct Deaths {
    pub window: Duration,
    seen: BTreeMap<String, Vec<Instant>>,
}

/// Deaths within the window that make a crash loop.
pub const CRASH_LOOP_DEATHS: usize = 3;

impl Deaths {
    pub fn new(window: Duration) -> Self {
        Self { window, seen: BTreeMap::new() }
    }

    /// Record a death of `instance` at `now`; returns the deaths within the window.
    pub fn record(&mut self, instance: &str, now: Instant) -> usize {
        let window = self.window;
        let list = self.seen.entry(instance.to_string()).or_default();
        list.retain(|t| now.duration_since(*t) < window);
        list.push(now);
        list.len()
    }

    /// Instances in a crash loop at `now`.
    pub fn looping(&self, now: Instant) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(_, l)| l.iter().filter(|t| now.duration_since(**t) < self.window).count() >= CRASH_LOOP_DEATHS)
            .map(|(i, _)| i.clone())
            .collect()
    }
}

/// Health of one instance as `watch` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// A change to act on: mark the instance (out of traffic) or unmark it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

/// Health with hysteresis and flap damping, per instance:
/// - healthy → unhealthy after `fall` failed probes in a row (the app's `retries`);
/// - unhealthy → healthy after `rise` successes in a row, and not before `hold` has
///   passed since it went down;
/// - an instance that goes down again within `flap_window` of coming up is flapping:
///   its `hold` doubles (up to `max_hold`) each time, so it stays out of traffic
///   longer instead of bouncing in and out; a stable `flap_window` resets it.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    pub rise: u32,
    pub hold: Duration,
    pub max_hold: Duration,
    pub flap_window: Duration,
    state: BTreeMap<String, Track>,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    health: Health,
    fails: u32,
    oks: u32,
    down_at: Option<Instant>,
    up_at: Option<Instant>,
    hold: Duration,
}

impl HealthTracker {
    pub fn new(rise: u32, hold: Duration, max_hold: Duration, flap_window: Duration) -> Self {
        Self { rise: rise.max(1), hold, max_hold, flap_window, state: BTreeMap::new() }
    }

    /// Seed an instance's state (e.g. marked unhealthy in etcd by an earlier watcher).
    pub fn seed(&mut self, instance: &str, health: Health, now: Instant) {
        let t = self.track(instance);
        t.health = health;
        if health == Health::Unhealthy {
            t.down_at = Some(now);
        }
    }

    fn track(&mut self, instance: &str) -> &mut Track {
        let hold = self.hold;
        self.state.entry(instance.to_string()).or_insert(Track {
            health: Health::Healthy,
            fails: 0,
            oks: 0,
            down_at: None,
            up_at: None,
            hold,
        })
    }

    /// Feed one probe result (with the app's `retries` as `fall`); returns the transition
    /// to act on, if any.
    pub fn observe(&mut self, instance: &str, ok: bool, fall: u32, now: Instant) -> Option<Transition> {
        let (rise, base, max_hold, flap_window) = (self.rise, self.hold, self.max_hold, self.flap_window);
        let t = self.track(instance);
        if ok {
            t.fails = 0;
            t.oks = t.oks.saturating_add(1);
        } else {
            t.oks = 0;
            t.fails = t.fails.saturating_add(1);
        }
        match t.health {
            Health::Healthy if t.fails >= fall.max(1) => {
                let flapping = t.up_at.is_some_and(|u| now.duration_since(u) < flap_window);
                t.hold = if flapping { (t.hold * 2).min(max_hold) } else { base };
                t.health = Health::Unhealthy;
                t.down_at = Some(now);
                Some(Transition::Down)
            }
            Health::Unhealthy if t.oks >= rise && t.down_at.is_none_or(|d| now.duration_since(d) >= t.hold) => {
                t.health = Health::Healthy;
                t.up_at = Some(now);
                Some(Transition::Up)
            }
            _ => None,
        }
    }

    pub fn health(&self, instance: &str) -> Health {
        self.state.get(instance).map_or(Health::Healthy, |t| t.health)
    }

    /// The current hold of `instance` (how long it stays out at least, once down).
    pub fn hold_of(&self, instance: &str) -> Duration {
        self.state.get(instance).map_or(self.hold, |t| t.hold)
    }

    /// Forget instances not in `alive`.
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) {
        self.state.retain(|i, _| alive(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn failed_runs_are_retried_with_a_doubling_delay_up_to_the_cap() {
        let delays: Vec<Duration> = (1..=7).map(|n| retry_delay(n, S, 30 * S)).collect();
        assert_eq!(delays, [S, 2 * S, 4 * S, 8 * S, 16 * S, 30 * S, 30 * S]);
        // Absurd failure counts neither overflow nor exceed the cap.
        assert_eq!(retry_delay(u64::MAX, S, 30 * S), 30 * S);
        assert_eq!(retry_delay(0, S, 30 * S), S);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_coalesces_into_one_batch() {
        let (tx, mut rx) = mpsc::channel(64);
        let sender = tokio::spawn(async move {
            for _ in 0..10 {
                tx.send(Trigger::Repo).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(Trigger::Resync).await.unwrap();
        });
        let t0 = Instant::now();
        let first = next_batch(&mut rx, Duration::from_millis(300), Duration::from_secs(10)).await.unwrap();
        assert_eq!(first, vec![Trigger::Repo; 10]);
        // The batch closed 300 ms after the last trigger (sent at 900 ms).
        assert_eq!(t0.elapsed(), Duration::from_millis(1200));
        let second = next_batch(&mut rx, Duration::from_millis(300), Duration::from_secs(10)).await.unwrap();
        assert_eq!(second, vec![Trigger::Resync]);
        sender.await.unwrap();
        assert!(next_batch(&mut rx, S, S).await.is_none(), "all senders gone");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_stream_still_runs_after_max() {
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                if tx
                    .send(Trigger::Docker {
                        host: "a".into(),
                        container: "c".into(),
                        instance: "a-0".into(),
                        action: "die".into(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let t0 = Instant::now();
        let batch = next_batch(&mut rx, Duration::from_millis(200), Duration::from_secs(2)).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        assert!(batch.len() >= 40, "{} triggers", batch.len());
    }

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(S, Duration::from_secs(8), Duration::from_secs(60));
        assert_eq!(b.check("a-0", t0), Ok(()));
        assert_eq!(b.record("a-0", t0), Duration::ZERO, "first heal is immediate");
        let mut now = t0;
        let mut waits = vec![];
        for _ in 0..6 {
            assert_eq!(b.check("a-0", now), Ok(()));
            let w = b.record("a-0", now);
            waits.push(w.as_secs());
            // Held until the wait is over.
            if !w.is_zero() {
                assert_eq!(b.check("a-0", now + w / 2), Err(now + w));
            }
            now += w;
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(b.held(now - Duration::from_millis(1)).len(), 1);
        // Another instance is independent.
        assert_eq!(b.check("b-0", now), Ok(()));
        // Quiet for reset_after: back to an immediate heal.
        now += Duration::from_secs(61);
        assert_eq!(b.check("a-0", now), Ok(()));
        assert_eq!(b.record("a-0", now), Duration::ZERO);
        b.retain(|i| i != "a-0");
        assert!(b.get("a-0").is_none());
    }

    #[test]
    fn three_deaths_within_the_window_are_a_crash_loop() {
        let t0 = Instant::now();
        let mut d = Deaths::new(Duration::from_secs(60));
        assert_eq!(d.record("a-0", t0), 1);
        assert_eq!(d.record("a-0", t0 + 10 * S), 2);
        assert!(d.looping(t0 + 10 * S).is_empty());
        assert_eq!(d.record("a-0", t0 + 20 * S), 3);
        assert_eq!(d.looping(t0 + 20 * S), vec!["a-0".to_string()]);
        // The first death leaves the window.
        assert!(d.looping(t0 + 61 * S).is_empty());
        assert_eq!(d.record("a-0", t0 + 75 * S), 2, "the deaths at 0 s and 10 s left the window");
    }

    #[test]
    fn health_needs_fall_failures_and_rise_successes() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(2, Duration::from_secs(10), Duration::from_secs(80), Duration::from_secs(60));
        assert_eq!(h.observe("a-0", false, 3, t0), None);
        assert_eq!(h.observe("a-0", true, 3, t0), None, "a success resets the failure count");
        assert_eq!(h.observe("a-0", false, 3, t0), None);
        assert_eq!(h.observe("a-0", false, 3, t0), None);
        assert_eq!(h.observe("a-0", false, 3, t0), Some(Transition::Down));
        assert_eq!(h.health("a-0"), Health::Unhealthy);
        assert_eq!(h.observe("a-0", false, 3, t0), None, "already down");
        // Two successes, but the 10 s hold is not over.
        assert_eq!(h.observe("a-0", true, 3, t0 + S), None);
        assert_eq!(h.observe("a-0", true, 3, t0 + 2 * S), None);
        assert_eq!(h.observe("a-0", true, 3, t0 + 10 * S), Some(Transition::Up));
        assert_eq!(h.health("a-0"), Health::Healthy);
    }

    #[test]
    fn flapping_doubles_the_hold() {
        let mut now = Instant::now();
        let mut h = HealthTracker::new(1, Duration::from_secs(10), Duration::from_secs(40), Duration::from_secs(60));
        let mut holds = vec![];
        for _ in 0..4 {
            assert_eq!(h.observe("a-0", false, 1, now), Some(Transition::Down));
            holds.push(h.hold_of("a-0").as_secs());
            now += h.hold_of("a-0");
            assert_eq!(h.observe("a-0", true, 1, now), Some(Transition::Up));
            now += Duration::from_secs(5); // down again soon: flapping
        }
        assert_eq!(holds, vec![10, 20, 40, 40]);
        // Stable for longer than the flap window: the hold is back to its base.
        now += Duration::from_secs(61);
        assert_eq!(h.observe("a-0", false, 1, now), Some(Transition::Down));
        assert_eq!(h.hold_of("a-0"), Duration::from_secs(10));
        // A seeded (already marked) instance comes back after rise successes and its hold.
        h.seed("b-0", Health::Unhealthy, now);
        assert_eq!(h.observe("b-0", true, 1, now), None);
        assert_eq!(h.observe("b-0", true, 1, now + Duration::from_secs(10)), Some(Transition::Up));
    }
}
