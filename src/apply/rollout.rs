//! One app's rollout, in the contract's order: removals, starts, creates (all at
//! once, bounded by parallelism), then replaces a `batch` at a time with the
//! zero-downtime sequence (new healthy → registry + LB → old out of registry + LB →
//! drain → old stopped; `recreate`: old out and stopped first). One function per
//! action kind.
//!
//! **Invariant:** a new container that fails its start or health check is removed,
//! never registered, and its last output (bounded, secrets masked) is kept in the error;
//! so is a stopped instance that fails when it is started again (taken out of the
//! registry and the LB before its start).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use super::effects::{Check, Effects, LogTail};
use super::report::Milestone;
use super::{AppOutcome, Shared, StepError};
use crate::model::InstanceId;
use crate::placement::Assignment;
use crate::plan::{self, Action, NewInstance, OldInstance, Reason};
use crate::secret::MASK;
use crate::spec::types::Strategy;

/// What is kept of a failed new container's output.
pub const EVIDENCE: LogTail = LogTail { lines: 20, bytes: 4096 };

/// Without a health check, a container still running this long after its start counts
/// as healthy.
const SETTLE: Duration = Duration::from_millis(300);

/// A replace of the plan: instance, old, new, strategy.
pub(super) type Replace<'p> = (&'p str, &'p OldInstance, &'p NewInstance, Strategy);

/// `text` with every secret value replaced by `(sensitive)`, longest first (so a
/// secret containing another is masked whole).
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut longest_first: Vec<&str> = secrets.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    longest_first.sort_by_key(|s| std::cmp::Reverse(s.len()));
    longest_first.iter().fold(text.to_string(), |out, s| out.replace(s, MASK))
}

impl<E: Effects> Shared<'_, E> {
    /// All of one app's instance actions, in the contract's order.
    pub(super) async fn app(&self, app: &str) -> AppOutcome {
        let mut out = AppOutcome::default();
        let steps = match self.app_steps(app, &mut out.done).await {
            Ok(()) => self.canary_record(app).await,
            Err(e) => Err(e),
        };
        match steps {
            Ok(line) => out.done.extend(line),
            Err(e) => {
                let e = e.to_string();
                self.say(format!("app {app}: FAILED: {e}"));
                out.error = Some(e);
            }
        }
        out
    }

    async fn app_steps(&self, app: &str, done: &mut Vec<String>) -> Result<(), StepError> {
        let actions: Vec<&Action> = self.plan.actions.iter().filter(|a| a.app() == Some(app)).collect();
        for a in &actions {
            if let Action::Remove { instance, old, reason, .. } = a {
                done.push(self.remove(app, instance, old, reason).await?);
            }
        }
        for a in &actions {
            if let Action::Start { instance, old, .. } = a {
                done.push(self.start(app, instance, old).await?);
            }
        }
        let creates: Vec<(&str, &NewInstance)> = actions
            .iter()
            .filter_map(|a| {
                if let Action::Create { instance, new, .. } = a { Some((instance.as_str(), new)) } else { None }
            })
            .collect();
        if !creates.is_empty() {
            self.create(app, &creates, done).await?;
        }
        let replaces: Vec<Replace<'_>> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Replace { instance, old, new, strategy, .. } => Some((instance.as_str(), old, new, *strategy)),
                _ => None,
            })
            .collect();
        // Canaries start beside the old instances, all at once, and nothing stops.
        let (canaries, replaces): (Vec<Replace<'_>>, Vec<Replace<'_>>) =
            replaces.into_iter().partition(|(.., s)| *s == Strategy::Canary);
        if !canaries.is_empty() {
            self.canary_start(app, &canaries, done).await?;
        }
        let batch = self.env.apps.get(app).map_or(1, |a| a.spec.update.batch.max(1) as usize);
        for chunk in replaces.chunks(batch) {
            self.replace(app, chunk, done).await?;
        }
        Ok(())
    }

    /// The assignment of an existing instance. `None` for a container whose labels name
    /// no instance (unrecognised): it was never serving.
    fn old_assignment(app: &str, instance: &str, old: &OldInstance) -> Option<Assignment> {
        let id = InstanceId::parse_of(app, instance)?;
        Some(Assignment { app: id.app, ordinal: id.ordinal, host: old.host.clone(), port: old.port })
    }

    /// Scaled down, gone from the repo, a duplicate or unrecognised: out of traffic,
    /// then stopped.
    async fn remove(&self, app: &str, instance: &str, old: &OldInstance, reason: &Reason) -> Result<String, StepError> {
        if let Some(asg) = Self::old_assignment(app, instance, old) {
            self.register(&asg, false).await?;
            self.leave_traffic(app).await?;
        }
        self.take_down(app, old).await?;
        let name = if instance.is_empty() { &old.container_name } else { instance };
        let line = format!("{}: removed {name} ({})", old.host, plan::render::reason_text(reason));
        self.say(line.clone());
        Ok(line)
    }

    /// An existing, up-to-date instance that was not running: out of the registry first
    /// (stopped, it serves nobody, whoever stopped it), then started, healthy, back in
    /// traffic. When it fails its start or health check it stays out of the registry and
    /// the LB and, like a failed new container, is removed (its last output kept in the
    /// error): left running it would be kept, and registered, by the next plan.
    async fn start(&self, app: &str, instance: &str, old: &OldInstance) -> Result<String, StepError> {
        let asg = Self::old_assignment(app, instance, old).ok_or_else(|| bad_instance(app, instance))?;
        self.register(&asg, false).await?;
        self.locked()?;
        self.fx.start(&old.host, &old.container_id).await?;
        self.mark(Milestone::Created, &asg);
        if let Some(h) = self.env.apps.get(app).and_then(|x| x.spec.health.as_ref()) {
            let address = self.address_of(&old.host)?;
            let check = Check { health: h, address, port: old.port };
            if let Err(why) = self.fx.wait_healthy(&old.host, &old.container_id, check).await {
                let logs = self.discard_failed(&old.host, &old.container_id, self.grace(app)).await;
                // The final LB update renders the serving set again: this error is not the app's.
                if let Err(e) = self.lb_update(app).await {
                    tracing::warn!(app, error = %e, "lb update after a failed start");
                }
                return Err(StepError::StartedUnhealthy {
                    instance: instance.to_string(),
                    host: old.host.clone(),
                    cause: Box::new(why),
                    logs,
                });
            }
        }
        self.mark(Milestone::Healthy, &asg);
        self.register(&asg, true).await?;
        self.lb_update(app).await?;
        Ok(format!("{}: started {instance}", old.host))
    }

    /// New instances: nothing of them serves yet, so `batch` (which paces replacements)
    /// does not apply: up to `parallelism` at once (at least `batch`), no new one
    /// started after a failure, the LB updated once at the end.
    async fn create(
        &self,
        app: &str,
        creates: &[(&str, &NewInstance)],
        done: &mut Vec<String>,
    ) -> Result<(), StepError> {
        let batch = self.env.apps.get(app).map_or(1, |a| a.spec.update.batch.max(1) as usize);
        let stop = AtomicBool::new(false);
        let stop = &stop;
        let mut ups = futures::stream::iter(creates.iter().map(|(i, n)| async move {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            // Registered as soon as it is healthy, inside its own future: awaiting etcd in
            // the loop below would stop polling the bring-ups still in flight.
            let r = match self.bring_up(app, i, n).await {
                Ok((asg, _)) => self.register(&asg, true).await.map(|()| asg),
                Err(e) => Err(e),
            };
            if r.is_err() {
                stop.store(true, Ordering::SeqCst);
            }
            Some(r)
        }))
        .buffer_unordered(self.opts.parallelism.max(batch).max(1));
        let mut first_err = None;
        while let Some(r) = ups.next().await {
            match r {
                None => {}
                Some(Ok(asg)) => {
                    let id = InstanceId::new(asg.app.clone(), asg.ordinal);
                    done.push(format!("{}: created {id}", asg.host));
                }
                Some(Err(e)) => first_err = first_err.or(Some(e)),
            }
        }
        self.lb_update(app).await?;
        first_err.map_or(Ok(()), Err)
    }

    /// One batch of replacements.
    async fn replace(&self, app: &str, chunk: &[Replace<'_>], done: &mut Vec<String>) -> Result<(), StepError> {
        let recreate = chunk.iter().any(|(_, _, _, s)| *s == Strategy::Recreate);
        let olds: Vec<Assignment> = chunk
            .iter()
            .map(|(i, old, _, _)| Self::old_assignment(app, i, old).ok_or_else(|| bad_instance(app, i)))
            .collect::<Result<_, _>>()?;
        if recreate {
            // Cannot run twice: old out of traffic and stopped first.
            self.register_all(&olds, false).await?;
            self.leave_traffic(app).await?;
            for (_, old, _, _) in chunk {
                self.take_down(app, old).await?;
            }
        }
        let ups = futures::future::join_all(chunk.iter().map(|(i, _, n, _)| self.bring_up(app, i, n))).await;
        let mut first_err = None;
        let mut up = Vec::new();
        for (r, ((i, old, _, _), old_asg)) in ups.into_iter().zip(chunk.iter().zip(&olds)) {
            match r {
                Ok((asg, id)) => up.push((asg, id, *i, *old, old_asg)),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        // Healthy new instances take traffic first…
        let news: Vec<Assignment> = up.iter().map(|(asg, ..)| asg.clone()).collect();
        self.register_all(&news, true).await?;
        if let Err(e) = self.lb_update(app).await {
            // The LB refused the config with the new instances (its file is unchanged):
            // undo as for a failed health check — the new ones leave the registry and
            // are removed, the old ones keep serving. (With `recreate` the old ones are
            // gone already, so the new ones stay.)
            if recreate {
                return Err(e);
            }
            self.withdraw(up.iter().map(|(asg, id, ..)| (asg, id.as_str()))).await?;
            return Err(StepError::LbRefused { cause: Box::new(e) });
        }
        if let Some(e) = first_err {
            // …but a failed batch stops here: its old instances keep serving.
            return Err(e);
        }
        // …then the old ones leave traffic, and only then stop.
        if !recreate {
            let leaving: Vec<Assignment> = up.iter().map(|(.., old_asg)| (*old_asg).clone()).collect();
            self.register_all(&leaving, false).await?;
            self.leave_traffic(app).await?;
            for (_, _, _, old, _) in &up {
                self.take_down(app, old).await?;
            }
        }
        for (asg, _, i, old, _) in &up {
            let line = format!(
                "{}: replaced {i} ({} → {}{})",
                asg.host,
                short(&old.container_id),
                asg.host,
                asg.port.map(|p| format!(":{p}")).unwrap_or_default()
            );
            self.say(line.clone());
            done.push(line);
        }
        Ok(())
    }

    /// New containers the LB refused: out of the registry and removed again (the old
    /// ones keep serving).
    pub(super) async fn withdraw(&self, up: impl Iterator<Item = (&Assignment, &str)>) -> Result<(), StepError> {
        for (asg, id) in up {
            self.register(asg, false).await?;
            // Best effort: a leftover is a duplicate the next plan removes.
            self.locked()?;
            let _ = self.fx.stop_and_remove(&asg.host, id, Duration::from_secs(2)).await;
        }
        Ok(())
    }

    /// Create and start a container for `new` and wait until it is healthy. On failure
    /// its last output is read and it is removed again.
    pub(super) async fn bring_up(
        &self,
        app: &str,
        instance: &str,
        new: &NewInstance,
    ) -> Result<(Assignment, String), StepError> {
        let id = InstanceId::parse_of(app, instance).ok_or_else(|| bad_instance(app, instance))?;
        let spec =
            self.specs.get(&new.spec_hash).ok_or_else(|| StepError::MissingSpec { instance: instance.to_string() })?;
        // The host's daemon gets at most `parallelism` of these calls at once (see
        // `Shared::docker_slots`); the health wait below holds no slot.
        let slot = match self.docker_slots.get(&new.host) {
            Some(s) => s.acquire().await.ok(),
            None => None,
        };
        self.locked()?;
        self.fx.ensure_image(&new.host, &spec.image, &self.progress).await?;
        let labels = plan::container_labels(&self.env.name, app, instance, new, self.plan.origin.commit.as_deref());
        let cid = self.fx.create(&new.host, &new.container_name, spec, &labels).await?;
        let t0 = Instant::now();
        let asg = Assignment { app: id.app, ordinal: id.ordinal, host: new.host.clone(), port: new.port };
        let health = async {
            self.seed_lbs(app, &new.host, &cid).await?;
            self.locked()?;
            let started = self.fx.start(&new.host, &cid).await;
            drop(slot);
            started?;
            self.mark(Milestone::Created, &asg);
            match &spec.health {
                Some(h) => {
                    let check = Check { health: h, address: &new.address, port: new.port };
                    self.fx.wait_healthy(&new.host, &cid, check).await
                }
                None => {
                    self.fx.sleep(SETTLE).await;
                    self.fx.still_running(&new.host, &cid).await
                }
            }
        };
        if let Err(why) = health.await {
            let logs = self.discard_failed(&new.host, &cid, Duration::from_secs(spec.stop_timeout_secs)).await;
            return Err(StepError::NewFailed {
                instance: instance.to_string(),
                host: new.host.clone(),
                cause: Box::new(why),
                logs,
            });
        }
        self.mark(Milestone::Healthy, &asg);
        self.say(format!(
            "{}: {instance} started ({}) and healthy in {:.1}s",
            new.host,
            short(&cid),
            t0.elapsed().as_secs_f64()
        ));
        Ok((asg, cid))
    }

    /// A container that failed its start or health check: its last output (bounded,
    /// secrets masked) is read, then it is stopped and removed. Best effort: a leftover
    /// (also when the lock is lost meanwhile, which stops all writes) is a duplicate or a
    /// stopped instance that the next plan handles.
    async fn discard_failed(&self, host: &str, cid: &str, grace: Duration) -> Option<String> {
        let logs = match self.fx.logs_tail(host, cid, EVIDENCE).await {
            Ok(text) => Some(mask(&text, &self.secret_values)),
            Err(e) => {
                tracing::warn!(host, container = short(cid), error = %e, "no logs of the failed container");
                None
            }
        };
        if self.locked().is_ok() {
            let _ = self.fx.stop_and_remove(host, cid, grace).await;
        }
        logs
    }

    /// The app's `stop_timeout` (10 s without one).
    fn grace(&self, app: &str) -> Duration {
        self.env
            .apps
            .get(app)
            .and_then(|a| a.spec.stop_timeout.as_deref())
            .and_then(|d| crate::spec::units::duration(d).ok())
            .unwrap_or(Duration::from_secs(10))
    }

    async fn take_down(&self, app: &str, old: &OldInstance) -> Result<(), StepError> {
        self.locked()?;
        self.fx.stop_and_remove(&old.host, &old.container_id, self.grace(app)).await
    }
}

fn bad_instance(app: &str, instance: &str) -> StepError {
    match crate::model::InstanceId::parse(instance) {
        Err(source) => StepError::BadInstance { app: app.to_string(), source },
        // Parses, but names another app's instance.
        Ok(_) => StepError::BadInstance {
            app: app.to_string(),
            source: crate::model::InstanceIdError { text: format!("{instance} (not an instance of {app})") },
        },
    }
}

/// The short form of a container id.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_secret_is_masked_whole_whatever_the_order() {
        let secrets = ["abc".to_string(), "abcdef".to_string(), String::new()];
        assert_eq!(super::mask("x abcdef y abc z", &secrets), "x (sensitive) y (sensitive) z");
        assert_eq!(super::mask("nothing here", &secrets), "nothing here");
    }
}
