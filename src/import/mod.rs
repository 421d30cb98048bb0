//! Importers: other tools' project files → the files of a reconcile config repo.
//!
//! Invariant: pure. The CLI (`cli::import`) reads the input files, the process
//! environment and any `env_file`s, hands their text in, and writes what comes
//! back; nothing here touches the disk, the environment or the clock. Every input
//! key is either mapped or reported as a [`Diagnostic`](crate::diag::Diagnostic)
//! with its file and line: nothing is dropped silently.

pub mod compose;

use serde_json::Value;

/// Write `v` as block-style YAML that reconcile's reader (YAML 1.2) reads back as
/// the same JSON value. Scalars and lists of scalars are written as JSON (a subset
/// of YAML 1.2), so quoting is always right; plain words stay unquoted.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, 0);
    out
}

fn write_value(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, item) in m {
                out.push_str(&format!("{pad}{}:", scalar(&Value::String(k.clone()))));
                write_nested(out, item, indent);
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&format!("{pad}-"));
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // `- key: value` with the other keys aligned under the first
                        let mut first = true;
                        for (k, x) in m {
                            if first {
                                out.push_str(&format!(" {}:", scalar(&Value::String(k.clone()))));
                                first = false;
                            } else {
                                out.push_str(&format!("{pad}  {}:", scalar(&Value::String(k.clone()))));
                            }
                            write_nested(out, x, indent + 2);
                        }
                    }
                    _ => write_nested(out, item, indent),
                }
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", scalar(v))),
    }
}

/// After `key:` or `-`: a scalar (or flow list of scalars) on the same line, else a block below.
fn write_nested(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_value(out, v, indent + 2);
        }
        Value::Array(a) if a.iter().any(|x| x.is_object() || x.is_array()) => {
            out.push('\n');
            write_value(out, v, indent + 2);
        }
        _ => out.push_str(&format!(" {}\n", scalar(v))),
    }
}

/// One scalar, or an empty/flat container, in flow form.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if plain(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(scalar).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(m) if m.is_empty() => "{}".into(),
        _ => serde_json::to_string(v).unwrap_or_default(),
    }
}

/// True when `s` reads back as the same string without quotes: a conservative set of
/// characters, not a number, bool or null, no indicator at the start.
fn plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else { return false };
    let reserved = ["true", "false", "null", "yes", "no", "on", "off", "~", "y", "n"];
    first.is_ascii_alphabetic()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./@+".contains(c))
        && !reserved.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_round_trips_through_the_spec_reader() {
        let v = json!({
            "name": "web",
            "image": "nginx:1.25",
            "command": ["sh", "-c", "echo \"a: b\" # not a comment"],
            "env": {"A": "yes", "B": "0755", "C": "", "D": "{% raw %}{{x}}{% endraw %}", "E": "true"},
            "replicas": 2,
            "resources": {"cpus": 0.5, "memory": "256Mi"},
            "files": [{"template": "templates/a.j2", "path": "/run/secrets/a"}, {"template": "t", "path": "/p"}],
            "hosts": [{"name": "local", "labels": {}}],
            "empty": [],
            "nested": [["a"], {"k": [1, 2]}],
        });
        let text = to_yaml(&v);
        let back = crate::spec::yaml::parse_str(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(back.value, v, "\n{text}");
        assert!(text.contains("image: nginx:1.25\n") || text.contains("image: \"nginx:1.25\"\n"), "{text}");
        assert!(text.contains("name: web\n"), "{text}");
    }
}
