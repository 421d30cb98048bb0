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

use std::collections::{BTreeMap, BTreeSet};

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
pub fn place(demands: &[Demand], hosts: &[HostSlot], existing: &[Existing]) -> (Vec<Assignment>, Vec<PlacementError>) {
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
                (true, Some(p)) => h.pool.contains(p) && !used.get(h.address.as_str()).is_some_and(|u| u.contains(&p)),
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
