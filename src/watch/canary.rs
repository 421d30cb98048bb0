//! Watch's part in canaries: after a run, a running canary that `watch` marked unhealthy
//! is aborted; one that stayed healthy for its app's `update.auto_promote` since it
//! started serving is promoted. Both are one more apply (`apply::run` with the mode),
//! recorded in the history as `abort` / `promote`; an abort makes the run fail. An app
//! whose canary watch aborted is [`Held`]: watch starts no canary for it again until
//! the repo's commit or the app's spec changes (else a broken version would be started,
//! fail and be aborted over and over).
//!
//! **Invariant:** the decisions are pure ([`next`], [`release`], [`run_mode`]) over the
//! plan, the observation, the snapshot and an explicit `now`; watch changes nothing here
//! except through `apply::run`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::ObservedState;
use crate::plan::canary::{self, CanaryState, Mode};
use crate::plan::{self, Plan};
use crate::spec::Env;

/// What to do about the canaries after a run, and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// Abort (unhealthy) or promote (healthy long enough) this app.
    pub mode: Option<Mode>,
    /// The soonest an auto-promotion falls due (from `now`).
    pub wake_in: Option<Duration>,
}

/// The canaries of `p` (made against `observed`), at `now` (Unix seconds): an unhealthy
/// canary (a health mark on one of its containers) is aborted first; else the first
/// whose `auto_promote` has passed since it started serving is promoted.
pub fn next(env: &Env, p: &Plan, observed: &ObservedState, now: i64) -> Next {
    let (Some(spec), Some(obs)) = (&env.spec.etcd, &observed.etcd) else {
        return Next { mode: None, wake_in: None };
    };
    let records = canary::records(&obs.keys, &spec.prefix, &env.name);
    let marks = plan::health_marks(&obs.keys, &spec.prefix, &env.name);
    let mut wake_in: Option<Duration> = None;
    let mut promote = None;
    for step in p.canaries.iter().filter(|s| s.state == CanaryState::Running) {
        let Some(rec) = records.get(&step.app) else { continue };
        if rec.instances.iter().any(|i| marks.contains_key(&i.container)) {
            return Next { mode: Some(Mode::Abort(step.app.clone())), wake_in: None };
        }
        let after = env
            .apps
            .get(&step.app)
            .and_then(|a| a.spec.update.auto_promote.as_deref())
            .and_then(|d| crate::spec::units::duration(d).ok());
        let (Some(after), Some(since)) = (after, crate::model::unix_seconds(&rec.since)) else { continue };
        let due = since + after.as_secs() as i64;
        if due <= now {
            promote = promote.or(Some(Mode::Promote(step.app.clone())));
        } else {
            let left = Duration::from_secs((due - now) as u64);
            wake_in = Some(wake_in.map_or(left, |w| w.min(left)));
        }
    }
    Next { mode: promote, wake_in }
}

/// The apps whose canary watch aborted: the repo's commit and the app's spec then.
pub type Held = BTreeMap<String, (Option<String>, crate::spec::types::AppSpec)>;

/// Hold `app` after its canary was aborted in a run of `target`.
pub fn hold(held: &mut Held, app: &str, target: &crate::apply::Target) {
    if let Some(a) = target.env.apps.get(app) {
        held.insert(app.to_string(), (target.origin.commit.clone(), a.spec.clone()));
    }
}

/// Let go of the held apps whose commit or spec differ in `target` (or that it no
/// longer has); the apps let go.
pub fn release(held: &mut Held, target: &crate::apply::Target) -> Vec<String> {
    let mut gone = Vec::new();
    held.retain(|app, (commit, spec)| {
        let same = *commit == target.origin.commit && target.env.apps.get(app).is_some_and(|a| a.spec == *spec);
        if !same {
            gone.push(app.clone());
        }
        same
    });
    gone
}

/// The mode of a normal watch run: [`Mode::Held`] while any app is held.
pub fn run_mode(held: &Held) -> Mode {
    if held.is_empty() { Mode::Normal } else { Mode::Held(held.keys().cloned().collect()) }
}

/// Running canaries by app: how many (the `reconcile_canary_instances` gauge).
pub fn counts(p: &Plan) -> std::collections::BTreeMap<String, u64> {
    p.canaries
        .iter()
        .filter(|s| matches!(s.state, CanaryState::Running | CanaryState::Start | CanaryState::Replace))
        .map(|s| (s.app.clone(), s.instances.len() as u64))
        .collect()
}

/// A promote or abort: nothing to confirm, the mode says what.
struct Ending {
    mode: Mode,
}

impl crate::apply::Hooks for Ending {
    fn canary_mode(&mut self) -> Mode {
        self.mode.clone()
    }

    async fn confirm(
        &mut self,
        target: &crate::apply::Target,
        plan: &Plan,
        observed: &ObservedState,
    ) -> Result<bool, String> {
        match &self.mode {
            Mode::Promote(app) => {
                crate::apply::canary::promote_refusal(&target.env, plan, observed, app).map_or(Ok(true), Err)
            }
            _ => Ok(true),
        }
    }
}

impl super::Watcher {
    /// Tell the canary events of an applied plan (`apply::canary::events`).
    fn tell_canaries(&self, p: &Plan) {
        let events = crate::apply::canary::events(p)
            .into_iter()
            .map(|(app, kind, line)| {
                let mut e = self.notes.event(kind, Some(&app), None, line);
                e.summary = p.summary.to_string();
                e
            })
            .collect();
        self.notes.tell(events, true);
    }

    /// After a run that converged: the canary gauge; then abort an unhealthy canary (the
    /// run fails) or promote one that stayed healthy for `auto_promote`, as one more apply.
    pub(super) async fn canary_step(
        &mut self,
        outcome: crate::apply::Outcome,
        wake: Option<tokio::time::Instant>,
    ) -> (super::RunResult, Option<tokio::time::Instant>) {
        use crate::apply;
        if outcome.report.is_some() {
            // This run started (or ended) a canary: `canary_started` / `canary_aborted`.
            self.tell_canaries(&outcome.plan);
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let n = next(&outcome.target.env, &outcome.plan, &outcome.observed, now);
        if let Ok(mut m) = self.metrics.lock() {
            m.canaries = counts(&outcome.plan);
        }
        let due = n.wake_in.map(|d| tokio::time::Instant::now() + d);
        let wake = match (wake, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(mode) = n.mode else { return (super::RunResult::Ok, wake) };
        let (app, abort) = match &mode {
            Mode::Abort(a) => (a.clone(), true),
            Mode::Promote(a) => (a.clone(), false),
            Mode::Normal | Mode::Held(_) => return (super::RunResult::Ok, wake),
        };
        if self.cfg.dry_run {
            tracing::warn!(app, abort, "canary due for promote/abort (dry run: nothing changed)");
            return (super::RunResult::DryRun, wake);
        }
        let mut opts = self.cfg.apply;
        opts.kind = if abort { apply::HistoryKind::Abort } else { apply::HistoryKind::Promote };
        let req = apply::Request { opts, observe: self.cfg.observe, pinning: apply::Pinning::Follow, lock: true };
        let progress: apply::Progress = std::sync::Arc::new(|line: String| tracing::info!("{line}"));
        let what = if abort { "abort" } else { "promote" };
        tracing::warn!(
            app,
            "canary {what}: {}",
            if abort { "a canary turned unhealthy" } else { "healthy for auto_promote" }
        );
        match apply::run(outcome.target, req, &mut Ending { mode }, progress).await {
            Err(e) => self.fail(e.stage(), e),
            Ok(o) => match &o.report {
                Some(r) if !r.ok() => self.fail("apply", format!("canary {what} of app `{app}`: {}", r.result_line())),
                _ if abort => {
                    self.tell_canaries(&o.plan);
                    hold(&mut self.canary_held, &app, &o.target);
                    tracing::warn!(
                        app,
                        "canary aborted: watch starts no canary for app `{app}` again until the commit or the app's spec changes (`reconcile apply` starts one now)"
                    );
                    self.fail(
                        "canary",
                        format!("the canary of app `{app}` turned unhealthy: aborted, the old instances serve"),
                    )
                }
                _ => {
                    self.tell_canaries(&o.plan);
                    tracing::info!(app, "canary promoted");
                    (super::RunResult::Ok, wake)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spec::{RepoSnapshot, load};

    /// Environment `t` with app `web` (image `image`) at `commit`.
    fn target(image: &str, commit: Option<&str>) -> crate::apply::Target {
        let env = "apiVersion: reconcile/v1\nkind: Environment\nname: t\nhosts:\n  - {name: h1, docker: 'unix:///a.sock', address: 127.0.0.1, ports: 20000-20999}\netcd: {endpoints: ['http://127.0.0.1:1']}\n";
        let web = format!(
            "apiVersion: reconcile/v1\nkind: App\nname: web\nimage: {image}\nreplicas: 2\nupdate: {{strategy: canary, canary: 1}}\n"
        );
        let files: BTreeMap<String, Vec<u8>> = [
            ("environments/t/environment.yaml".to_string(), env.as_bytes().to_vec()),
            ("environments/t/apps/web.yaml".to_string(), web.into_bytes()),
        ]
        .into();
        let snap = RepoSnapshot { files, origin: Default::default() };
        let l = load(&snap);
        assert!(l.diagnostics.iter().all(|d| !d.is_error()), "{:?}", l.diagnostics);
        let origin = crate::spec::Origin { commit: commit.map(str::to_string), ..Default::default() };
        crate::apply::Target { env: l.envs["t"].clone(), files: Arc::new(snap.files), origin, secrets: BTreeMap::new() }
    }

    #[test]
    fn an_aborted_app_is_held_until_the_commit_or_its_spec_changes() {
        let mut held = Held::new();
        assert_eq!(run_mode(&held), Mode::Normal);
        let at = target("img/web:2", Some("c1"));
        hold(&mut held, "web", &at);
        hold(&mut held, "ghost", &at); // not an app of the target: nothing to hold
        assert_eq!(run_mode(&held), Mode::Held(["web".to_string()].into()));
        assert!(release(&mut held, &at).is_empty(), "same commit, same spec: still held");
        assert!(release(&mut held, &target("img/web:2", Some("c1"))).is_empty());
        // Outside Git the commit stays `None`: a changed spec lets go.
        let mut outside = Held::new();
        hold(&mut outside, "web", &target("img/web:2", None));
        assert_eq!(release(&mut outside, &target("img/web:3", None)), ["web"]);
        assert_eq!(run_mode(&outside), Mode::Normal);
        // A new commit lets go, whatever it changed.
        assert_eq!(release(&mut held, &target("img/web:2", Some("c2"))), ["web"]);
        assert!(held.is_empty());
    }
}
