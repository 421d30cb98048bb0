//! Phase 3: decide per instance — keep, start, create, replace (or hold, for
//! `watch`'s crash-looping instances) — from its placement, its primary container
//! and the spec-hashes; then the removals of instances no longer desired.

use std::collections::{BTreeMap, BTreeSet};

use super::context::Context;
use super::group::{Grouped, old_of};
use super::instance::InstanceSpec;
use super::place::Ports;
use super::{Action, NewInstance, PlanError, Reason, changes, container_name, digest};
use crate::model::{InstanceId, ObservedInstance};
use crate::placement::Assignment;
use crate::spec::types::{PullPolicy, Strategy};

/// What to do with one placed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No container, and held back: nothing (not created, not serving).
    Hold,
    /// Up to date but stopped, and held back: left stopped, not serving.
    HoldStopped,
    /// No container: create one.
    Create,
    /// Up to date and running.
    Keep,
    /// Up to date but stopped: start it.
    Start,
    /// Replace the container; `side_by_side` when the new one needs a fresh pool
    /// port to serve beside the old one (a rolling spec change).
    Replace { reason: Reason, side_by_side: bool },
}

/// What is known of one placed instance besides its placement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The container's spec-hash is the desired one.
    pub same_hash: bool,
    /// `watch` holds the instance back (crash loop).
    pub held: bool,
    /// `pull: always` and the tag now points to this digest, which the container does not run.
    pub new_digest: Option<&'a str>,
}

/// The decision for assignment `a`, given its primary container `o`, the facts above,
/// and the app's update strategy. Pure and total.
pub fn decide(a: &Assignment, o: Option<&ObservedInstance>, f: Facts<'_>, strategy: Strategy) -> Decision {
    let Facts { same_hash, held, new_digest } = f;
    let Some(o) = o else { return if held { Decision::Hold } else { Decision::Create } };
    let in_place = o.host == a.host && (a.port.is_none() || o.port == a.port);
    if !in_place {
        let why = if o.host != a.host {
            format!("host `{}` is no longer eligible", o.host)
        } else {
            "its port is no longer available".to_string()
        };
        return Decision::Replace { reason: Reason::Moved { why }, side_by_side: false };
    }
    let side_by_side = a.port.is_some() && matches!(strategy, Strategy::Rolling | Strategy::Canary);
    match (same_hash, new_digest) {
        (true, None) => match (o.state.is_running(), held) {
            (true, _) => Decision::Keep,
            (false, true) => Decision::HoldStopped,
            (false, false) => Decision::Start,
        },
        (true, Some(d)) => Decision::Replace { reason: Reason::ImageDigest { digest: d.to_string() }, side_by_side },
        (false, _) => Decision::Replace { reason: Reason::SpecChanged, side_by_side },
    }
}

/// The outcome of phase 3.
#[derive(Debug, Default)]
pub struct Decided {
    /// Instance actions (creates, starts, replaces, removals), unsorted.
    pub actions: Vec<Action>,
    /// Where every instance that will run ends up (a replacement at its new port).
    pub finals: Vec<Assignment>,
    /// Instances whose container stays as it is: its container name.
    pub kept: BTreeMap<InstanceId, String>,
    /// Real (unmasked) specs of the containers to create, by spec-hash.
    pub specs: BTreeMap<String, InstanceSpec>,
}

/// Decide every assignment, then remove the primaries no assignment kept.
///
/// `assignments` are in (app, ordinal) order, as placement returns them, and so are the
/// primaries: one merge walk pairs them, with no lookup (or key built) per instance.
///
/// # Errors
/// A template fails, or a rolling replacement finds no free port.
pub fn decide_all(
    cx: &Context<'_>,
    grouped: &Grouped<'_>,
    assignments: &[Assignment],
    ports: &mut Ports<'_>,
    hold: &BTreeSet<InstanceId>,
) -> Result<Decided, PlanError> {
    if !assignments.is_sorted_by(|x, y| (&x.app, x.ordinal) < (&y.app, y.ordinal)) {
        return Err(PlanError::Placement("placement returned assignments out of (app, ordinal) order".into()));
    }
    let mut out = Decided::default();
    let mut kept = Vec::new();
    let mut unplaced = Vec::new();
    let mut hashes = cx.hashes(assignments).into_iter();
    let mut primaries = grouped.primary.iter().peekable();
    let mut app: Option<(&str, &crate::spec::load::App)> = None; // the last one looked up
    for a in assignments {
        let key = (a.app.as_str(), a.ordinal);
        while let Some((_, o)) = primaries.next_if(|(id, _)| (id.app.as_str(), id.ordinal) < key) {
            unplaced.push(*o);
        }
        let o = primaries.next_if(|(id, _)| (id.app.as_str(), id.ordinal) == key).map(|(_, o)| *o);
        let hash = hashes.next().unwrap_or_else(|| Err(PlanError::Placement("render results out of step".into())));
        let app = match app {
            Some((name, spec)) if name == a.app => spec,
            _ => {
                let spec = cx.env.apps.get(&a.app).ok_or_else(|| {
                    PlanError::Placement(format!("placement produced an instance of unknown app `{}`", a.app))
                })?;
                app.insert((a.app.as_str(), spec)).1
            }
        };
        let strategy = app.spec.update.strategy;
        let same_hash = matches!((o, &hash), (Some(o), Ok(h)) if o.spec_hash == *h);
        let new_digest = match (o, app.spec.pull) {
            (Some(o), PullPolicy::Always) => digest::stale(o, &app.spec.image, &cx.digests),
            _ => None,
        };
        let id = InstanceId::new(a.app.clone(), a.ordinal);
        let facts = Facts { same_hash, held: hold.contains(&id), new_digest: new_digest.as_deref() };
        let decision = decide(a, o, facts, strategy);
        if decision == Decision::Hold {
            continue;
        }
        if let Some(name) = out.apply(cx, ports, a, &id, o, hash?, decision, strategy)? {
            kept.push((id, name));
        }
    }
    // In key order: the map is built without searching.
    out.kept = kept.into_iter().collect();
    for o in unplaced.into_iter().chain(primaries.map(|(_, o)| *o)) {
        let reason = if cx.env.apps.contains_key(&o.app) { Reason::ScaledDown } else { Reason::NotInSpec };
        out.actions.push(Action::Remove { app: o.app.clone(), instance: o.instance.clone(), reason, old: old_of(o) });
    }
    Ok(out)
}

impl Decided {
    /// Record one decision: its action and its final placement. Returns the name of
    /// the container when it stays as it is (kept).
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        cx: &Context<'_>,
        ports: &mut Ports<'_>,
        a: &Assignment,
        id: &InstanceId,
        o: Option<&ObservedInstance>,
        hash: String,
        decision: Decision,
        strategy: Strategy,
    ) -> Result<Option<String>, PlanError> {
        match (decision, o) {
            (Decision::Hold, _) => {}
            (Decision::HoldStopped, Some(o)) => return Ok(Some(o.name.clone())),
            (Decision::Keep, Some(o)) => {
                self.finals.push(a.clone());
                return Ok(Some(o.name.clone()));
            }
            (Decision::Start, Some(o)) => {
                self.actions.push(Action::Start {
                    app: a.app.clone(),
                    instance: id.to_string(),
                    reason: Reason::NotRunning,
                    old: old_of(o),
                });
                self.finals.push(a.clone());
                return Ok(Some(o.name.clone()));
            }
            (Decision::Create, _) => {
                let (spec, _) = cx.render(a, a.port, true)?;
                let new = self.new_instance(cx, a, spec, &hash, a.port)?;
                self.actions.push(Action::Create {
                    app: a.app.clone(),
                    instance: id.to_string(),
                    reason: Reason::Missing,
                    new,
                });
                self.finals.push(a.clone());
            }
            (Decision::Replace { reason, side_by_side }, Some(o)) => {
                let port = if side_by_side { Some(ports.fresh(cx, &a.host, id)?) } else { a.port };
                let hash = if port == a.port { hash } else { cx.render(a, port, false)?.1 };
                let (spec, _) = cx.render(a, port, true)?;
                let changes = changes(o.spec.as_ref(), &spec);
                let mut new = self.new_instance(cx, a, spec, &hash, port)?;
                if let Reason::ImageDigest { digest } = &reason {
                    // Same spec-hash, so the same name as the old container: name it by digest.
                    digest::rename(&mut new, &o.name, digest);
                }
                self.actions.push(Action::Replace {
                    app: a.app.clone(),
                    instance: id.to_string(),
                    reason,
                    changes,
                    old: old_of(o),
                    new,
                    strategy,
                });
                self.finals.push(Assignment { port, ..a.clone() });
            }
            (d, None) => {
                return Err(PlanError::Placement(format!("decided {d:?} for `{id}`, which has no container")));
            }
        }
        Ok(None)
    }

    /// The container to create for `a` at `port` (spec-hash `hash`) from its spec
    /// rendered with `mask` (the plan shows the masked side; apply gets the real one).
    fn new_instance(
        &mut self,
        cx: &Context<'_>,
        a: &Assignment,
        spec: InstanceSpec,
        hash: &str,
        port: Option<u16>,
    ) -> Result<NewInstance, PlanError> {
        let new = NewInstance {
            host: a.host.clone(),
            address: cx.placed_address(&a.host)?.to_string(),
            port,
            container_name: container_name(&cx.env.name, &a.app, a.ordinal, hash),
            spec_hash: hash.to_string(),
            spec: spec.masked(),
        };
        self.specs.insert(hash.to_string(), spec);
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContainerState;

    fn f(same_hash: bool, held: bool) -> Facts<'static> {
        Facts { same_hash, held, new_digest: None }
    }

    fn at(host: &str, port: Option<u16>) -> Assignment {
        Assignment { app: "api".into(), ordinal: 0, host: host.into(), port }
    }

    fn running(host: &str, port: Option<u16>, state: ContainerState) -> ObservedInstance {
        ObservedInstance {
            container_id: "c".into(),
            name: "t-api-0-x".into(),
            host: host.into(),
            app: "api".into(),
            instance: "api-0".into(),
            ordinal: Some(0),
            spec_hash: "old".into(),
            commit: String::new(),
            image: "img".into(),
            state,
            status: String::new(),
            created: 0,
            port,
            spec: None,
            image_id: String::new(),
            repo_digests: vec![],
        }
    }

    #[test]
    fn missing_instances_are_created_unless_held() {
        let a = at("h1", Some(20000));
        assert_eq!(decide(&a, None, f(false, false), Strategy::Rolling), Decision::Create);
        assert_eq!(decide(&a, None, f(false, true), Strategy::Rolling), Decision::Hold);
    }

    #[test]
    fn up_to_date_instances_are_kept_or_started_unless_held() {
        let a = at("h1", Some(20000));
        let up = running("h1", Some(20000), ContainerState::Running);
        let down = running("h1", Some(20000), ContainerState::Exited);
        assert_eq!(decide(&a, Some(&up), f(true, false), Strategy::Rolling), Decision::Keep);
        assert_eq!(decide(&a, Some(&up), f(true, true), Strategy::Rolling), Decision::Keep);
        assert_eq!(decide(&a, Some(&down), f(true, false), Strategy::Rolling), Decision::Start);
        assert_eq!(decide(&a, Some(&down), f(true, true), Strategy::Rolling), Decision::HoldStopped);
    }

    #[test]
    fn a_changed_spec_is_replaced_side_by_side_only_when_rolling_with_a_port() {
        let o = running("h1", Some(20000), ContainerState::Running);
        let changed = |a: &Assignment, s| decide(a, Some(&o), f(false, false), s);
        let with_port = at("h1", Some(20000));
        let rolling = Decision::Replace { reason: Reason::SpecChanged, side_by_side: true };
        let in_place = Decision::Replace { reason: Reason::SpecChanged, side_by_side: false };
        assert_eq!(changed(&with_port, Strategy::Rolling), rolling);
        assert_eq!(changed(&with_port, Strategy::Canary), rolling);
        assert_eq!(changed(&with_port, Strategy::Recreate), in_place);
        let portless = running("h1", None, ContainerState::Running);
        assert_eq!(decide(&at("h1", None), Some(&portless), f(false, false), Strategy::Rolling), in_place);
    }

    #[test]
    fn an_instance_on_a_host_or_port_no_longer_allowed_moves() {
        let o = running("h1", Some(20000), ContainerState::Running);
        let moved = |why: &str| Decision::Replace { reason: Reason::Moved { why: why.into() }, side_by_side: false };
        // Even with the same spec-hash: where it runs is part of what it must be.
        assert_eq!(
            decide(&at("h2", Some(20000)), Some(&o), f(true, false), Strategy::Rolling),
            moved("host `h1` is no longer eligible")
        );
        assert_eq!(
            decide(&at("h1", Some(20001)), Some(&o), f(true, false), Strategy::Rolling),
            moved("its port is no longer available")
        );
    }

    #[test]
    fn a_moved_tag_replaces_an_up_to_date_instance_naming_the_digest() {
        let o = running("h1", Some(20000), ContainerState::Running);
        let facts = Facts { same_hash: true, held: false, new_digest: Some("sha256:abc") };
        let want =
            Decision::Replace { reason: Reason::ImageDigest { digest: "sha256:abc".into() }, side_by_side: true };
        assert_eq!(decide(&at("h1", Some(20000)), Some(&o), facts, Strategy::Rolling), want);
        // A spec change is the reason when both hold.
        let both = Facts { same_hash: false, ..facts };
        let want = Decision::Replace { reason: Reason::SpecChanged, side_by_side: true };
        assert_eq!(decide(&at("h1", Some(20000)), Some(&o), both, Strategy::Rolling), want);
    }
}
