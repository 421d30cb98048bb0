//! Loading a config repo snapshot: parse every file, resolve `extends` chains,
//! merge, validate against the schemas, and deserialise typed specs.
//!
//! Never stops at the first problem: every file is parsed and checked, and the
//! result carries all diagnostics. An environment or app whose own files are
//! broken is left out of the later stages (so one typo gives one error, not a
//! cascade), everything else is still checked.
//!
//! Invariant: pure. Input is a [`RepoSnapshot`]; no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use super::merge::{merge, without_nulls};
use super::schema::{self, Kind};
use super::snapshot::RepoSnapshot;
use super::types::{AppSpec, EnvironmentSpec};
use super::yaml::{self, Document, Pos, SpanIndex};
use crate::diag::Diagnostic;

/// One file's contribution to a merged document.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Repo-relative path.
    pub file: String,
    pub index: Arc<SpanIndex>,
}

/// A document merged along an `extends` chain, with where each part came from.
#[derive(Debug, Clone)]
pub struct Merged {
    pub value: Value,
    /// Child first.
    pub layers: Vec<Layer>,
}

impl Merged {
    /// The file and position that define `ptr` (the most derived file that has
    /// it; for a missing field, its nearest present parent).
    pub fn locate(&self, ptr: &str) -> (String, Option<Pos>) {
        let mut p = ptr.to_string();
        loop {
            for l in &self.layers {
                if l.index.has(&p) {
                    return (l.file.clone(), l.index.locate(&p));
                }
            }
            match p.rfind('/') {
                Some(cut) => p.truncate(cut),
                None => break,
            }
        }
        let first = self.layers.first();
        (first.map(|l| l.file.clone()).unwrap_or_default(), first.and_then(|l| l.index.locate("")))
    }

    /// Like [`locate`](Self::locate) but prefers the key of an object member.
    pub fn locate_key(&self, ptr: &str) -> (String, Option<Pos>) {
        for l in &self.layers {
            if let Some(p) = l.index.key.get(ptr) {
                return (l.file.clone(), Some(*p));
            }
        }
        self.locate(ptr)
    }
}

/// An app of an environment after merging.
#[derive(Debug, Clone)]
pub struct App {
    pub spec: AppSpec,
    pub doc: Merged,
}

/// An environment after merging.
#[derive(Debug, Clone)]
pub struct Env {
    pub name: String,
    /// Environment names from this one up to the root, child first.
    pub chain: Vec<String>,
    /// `environments/<name>` for each of `chain`.
    pub dirs: Vec<String>,
    pub spec: EnvironmentSpec,
    /// Every secret with what resolving it needs (`from_age` files from the snapshot).
    pub secret_refs: BTreeMap<String, crate::spec::types::SecretRef>,
    pub doc: Merged,
    pub apps: BTreeMap<String, App>,
    /// Apps whose files are present but broken (already reported).
    pub broken_apps: BTreeSet<String>,
}

/// The result of loading a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Environments that loaded far enough to be checked, including abstract ones.
    pub envs: BTreeMap<String, Env>,
    /// Every environment directory found (with an environment.yaml), loaded or not.
    pub names: BTreeSet<String>,
    pub diagnostics: Vec<Diagnostic>,
    /// The chain of each environment name (child first), for filtering diagnostics by `--env`.
    pub chains: BTreeMap<String, Vec<String>>,
}

struct Parsed {
    doc: Document,
    /// True when the file had a per-file error (syntax, schema, name).
    ok: bool,
}

/// Display path helper bound to a snapshot.
struct Ctx<'a> {
    snap: &'a RepoSnapshot,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn push(&mut self, d: Diagnostic, file: &str, pos: Option<Pos>) {
        let shown = self.snap.display(file);
        self.diags.push(d.at(shown, pos));
    }
}

/// Load every environment of a snapshot.
pub fn load(snap: &RepoSnapshot) -> Loaded {
    load_only(snap, None)
}

/// Load the environment `only` and the ones it extends (every environment with `None`).
/// Every environment file is still parsed, so `names` and `chains` are complete and the
/// layout and `extends` diagnostics are the same; other environments' apps are neither
/// parsed nor checked, and `envs` holds `only`'s chain alone.
pub fn load_only(snap: &RepoSnapshot, only: Option<&str>) -> Loaded {
    let mut cx = Ctx { snap, diags: Vec::new() };

    // 1. Find environments and their files.
    let mut env_files: BTreeMap<String, String> = BTreeMap::new();
    let mut app_files: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut dirs_seen: BTreeSet<String> = BTreeSet::new();
    for path in snap.files.keys() {
        let Some(rest) = path.strip_prefix("environments/") else { continue };
        let Some((env, inner)) = rest.split_once('/') else {
            cx.push(
                Diagnostic::warning("layout", format!("file {path} is ignored"))
                    .hint("put files in environments/<env>/"),
                path,
                None,
            );
            continue;
        };
        dirs_seen.insert(env.to_string());
        match inner {
            "environment.yaml" => {
                env_files.insert(env.to_string(), path.clone());
            }
            "environment.yml" => cx.push(
                Diagnostic::error("layout", format!("{path} must be named environment.yaml"))
                    .hint("rename the file to environment.yaml"),
                path,
                None,
            ),
            _ => {
                if let Some(file) = inner.strip_prefix("apps/") {
                    let stem = file.strip_suffix(".yaml").or_else(|| file.strip_suffix(".yml"));
                    match stem {
                        Some(stem) if !stem.contains('/') => {
                            app_files
                                .entry(env.to_string())
                                .or_default()
                                .entry(stem.to_string())
                                .or_default()
                                .push(path.clone());
                        }
                        _ => cx.push(
                            Diagnostic::warning("layout", format!("{path} is not an app spec and is ignored"))
                                .hint("app specs are apps/<name>.yaml"),
                            path,
                            None,
                        ),
                    }
                }
            }
        }
    }
    for d in &dirs_seen {
        if !env_files.contains_key(d) && !app_files.contains_key(d) {
            continue; // a directory of templates only is fine to ignore silently
        }
        if !env_files.contains_key(d) {
            let any = app_files.get(d).and_then(|a| a.values().flatten().next()).cloned().unwrap_or_default();
            cx.push(
                Diagnostic::error("layout", format!("environments/{d} has apps but no environment.yaml"))
                    .hint("add environments/{d}/environment.yaml with apiVersion, kind: Environment and name"),
                &any,
                None,
            );
        }
    }

    // 2. Parse and check each environment file on its own, and resolve `extends` chains.
    let mut parsed: BTreeMap<String, Parsed> = BTreeMap::new();
    for (env, path) in &env_files {
        if let Some(p) = parse_file(&mut cx, path, Kind::Environment, env) {
            parsed.insert(path.clone(), p);
        }
    }
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for env in env_files.keys() {
        if let Some(chain) = resolve_chain(&mut cx, env, &env_files, &parsed) {
            chains.insert(env.clone(), chain);
        }
    }
    // With `only`, the rest is done for its chain alone.
    let wanted: Option<BTreeSet<&str>> =
        only.map(|o| chains.get(o).map_or_else(|| BTreeSet::from([o]), |c| c.iter().map(String::as_str).collect()));
    let is_wanted = |env: &str| wanted.as_ref().is_none_or(|w| w.contains(env));

    // 3. Parse and check each app file on its own.
    for (env, apps) in app_files.iter().filter(|(env, _)| is_wanted(env)) {
        for (name, paths) in apps {
            if paths.len() > 1 {
                cx.push(
                    Diagnostic::error(
                        "duplicate-app",
                        format!("app `{name}` is defined twice in environment `{env}`: {}", paths.join(" and ")),
                    )
                    .hint("keep one file per app"),
                    &paths[1],
                    None,
                );
            }
            for path in paths {
                if let Some(p) = parse_file(&mut cx, path, Kind::App, name) {
                    parsed.insert(path.clone(), p);
                }
            }
        }
    }

    // 4. Merge, validate merged documents, deserialise.
    let mut envs = BTreeMap::new();
    for (name, chain) in chains.iter().filter(|(name, _)| is_wanted(name)) {
        let chain_ok = chain.iter().all(|e| env_files.get(e).and_then(|p| parsed.get(p)).is_some_and(|p| p.ok));
        if !chain_ok {
            continue;
        }
        if let Some(env) = build_env(&mut cx, name, chain, &env_files, &app_files, &parsed) {
            envs.insert(name.clone(), env);
        }
    }

    Loaded { envs, names: env_files.keys().cloned().collect(), diagnostics: cx.diags, chains }
}

fn parse_file(cx: &mut Ctx<'_>, path: &str, kind: Kind, expected_name: &str) -> Option<Parsed> {
    let bytes = cx.snap.files.get(path)?;
    let doc = match yaml::parse(bytes) {
        Ok(d) => d,
        Err(e) => {
            let mut d = Diagnostic::error("yaml", e.message);
            if let Some(h) = e.hint {
                d = d.hint(h);
            }
            cx.push(d, path, Some(e.pos));
            return None;
        }
    };
    let mut ok = true;
    if !doc.value.is_object() {
        cx.push(
            Diagnostic::error("schema", format!("expected a mapping of fields, found {}", type_name(&doc.value))).hint(
                format!(
                    "a {} file starts with `apiVersion: reconcile/v1`",
                    if kind == Kind::App { "app" } else { "environment" }
                ),
            ),
            path,
            doc.index.locate(""),
        );
        return Some(Parsed { doc, ok: false });
    }
    for v in schema::validate_partial(kind, &without_nulls(&doc.value)) {
        ok = false;
        let pos = if v.at_key { doc.index.locate_key(&v.pointer) } else { doc.index.locate(&v.pointer) };
        let mut d = Diagnostic::error("schema", v.message);
        if let Some(h) = v.hint {
            d = d.hint(h);
        }
        cx.push(d, path, pos);
    }
    if let Some(n) = doc.value.get("name").and_then(Value::as_str)
        && n != expected_name
    {
        ok = false;
        let what = if kind == Kind::App { "the file name" } else { "its directory name" };
        cx.push(
            Diagnostic::error("name", format!("name `{n}` does not match {what} `{expected_name}`")).hint(format!(
                "write `name: {expected_name}`, or rename the {}",
                if kind == Kind::App { "file" } else { "directory" }
            )),
            path,
            doc.index.locate("/name"),
        );
    }
    Some(Parsed { doc, ok })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn resolve_chain(
    cx: &mut Ctx<'_>,
    env: &str,
    env_files: &BTreeMap<String, String>,
    parsed: &BTreeMap<String, Parsed>,
) -> Option<Vec<String>> {
    let mut chain = vec![env.to_string()];
    let mut cur = env.to_string();
    loop {
        let path = env_files.get(&cur)?;
        let p = parsed.get(path)?;
        let Some(parent) = p.doc.value.get("extends").and_then(Value::as_str) else { return Some(chain) };
        if !env_files.contains_key(parent) {
            // Report once, on the file that names the unknown parent.
            if cur == env {
                let known: Vec<String> = env_files.keys().cloned().collect();
                let hint = match schema::closest(parent, &known) {
                    Some(k) => format!("did you mean `{k}`? known environments: {}", known.join(", ")),
                    None => format!("known environments: {}", known.join(", ")),
                };
                cx.push(
                    Diagnostic::error("extends", format!("environment `{cur}` extends unknown environment `{parent}`"))
                        .hint(hint),
                    path,
                    p.doc.index.locate("/extends"),
                );
            }
            return None;
        }
        if let Some(i) = chain.iter().position(|c| c == parent) {
            if chain[..=i].contains(&env.to_string()) && i == 0 {
                let mut cycle = chain.clone();
                cycle.push(parent.to_string());
                cx.push(
                    Diagnostic::error("extends", format!("`extends` cycle: {}", cycle.join(" -> ")))
                        .hint("an environment may not extend itself, directly or through others; break the cycle"),
                    env_files.get(env).map_or("", String::as_str),
                    parsed.get(env_files.get(env)?).and_then(|p| p.doc.index.locate("/extends")),
                );
            }
            return None;
        }
        chain.push(parent.to_string());
        cur = parent.to_string();
    }
}

fn build_env(
    cx: &mut Ctx<'_>,
    name: &str,
    chain: &[String],
    env_files: &BTreeMap<String, String>,
    app_files: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    parsed: &BTreeMap<String, Parsed>,
) -> Option<Env> {
    // Fold from the root of the chain to this environment.
    let mut value = Value::Object(serde_json::Map::new());
    let mut layers = Vec::new();
    for (depth, e) in chain.iter().rev().enumerate() {
        let path = env_files.get(e)?;
        let p = parsed.get(path)?;
        if let Value::Object(o) = &mut value {
            // `abstract` and `extends` belong to the file that says them; they are not inherited.
            o.remove("abstract");
            o.remove("extends");
        }
        let (m, misses) = merge(&value, &p.doc.value);
        if e == name {
            report_misses(cx, path, &p.doc.index, &misses, depth == 0);
        }
        value = m;
        layers.insert(0, Layer { file: path.clone(), index: Arc::new(p.doc.index.clone()) });
    }
    let doc = Merged { value, layers };
    let is_abstract = doc.value.get("abstract").and_then(Value::as_bool).unwrap_or(false);
    if !is_abstract && !validate_merged(cx, Kind::Environment, &doc) {
        return None;
    }
    let mut spec: EnvironmentSpec = match serde_json::from_value(doc.value.clone()) {
        Ok(s) => s,
        Err(e) => {
            let (file, pos) = doc.locate("");
            cx.push(Diagnostic::error("schema", format!("environment `{name}`: {e}")), &file, pos);
            return None;
        }
    };

    // Apps: the union along the chain, each folded from the root.
    let mut names: BTreeSet<&String> = BTreeSet::new();
    for e in chain {
        if let Some(a) = app_files.get(e) {
            names.extend(a.keys());
        }
    }
    let mut apps = BTreeMap::new();
    let mut broken_apps = BTreeSet::new();
    for app in names {
        let mut value = Value::Object(serde_json::Map::new());
        let mut layers = Vec::new();
        let mut ok = true;
        let mut first = true;
        for e in chain.iter().rev() {
            let Some(paths) = app_files.get(e).and_then(|a| a.get(app)) else { continue };
            let Some(path) = paths.first() else { continue };
            let Some(p) = parsed.get(path) else {
                ok = false;
                continue;
            };
            ok &= p.ok;
            let (m, misses) = merge(&value, &p.doc.value);
            if e == name {
                report_misses(cx, path, &p.doc.index, &misses, first);
            }
            first = false;
            value = m;
            layers.insert(0, Layer { file: path.clone(), index: Arc::new(p.doc.index.clone()) });
        }
        let doc = Merged { value, layers };
        if !ok || (!is_abstract && !validate_merged(cx, Kind::App, &doc)) {
            broken_apps.insert(app.clone());
            continue;
        }
        if is_abstract {
            continue; // abstract environments are only checked file by file
        }
        match serde_json::from_value::<AppSpec>(doc.value.clone()) {
            Ok(spec) => {
                apps.insert(app.clone(), App { spec, doc });
            }
            Err(e) => {
                let (file, pos) = doc.locate("");
                cx.push(Diagnostic::error("schema", format!("app `{app}`: {e}")), &file, pos);
                broken_apps.insert(app.clone());
            }
        }
    }

    let dirs: Vec<String> = chain.iter().map(|e| format!("environments/{e}")).collect();
    let secret_refs = crate::spec::types::link_secrets(&mut spec, &dirs, &cx.snap.files);
    Some(Env { name: name.to_string(), chain: chain.to_vec(), dirs, spec, secret_refs, doc, apps, broken_apps })
}

fn report_misses(cx: &mut Ctx<'_>, path: &str, index: &SpanIndex, misses: &[String], root: bool) {
    for m in misses {
        let key = m.rsplit('/').next().unwrap_or(m);
        let why = if root { "this file extends nothing" } else { "the extended environment does not set it" };
        cx.push(
            Diagnostic::warning("null", format!("`{key}: null` deletes nothing: {why}"))
                .hint("`null` deletes an inherited key; remove the line or fix the key's name"),
            path,
            index.locate_key(m),
        );
    }
}

fn validate_merged(cx: &mut Ctx<'_>, kind: Kind, doc: &Merged) -> bool {
    let violations = schema::validate_full(kind, &doc.value);
    for v in &violations {
        let (file, pos) = if v.at_key { doc.locate_key(&v.pointer) } else { doc.locate(&v.pointer) };
        let mut d = Diagnostic::error("schema", v.message.clone());
        if let Some(h) = &v.hint {
            d = d.hint(h.clone());
        }
        cx.push(d, &file, pos);
    }
    violations.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "hosts:\n  - {name: n1, docker: 'unix:///x.sock', address: 127.0.0.1, ports: 20000-20099}\n";

    /// `base` (abstract) ← `prod` with app `api`; `other` with a broken app `bad`.
    fn snapshot() -> RepoSnapshot {
        let env = |name: &str, extra: &str| {
            format!("apiVersion: reconcile/v1\nkind: Environment\nname: {name}\n{extra}").into_bytes()
        };
        let files = BTreeMap::from([
            ("environments/base/environment.yaml".to_string(), env("base", &format!("abstract: true\n{HOSTS}"))),
            ("environments/prod/environment.yaml".to_string(), env("prod", "extends: base\n")),
            (
                "environments/prod/apps/api.yaml".to_string(),
                b"apiVersion: reconcile/v1\nkind: App\nname: api\nimage: img:1\n".to_vec(),
            ),
            ("environments/other/environment.yaml".to_string(), env("other", HOSTS)),
            (
                "environments/other/apps/bad.yaml".to_string(),
                b"apiVersion: reconcile/v1\nkind: App\nname: bad\nimage: [not, a, string]\n".to_vec(),
            ),
        ]);
        RepoSnapshot { files, origin: Default::default() }
    }

    fn in_dir<'a>(diags: &'a [Diagnostic], dir: &str) -> Vec<&'a Diagnostic> {
        diags.iter().filter(|d| d.file.as_deref().is_some_and(|f| f.starts_with(dir))).collect()
    }

    #[test]
    fn load_only_builds_the_chain_alone_and_skips_other_environments_apps() {
        let snap = snapshot();
        let full = load(&snap);
        assert!(!in_dir(&full.diagnostics, "environments/other/").is_empty(), "{:#?}", full.diagnostics);

        let only = load_only(&snap, Some("prod"));
        assert_eq!(only.envs.keys().collect::<Vec<_>>(), ["base", "prod"]);
        assert_eq!(only.envs["prod"].apps.keys().collect::<Vec<_>>(), ["api"]);
        assert!(in_dir(&only.diagnostics, "environments/other/").is_empty(), "{:#?}", only.diagnostics);
        // Every environment is still known, with its chain.
        assert_eq!(only.names, full.names);
        assert_eq!(only.chains, full.chains);
        // What `--env prod` keeps is what a full load has for the chain's directories.
        for dir in ["environments/base/", "environments/prod/"] {
            let (a, b) = (in_dir(&only.diagnostics, dir), in_dir(&full.diagnostics, dir));
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{dir}");
        }
    }

    #[test]
    fn load_only_of_an_unknown_environment_builds_nothing() {
        let only = load_only(&snapshot(), Some("nope"));
        assert!(only.envs.is_empty());
        assert!(only.names.contains("prod") && only.names.contains("other"));
    }
}
