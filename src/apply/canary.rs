//! Canaries in the executor (`plan::canary` decides what): a replace with `strategy:
//! canary` starts the new container beside the old one — healthy, then registry + LB —
//! and stops there; once an app's canaries serve, `<prefix>/<env>/canary/<app>` records
//! them; after a promote succeeded the record is deleted (abort and end delete it as a
//! planned etcd action).
//!
//! **Invariant:** a canary start never takes an old instance out of traffic or stops it;
//! a canary that fails its health check, or that the LB refuses, is removed again and
//! never recorded.

use super::effects::Effects;
use super::rollout::Replace;
use super::{Shared, StepError};
use crate::backend::etcd;
use crate::model::{CanaryInstance, CanaryRecord, InstanceId, keys};
use crate::notify::EventKind;
use crate::placement::Assignment;
use crate::plan::canary::{CanaryState, CanaryStep};
use crate::plan::{Action, Plan};
use crate::spec::types::Strategy;

impl<E: Effects> Shared<'_, E> {
    /// Start `starts` (replaces with `strategy: canary`) beside their old instances, all
    /// at once: each healthy, then registered; the LB updated once.
    pub(super) async fn canary_start(
        &self,
        app: &str,
        starts: &[Replace<'_>],
        done: &mut Vec<String>,
    ) -> Result<(), StepError> {
        let ups = futures::future::join_all(starts.iter().map(|(i, _, n, _)| self.bring_up(app, i, n))).await;
        let mut first_err = None;
        let mut up: Vec<(Assignment, String, &str)> = Vec::new();
        for (r, (i, ..)) in ups.into_iter().zip(starts) {
            match r {
                Ok((asg, id)) => up.push((asg, id, *i)),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        for (asg, ..) in &up {
            self.register(asg, true).await?;
        }
        if let Err(e) = self.lb_update(app).await {
            // The LB refused the config with the canaries: they leave again, the old
            // instances serve on.
            self.withdraw(up.iter().map(|(asg, id, _)| (asg, id.as_str()))).await?;
            return Err(StepError::LbRefused { cause: Box::new(e) });
        }
        if let Some(e) = first_err {
            // Canaries that came up stay (beside the old ones): the next plan replaces or
            // keeps them; none is recorded, so the next plan sees duplicates and removes them.
            return Err(e);
        }
        for (asg, _, i) in &up {
            let line = format!(
                "{}: canary {i} started beside the old instance ({}{})",
                asg.host,
                asg.host,
                asg.port.map(|p| format!(":{p}")).unwrap_or_default()
            );
            self.say(line.clone());
            done.push(line);
        }
        Ok(())
    }

    /// After `app`'s steps succeeded: record its new canaries, or delete the record of a
    /// promoted one. The line to report, if any.
    pub(super) async fn canary_record(&self, app: &str) -> Result<Option<String>, StepError> {
        let (Some(step), Some(spec)) = (self.plan.canaries.iter().find(|s| s.app == app), &self.env.spec.etcd) else {
            return Ok(None);
        };
        let key = keys::canary(&spec.prefix, &self.env.name, app);
        let write = match step.state {
            CanaryState::Start | CanaryState::Replace => {
                let rec = record(self.plan, app, etcd::now_rfc3339());
                let value = serde_json::to_string(&rec).unwrap_or_default();
                etcd::Write::Put { key, value }
            }
            CanaryState::Promote => etcd::Write::Delete { key },
            CanaryState::Running | CanaryState::Abort | CanaryState::End => return Ok(None),
        };
        self.locked()?;
        self.fx.etcd_write(&[write]).await.map_err(|e| e.during("canary record"))?;
        let line = outcome_line(step, &self.env.name);
        self.say(line.clone());
        Ok(Some(line))
    }
}

/// The record of `app`'s canaries started by `plan`.
fn record(plan: &Plan, app: &str, since: String) -> CanaryRecord {
    let instances: Vec<CanaryInstance> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Replace { app: x, instance, new, strategy: Strategy::Canary, .. } if x == app => {
                Some(CanaryInstance {
                    instance: instance.clone(),
                    container: new.container_name.clone(),
                    host: new.host.clone(),
                    port: new.port,
                    spec_hash: new.spec_hash.clone(),
                })
            }
            _ => None,
        })
        .collect();
    CanaryRecord {
        commit: plan.origin.commit.clone(),
        spec_hash: instances.first().map(|i| i.spec_hash.clone()).unwrap_or_default(),
        instances,
        since,
    }
}

/// What an applied canary step leaves, for people: `canary api: 1 of 3 serving …`.
pub fn outcome_line(step: &CanaryStep, env: &str) -> String {
    let n = step.instances.len();
    match step.state {
        CanaryState::Start | CanaryState::Replace | CanaryState::Running => {
            CanaryStep { state: CanaryState::Running, ..step.clone() }.line(env)
        }
        CanaryState::Promote => format!("canary {}: promoted, {} of {} new", step.app, step.replicas, step.replicas),
        CanaryState::Abort => format!("canary {}: aborted, {n} canary(ies) removed, the old instances serve", step.app),
        CanaryState::End => format!("canary {}: ended, the canaries are removed", step.app),
    }
}

/// What each canary step of `plan` tells the notification targets once applied: the
/// app, the event ([`EventKind::of_canary`]) and [`outcome_line`].
pub fn events(plan: &Plan) -> Vec<(String, EventKind, String)> {
    plan.canaries
        .iter()
        .filter_map(|s| EventKind::of_canary(s.state).map(|k| (s.app.clone(), k, outcome_line(s, &plan.env))))
        .collect()
}

/// The history's summary: the plan's summary line, then each canary's outcome.
pub fn history_summary(plan: &Plan) -> String {
    let mut s = plan.summary.to_string();
    for step in &plan.canaries {
        s.push(' ');
        s.push_str(&outcome_line(step, &plan.env));
        s.push('.');
    }
    s
}

/// The canaries the LB weighs while `plan` is applied: the running ones the plan keeps
/// and the ones it starts.
pub fn serving_canaries(plan: &Plan) -> std::collections::BTreeSet<Assignment> {
    let mut out = std::collections::BTreeSet::new();
    for a in &plan.actions {
        if let Action::Replace { instance, new, strategy: Strategy::Canary, .. } = a
            && let Ok(id) = InstanceId::parse(instance)
        {
            out.insert(Assignment { app: id.app, ordinal: id.ordinal, host: new.host.clone(), port: new.port });
        }
    }
    out
}

/// Why `promote` of `app` must not go ahead, if it must not: its canaries (the record
/// among `observed`'s etcd keys) no longer run what the repo asks for — a commit arrived
/// during the canary — so the promote `plan` would replace them (its `Replace`s of the
/// recorded canary containers) and roll out a version that never ran as a canary.
/// (Abort is never refused.)
pub fn promote_refusal(
    env: &crate::spec::Env,
    plan: &Plan,
    observed: &crate::model::ObservedState,
    app: &str,
) -> Option<String> {
    let (Some(spec), Some(obs)) = (&env.spec.etcd, &observed.etcd) else { return None };
    let rec = crate::plan::canary::records(&obs.keys, &spec.prefix, &env.name).remove(app)?;
    let stale: Vec<&str> = rec
        .instances
        .iter()
        .filter(|c| {
            plan.actions.iter().any(
                |a| matches!(a, Action::Replace { app: x, old, .. } if x == app && old.container_name == c.container),
            )
        })
        .map(|c| c.instance.as_str())
        .collect();
    if stale.is_empty() {
        return None;
    }
    let commit =
        |c: Option<&str>| c.map_or_else(|| "a directory outside Git".to_string(), |c| super::pin::short(c).to_string());
    let e = &env.name;
    Some(format!(
        "the canary of app `{app}` ({}) runs the spec of {}, but the repo at {} asks for another spec: \
         promoting now would roll out a version that never ran as a canary. Run `reconcile apply --env {e}` \
         (it replaces the canary with the new spec), or `reconcile abort --env {e} --app {app}`",
        stale.join(", "),
        commit(rec.commit.as_deref()),
        commit(plan.origin.commit.as_deref()),
    ))
}
