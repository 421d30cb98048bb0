//! Field-level differences between a container's masked spec and the desired
//! one: what the plan shows for a replacement (for people only).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Change;
use super::instance::InstanceSpec;

/// Field-level differences between an old masked spec (from the container's
/// label) and the new spec. Masked text is compared as is; a field whose secrets
/// changed (by digest) is marked sensitive, with or without a visible change.
pub fn changes(old: Option<&Value>, new: &InstanceSpec) -> Vec<Change> {
    let Some(old) = old else {
        return vec![Change { field: "spec".into(), old: None, new: None, sensitive: false }];
    };
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    flatten_spec(old, &mut a);
    flatten_spec(&new.masked(), &mut b);
    let fields: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out: Vec<Change> = Vec::new();
    // Plain fields first, then mark the ones whose secrets changed.
    for f in fields.iter().filter(|f| !f.starts_with("sensitive.") && a.get(**f) != b.get(**f)) {
        out.push(Change { field: (*f).clone(), old: a.get(*f).cloned(), new: b.get(*f).cloned(), sensitive: false });
    }
    for f in fields.iter().filter(|f| a.get(**f) != b.get(**f)) {
        let Some(field) = f.strip_prefix("sensitive.") else { continue };
        match out.iter_mut().find(|c| c.field == field) {
            Some(c) => c.sensitive = true,
            None => out.push(Change { field: field.to_string(), old: None, new: None, sensitive: true }),
        }
    }
    out.sort_by(|x, y| x.field.cmp(&y.field));
    out.dedup_by(|x, y| x.field == y.field);
    out
}

/// Flatten a masked spec to dotted fields; `sensitive` digests keep their field names
/// (`sensitive.env.DB_PASSWORD`), since those names contain dots themselves.
fn flatten_spec(v: &Value, out: &mut BTreeMap<String, Value>) {
    let Value::Object(o) = v else { return };
    for (k, c) in o {
        if k == "sensitive"
            && let Value::Object(d) = c
        {
            for (field, digest) in d {
                out.insert(format!("sensitive.{field}"), digest.clone());
            }
        } else {
            flatten(c, k.clone(), out);
        }
    }
}

/// `{"env": {"A": "1"}}` → `env.A = "1"`. Lists are compared whole; file maps by path.
fn flatten(v: &Value, at: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, c) in o {
                let p = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                flatten(c, p, out);
            }
        }
        Value::Null => {}
        other => {
            out.insert(at, other.clone());
        }
    }
}
