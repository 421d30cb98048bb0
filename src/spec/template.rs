//! Templates (MiniJinja, strict undefined) over an environment chain's files.
//!
//! A template name is a path relative to an environment directory, looked up
//! child first along the `extends` chain, like an overlay filesystem. Names are
//! refused when absolute or when they contain `..`, so a template can include
//! only files inside the chain's directories; nothing is read from disk (the
//! files come from the in-memory snapshot). Fuel and recursion limits bound
//! hostile templates.
//!
//! Invariant: pure. Rendering reads only the snapshot and the given context.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

/// A template that failed: which file (repo path) and where, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub range: Option<std::ops::Range<usize>>,
    pub message: String,
    pub hint: String,
}

/// Why a template name is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    Escapes,
    NotFound,
}

/// The templates of one environment chain.
pub struct Templates {
    env: Environment<'static>,
    lookup: Arc<Lookup>,
    /// Inline template source → registered name (compiled once, rendered many times).
    inline: std::collections::HashMap<String, String>,
}

/// Prefix of registered inline templates (never a valid file name: `:` is refused).
const INLINE: &str = "inline:";

/// True when a string needs rendering at all.
pub fn is_template(src: &str) -> bool {
    src.contains("{{") || src.contains("{%") || src.contains("{#")
}

struct Lookup {
    /// `environments/<dir>`, child first.
    dirs: Vec<String>,
    files: Arc<BTreeMap<String, Vec<u8>>>,
}

impl Lookup {
    fn resolve(&self, name: &str) -> Result<String, PathProblem> {
        if escapes(name) {
            return Err(PathProblem::Escapes);
        }
        self.dirs
            .iter()
            .map(|d| format!("{d}/{name}"))
            .find(|p| self.files.contains_key(p))
            .ok_or(PathProblem::NotFound)
    }
}

/// True when a relative template path could leave its directory.
pub fn escapes(name: &str) -> bool {
    name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.split('/').any(|s| s == ".." || s == ".")
        || name.contains(':')
}

/// Most template work allowed for one render: ample for configs, a bound for loops gone wrong.
const FUEL: u64 = 5_000_000;

impl Templates {
    /// `dirs` are the chain's directories child first (`environments/prod`, `environments/base`).
    pub fn new(dirs: Vec<String>, files: Arc<BTreeMap<String, Vec<u8>>>) -> Self {
        let lookup = Arc::new(Lookup { dirs, files });
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // trim_blocks so `{% for %}` lines leave no blank lines (the contract's nginx example relies on it).
        if let Ok(syntax) = SyntaxConfig::builder().trim_blocks(true).keep_trailing_newline(true).build() {
            env.set_syntax(syntax);
        }
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        let l = Arc::clone(&lookup);
        env.set_loader(move |name| {
            let path = match l.resolve(name) {
                Ok(p) => p,
                Err(PathProblem::Escapes) => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("template path {name:?} escapes the environment's directory"),
                    ));
                }
                Err(PathProblem::NotFound) => return Ok(None),
            };
            let bytes = l.files.get(&path).cloned().unwrap_or_default();
            String::from_utf8(bytes).map(Some).map_err(|_| {
                minijinja::Error::new(ErrorKind::InvalidOperation, format!("template {path} is not valid UTF-8"))
            })
        });
        Self { env, lookup, inline: Default::default() }
    }

    /// The text of a template file, when it resolves and is UTF-8.
    pub fn source(&self, name: &str) -> Option<&str> {
        let path = self.lookup.resolve(name).ok()?;
        std::str::from_utf8(self.lookup.files.get(&path)?).ok()
    }

    /// The repo path a template name resolves to.
    pub fn resolve(&self, name: &str) -> Result<String, PathProblem> {
        self.lookup.resolve(name)
    }

    /// Render the template file `name` (relative to the environment directory).
    pub fn render_file(&self, name: &str, ctx: &Value) -> Result<String, TemplateError> {
        let t = self.env.get_template(name).map_err(|e| self.error(e))?;
        t.render(minijinja::Value::from(minijinja::value::Serde(ctx))).map_err(|e| self.error(e))
    }

    /// Compile an inline template once; render it with [`render_value`](Self::render_value)
    /// under the returned name. Plain strings need no compiling (check [`is_template`]).
    ///
    /// # Errors
    /// The template does not parse.
    pub fn add_inline(&mut self, src: &str) -> Result<String, TemplateError> {
        if let Some(n) = self.inline.get(src) {
            return Ok(n.clone());
        }
        let name = format!("{INLINE}{}", self.inline.len());
        self.env.add_template_owned(name.clone(), src.to_string()).map_err(|e| self.error(e))?;
        self.inline.insert(src.to_string(), name.clone());
        Ok(name)
    }

    /// Render a template by name (a file name, or one from [`add_inline`](Self::add_inline))
    /// with a context already converted to a MiniJinja value: the fast path for
    /// rendering thousands of instances.
    ///
    /// # Errors
    /// The template fails to render.
    pub fn render_value(&self, name: &str, ctx: &minijinja::Value) -> Result<String, TemplateError> {
        let t = self.env.get_template(name).map_err(|e| self.error(e))?;
        t.render(ctx).map_err(|e| {
            let mut err = self.error(e);
            if name.starts_with(INLINE) {
                err.file = None;
            }
            err
        })
    }

    /// Render an inline template (an env value, a command argument).
    pub fn render_str(&self, src: &str, ctx: &Value) -> Result<String, TemplateError> {
        if !src.contains("{{") && !src.contains("{%") && !src.contains("{#") {
            return Ok(src.to_string());
        }
        self.env.render_str(src, minijinja::Value::from(minijinja::value::Serde(ctx))).map_err(|e| {
            let mut err = self.error(e);
            // Errors inside an inline template point at the YAML value, not a file.
            if err.file.as_deref().is_some_and(|f| !self.lookup.files.contains_key(f)) {
                err.file = None;
            }
            err
        })
    }

    fn error(&self, e: minijinja::Error) -> TemplateError {
        let file = e.name().and_then(|n| self.lookup.resolve(n).ok());
        let hint = match e.kind() {
            ErrorKind::UndefinedError => {
                "templates see env, vars, secrets (and app, instance in app files; apps in the LB template); define the value in vars or guard it with `is defined`"
            }
            ErrorKind::SyntaxError => "fix the template syntax (MiniJinja: {{ expr }}, {% tag %})",
            ErrorKind::TemplateNotFound => {
                "template names are relative to the environment directory, e.g. templates/nginx.conf.j2"
            }
            ErrorKind::OutOfFuel => "the template does too much work; look for a runaway loop",
            ErrorKind::InvalidOperation if e.detail().is_some_and(|d| d.contains("escapes")) => {
                "templates may include only files inside the environment chain's directories; use a path relative to the environment directory without `..`"
            }
            _ => "check the template",
        };
        let mut message = match e.detail() {
            Some(d) => format!("{}: {d}", kind_text(e.kind())),
            None => kind_text(e.kind()).to_string(),
        };
        if e.kind() == ErrorKind::TemplateNotFound
            && let Some(n) = e.name()
        {
            message = format!("template not found: {n}");
        }
        TemplateError { file, line: e.line(), range: e.range(), message, hint: hint.into() }
    }
}

fn kind_text(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::UndefinedError => "undefined value",
        ErrorKind::SyntaxError => "template syntax error",
        ErrorKind::TemplateNotFound => "template not found",
        ErrorKind::InvalidOperation => "invalid operation",
        ErrorKind::UnknownFilter => "unknown filter",
        ErrorKind::UnknownFunction => "unknown function",
        ErrorKind::UnknownTest => "unknown test",
        ErrorKind::OutOfFuel => "template ran out of fuel",
        _ => "template error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(files: &[(&str, &str)]) -> Templates {
        let map: BTreeMap<String, Vec<u8>> =
            files.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        Templates::new(vec!["environments/prod".into(), "environments/base".into()], Arc::new(map))
    }

    #[test]
    fn overlay_lookup_and_contract_nginx_example() {
        let tpl = "{% for app in apps %}\nupstream {{ app.name }} {\n{% for i in app.instances %}  server {{ i.address }}:{{ i.port }};\n{% endfor %}}\n{% endfor %}";
        let ts = t(&[
            ("environments/base/templates/lb.j2", tpl),
            ("environments/base/x.j2", "base"),
            ("environments/prod/x.j2", "prod"),
        ]);
        assert_eq!(ts.render_file("x.j2", &json!({})).unwrap(), "prod");
        let ctx = json!({"apps": [{"name": "api", "instances": [{"address": "10.0.0.1", "port": 20000}, {"address": "10.0.0.2", "port": 20001}]}]});
        assert_eq!(
            ts.render_file("templates/lb.j2", &ctx).unwrap(),
            "upstream api {\n  server 10.0.0.1:20000;\n  server 10.0.0.2:20001;\n}\n"
        );
    }

    #[test]
    fn strict_undefined_and_escapes() {
        let ts = t(&[
            ("environments/base/a.j2", "line1\n{{ vars.nope }}\n"),
            ("environments/base/inc.j2", "{% include '../../secret' %}"),
        ]);
        let e = ts.render_file("a.j2", &json!({"vars": {}})).unwrap_err();
        assert_eq!((e.file.as_deref(), e.line), (Some("environments/base/a.j2"), Some(2)));
        assert!(ts.render_file("inc.j2", &json!({})).unwrap_err().message.contains("escapes"));
        assert_eq!(ts.resolve("../x"), Err(PathProblem::Escapes));
        assert!(ts.render_str("{{ vars.x }}", &json!({"vars": {}})).unwrap_err().file.is_none());
    }
}
