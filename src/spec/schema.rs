//! The JSON Schemas (draft 2020-12) embedded from `schema/`, and validation of
//! documents against them with errors mapped back to YAML positions.
//!
//! Each file is validated on its own against a *partial* form of its schema
//! (`required` dropped below the top level, since an overlay file may set just
//! one field), which pins unknown fields and wrong types to the file that has
//! them. The merged document of a deployable environment is then validated
//! against the full schema, which catches what is missing after merging.

use std::sync::OnceLock;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

pub const ENVIRONMENT: &str = include_str!("../../schema/environment.schema.json");
pub const APP: &str = include_str!("../../schema/app.schema.json");
/// The JSON form of a plan (`plan --format json`, `plan --out`).
pub const PLAN: &str = include_str!("../../schema/plan.schema.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Environment,
    App,
}

impl Kind {
    pub fn source(self) -> &'static str {
        match self {
            Kind::Environment => ENVIRONMENT,
            Kind::App => APP,
        }
    }
}

/// One schema violation: where (a JSON pointer into the instance), what, and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    /// True when the pointer names an unexpected key rather than a value.
    pub at_key: bool,
    pub message: String,
    pub hint: Option<String>,
}

struct Compiled {
    schema: Value,
    full: Validator,
    partial: Validator,
}

fn compiled(kind: Kind) -> &'static Compiled {
    static ENV: OnceLock<Compiled> = OnceLock::new();
    static APP_: OnceLock<Compiled> = OnceLock::new();
    let cell = match kind {
        Kind::Environment => &ENV,
        Kind::App => &APP_,
    };
    cell.get_or_init(|| {
        // The schemas are part of the binary and covered by tests: failing here is a build defect.
        #[allow(clippy::expect_used)]
        let schema: Value = serde_json::from_str(kind.source()).expect("embedded schema is valid JSON");
        let mut partial_schema = schema.clone();
        strip_required(&mut partial_schema, true);
        #[allow(clippy::expect_used)]
        let full = jsonschema::draft202012::new(&schema).expect("embedded schema compiles");
        #[allow(clippy::expect_used)]
        let partial = jsonschema::draft202012::new(&partial_schema).expect("partial schema compiles");
        Compiled { schema, full, partial }
    })
}

fn strip_required(v: &mut Value, root: bool) {
    match v {
        Value::Object(o) => {
            if root {
                o.insert("required".into(), serde_json::json!(["apiVersion", "kind", "name"]));
            } else {
                o.remove("required");
            }
            for (k, child) in o.iter_mut() {
                if k != "required" {
                    strip_required(child, false);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| strip_required(c, false)),
        _ => {}
    }
}

/// Validate one file's document (nulls already removed) against the partial schema.
pub fn validate_partial(kind: Kind, doc: &Value) -> Vec<Violation> {
    let c = compiled(kind);
    collect(&c.partial, &c.schema, doc)
}

/// Validate a merged document against the full schema.
pub fn validate_full(kind: Kind, doc: &Value) -> Vec<Violation> {
    let c = compiled(kind);
    collect(&c.full, &c.schema, doc)
}

fn collect(validator: &Validator, schema: &Value, doc: &Value) -> Vec<Violation> {
    validator.iter_errors(doc).map(|e| violation(&e, schema)).collect()
}

fn violation(err: &jsonschema::ValidationError<'_>, schema: &Value) -> Violation {
    let ip = err.instance_path().as_str().to_string();
    let schema_path = err.schema_path().as_str().to_string();
    // The schema object holding the failing keyword.
    let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
    let here = resolve(schema, parent);
    let field = ip.rsplit('/').next().unwrap_or("").replace("~1", "/").replace("~0", "~");
    let description = here.and_then(|s| s.get("description")).and_then(Value::as_str).map(str::to_string);
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            let name = unexpected.first().cloned().unwrap_or_default();
            let known: Vec<String> = here
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            let hint = match closest(&name, &known) {
                Some(k) => Some(format!("did you mean `{k}`?")),
                None if !known.is_empty() => Some(format!("known fields here: {}", known.join(", "))),
                None => None,
            };
            Violation {
                pointer: format!("{ip}/{}", super::yaml::escape(&name)),
                at_key: true,
                message: format!("unknown field `{name}`"),
                hint,
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default().to_string();
            let desc = here
                .and_then(|s| s.get("properties"))
                .and_then(|p| p.get(&name))
                .and_then(|p| p.get("description"))
                .and_then(Value::as_str);
            Violation {
                pointer: ip.clone(),
                at_key: false,
                message: format!(
                    "missing required field `{name}`{}",
                    if ip.is_empty() { String::new() } else { format!(" in `{}`", ip.trim_start_matches('/')) }
                ),
                hint: desc.map(|d| format!("add `{name}`: {d}")),
            }
        }
        ValidationErrorKind::Constant { expected_value } => Violation {
            pointer: ip,
            at_key: false,
            message: format!("`{field}` must be {expected_value}"),
            hint: Some(format!(
                "write `{field}: {}`",
                expected_value.as_str().map_or(expected_value.to_string(), str::to_string)
            )),
        },
        ValidationErrorKind::Pattern { .. } => Violation {
            pointer: ip,
            at_key: false,
            message: format!("`{field}` has an invalid format: {}", err.instance()),
            hint: description,
        },
        ValidationErrorKind::PropertyNames { .. } => Violation {
            pointer: ip,
            at_key: false,
            message: format!("invalid key in `{field}`: {err}"),
            hint: here.and_then(|s| s.get("description")).and_then(Value::as_str).map(str::to_string),
        },
        _ => Violation {
            pointer: ip.clone(),
            at_key: false,
            message: if field.is_empty() { err.to_string() } else { format!("`{field}`: {err}") },
            hint: description.or_else(|| field_description(schema, &ip)),
        },
    }
}

/// Follow a schema location (a JSON pointer into the schema, possibly through `$ref`).
fn resolve<'a>(schema: &'a Value, location: &str) -> Option<&'a Value> {
    let mut cur = schema;
    for seg in location.split('/').filter(|s| !s.is_empty()) {
        if seg == "$ref" {
            let target = cur.get("$ref")?.as_str()?.strip_prefix('#')?;
            cur = schema.pointer(target)?;
        } else {
            cur = cur.get(seg.replace("~1", "/").replace("~0", "~"))?;
        }
    }
    Some(cur)
}

/// The description of the field at an instance pointer, found by walking the schema.
fn field_description(schema: &Value, instance_ptr: &str) -> Option<String> {
    let mut cur = schema;
    for seg in instance_ptr.split('/').filter(|s| !s.is_empty()) {
        if let Some(r) = cur.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            cur = schema.pointer(r)?;
        }
        cur = if let Some(p) = cur.get("properties").and_then(|p| p.get(seg)) {
            p
        } else if let Some(items) = cur.get("items") {
            items
        } else {
            cur.get("additionalProperties")?
        };
    }
    if let Some(r) = cur.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        cur = schema.pointer(r)?;
    }
    cur.get("description").and_then(Value::as_str).map(str::to_string)
}

/// The known name closest to `name` by edit distance, if close enough to be a typo.
pub fn closest(name: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (levenshtein(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min()
        .map(|(_, k)| k.clone())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_compile_and_every_field_has_a_description() {
        for kind in [Kind::Environment, Kind::App] {
            let c = compiled(kind);
            let mut missing = Vec::new();
            walk(&c.schema, "", &mut missing);
            assert!(missing.is_empty(), "{kind:?}: fields without description: {missing:?}");
        }
    }

    fn walk(v: &Value, at: &str, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                if p.get("description").is_none() {
                    missing.push(format!("{at}/{k}"));
                }
                walk(p, &format!("{at}/{k}"), missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(c) = v.get(key).filter(|c| c.is_object()) {
                walk(c, &format!("{at}/{key}"), missing);
            }
        }
        if let Some(defs) = v.get("$defs").and_then(Value::as_object) {
            for (k, d) in defs {
                walk(d, &format!("{at}/$defs/{k}"), missing);
            }
        }
    }

    #[test]
    fn unknown_field_suggests_the_closest() {
        let doc = json!({"apiVersion": "reconcile/v1", "kind": "App", "name": "a", "image": "x:1", "replica": 3});
        let v = validate_full(Kind::App, &doc);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].pointer, "/replica");
        assert_eq!(v[0].hint.as_deref(), Some("did you mean `replicas`?"));
    }

    #[test]
    fn partial_allows_missing_image_but_full_does_not() {
        let doc = json!({"apiVersion": "reconcile/v1", "kind": "App", "name": "a", "replicas": 2});
        assert!(validate_partial(Kind::App, &doc).is_empty());
        let full = validate_full(Kind::App, &doc);
        assert!(full[0].message.contains("`image`"), "{full:?}");
    }
}
