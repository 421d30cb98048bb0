//! Phase 5: the etcd keys the environment should have (config center, desired
//! copies, registry entries of the serving instances, the health marks of kept
//! containers, apply's reload-pending mark), diffed against the observed keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::context::Context;
use super::{Action, PlanError};
use crate::model::{EtcdObservation, keys};
use crate::placement::Assignment;

/// The etcd keys an environment should have, with registry entries for `serving`.
///
/// # Errors
/// A serving instance is on a host the environment lacks (a planner bug, reported).
pub fn etcd_keys(
    cx: &Context<'_>,
    prefix: &str,
    registry_prefix: &str,
    serving: &[Assignment],
) -> Result<BTreeMap<String, String>, PlanError> {
    let env = cx.env;
    // Only looked up by name (never iterated): a hash map, not 100,000 ordered inserts.
    let mut by_app: HashMap<&str, Vec<&Assignment>> = HashMap::new();
    for a in serving {
        by_app.entry(a.app.as_str()).or_default().push(a);
    }
    let mut out = BTreeMap::new();
    for (name, app) in &env.apps {
        for (k, v) in &app.spec.config {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(keys::config(prefix, &env.name, name, k), text);
        }
        out.insert(keys::app(prefix, &env.name, name), serde_json::to_string(&app.spec).unwrap_or_default());
        if app.spec.registry {
            for a in by_app.get(name.as_str()).map(Vec::as_slice).unwrap_or_default() {
                if let Some(p) = a.port {
                    let ip = cx.placed_address(&a.host)?;
                    out.insert(keys::registry(registry_prefix, name, &env.name, ip, p), format!("{ip}:{p}"));
                }
            }
        }
    }
    Ok(out)
}

/// What the planner's own keys leave as they are: observed keys owned by others
/// (`watch`'s health marks of containers that stay, apply's reload-pending mark).
pub struct Carried<'a> {
    /// Container names that stay.
    pub staying: BTreeSet<&'a str>,
    /// Health marks: container name → key.
    pub marks: &'a BTreeMap<String, String>,
    /// The reload-pending keys (one per LB).
    pub pending: Vec<String>,
}

/// Writes and deletes that turn `observed` into `desired` plus the carried keys.
pub fn diff(mut desired: BTreeMap<String, String>, observed: &EtcdObservation, carried: &Carried<'_>) -> Vec<Action> {
    for (container, key) in carried.marks {
        if let (true, Some(v)) = (carried.staying.contains(container.as_str()), observed.keys.get(key)) {
            desired.insert(key.clone(), v.clone());
        }
    }
    // The reload-pending mark is apply's own bookkeeping: apply deletes it after a reload.
    for (key, v) in carried.pending.iter().filter_map(|k| observed.keys.get_key_value(k)) {
        desired.insert(key.clone(), v.clone());
    }
    let mut actions = Vec::new();
    for (k, v) in &desired {
        match observed.keys.get(k) {
            Some(old) if old == v => {}
            old => actions.push(Action::PutKey { key: k.clone(), value: v.clone(), old: old.cloned() }),
        }
    }
    for (k, old) in &observed.keys {
        if !desired.contains_key(k) {
            actions.push(Action::DeleteKey { key: k.clone(), old: old.clone() });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_differing_keys_are_written_and_only_unwanted_ones_deleted() {
        let observed = EtcdObservation { keys: kv(&[("/a", "1"), ("/b", "old"), ("/gone", "x")]) };
        let marks = BTreeMap::new();
        let carried = Carried { staying: BTreeSet::new(), marks: &marks, pending: vec!["/pending".into()] };
        let actions = diff(kv(&[("/a", "1"), ("/b", "new"), ("/c", "3")]), &observed, &carried);
        assert_eq!(
            actions,
            [
                Action::PutKey { key: "/b".into(), value: "new".into(), old: Some("old".into()) },
                Action::PutKey { key: "/c".into(), value: "3".into(), old: None },
                Action::DeleteKey { key: "/gone".into(), old: "x".into() },
            ]
        );
    }

    #[test]
    fn marks_of_staying_containers_and_the_pending_mark_are_left_alone() {
        let observed =
            EtcdObservation { keys: kv(&[("/h/stays", "m1"), ("/h/goes", "m2"), ("/pending", "t"), ("/a", "1")]) };
        let marks = kv(&[("stays", "/h/stays"), ("goes", "/h/goes")]);
        let carried = Carried { staying: ["stays"].into(), marks: &marks, pending: vec!["/pending".into()] };
        let actions = diff(kv(&[("/a", "1")]), &observed, &carried);
        assert_eq!(actions, [Action::DeleteKey { key: "/h/goes".into(), old: "m2".into() }]);
    }
}
