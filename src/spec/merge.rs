//! Merging documents along an `extends` chain.
//!
//! Rules (the contract's): maps merge deeply, scalars and lists are replaced,
//! `null` deletes a key. Associativity holds for overlays without `null`s: a
//! deletion followed by a new value cannot be written as one overlay, so the
//! loader always folds from the root of the chain (`merge(merge(base, staging), prod)`).
//!
//! Invariant: pure; the result never contains `null` object members.

use serde_json::{Map, Value};

use super::yaml::escape;

/// Merge `over` onto `base`. Returns the merged value and the JSON pointers (in
/// `over`) of `null`s that deleted nothing, which usually are typos.
pub fn merge(base: &Value, over: &Value) -> (Value, Vec<String>) {
    let mut misses = Vec::new();
    let merged = merge_at(base, over, "", &mut misses);
    (merged, misses)
}

fn merge_at(base: &Value, over: &Value, ptr: &str, misses: &mut Vec<String>) -> Value {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let child = format!("{ptr}/{}", escape(k));
                if v.is_null() {
                    if out.remove(k).is_none() {
                        misses.push(child);
                    }
                } else if let Some(existing) = b.get(k) {
                    out.insert(k.clone(), merge_at(existing, v, &child, misses));
                } else {
                    out.insert(k.clone(), strip_nulls(v, &child, misses));
                }
            }
            Value::Object(out)
        }
        (_, o) => strip_nulls(o, ptr, misses),
    }
}

/// Remove `null` object members (deleting nothing, so each is a miss).
fn strip_nulls(v: &Value, ptr: &str, misses: &mut Vec<String>) -> Value {
    match v {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                let child = format!("{ptr}/{}", escape(k));
                if v.is_null() {
                    misses.push(child);
                } else {
                    out.insert(k.clone(), strip_nulls(v, &child, misses));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// `v` without `null` members, for validating one file on its own.
pub fn without_nulls(v: &Value) -> Value {
    strip_nulls(v, "", &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn rules() {
        let base = json!({"a": {"x": 1, "y": [1, 2]}, "b": "keep", "c": 3});
        let over = json!({"a": {"y": [9], "z": true}, "c": null, "d": {"e": null, "f": 1}});
        let (m, misses) = merge(&base, &over);
        assert_eq!(m, json!({"a": {"x": 1, "y": [9], "z": true}, "b": "keep", "d": {"f": 1}}));
        assert_eq!(misses, vec!["/d/e".to_string()]);
    }

    /// Documents without nulls whose shape is fixed by the key, as in schema-valid
    /// specs (a field is always a map, or always a scalar or list): keys `m*` hold
    /// maps, `s*` scalars, `l*` lists. Few keys, so documents collide often.
    fn map_doc() -> BoxedStrategy<Value> {
        fn level(depth: u32) -> BoxedStrategy<Value> {
            let scalar = prop_oneof![
                any::<i64>().prop_map(Value::from),
                "[a-c]{0,2}".prop_map(Value::from),
                any::<bool>().prop_map(Value::from)
            ];
            let list = prop::collection::vec(scalar.clone(), 0..3).prop_map(Value::Array);
            let scalars = prop::collection::btree_map("s[a-c]", scalar, 0..3);
            let lists = prop::collection::btree_map("l[a-b]", list, 0..2);
            if depth == 0 {
                return (scalars, lists).prop_map(|(s, l)| Value::Object(s.into_iter().chain(l).collect())).boxed();
            }
            let maps = prop::collection::btree_map("m[a-c]", level(depth - 1), 0..3);
            (scalars, lists, maps)
                .prop_map(|(s, l, m)| Value::Object(s.into_iter().chain(l).chain(m).collect()))
                .boxed()
        }
        level(3)
    }

    proptest! {
        #[test]
        fn empty_override_yields_parent(a in map_doc()) {
            prop_assert_eq!(merge(&a, &json!({})).0, a);
        }

        #[test]
        fn merge_onto_empty_is_identity(a in map_doc()) {
            prop_assert_eq!(merge(&json!({}), &a).0, a);
        }

        #[test]
        fn associative_along_a_chain(a in map_doc(), b in map_doc(), c in map_doc()) {
            let left = merge(&merge(&a, &b).0, &c).0;
            let right = merge(&a, &merge(&b, &c).0).0;
            prop_assert_eq!(left, right);
        }

        #[test]
        fn idempotent(a in map_doc(), b in map_doc()) {
            let once = merge(&a, &b).0;
            prop_assert_eq!(merge(&once, &b).0, once);
        }

        #[test]
        fn null_deletes_the_key(a in map_doc(), k in "[msl][a-c]") {
            let (m, _) = merge(&a, &json!({ k.clone(): null }));
            prop_assert!(m.get(&k).is_none());
        }
    }
}
