//! Phase 2: place every desired instance (existing ones keep host and port while
//! still allowed: `crate::placement`), and track the pool ports in use per
//! address, so a rolling replacement gets a free one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::PlanError;
use super::context::Context;
use crate::model::{InstanceId, ObservedInstance};
use crate::placement::{self, Assignment, Existing};
use crate::spec::check::demand;

/// Where every desired instance goes, given the primaries of the observation.
///
/// # Errors
/// Placement is impossible (validate reports it first).
pub fn place(
    cx: &Context<'_>,
    primary: &BTreeMap<InstanceId, &ObservedInstance>,
) -> Result<Vec<Assignment>, PlanError> {
    let existing: Vec<Existing> = primary
        .iter()
        .map(|(id, o)| Existing { app: id.app.clone(), ordinal: id.ordinal, host: o.host.clone(), port: o.port })
        .collect();
    let demands: Vec<_> = cx.env.apps.values().map(|a| demand(&a.spec)).collect();
    let (assignments, errors) = placement::place(&demands, &cx.slots, &existing);
    match errors.first() {
        Some(e) => Err(PlanError::Placement(e.to_string())),
        None => Ok(assignments),
    }
}

/// Pool ports taken per address (hosts sharing an address share ports: host networking).
/// Built on the first request for a fresh port: a plan that replaces nothing side by
/// side (a no-op) never builds it.
#[derive(Debug)]
pub struct Ports<'p> {
    assignments: &'p [Assignment],
    observed: &'p [&'p ObservedInstance],
    /// Only looked up by address (never iterated), so hashed.
    used: Option<HashMap<String, BTreeSet<u16>>>,
}

impl<'p> Ports<'p> {
    /// Every assigned port and every port an observed container holds.
    pub fn taken(assignments: &'p [Assignment], observed: &'p [&'p ObservedInstance]) -> Self {
        Self { assignments, observed, used: None }
    }

    fn build(&self, cx: &Context<'_>) -> HashMap<String, BTreeSet<u16>> {
        let mut used: HashMap<String, BTreeSet<u16>> = HashMap::new();
        let held =
            self.assignments.iter().map(|a| (&a.host, a.port)).chain(self.observed.iter().map(|o| (&o.host, o.port)));
        for (host, port) in held {
            if let (Some(address), Some(p)) = (cx.address(host), port) {
                // No key allocated per port: one per address.
                match used.get_mut(address) {
                    Some(set) => {
                        set.insert(p);
                    }
                    None => {
                        used.insert(address.to_string(), BTreeSet::from([p]));
                    }
                }
            }
        }
        used
    }

    /// Take the lowest free port of `host`'s pool, for a new instance that must run
    /// beside the old one.
    ///
    /// # Errors
    /// The pool has no free port.
    pub fn fresh(&mut self, cx: &Context<'_>, host: &str, instance: &InstanceId) -> Result<u16, PlanError> {
        let address = cx.placed_address(host)?;
        let pool = cx.slots.iter().find(|s| s.name == host).map(|s| s.pool);
        if self.used.is_none() {
            self.used = Some(self.build(cx));
        }
        let taken = self.used.get_or_insert_default().entry(address.to_string()).or_default();
        let free = pool.and_then(|p| (p.start..=p.end).find(|x| !taken.contains(x)));
        match free {
            Some(f) => {
                taken.insert(f);
                Ok(f)
            }
            None => {
                Err(PlanError::Placement(format!("no free port on host `{host}` to replace `{instance}` side by side")))
            }
        }
    }
}
