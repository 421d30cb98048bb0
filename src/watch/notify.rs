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

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::backend::notify::{Notifier, deliver_all};
use crate::notify::{Event, EventKind};
use crate::secret::Secret;
use crate::spec::types::NotificationSpec;

/// How often the task looks for reminders that are due.
const REMINDER_TICK: Duration = Duration::from_millis(500);

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
    loop {
        let jobs = tokio::select! {
            note = rx.recv() => match note {
                None => return,
                Some(Note::Targets { spec, secrets, commit: c, reference: r }) => {
                    match &mut notifier {
                        Some(n) => n.update(&spec, &secrets),
                        None => notifier = Some(Notifier::new(&spec, &secrets)),
                    }
                    (commit, reference) = (c, r);
                    continue;
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
                    n.prepare(&events, quiet_ok)
                }
            },
            _ = tick.tick() => match &mut notifier {
                Some(n) => n.reminders(),
                None => continue,
            },
        };
        if !jobs.is_empty() {
            // In the background: a hanging receiver holds only its own delivery.
            tokio::spawn(deliver_all(jobs));
        }
    }
}
