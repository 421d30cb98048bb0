//! Placement: which host and which pool port each instance gets.
//!
//! Hosts are an undifferentiated pool; apps are not bound to machines. The rule
//! (the contract's "stable placement"): an existing instance keeps its host and
//! port while they are still allowed; a new one goes to the least-loaded eligible
//! host (fewest instances of any app), ties broken by host name, and takes the
//! lowest free port of that host's pool. Hosts that share an address share a
//! network namespace under host networking, so they share used ports too.
//!
//! Invariant: pure and deterministic: the same input gives the same output,
//! whatever the order of `existing`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::spec::units::PortRange;

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSlot {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub pool: PortRange,
}

/// What one app asks of placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub app: String,
    pub replicas: u32,
    /// Only hosts carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only these hosts, if set.
    pub hosts: Option<Vec<String>>,
    /// At most one instance per host.
    pub spread: bool,
    /// Each instance takes a pool port.
    pub needs_port: bool,
}

/// An instance that runs already (from observation).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Existing {
    pub app: String,
    pub ordinal: u32,
    pub host: String,
    pub port: Option<u16>,
}

/// Where one instance goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Assignment {
    pub app: String,
    pub ordinal: u32,
    pub host: String,
    pub port: Option<u16>,
}

/// Why an app cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    NoEligibleHost { app: String },
    SpreadInfeasible { app: String, replicas: u32, eligible: usize },
    PoolsExhausted { app: String, hosts: Vec<String>, placed: u32, replicas: u32 },
}

impl std::fmt::Display for PlacementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementError::NoEligibleHost { app } => write!(f, "no host is eligible for app `{app}`"),
            PlacementError::SpreadInfeasible { app, replicas, eligible } => write!(
                f,
                "app `{app}` wants {replicas} instances spread one per host, but only {eligible} hosts are eligible"
            ),
            PlacementError::PoolsExhausted { app, hosts, placed, replicas } => write!(
                f,
                "port pools of {} are too small: only {placed} of app `{app}`'s {replicas} instances get a port",
                hosts.join(", ")
            ),
        }
    }
}

/// Hosts eligible for `d`, in name order.
pub fn eligible<'a>(d: &Demand, hosts: &'a [HostSlot]) -> Vec<&'a HostSlot> {
    let mut out: Vec<&HostSlot> = hosts
        .iter()
        .filter(|h| d.hosts.as_ref().is_none_or(|names| names.contains(&h.name)))
        .filter(|h| d.labels.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Place every instance of every demand. Returns the assignments (sorted by app,
/// ordinal) and the errors of apps that could not be placed in full (their
/// placeable instances are still assigned).
///
/// Cost: hosts are indexed once (by name, by address, and by the distinct
/// eligibility constraints of the demands, so 10,000 apps with five kinds of
/// placement evaluate labels five times, not 10,000 times); a new instance takes
/// the first host of its constraint's (load, name) order that fits, instead of
/// sorting every eligible host per instance. Host names are unique (validate
/// rejects duplicates).
pub fn place(demands: &[Demand], hosts: &[HostSlot], existing: &[Existing]) -> (Vec<Assignment>, Vec<PlacementError>) {
    let mut demands: Vec<&Demand> = demands.iter().collect();
    demands.sort_by(|a, b| a.app.cmp(&b.app));
    let ix = HostIndex::new(hosts, &demands);
    let mut load = vec![0usize; ix.hosts.len()];
    let mut used: Vec<BTreeSet<u16>> = vec![BTreeSet::new(); ix.addresses]; // by address
    let mut out = Vec::new();
    let mut errors = Vec::new();

    // Pass 1: keep existing instances that are still allowed.
    let mut existing: Vec<&Existing> = existing.iter().collect();
    existing.sort();
    let mut by_app: HashMap<&str, &[&Existing]> = HashMap::new();
    for run in existing.chunk_by(|a, b| a.app == b.app) {
        if let Some(first) = run.first() {
            by_app.insert(first.app.as_str(), run);
        }
    }
    let mut kept: HashMap<&str, BTreeMap<u32, usize>> = HashMap::new();
    for (d, &g) in demands.iter().zip(&ix.group_of) {
        let group = &ix.groups[g];
        let mut on_host: HashSet<usize> = HashSet::new();
        let mine = by_app.get(d.app.as_str()).copied().unwrap_or_default();
        let kept_here = kept.entry(d.app.as_str()).or_default();
        for e in mine.iter().filter(|e| e.ordinal < d.replicas) {
            let Some(&r) = ix.rank.get(e.host.as_str()) else { continue };
            if !group.contains(r) || kept_here.contains_key(&e.ordinal) {
                continue;
            }
            if d.spread && on_host.contains(&r) {
                continue;
            }
            let h = ix.hosts[r];
            let taken = &mut used[ix.address_of[r]];
            let port_ok = match (d.needs_port, e.port) {
                (true, Some(p)) => h.pool.contains(p) && !taken.contains(&p),
                (true, None) => false,
                (false, _) => true,
            };
            if !port_ok {
                continue;
            }
            if let (true, Some(p)) = (d.needs_port, e.port) {
                taken.insert(p);
            }
            on_host.insert(r);
            load[r] += 1;
            kept_here.insert(e.ordinal, r);
            out.push(Assignment {
                app: d.app.clone(),
                ordinal: e.ordinal,
                host: h.name.clone(),
                port: if d.needs_port { e.port } else { None },
            });
        }
    }

    // Pass 2: place the rest, each on the least-loaded eligible host (ties by name).
    let mut order = LoadOrder::new(&ix);
    let mut full = vec![false; ix.hosts.len()]; // pool without a free port (ports are only taken here)
    for (d, &g) in demands.iter().zip(&ix.group_of) {
        let elig = &ix.groups[g].members;
        if d.replicas == 0 {
            continue;
        }
        if elig.is_empty() {
            errors.push(PlacementError::NoEligibleHost { app: d.app.clone() });
            continue;
        }
        if d.spread && (d.replicas as usize) > elig.len() {
            errors.push(PlacementError::SpreadInfeasible {
                app: d.app.clone(),
                replicas: d.replicas,
                eligible: elig.len(),
            });
            continue;
        }
        let mine = kept.remove(d.app.as_str()).unwrap_or_default();
        let mut on_host: HashSet<usize> = mine.values().copied().collect();
        let mut placed = mine.len() as u32;
        let mut exhausted = false;
        for ordinal in (0..d.replicas).filter(|o| !mine.contains_key(o)) {
            let mut chosen = None;
            for r in order.ascending(&ix, g, &load) {
                if d.spread && on_host.contains(&r) {
                    continue;
                }
                if !d.needs_port {
                    chosen = Some((r, None));
                    break;
                }
                if full[r] {
                    continue;
                }
                let pool = ix.hosts[r].pool;
                let taken = &mut used[ix.address_of[r]];
                match lowest_free(taken, pool) {
                    Some(p) => {
                        taken.insert(p);
                        chosen = Some((r, Some(p)));
                        break;
                    }
                    None => full[r] = true,
                }
            }
            match chosen {
                Some((r, port)) => {
                    order.bump(&ix, &mut load, r);
                    on_host.insert(r);
                    placed += 1;
                    out.push(Assignment { app: d.app.clone(), ordinal, host: ix.hosts[r].name.clone(), port });
                }
                None => exhausted = true,
            }
        }
        if exhausted {
            errors.push(PlacementError::PoolsExhausted {
                app: d.app.clone(),
                hosts: elig.iter().map(|&r| ix.hosts[r].name.clone()).collect(),
                placed,
                replicas: d.replicas,
            });
        }
    }
    out.sort();
    (out, errors)
}

/// The lowest port of `pool` not in `taken`.
fn lowest_free(taken: &BTreeSet<u16>, pool: PortRange) -> Option<u16> {
    if pool.start > pool.end {
        return None; // an empty pool (and `range` panics on a reversed one)
    }
    let mut want = pool.start;
    for &p in taken.range(pool.start..=pool.end) {
        if p != want {
            break;
        }
        want = want.checked_add(1)?;
    }
    (want <= pool.end).then_some(want)
}

/// Hosts of one eligibility constraint (labels + host list), as ranks in name order.
struct Group {
    /// Ascending ranks (so in host-name order).
    members: Vec<usize>,
}

impl Group {
    fn contains(&self, rank: usize) -> bool {
        self.members.binary_search(&rank).is_ok()
    }
}

/// The hosts, indexed once per `place`: rank = position in name order.
struct HostIndex<'a> {
    /// Hosts in name order.
    hosts: Vec<&'a HostSlot>,
    rank: HashMap<&'a str, usize>,
    /// Rank → address index (hosts sharing an address share ports).
    address_of: Vec<usize>,
    addresses: usize,
    /// One group per distinct constraint among the demands.
    groups: Vec<Group>,
    /// Demand (sorted) → its group.
    group_of: Vec<usize>,
    /// Rank → the groups it belongs to.
    groups_of_host: Vec<Vec<usize>>,
}

impl<'a> HostIndex<'a> {
    fn new(hosts: &'a [HostSlot], demands: &[&Demand]) -> Self {
        let mut sorted: Vec<&HostSlot> = hosts.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let rank: HashMap<&str, usize> = sorted.iter().enumerate().map(|(i, h)| (h.name.as_str(), i)).collect();
        let mut address_ix: HashMap<&str, usize> = HashMap::new();
        let address_of: Vec<usize> = sorted
            .iter()
            .map(|h| {
                let next = address_ix.len();
                *address_ix.entry(h.address.as_str()).or_insert(next)
            })
            .collect();
        type Constraint<'d> = (&'d BTreeMap<String, String>, Option<&'d Vec<String>>);
        let mut by_constraint: BTreeMap<Constraint<'_>, usize> = BTreeMap::new();
        let mut groups = Vec::new();
        let mut group_of = Vec::with_capacity(demands.len());
        for d in demands {
            let key = (&d.labels, d.hosts.as_ref());
            let g = *by_constraint.entry(key).or_insert_with(|| {
                let matches = |r: &usize| d.labels.iter().all(|(k, v)| sorted[*r].labels.get(k) == Some(v));
                let members: Vec<usize> = match &d.hosts {
                    None => (0..sorted.len()).filter(matches).collect(),
                    Some(names) => {
                        let named: BTreeSet<usize> =
                            names.iter().filter_map(|n| rank.get(n.as_str()).copied()).collect();
                        named.into_iter().filter(matches).collect()
                    }
                };
                groups.push(Group { members });
                groups.len() - 1
            });
            group_of.push(g);
        }
        let mut groups_of_host = vec![Vec::new(); sorted.len()];
        for (g, group) in groups.iter().enumerate() {
            for &r in &group.members {
                groups_of_host[r].push(g);
            }
        }
        Self { addresses: address_ix.len(), hosts: sorted, rank, address_of, groups, group_of, groups_of_host }
    }
}

/// Per group, its hosts ordered by (load, rank): the order new instances try them in.
/// Built when a group first places something, kept in step with `load` after that.
struct LoadOrder {
    sets: Vec<Option<BTreeSet<(usize, usize)>>>,
}

impl LoadOrder {
    fn new(ix: &HostIndex<'_>) -> Self {
        Self { sets: vec![None; ix.groups.len()] }
    }

    /// Group `g`'s hosts by ascending (load, name).
    fn ascending<'s>(
        &'s mut self,
        ix: &HostIndex<'_>,
        g: usize,
        load: &[usize],
    ) -> impl Iterator<Item = usize> + use<'s> {
        let set = self.sets[g].get_or_insert_with(|| ix.groups[g].members.iter().map(|&r| (load[r], r)).collect());
        set.iter().map(|&(_, r)| r)
    }

    /// One more instance on host `r`.
    fn bump(&mut self, ix: &HostIndex<'_>, load: &mut [usize], r: usize) {
        for &g in &ix.groups_of_host[r] {
            if let Some(set) = self.sets[g].as_mut() {
                set.remove(&(load[r], r));
                set.insert((load[r] + 1, r));
            }
        }
        load[r] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, addr: &str, zone: &str, pool: (u16, u16)) -> HostSlot {
        HostSlot {
            name: name.into(),
            address: addr.into(),
            labels: [("zone".to_string(), zone.to_string())].into(),
            pool: PortRange { start: pool.0, end: pool.1 },
        }
    }

    fn demand(app: &str, replicas: u32) -> Demand {
        Demand { app: app.into(), replicas, labels: BTreeMap::new(), hosts: None, spread: false, needs_port: true }
    }

    #[test]
    fn lowest_free_port_of_a_pool() {
        let taken: BTreeSet<u16> = [20000, 20001, 20003, 65534, 65535].into();
        let pool = |start, end| PortRange { start, end };
        assert_eq!(lowest_free(&taken, pool(20000, 20005)), Some(20002));
        assert_eq!(lowest_free(&taken, pool(20000, 20001)), None);
        assert_eq!(lowest_free(&taken, pool(20003, 20004)), Some(20004));
        assert_eq!(lowest_free(&taken, pool(65530, 65535)), Some(65530));
        assert_eq!(lowest_free(&taken, pool(65534, 65535)), None);
        assert_eq!(lowest_free(&taken, pool(20005, 20004)), None);
    }

    #[test]
    fn least_loaded_then_name() {
        let hosts = [host("b", "127.0.0.2", "a", (20000, 20009)), host("a", "127.0.0.1", "a", (20000, 20009))];
        let (a, e) = place(&[demand("api", 3)], &hosts, &[]);
        assert!(e.is_empty());
        let got: Vec<_> = a.iter().map(|x| (x.host.as_str(), x.port)).collect();
        assert_eq!(got, vec![("a", Some(20000)), ("b", Some(20000)), ("a", Some(20001))]);
    }

    #[test]
    fn shared_address_shares_ports_and_pools_can_run_out() {
        let hosts = [host("a", "127.0.0.1", "a", (20000, 20001)), host("b", "127.0.0.1", "a", (20000, 20001))];
        let (a, e) = place(&[demand("api", 3)], &hosts, &[]);
        let ports: BTreeSet<_> = a.iter().map(|x| x.port).collect();
        assert_eq!(ports.len(), 2);
        assert!(matches!(e.as_slice(), [PlacementError::PoolsExhausted { placed: 2, replicas: 3, .. }]));
    }

    #[test]
    fn spread_and_labels() {
        let hosts = [host("a", "127.0.0.1", "a", (20000, 20009)), host("b", "127.0.0.2", "b", (20000, 20009))];
        let mut d = demand("api", 3);
        d.spread = true;
        assert!(matches!(
            place(&[d.clone()], &hosts, &[]).1.as_slice(),
            [PlacementError::SpreadInfeasible { eligible: 2, .. }]
        ));
        d.replicas = 1;
        d.labels.insert("zone".into(), "c".into());
        assert!(matches!(place(&[d], &hosts, &[]).1.as_slice(), [PlacementError::NoEligibleHost { .. }]));
    }

    #[test]
    fn existing_instances_keep_host_and_port() {
        let hosts = [host("a", "127.0.0.1", "a", (20000, 20009)), host("b", "127.0.0.2", "a", (20000, 20009))];
        let existing = [Existing { app: "api".into(), ordinal: 0, host: "b".into(), port: Some(20007) }];
        let (a, _) = place(&[demand("api", 2)], &hosts, &existing);
        assert_eq!(a[0], Assignment { app: "api".into(), ordinal: 0, host: "b".into(), port: Some(20007) });
        assert_eq!(a[1].host, "a");
    }

    /// The placement as first written (every host sorted for every new instance), kept
    /// as the reference the indexed [`place`] must equal.
    /// Place every instance of every demand. Returns the assignments (sorted by app,
    /// ordinal) and the errors of apps that could not be placed in full (their
    /// placeable instances are still assigned).
    fn reference(
        demands: &[Demand],
        hosts: &[HostSlot],
        existing: &[Existing],
    ) -> (Vec<Assignment>, Vec<PlacementError>) {
        let mut demands: Vec<&Demand> = demands.iter().collect();
        demands.sort_by(|a, b| a.app.cmp(&b.app));
        let by_name: BTreeMap<&str, &HostSlot> = hosts.iter().map(|h| (h.name.as_str(), h)).collect();
        let mut load: BTreeMap<&str, usize> = hosts.iter().map(|h| (h.name.as_str(), 0)).collect();
        let mut used: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new(); // by address
        let mut out = Vec::new();
        let mut errors = Vec::new();

        // Pass 1: keep existing instances that are still allowed.
        let mut existing: Vec<&Existing> = existing.iter().collect();
        existing.sort();
        let mut kept: BTreeMap<&str, BTreeMap<u32, &str>> = BTreeMap::new();
        let mut sorted_hosts: Vec<&HostSlot> = hosts.iter().collect();
        sorted_hosts.sort_by(|a, b| a.name.cmp(&b.name));
        let eligible_of: BTreeMap<&str, Vec<&HostSlot>> = demands
            .iter()
            .map(|d| {
                let e = sorted_hosts
                    .iter()
                    .copied()
                    .filter(|h| d.hosts.as_ref().is_none_or(|names| names.contains(&h.name)))
                    .filter(|h| d.labels.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
                    .collect();
                (d.app.as_str(), e)
            })
            .collect();
        let mut by_app: BTreeMap<&str, Vec<&Existing>> = BTreeMap::new();
        for e in &existing {
            by_app.entry(e.app.as_str()).or_default().push(e);
        }
        for d in &demands {
            let allowed: BTreeSet<&str> = eligible_of[d.app.as_str()].iter().map(|h| h.name.as_str()).collect();
            let mut on_host: BTreeSet<&str> = BTreeSet::new();
            let mine = by_app.get(d.app.as_str()).map(Vec::as_slice).unwrap_or_default();
            for e in mine.iter().filter(|e| e.ordinal < d.replicas) {
                let Some(h) = by_name.get(e.host.as_str()) else { continue };
                if !allowed.contains(h.name.as_str())
                    || kept.get(d.app.as_str()).is_some_and(|k| k.contains_key(&e.ordinal))
                {
                    continue;
                }
                if d.spread && on_host.contains(h.name.as_str()) {
                    continue;
                }
                let port_ok = match (d.needs_port, e.port) {
                    (true, Some(p)) => {
                        h.pool.contains(p) && !used.get(h.address.as_str()).is_some_and(|u| u.contains(&p))
                    }
                    (true, None) => false,
                    (false, _) => true,
                };
                if !port_ok {
                    continue;
                }
                if let (true, Some(p)) = (d.needs_port, e.port) {
                    used.entry(h.address.as_str()).or_default().insert(p);
                }
                on_host.insert(h.name.as_str());
                *load.entry(h.name.as_str()).or_default() += 1;
                kept.entry(d.app.as_str()).or_default().insert(e.ordinal, h.name.as_str());
                out.push(Assignment {
                    app: d.app.clone(),
                    ordinal: e.ordinal,
                    host: h.name.clone(),
                    port: if d.needs_port { e.port } else { None },
                });
            }
        }

        // Pass 2: place the rest.
        for d in &demands {
            let elig = &eligible_of[d.app.as_str()];
            if d.replicas == 0 {
                continue;
            }
            if elig.is_empty() {
                errors.push(PlacementError::NoEligibleHost { app: d.app.clone() });
                continue;
            }
            if d.spread && (d.replicas as usize) > elig.len() {
                errors.push(PlacementError::SpreadInfeasible {
                    app: d.app.clone(),
                    replicas: d.replicas,
                    eligible: elig.len(),
                });
                continue;
            }
            let mine = kept.remove(d.app.as_str()).unwrap_or_default();
            let mut on_host: BTreeSet<String> = mine.values().map(|h| h.to_string()).collect();
            let mut placed = mine.len() as u32;
            let mut exhausted = false;
            for ordinal in (0..d.replicas).filter(|o| !mine.contains_key(o)) {
                let mut candidates: Vec<&&HostSlot> =
                    elig.iter().filter(|h| !(d.spread && on_host.contains(&h.name))).collect();
                candidates.sort_by(|a, b| (load[a.name.as_str()], &a.name).cmp(&(load[b.name.as_str()], &b.name)));
                let mut chosen = None;
                for h in candidates {
                    if !d.needs_port {
                        chosen = Some((h, None));
                        break;
                    }
                    let taken = used.entry(h.address.as_str()).or_default();
                    if let Some(p) = (h.pool.start..=h.pool.end).find(|p| !taken.contains(p)) {
                        taken.insert(p);
                        chosen = Some((h, Some(p)));
                        break;
                    }
                }
                match chosen {
                    Some((h, port)) => {
                        *load.entry(h.name.as_str()).or_default() += 1;
                        on_host.insert(h.name.clone());
                        placed += 1;
                        out.push(Assignment { app: d.app.clone(), ordinal, host: h.name.clone(), port });
                    }
                    None => exhausted = true,
                }
            }
            if exhausted {
                errors.push(PlacementError::PoolsExhausted {
                    app: d.app.clone(),
                    hosts: elig.iter().map(|h| h.name.clone()).collect(),
                    placed,
                    replicas: d.replicas,
                });
            }
        }
        out.sort();
        (out, errors)
    }

    fn arb_hosts() -> impl Strategy<Value = Vec<HostSlot>> {
        // Unique names (validate rejects duplicates), few addresses (shared ports), small
        // pools (exhaustion), three zones.
        prop::collection::btree_set(0u8..12, 1..9)
            .prop_flat_map(|names| {
                let n = names.len();
                (Just(names), prop::collection::vec((0u8..3, 0u8..3, 20000u16..20004, 0u16..4), n))
            })
            .prop_map(|(names, rest)| {
                names
                    .into_iter()
                    .zip(rest)
                    .map(|(i, (addr, zone, start, len))| {
                        host(&format!("h{i}"), &format!("127.0.0.{addr}"), &format!("z{zone}"), (start, start + len))
                    })
                    .collect()
            })
    }

    fn arb_demands() -> impl Strategy<Value = Vec<Demand>> {
        let one = (
            0u32..6,
            prop::option::of(0u8..4),
            prop::option::of(prop::collection::vec(0u8..14, 0..4)),
            any::<bool>(),
            any::<bool>(),
        );
        prop::collection::btree_map(0u8..8, one, 0..6).prop_map(|m| {
            m.into_iter()
                .map(|(a, (replicas, zone, hosts, spread, needs_port))| Demand {
                    app: format!("app{a}"),
                    replicas,
                    labels: zone.map(|z| [("zone".to_string(), format!("z{z}"))].into()).unwrap_or_default(),
                    hosts: hosts.map(|hs| hs.into_iter().map(|h| format!("h{h}")).collect()),
                    spread,
                    needs_port,
                })
                .collect()
        })
    }

    fn arb_existing() -> impl Strategy<Value = Vec<Existing>> {
        // Apps and hosts that exist and that do not, ordinals past replicas, duplicates,
        // ports inside, outside and missing.
        let one = (0u8..9, 0u32..7, 0u8..14, prop::option::of(19998u16..20008));
        prop::collection::vec(one, 0..24).prop_map(|v| {
            v.into_iter()
                .map(|(a, ordinal, h, port)| Existing { app: format!("app{a}"), ordinal, host: format!("h{h}"), port })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn indexed_placement_equals_the_reference(hosts in arb_hosts(), demands in arb_demands(), existing in arb_existing()) {
            let (got, got_errors) = place(&demands, &hosts, &existing);
            let (want, want_errors) = reference(&demands, &hosts, &existing);
            prop_assert_eq!(got, want);
            prop_assert_eq!(got_errors, want_errors);
        }
    }

    proptest! {
        #[test]
        fn deterministic_and_stable(reps in prop::collection::vec(0u32..5, 1..6), shuffle in any::<u64>()) {
            let hosts = [host("a", "127.0.0.1", "a", (20000, 20099)), host("b", "127.0.0.2", "b", (20000, 20099)), host("c", "127.0.0.3", "a", (20000, 20099))];
            let demands: Vec<Demand> = reps.iter().enumerate().map(|(i, r)| demand(&format!("app{i}"), *r)).collect();
            let (first, _) = place(&demands, &hosts, &[]);
            // Feeding the result back as existing (in any order) changes nothing.
            let mut existing: Vec<Existing> = first.iter().map(|a| Existing { app: a.app.clone(), ordinal: a.ordinal, host: a.host.clone(), port: a.port }).collect();
            let n = existing.len().max(1);
            existing.rotate_left((shuffle as usize) % n);
            let (again, _) = place(&demands, &hosts, &existing);
            prop_assert_eq!(&again, &first);
            // Adding an unrelated app keeps every earlier assignment.
            let mut more = demands.clone();
            more.push(demand("zzz", 3));
            let (with_more, _) = place(&more, &hosts, &existing);
            for a in &first {
                prop_assert!(with_more.contains(a));
            }
            // No two instances share a port on one address.
            let mut seen = BTreeSet::new();
            for a in &with_more {
                let addr = &hosts.iter().find(|h| h.name == a.host).unwrap().address;
                prop_assert!(seen.insert((addr.clone(), a.port)));
            }
        }
    }
}
