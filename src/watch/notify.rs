//! What `watch` tells the environment's notification targets: heals, crash loops,
//! unhealthy instances, failed runs, drift (`--dry-run`) and their recovery.
//!
//! The watcher and the health monitor only hand events to [`Notes`] (an unbounded
//! channel: never blocks them). One task owns the [`Notifier`] and its
//! de-duplication (a failure repeated by retries is sent once, a reminder every
//! `repeat`, resolved when it clears) and spawns each batch of deliveries, so a
//! slow or hanging receiver never delays a run: it costs at most its timeout, in
//! the background. Deliveries are counted in `backend::notify`'s counters
//! (`/metrics`).
//!
//! A delivery that fails (every attempt within its timeout) is kept in a [`Retries`]
//! queue and sent again at the start of each later run, until it is delivered, it is
//! older than [`RETRY_AGE`], or newer failures push it out ([`RETRY_LIMIT`]). A kept
//! delivery is the same request (the same body and status), so a receiver that was
//! down gets the message once, late, not a new one; a delivery still in flight is not
//! in the queue, so it is never sent twice at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::notify::{Job, Notifier, deliver_keeping_failed};
use crate::notify::{Event, EventKind};
use crate::secret::Secret;
use crate::spec::types::NotificationSpec;

/// How often the task looks for reminders that are due.
const REMINDER_TICK: Duration = Duration::from_millis(500);
/// At most this many failed deliveries are kept for a later run (the oldest go first).
pub const RETRY_LIMIT: usize = 100;
/// A failed delivery older than this is given up (its news is stale by then).
pub const RETRY_AGE: Duration = Duration::from_secs(3600);

/// Deliveries kept for a later run now.
static QUEUED: AtomicU64 = AtomicU64::new(0);
/// Kept deliveries sent again (each attempt).
static RETRIED: AtomicU64 = AtomicU64::new(0);
/// Kept deliveries given up: too old, or pushed out by newer ones.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// `(queued, retried, dropped)` since the process started, for /metrics.
pub fn retry_counts() -> (u64, u64, u64) {
    (QUEUED.load(Ordering::Relaxed), RETRIED.load(Ordering::Relaxed), DROPPED.load(Ordering::Relaxed))
}

/// The retry queue's families of /metrics, from [`retry_counts`].
pub fn render_retries(o: &mut String, env: &str, (queued, retried, dropped): (u64, u64, u64)) {
    use std::fmt::Write as _;
    for (name, kind, help, n) in [
        ("reconcile_notifications_queued", "gauge", "Failed deliveries kept to send again at the next run.", queued),
        ("reconcile_notifications_retried_total", "counter", "Kept deliveries sent again by a later run.", retried),
        (
            "reconcile_notifications_dropped_total",
            "counter",
            "Kept deliveries given up (too old, or too many).",
            dropped,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{env=\"{env}\"}} {n}");
    }
}

/// Failed deliveries waiting for the next run, oldest first, each with the time it
/// first failed. Pure over the `now` it is given.
#[derive(Debug, Default)]
pub struct Retries {
    kept: VecDeque<(Instant, Job)>,
}

impl Retries {
    /// Keep `failed` (first failed at `since`; a retried job keeps its first time);
    /// returns how many older ones were pushed out to stay within [`RETRY_LIMIT`].
    pub fn keep(&mut self, failed: Vec<(Instant, Job)>) -> usize {
        self.kept.extend(failed);
        self.kept.make_contiguous().sort_by_key(|(t, _)| *t);
        let over = self.kept.len().saturating_sub(RETRY_LIMIT);
        self.kept.drain(..over);
        over
    }

    /// Everything kept, to send again now, and how many were too old to send.
    pub fn take(&mut self, now: Instant) -> (Vec<(Instant, Job)>, usize) {
        let all: Vec<(Instant, Job)> = self.kept.drain(..).collect();
        let n = all.len();
        let fresh: Vec<(Instant, Job)> = all.into_iter().filter(|(t, _)| now.duration_since(*t) < RETRY_AGE).collect();
        let stale = n - fresh.len();
        (fresh, stale)
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

enum Note {
    /// The targets of the latest load, and the commit it is at.
    Targets {
        spec: Vec<NotificationSpec>,
        secrets: BTreeMap<String, Secret>,
        commit: Option<String>,
        reference: String,
    },
    Events {
        events: Vec<Event>,
        quiet_ok: bool,
    },
}

/// The watcher's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Notes {
    env: String,
    tx: mpsc::UnboundedSender<Note>,
}

impl Notes {
    /// Start the delivery task; it ends when every handle is dropped.
    pub fn start(env: &str) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { env: env.to_string(), tx }, tokio::spawn(run(rx)))
    }

    /// The targets (and origin) of a fresh load.
    pub fn targets(&self, snap: &super::Snapshot) {
        let _ = self.tx.send(Note::Targets {
            spec: snap.env.spec.notifications.clone(),
            secrets: snap.secrets.clone(),
            commit: snap.origin.commit.clone(),
            reference: snap.origin.reference.clone().unwrap_or_default(),
        });
    }

    /// An event about `app`/`instance` (the commit and reference are the latest load's).
    pub fn event(&self, kind: EventKind, app: Option<&str>, instance: Option<&str>, message: String) -> Event {
        Event {
            app: app.map(str::to_string),
            instance: instance.map(str::to_string),
            ..Event::about(kind, &self.env, message, crate::backend::etcd::now_rfc3339())
        }
    }

    /// Hand `events` over for delivery; `quiet_ok` as in `notify::Dedup::admit`.
    pub fn tell(&self, events: Vec<Event>, quiet_ok: bool) {
        if !events.is_empty() {
            let _ = self.tx.send(Note::Events { events, quiet_ok });
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Note>) {
    let mut notifier: Option<Notifier> = None;
    let (mut commit, mut reference) = (None, String::new());
    let mut tick = tokio::time::interval(REMINDER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Deliveries that failed come back here from their background task.
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<Vec<(Instant, Job)>>();
    let mut retries = Retries::default();
    loop {
        let jobs: Vec<(Instant, Job)> = tokio::select! {
            note = rx.recv() => match note {
                None => return,
                Some(Note::Targets { spec, secrets, commit: c, reference: r }) => {
                    match &mut notifier {
                        Some(n) => n.update(&spec, &secrets),
                        None => notifier = Some(Notifier::new(&spec, &secrets)),
                    }
                    (commit, reference) = (c, r);
                    // A new run: send again what earlier runs could not deliver.
                    let (again, stale) = retries.take(Instant::now());
                    if stale > 0 {
                        DROPPED.fetch_add(stale as u64, Ordering::Relaxed);
                        tracing::warn!(count = stale, "notifications given up: undelivered for {RETRY_AGE:?}");
                    }
                    RETRIED.fetch_add(again.len() as u64, Ordering::Relaxed);
                    again
                }
                Some(Note::Events { mut events, quiet_ok }) => {
                    let Some(n) = &mut notifier else { continue };
                    for e in &mut events {
                        if e.commit.is_none() {
                            e.commit.clone_from(&commit);
                        }
                        if e.reference.is_empty() {
                            e.reference.clone_from(&reference);
                        }
                    }
                    let now = Instant::now();
                    n.prepare(&events, quiet_ok).into_iter().map(|j| (now, j)).collect()
                }
            },
            Some(failed) = failed_rx.recv() => {
                let pushed_out = retries.keep(failed);
                if pushed_out > 0 {
                    DROPPED.fetch_add(pushed_out as u64, Ordering::Relaxed);
                    tracing::warn!(count = pushed_out, "notifications given up: more than {RETRY_LIMIT} undelivered");
                }
                QUEUED.store(retries.len() as u64, Ordering::Relaxed);
                continue;
            }
            _ = tick.tick() => match &mut notifier {
                Some(n) => {
                    let now = Instant::now();
                    n.reminders().into_iter().map(|j| (now, j)).collect()
                }
                None => continue,
            },
        };
        QUEUED.store(retries.len() as u64, Ordering::Relaxed);
        if !jobs.is_empty() {
            // In the background: a hanging receiver holds only its own delivery.
            let back = failed_tx.clone();
            tokio::spawn(async move {
                let (since, jobs): (Vec<Instant>, Vec<Job>) = jobs.into_iter().unzip();
                let (_, failed) = deliver_keeping_failed(jobs).await;
                let failed: Vec<(Instant, Job)> =
                    failed.into_iter().filter_map(|(i, j)| Some((*since.get(i)?, j))).collect();
                if !failed.is_empty() {
                    let _ = back.send(failed);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Request;
    use crate::spec::types::NotifyKind;

    fn job(n: usize) -> Job {
        Job {
            target: "0:webhook".into(),
            kind: NotifyKind::Webhook,
            request: Request {
                method: "POST",
                url: Secret::new("http://127.0.0.1:1/hook".into()),
                headers: vec![],
                body: format!("message {n}"),
            },
            timeout: Duration::from_secs(1),
        }
    }

    fn bodies(v: &[(Instant, Job)]) -> Vec<String> {
        v.iter().map(|(_, j)| j.request.body.clone()).collect()
    }

    #[test]
    fn kept_deliveries_come_back_once_oldest_first_and_within_their_age() {
        let t0 = Instant::now();
        let mut q = Retries::default();
        assert_eq!(q.keep(vec![(t0 + Duration::from_secs(2), job(2)), (t0, job(0))]), 0);
        assert_eq!(q.keep(vec![(t0 + Duration::from_secs(1), job(1))]), 0);
        let (again, stale) = q.take(t0 + Duration::from_secs(3));
        assert_eq!((bodies(&again), stale), (vec!["message 0".into(), "message 1".into(), "message 2".into()], 0));
        assert!(q.is_empty(), "taken means out of the queue: a delivery in flight is not sent again");
        // Failing again, they keep their first time and expire by it.
        assert_eq!(q.keep(again), 0);
        let (again, stale) = q.take(t0 + RETRY_AGE + Duration::from_millis(1500));
        assert_eq!((bodies(&again), stale), (vec!["message 2".into()], 2));
    }

    #[test]
    fn the_queue_is_bounded_and_pushes_out_the_oldest() {
        let t0 = Instant::now();
        let mut q = Retries::default();
        let many: Vec<(Instant, Job)> =
            (0..RETRY_LIMIT + 5).map(|i| (t0 + Duration::from_millis(i as u64), job(i))).collect();
        assert_eq!(q.keep(many), 5);
        assert_eq!(q.len(), RETRY_LIMIT);
        let (again, _) = q.take(t0);
        assert_eq!(again[0].1.request.body, "message 5");
        assert_eq!(
            again.last().map(|(_, j)| j.request.body.as_str()),
            Some(format!("message {}", RETRY_LIMIT + 4).as_str())
        );
    }

    #[test]
    fn retry_counters_render_as_prometheus_families() {
        let mut o = String::new();
        render_retries(&mut o, "prod", (2, 5, 1));
        assert!(
            o.contains("# TYPE reconcile_notifications_queued gauge\nreconcile_notifications_queued{env=\"prod\"} 2\n"),
            "{o}"
        );
        assert!(o.contains("reconcile_notifications_retried_total{env=\"prod\"} 5\n"), "{o}");
        assert!(o.contains("# TYPE reconcile_notifications_dropped_total counter\nreconcile_notifications_dropped_total{env=\"prod\"} 1\n"), "{o}");
    }
}
