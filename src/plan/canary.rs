//! Phase 1b and 3b: canaries (`update.strategy: canary`, Nomad's `update` block).
//!
//! A canary is the new version of an instance running *beside* its old container, at a
//! fresh pool port, both serving: a rolling replace paused after "new healthy →
//! registry + LB" and before "old out". `<prefix>/<env>/canary/<app>`
//! ([`CanaryRecord`]) names the canary containers; apply writes it once they serve.
//!
//! Per app with strategy canary, in the normal mode:
//! - **none running**, the spec changed: the first `canary` changed instances (by
//!   ordinal) get a replace with `strategy: canary` (start beside, keep the old one);
//!   the other changed instances are left as they are ([`CanaryState::Start`]);
//! - **running the desired spec**: nothing changes, the canaries keep serving beside the
//!   old instances ([`CanaryState::Running`]): plan does not undo a canary;
//! - **running an older spec** (a new commit) or fewer canaries than asked: the
//!   canaries are removed and new ones started ([`CanaryState::Replace`]); when the
//!   repo no longer differs from the old instances, they are only removed
//!   ([`CanaryState::End`]).
//!
//! [`Mode::Promote`] makes the canaries the instances of their ordinals (their old
//! containers are removed) and rolls the rest out as `rolling` does; [`Mode::Abort`]
//! removes the canaries and keeps the old instances. Canaries count as the first new
//! instances, so the app ends at `replicas` either way.
//!
//! **Invariants:** pure; a canary is never the only container of its instance (a
//! canary whose old container is gone is just the instance); the canary key is never
//! deleted by the generic etcd diff, only by this phase (abort, end) or by apply
//! (after a promote succeeded).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::context::Context;
use super::decide::Decided;
use super::group::{Grouped, old_of};
use super::{Action, PlanError, Reason};
use crate::model::{CanaryRecord, InstanceId, ObservedInstance, keys};
use crate::placement::Assignment;
use crate::spec::types::Strategy;

/// What the plan is made for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// `plan`, `apply`, `watch`: canaries are started, kept or replaced.
    #[default]
    Normal,
    /// `watch` after it aborted these apps' unhealthy canaries: as `Normal`, but no
    /// canary is started for them (their old instances stay) until watch lets go.
    Held(BTreeSet<String>),
    /// `reconcile promote --app A`.
    Promote(String),
    /// `reconcile abort --app A`.
    Abort(String),
}

/// The canary of one app, as the plan leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    pub app: String,
    pub state: CanaryState,
    /// The canary instances (`<app>-<ordinal>`) this step is about.
    pub instances: Vec<String>,
    /// The app's `replicas`.
    pub replicas: u32,
    /// When the running canary started serving (from its record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// What happens to an app's canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryState {
    /// New canaries start beside the old instances.
    Start,
    /// The canaries run the desired spec: nothing to do until promote or abort.
    Running,
    /// The canaries run an older spec: removed, new ones started.
    Replace,
    /// The canaries become the instances; the rest rolls out.
    Promote,
    /// The canaries are removed; the old instances stay.
    Abort,
    /// The canaries are removed (the repo no longer differs from the old instances, or
    /// the app no longer uses canaries) and the record deleted.
    End,
}

impl CanaryStep {
    /// One line for people: `canary api: 1 of 3 serving (promote: …; abort: …)`.
    pub fn line(&self, env: &str) -> String {
        let n = self.instances.len();
        let (app, r) = (&self.app, self.replicas);
        let how = format!(
            "promote: `reconcile promote --env {env} --app {app}`; abort: `reconcile abort --env {env} --app {app}`"
        );
        match self.state {
            CanaryState::Start => format!("canary {app}: {n} of {r} to start beside the old instances ({how})"),
            CanaryState::Running => format!("canary {app}: {n} of {r} serving ({how})"),
            CanaryState::Replace => format!("canary {app}: replaced by the new spec, {n} of {r} to start ({how})"),
            CanaryState::Promote => format!("canary {app}: promoting {n} canary(ies), the rest of {r} rolls out"),
            CanaryState::Abort => format!("canary {app}: aborting, {n} canary(ies) removed, the old instances stay"),
            CanaryState::End => format!("canary {app}: ended, the canaries are removed"),
        }
    }
}

/// The canary records among observed etcd keys, by app (unreadable ones are skipped:
/// their canaries are then duplicates the plan removes).
pub fn records(keys: &BTreeMap<String, String>, prefix: &str, env: &str) -> BTreeMap<String, CanaryRecord> {
    let dir = keys::canary_dir(prefix, env);
    keys.range(dir.clone()..)
        .take_while(|(k, _)| k.starts_with(&dir))
        .filter_map(|(k, v)| {
            let app = k.strip_prefix(&dir).filter(|a| !a.is_empty() && !a.contains('/'))?;
            serde_json::from_str(v).ok().map(|r| (app.to_string(), r))
        })
        .collect()
}

/// The canaries that stay beside their old containers (normal and abort modes), and the
/// apps whose canaries were made the instances (promote).
#[derive(Debug, Default)]
pub struct Live<'o> {
    pub beside: BTreeMap<String, Vec<(InstanceId, &'o ObservedInstance)>>,
    pub promoted: BTreeSet<String>,
}

/// Phase 1b, over `group`'s output: a canary container is not a duplicate of its
/// instance. Normal/abort: the old container stays the instance's primary and the
/// canary is set aside; promote: the canary becomes the primary and the old one goes.
pub fn regroup<'o>(
    cx: &Context<'_>,
    grouped: &mut Grouped<'o>,
    records: &BTreeMap<String, CanaryRecord>,
    mode: &Mode,
) -> Live<'o> {
    let mut live = Live::default();
    for (app, rec) in records {
        if cx.env.apps.get(app).is_none_or(|a| a.spec.update.strategy != Strategy::Canary) {
            continue;
        }
        let names: BTreeSet<&str> = rec.instances.iter().map(|i| i.container.as_str()).collect();
        let canaries: Vec<&'o ObservedInstance> =
            grouped.all.iter().copied().filter(|o| o.app == *app && names.contains(o.name.as_str())).collect();
        for c in canaries {
            let Some(id) = c.id() else { continue };
            let mut others: Vec<&'o ObservedInstance> = grouped
                .all
                .iter()
                .copied()
                .filter(|o| o.id().as_ref() == Some(&id) && !names.contains(o.name.as_str()))
                .collect();
            if others.is_empty() {
                continue; // alone: it simply is the instance
            }
            others.sort_by_key(|o| (!o.state.is_running(), o.created, o.container_id.clone()));
            let old = others[0];
            if *mode == Mode::Promote(app.clone()) {
                drop_removal(grouped, &c.container_id);
                if let Some(prev) = grouped.primary.insert(id, c)
                    && prev.container_id != c.container_id
                {
                    drop_removal(grouped, &prev.container_id);
                    grouped.removals.push(Action::Remove {
                        app: app.clone(),
                        instance: prev.instance.clone(),
                        reason: Reason::Canary { why: "promoted: its canary takes over".into() },
                        old: old_of(prev),
                    });
                }
                live.promoted.insert(app.clone());
            } else {
                drop_removal(grouped, &c.container_id);
                if grouped.primary.get(&id).is_some_and(|p| p.container_id == c.container_id) {
                    drop_removal(grouped, &old.container_id);
                    grouped.primary.insert(id.clone(), old);
                }
                live.beside.entry(app.clone()).or_default().push((id, c));
            }
        }
    }
    live
}

fn drop_removal(grouped: &mut Grouped<'_>, container_id: &str) {
    grouped.removals.retain(|a| !matches!(a, Action::Remove { old, .. } if old.container_id == container_id));
}

/// What phase 3b adds to the plan.
#[derive(Debug, Default)]
pub struct Adjusted {
    pub steps: Vec<CanaryStep>,
    /// Canary containers that keep running (their health marks are carried).
    pub staying: Vec<String>,
    /// The serving canaries, for the LB's weights.
    pub canaries: BTreeSet<Assignment>,
}

/// Phase 3b, over `decide`'s output: per canary app, what the mode and the canary's
/// state call for (see the module doc).
///
/// # Errors
/// Promote or abort of an app without a running canary; a template fails.
pub fn adjust(
    cx: &Context<'_>,
    decided: &mut Decided,
    live: &Live<'_>,
    records: &BTreeMap<String, CanaryRecord>,
    mode: &Mode,
    prefix: Option<&str>,
) -> Result<Adjusted, PlanError> {
    if let Mode::Promote(app) | Mode::Abort(app) = mode {
        require_running(live, app, mode, &cx.env.name)?;
    }
    let mut a = Adjust { cx, records, prefix, out: Adjusted::default(), extra: Vec::new() };
    for (name, app) in &cx.env.apps {
        match app.spec.update.canaries() {
            Some(n) => a.app(decided, live, mode, name, app.spec.replicas, n),
            None if records.contains_key(name) => a.delete_record(name),
            None => {}
        }
    }
    let Adjust { out, extra, .. } = a;
    // Removed instances leave `keep_old`'s indices alone: drop the kept-back replaces last.
    decided
        .actions
        .retain(|a| !matches!(a, Action::Replace { strategy: Strategy::Rolling, reason: Reason::Canary { .. }, .. }));
    decided.actions.extend(extra);
    if !out.steps.is_empty() {
        // Old and canary containers of one instance: in the executor's serving order, so
        // the LB file apply renders is the plan's.
        decided.finals.sort();
    }
    Ok(out)
}

/// Promote and abort need a canary of `app` running.
fn require_running(live: &Live<'_>, app: &str, mode: &Mode, env: &str) -> Result<(), PlanError> {
    if live.promoted.contains(app) || live.beside.contains_key(app) {
        return Ok(());
    }
    let what = if matches!(mode, Mode::Promote(_)) { "promote" } else { "abort" };
    Err(PlanError::Canary(format!(
        "app `{app}` has no canary running in environment `{env}`: nothing to {what} \
         (`reconcile status --env {env}` shows the canaries)"
    )))
}

/// [`adjust`]'s state: what it adds to the plan so far.
struct Adjust<'x> {
    cx: &'x Context<'x>,
    records: &'x BTreeMap<String, CanaryRecord>,
    prefix: Option<&'x str>,
    out: Adjusted,
    /// Actions added after the decided ones (removals of canaries, record deletions).
    extra: Vec<Action>,
}

/// One app with strategy canary, as [`adjust`] sees it.
struct CanaryApp<'x, 'o> {
    name: &'x str,
    replicas: u32,
    since: Option<String>,
    /// Its canaries running beside their old containers.
    beside: &'x [(InstanceId, &'o ObservedInstance)],
}

impl CanaryApp<'_, '_> {
    fn step(&self, state: CanaryState, instances: Vec<String>) -> CanaryStep {
        CanaryStep { app: self.name.to_string(), state, instances, replicas: self.replicas, since: self.since.clone() }
    }

    /// The instance names of the canaries beside.
    fn names(&self) -> Vec<String> {
        self.beside.iter().map(|(id, _)| id.to_string()).collect()
    }

    /// Remove every canary beside, saying `why`.
    fn remove_beside(&self, extra: &mut Vec<Action>, why: &str) {
        for (_, c) in self.beside {
            extra.push(Action::Remove {
                app: self.name.to_string(),
                instance: c.instance.clone(),
                reason: Reason::Canary { why: why.into() },
                old: old_of(c),
            });
        }
    }
}

impl<'x> Adjust<'x> {
    /// Delete app `app`'s canary record, when there is one (and etcd).
    fn delete_record(&mut self, app: &str) {
        if let (Some(p), Some(rec)) = (self.prefix, self.records.get(app)) {
            let old = serde_json::to_string(rec).unwrap_or_default();
            self.extra.push(Action::DeleteKey { key: keys::canary(p, &self.cx.env.name, app), old });
        }
    }

    /// One canary app (`n` canaries wanted): promote, abort, keep serving, or start.
    fn app(&mut self, decided: &mut Decided, live: &'x Live<'_>, mode: &Mode, name: &'x str, replicas: u32, n: u32) {
        let c = CanaryApp {
            name,
            replicas,
            since: self.records.get(name).map(|r| r.since.clone()),
            beside: live.beside.get(name).map(Vec::as_slice).unwrap_or_default(),
        };
        // Whatever is replaced of a canary app rolls, except the canaries started below.
        for a in &mut decided.actions {
            if let Action::Replace { app: x, strategy, .. } = a
                && x == name
            {
                *strategy = Strategy::Rolling;
            }
        }
        if matches!(mode, Mode::Promote(p) if p == name) {
            let instances = self.records.get(name).map(|r| r.instances.iter().map(|i| i.instance.clone()).collect());
            self.out.steps.push(c.step(CanaryState::Promote, instances.unwrap_or_default()));
            return;
        }
        let changed = changed(decided, name);
        if matches!(mode, Mode::Abort(p) if p == name) {
            c.remove_beside(&mut self.extra, "aborted: the old instances stay");
            keep_old(decided, &changed);
            self.delete_record(name);
            self.out.steps.push(c.step(CanaryState::Abort, c.names()));
            return;
        }
        let want = (n as usize).min(changed.len());
        if self.serving_fresh(decided, &c, &changed, want) {
            return;
        }
        if !c.beside.is_empty() {
            c.remove_beside(&mut self.extra, "superseded by the new spec");
        }
        if changed.is_empty() {
            if self.records.contains_key(name) || !c.beside.is_empty() {
                self.delete_record(name);
                self.out.steps.push(c.step(CanaryState::End, c.names()));
            }
            return;
        }
        if matches!(mode, Mode::Held(apps) if apps.contains(name)) {
            keep_old(decided, &changed);
            return;
        }
        self.start(decided, &c, &changed, want);
    }

    /// The `want` canaries beside run the desired spec: they keep serving beside the old
    /// containers, which stay (true); otherwise nothing is done (false).
    fn serving_fresh(&mut self, decided: &mut Decided, c: &CanaryApp<'_, '_>, changed: &[usize], want: usize) -> bool {
        let changed_ids: BTreeSet<InstanceId> =
            changed.iter().filter_map(|&i| replace_id(&decided.actions[i])).collect();
        let fresh = !c.beside.is_empty()
            && c.beside.len() == want
            && c.beside.iter().all(|(id, o)| changed_ids.contains(id) && is_fresh(self.cx, id, o));
        if !fresh {
            return false;
        }
        keep_old(decided, changed);
        for (id, o) in c.beside {
            let a = Assignment { app: id.app.clone(), ordinal: id.ordinal, host: o.host.clone(), port: o.port };
            decided.finals.push(a.clone());
            self.out.canaries.insert(a);
            self.out.staying.push(o.name.clone());
        }
        self.out.steps.push(c.step(CanaryState::Running, c.names()));
        true
    }

    /// Start the first `want` changed instances as canaries beside their old
    /// containers; the other changed ones are kept back.
    fn start(&mut self, decided: &mut Decided, c: &CanaryApp<'_, '_>, changed: &[usize], want: usize) {
        let (start, rest) = changed.split_at(want);
        keep_old(decided, rest);
        let mut instances = Vec::new();
        for &i in start {
            if let Action::Replace { instance, old, new, strategy, .. } = &mut decided.actions[i] {
                *strategy = Strategy::Canary;
                instances.push(instance.clone());
                if let Ok(id) = InstanceId::parse(instance) {
                    decided.kept.insert(id.clone(), old.container_name.clone());
                    decided.finals.push(Assignment {
                        app: id.app.clone(),
                        ordinal: id.ordinal,
                        host: old.host.clone(),
                        port: old.port,
                    });
                    self.out.canaries.insert(Assignment {
                        app: id.app,
                        ordinal: id.ordinal,
                        host: new.host.clone(),
                        port: new.port,
                    });
                }
            }
        }
        let restarted = self.records.contains_key(c.name) || !c.beside.is_empty();
        let state = if restarted { CanaryState::Replace } else { CanaryState::Start };
        self.out.steps.push(CanaryStep { since: None, ..c.step(state, instances) });
    }
}

/// Indices of the app's replaces that a canary rolls out: a changed spec or a moved
/// tag, side by side (a fresh port); by ordinal.
fn changed(decided: &Decided, app: &str) -> Vec<usize> {
    let mut v: Vec<(u32, usize)> =
        decided
            .actions
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Action::Replace {
                    app: x, reason: Reason::SpecChanged | Reason::ImageDigest { .. }, old, new, ..
                } if x == app && new.port.is_some() && new.port != old.port => replace_id(a).map(|id| (id.ordinal, i)),
                _ => None,
            })
            .collect();
    v.sort_unstable();
    v.into_iter().map(|(_, i)| i).collect()
}

fn replace_id(a: &Action) -> Option<InstanceId> {
    match a {
        Action::Replace { instance, .. } => InstanceId::parse(instance).ok(),
        _ => None,
    }
}

/// The replaces at `idx` are not done: their old containers stay as they are (kept, and
/// final at their old place). They are marked here and dropped at the end of [`adjust`].
fn keep_old(decided: &mut Decided, idx: &[usize]) {
    for &i in idx {
        let Some(Action::Replace { instance, old, new, reason, strategy, .. }) = decided.actions.get_mut(i) else {
            continue;
        };
        let Ok(id) = InstanceId::parse(instance) else { continue };
        decided
            .finals
            .retain(|a| !(a.app == id.app && a.ordinal == id.ordinal && a.host == new.host && a.port == new.port));
        decided.finals.push(Assignment {
            app: id.app.clone(),
            ordinal: id.ordinal,
            host: old.host.clone(),
            port: old.port,
        });
        decided.kept.insert(id, old.container_name.clone());
        *reason = Reason::Canary { why: "kept back".into() };
        *strategy = Strategy::Rolling;
    }
}

/// The canary container runs what the repo asks for at its host and port.
fn is_fresh(cx: &Context<'_>, id: &InstanceId, c: &ObservedInstance) -> bool {
    let a = Assignment { app: id.app.clone(), ordinal: id.ordinal, host: c.host.clone(), port: c.port };
    c.state.is_running() && cx.render(&a, c.port, false).is_ok_and(|(_, h)| h == c.spec_hash)
}

/// LB weights of one app's serving instances: `(old, canary)`. Without `traffic` both 1
/// (every instance gets an equal share); with `P%`, integers such that the `canaries`
/// together get P% of `old + canaries` instances' requests, reduced, at most 256 each
/// (haproxy's limit).
pub fn weights(traffic: Option<u32>, old: usize, canaries: usize) -> (u32, u32) {
    let Some(p) = traffic.filter(|p| (1..100).contains(p)) else { return (1, 1) };
    if old == 0 || canaries == 0 {
        return (1, 1);
    }
    let (o, c) = (u64::from(100 - p) * canaries as u64, u64::from(p) * old as u64);
    let g = gcd(o, c);
    let (mut o, mut c) = (o / g, c / g);
    let top = o.max(c);
    if top > 256 {
        o = ((o * 256) / top).max(1);
        c = ((c * 256) / top).max(1);
    }
    (o as u32, c as u32)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

/// Set `canary` and `weight` on the LB template's instances (`apps` as
/// `spec::check::lb_apps` builds it, where every instance has `canary: false, weight: 1`).
pub fn weigh(apps: &mut serde_json::Value, env: &crate::spec::load::Env, canaries: &BTreeSet<Assignment>) {
    let Some(list) = apps.as_array_mut() else { return };
    for app in list {
        let name = app.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
        let traffic = env.apps.get(&name).and_then(|a| a.spec.update.traffic_percent());
        let Some(instances) = app.get_mut("instances").and_then(|i| i.as_array_mut()) else { continue };
        let is_canary = |i: &serde_json::Value| {
            let host = i.get("host").and_then(|h| h.as_str()).unwrap_or_default();
            let port = i.get("port").and_then(serde_json::Value::as_u64);
            canaries.iter().any(|c| c.app == name && c.host == host && c.port.map(u64::from) == port)
        };
        let flags: Vec<bool> = instances.iter().map(is_canary).collect();
        let n_c = flags.iter().filter(|f| **f).count();
        let (w_old, w_c) = weights(traffic, flags.len() - n_c, n_c);
        for (i, canary) in instances.iter_mut().zip(flags) {
            i["canary"] = serde_json::Value::Bool(canary);
            i["weight"] = serde_json::Value::from(if canary { w_c } else { w_old });
        }
    }
}

/// The plan's canary lines (text and Markdown renderings).
pub fn lines(steps: &[CanaryStep], env: &str) -> Vec<String> {
    steps.iter().map(|s| s.line(env)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_give_the_canaries_their_share() {
        assert_eq!(weights(None, 3, 1), (1, 1));
        // 10% for 1 canary beside 3 old: 1/(1 + 3*3) = 10%.
        assert_eq!(weights(Some(10), 3, 1), (3, 1));
        for (p, old, c) in [(10, 3, 1), (25, 3, 1), (5, 7, 2), (50, 1, 1), (1, 9, 1), (99, 2, 3), (33, 5, 1)] {
            let (wo, wc) = weights(Some(p), old, c);
            assert!((1..=256).contains(&wo) && (1..=256).contains(&wc), "{p}% {old}/{c}: {wo}/{wc}");
            let share = f64::from(wc) * c as f64 / (f64::from(wc) * c as f64 + f64::from(wo) * old as f64);
            assert!((share - f64::from(p) / 100.0).abs() < 0.01, "{p}% {old}/{c}: {wo}/{wc} gives {share}");
        }
        assert_eq!(weights(Some(10), 0, 1), (1, 1));
        assert_eq!(weights(Some(10), 3, 0), (1, 1));
    }

    #[test]
    fn records_are_read_from_the_canary_directory_only() {
        let rec = CanaryRecord { commit: None, spec_hash: "h".into(), instances: vec![], since: "t".into() };
        let json = serde_json::to_string(&rec).unwrap();
        let keys: BTreeMap<String, String> = [
            ("/r/e/canary/api".to_string(), json.clone()),
            ("/r/e/canary/bad".to_string(), "{".to_string()),
            ("/r/e/canary/x/y".to_string(), json.clone()),
            ("/r/e/canaryz".to_string(), json),
        ]
        .into();
        let got = records(&keys, "/r", "e");
        assert_eq!(got.keys().collect::<Vec<_>>(), ["api"]);
        assert_eq!(got["api"], rec);
    }

    #[test]
    fn lines_say_how_many_serve_and_how_to_promote_and_abort() {
        let s = CanaryStep {
            app: "api".into(),
            state: CanaryState::Running,
            instances: vec!["api-0".into()],
            replicas: 3,
            since: None,
        };
        let l = s.line("prod");
        assert!(l.contains("canary api: 1 of 3 serving"), "{l}");
        assert!(l.contains("reconcile promote --env prod --app api"), "{l}");
        assert!(l.contains("reconcile abort --env prod --app api"), "{l}");
    }
}
