//! Telling the environment's notification targets what an apply, rollback or
//! watch run did (`crate::notify`, delivered by `backend::notify`). Never changes
//! the command's outcome: a delivery that fails is a warning on stderr.

use std::collections::BTreeMap;

use crate::backend::notify::{Delivery, Notifier};
use crate::notify::{ApplyFacts, EventKind, apply_events};
use crate::plan::Plan;
use crate::secret::Secret;
use crate::spec::Env;

/// After an apply: one event per app with work (failed or applied) and one for the
/// environment; sent at once, bounded by each target's timeout.
pub fn after_apply(
    rt: &tokio::runtime::Runtime,
    env: &Env,
    secrets: &BTreeMap<String, Secret>,
    plan: &Plan,
    apps: &[(String, Option<String>)],
    errors: &[String],
    ok_kind: EventKind,
) {
    if env.spec.notifications.is_empty() {
        return;
    }
    let time = crate::backend::etcd::now_rfc3339();
    let summary = plan.summary.to_string();
    let facts = ApplyFacts {
        env: &env.name,
        commit: plan.origin.commit.as_deref(),
        reference: plan.origin.reference.as_deref().unwrap_or(""),
        summary: &summary,
        apps,
        errors,
        ok_kind,
        time: &time,
    };
    let mut notifier = Notifier::new(&env.spec.notifications, secrets);
    for d in rt.block_on(notifier.send(&apply_events(&facts), false)) {
        if let Delivery::Failed { target, error } = d {
            eprintln!("warning: notification {target} not delivered: {error}");
        }
    }
}
