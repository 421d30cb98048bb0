//! Telling the environment's notification targets what an apply, rollback or
//! watch run did (`crate::notify`, delivered by `backend::notify`). Never changes
//! the command's outcome: a delivery that fails is a warning on stderr.

use std::collections::BTreeMap;

use crate::backend::notify::{Delivery, Notifier};
use crate::model::Pin;
use crate::notify::{ApplyFacts, Event, EventKind, apply_events, pin_event};
use crate::plan::Plan;
use crate::secret::Secret;
use crate::spec::Env;
use crate::spec::types::NotifyKind;

/// After an apply: one event per app with work (failed or applied) and one for the
/// environment, and `pin` when a rollback pinned the environment; sent at once,
/// bounded by each target's timeout.
#[allow(clippy::too_many_arguments)] // the facts of one apply, each from its own place
pub fn after_apply(
    rt: &tokio::runtime::Runtime,
    env: &Env,
    secrets: &BTreeMap<String, Secret>,
    plan: &Plan,
    apps: &[(String, Option<String>)],
    errors: &[String],
    ok_kind: EventKind,
    pinned: Option<&Pin>,
) {
    if env.spec.notifications.is_empty() {
        return;
    }
    let time = crate::backend::etcd::now_rfc3339();
    let summary = plan.summary.to_string();
    let canaries = crate::apply::canary::events(plan);
    let facts = ApplyFacts {
        env: &env.name,
        commit: plan.origin.commit.as_deref(),
        reference: plan.origin.reference.as_deref().unwrap_or(""),
        summary: &summary,
        apps,
        errors,
        ok_kind,
        canaries: &canaries,
        time: &time,
    };
    let mut events = apply_events(&facts);
    events.extend(pinned.map(|p| pin_event(EventKind::Pin, &env.name, p, time.clone())));
    send(rt, env, secrets, &events);
}

/// At the start of an apply: when a target will be reached over HTTPS (an `https://`
/// URL, or a commit status API), load the CA certificates in the background now, so
/// that the deliveries after the apply find them ready.
pub fn warm_up(env: &Env, secrets: &BTreeMap<String, Secret>) {
    let https = crate::notify::targets(&env.spec.notifications, secrets).iter().any(|t| {
        matches!(t.spec.kind, NotifyKind::GithubStatus | NotifyKind::GitlabStatus)
            || t.url.as_ref().is_some_and(|u| u.expose().starts_with("https://"))
    });
    if https {
        crate::backend::notify::warm_up();
    }
}

/// After `rollback --release` ended a pin: `pin_released`.
pub fn after_release(rt: &tokio::runtime::Runtime, env: &Env, secrets: &BTreeMap<String, Secret>, pin: &Pin) {
    if env.spec.notifications.is_empty() {
        return;
    }
    let event = pin_event(EventKind::PinReleased, &env.name, pin, crate::backend::etcd::now_rfc3339());
    send(rt, env, secrets, &[event]);
}

fn send(rt: &tokio::runtime::Runtime, env: &Env, secrets: &BTreeMap<String, Secret>, events: &[Event]) {
    let mut notifier = Notifier::new(&env.spec.notifications, secrets);
    for d in rt.block_on(notifier.send(events, false)) {
        if let Delivery::Failed { target, error } = d {
            eprintln!("warning: notification {target} not delivered: {error}");
        }
    }
}
