//! Phase 1: group the observed containers into instances. Each instance
//! `(app, ordinal)` keeps one container (the primary); the others are duplicates
//! (leftovers of an interrupted replace) and containers whose labels name no
//! instance are unrecognised — both are removed.

use std::collections::{BTreeMap, HashMap};

use super::{Action, OldInstance, Reason};
use crate::model::{InstanceId, ObservedInstance, ObservedState};

/// The observation, by instance.
#[derive(Debug, Default)]
pub struct Grouped<'o> {
    /// Every observed container, sorted by (app, ordinal, host, container id).
    pub all: Vec<&'o ObservedInstance>,
    /// The one container per instance that the plan keeps, replaces or removes.
    pub primary: BTreeMap<InstanceId, &'o ObservedInstance>,
    /// Duplicates and unrecognised containers, to remove.
    pub removals: Vec<Action>,
}

/// Group `observed`; `registered(container)` tells whether its address is in the
/// etcd registry (so it is the one serving traffic).
pub fn group<'o>(observed: &'o ObservedState, registered: impl Fn(&ObservedInstance) -> bool) -> Grouped<'o> {
    let all = sorted(observed);
    // Sorted by (app, ordinal), so the containers of one instance are adjacent: group
    // them in one pass instead of a map of lists.
    let mut removals = Vec::new();
    let mut duplicates = Vec::new();
    let mut named: Vec<(InstanceId, &ObservedInstance)> = Vec::with_capacity(all.len());
    for o in &all {
        match o.id() {
            Some(id) => named.push((id, o)),
            None => removals.push(remove(o, Reason::Unrecognised)),
        }
    }
    let mut primary = Vec::with_capacity(named.len());
    let mut list: Vec<&ObservedInstance> = Vec::new();
    let mut rest = named.into_iter().peekable();
    while let Some((id, first)) = rest.next() {
        list.clear();
        list.push(first);
        while let Some((_, o)) = rest.next_if(|(next, _)| *next == id) {
            list.push(o);
        }
        // Running first, then registered (serving), then the OLDEST, then by id: after an
        // interrupted rolling replace the old, proven instance stays and the half-made new
        // one goes, even when both were created within the same second (Docker's list gives
        // whole seconds); deterministic whatever the observation order.
        if list.len() > 1 {
            list.sort_by(|a, b| {
                (b.state.is_running(), registered(b), a.created, &a.container_id).cmp(&(
                    a.state.is_running(),
                    registered(a),
                    b.created,
                    &b.container_id,
                ))
            });
        }
        let mut it = list.iter();
        if let Some(p) = it.next() {
            primary.push((id, *p));
        }
        duplicates.extend(it.map(|dup| remove(dup, Reason::Duplicate)));
    }
    removals.append(&mut duplicates);
    // Already in key order: the map is built without searching.
    let primary: BTreeMap<InstanceId, &ObservedInstance> = primary.into_iter().collect();
    Grouped { all, primary, removals }
}

/// Every observed container, sorted by (app, ordinal, host, container id) as a stable
/// sort would. By numbers: each app name is ranked once, so the sort compares integers
/// held in one array, not 100,000 scattered strings; only containers that share an
/// instance (rare) are compared by host and id.
fn sorted(observed: &ObservedState) -> Vec<&ObservedInstance> {
    let all: Vec<&ObservedInstance> = observed.hosts.values().flat_map(|h| h.instances.iter()).collect();
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let seen: Vec<usize> = all
        .iter()
        .map(|o| {
            let next = first_seen.len();
            *first_seen.entry(o.app.as_str()).or_insert(next)
        })
        .collect();
    let mut names: Vec<(&str, usize)> = first_seen.into_iter().collect();
    names.sort_unstable();
    let mut rank = vec![0; names.len()];
    for (r, (_, seen)) in names.iter().enumerate() {
        rank[*seen] = r;
    }
    // (app rank, ordinal with `None` first, position): distinct, so an unstable sort is stable.
    let mut keys: Vec<(usize, u64, usize)> = all
        .iter()
        .zip(&seen)
        .enumerate()
        .map(|(i, (o, s))| (rank[*s], o.ordinal.map_or(0, |n| u64::from(n) + 1), i))
        .collect();
    keys.sort_unstable();
    let mut out: Vec<&ObservedInstance> = keys.iter().map(|k| all[k.2]).collect();
    let mut start = 0;
    for run in keys.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let end = start + run.len();
        if run.len() > 1 {
            out[start..end].sort_by(|a, b| (&a.host, &a.container_id).cmp(&(&b.host, &b.container_id)));
        }
        start = end;
    }
    out
}

fn remove(o: &ObservedInstance, reason: Reason) -> Action {
    Action::Remove { app: o.app.clone(), instance: o.instance.clone(), reason, old: old_of(o) }
}

/// The plan's record of an existing container.
pub fn old_of(o: &ObservedInstance) -> OldInstance {
    OldInstance {
        host: o.host.clone(),
        container_id: o.container_id.clone(),
        container_name: o.name.clone(),
        port: o.port,
        spec_hash: o.spec_hash.clone(),
        state: o.state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContainerState;

    fn container(id: &str, host: &str, app: &str, instance: &str, created: i64) -> ObservedInstance {
        ObservedInstance {
            container_id: id.into(),
            name: format!("t-{instance}-{id}"),
            host: host.into(),
            app: app.into(),
            instance: instance.into(),
            ordinal: ObservedInstance::ordinal_of(app, instance),
            spec_hash: "h".into(),
            commit: String::new(),
            image: "img".into(),
            state: ContainerState::Running,
            status: String::new(),
            created,
            port: Some(20000),
            spec: None,
            image_id: String::new(),
            repo_digests: vec![],
        }
    }

    fn observed(containers: Vec<ObservedInstance>) -> ObservedState {
        let mut o = ObservedState { env: "t".into(), ..Default::default() };
        for c in containers {
            o.hosts.entry(c.host.clone()).or_default().instances.push(c);
        }
        o
    }

    fn removed(g: &Grouped<'_>) -> Vec<(String, Reason)> {
        g.removals
            .iter()
            .map(|a| match a {
                Action::Remove { old, reason, .. } => (old.container_id.clone(), reason.clone()),
                other => panic!("not a removal: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_container_per_instance_is_primary_and_unlabelled_ones_are_unrecognised() {
        let o = observed(vec![
            container("a", "h1", "api", "api-0", 10),
            container("b", "h1", "api", "api-1", 10),
            container("c", "h2", "", "", 10),
            container("d", "h2", "api", "web-0", 10),
        ]);
        let g = group(&o, |_| false);
        assert_eq!(g.all.len(), 4);
        let ids: Vec<String> = g.primary.keys().map(ToString::to_string).collect();
        assert_eq!(ids, ["api-0", "api-1"]);
        let mut r = removed(&g);
        r.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(r, [("c".to_string(), Reason::Unrecognised), ("d".to_string(), Reason::Unrecognised)]);
    }

    #[test]
    fn of_duplicates_the_running_then_registered_then_oldest_stays() {
        let mut stopped_old = container("old-stopped", "h1", "api", "api-0", 1);
        stopped_old.state = ContainerState::Exited;
        let o = observed(vec![
            stopped_old,
            container("newer", "h1", "api", "api-0", 20),
            container("older", "h2", "api", "api-0", 10),
        ]);
        // Running beats stopped, the older running one beats the newer.
        let g = group(&o, |_| false);
        assert_eq!(g.primary[&InstanceId::new("api", 0)].container_id, "older");
        assert_eq!(removed(&g).len(), 2);
        assert!(removed(&g).iter().all(|(_, r)| *r == Reason::Duplicate));
        // Registered (serving) beats older.
        let g = group(&o, |c| c.container_id == "newer");
        assert_eq!(g.primary[&InstanceId::new("api", 0)].container_id, "newer");
    }

    #[test]
    fn the_choice_does_not_depend_on_observation_order() {
        let same_second = |id: &str, host: &str| container(id, host, "api", "api-0", 5);
        let a = observed(vec![same_second("x1", "h1"), same_second("x2", "h2")]);
        let b = observed(vec![same_second("x2", "h1"), same_second("x1", "h2")]);
        let pa = group(&a, |_| false).primary[&InstanceId::new("api", 0)].container_id.clone();
        let pb = group(&b, |_| false).primary[&InstanceId::new("api", 0)].container_id.clone();
        assert_eq!((pa.as_str(), pb.as_str()), ("x1", "x1"));
    }

    mod order {
        use proptest::prelude::*;

        use super::*;

        /// The order `sorted` must give: the stable sort by the four keys it replaces.
        fn reference(o: &ObservedState) -> Vec<String> {
            let mut all: Vec<&ObservedInstance> = o.hosts.values().flat_map(|h| h.instances.iter()).collect();
            all.sort_by(|a, b| {
                (&a.app, a.ordinal, &a.host, &a.container_id).cmp(&(&b.app, b.ordinal, &b.host, &b.container_id))
            });
            all.iter().map(|c| format!("{}/{}", c.host, c.container_id)).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]
            #[test]
            fn sorted_matches_the_stable_sort_by_app_ordinal_host_and_id(
                rows in proptest::collection::vec((0u8..4, 0u8..4, 0u8..3, 0u8..6, 0u32..4), 0..40)
            ) {
                // Few apps, ordinals, hosts and ids: many duplicates of one instance, ids
                // repeated across hosts, apps without an instance label (no ordinal).
                let containers = rows.into_iter().map(|(app, ord, host, id, created)| {
                    let app = ["api", "web", "api-x", ""][usize::from(app)];
                    let instance = if ord == 3 { String::new() } else { format!("{app}-{ord}") };
                    container(&format!("c{id}"), &format!("h{host}"), app, &instance, i64::from(created))
                });
                let o = observed(containers.collect());
                let got: Vec<String> = sorted(&o).iter().map(|c| format!("{}/{}", c.host, c.container_id)).collect();
                prop_assert_eq!(got, reference(&o));
            }
        }
    }
}
