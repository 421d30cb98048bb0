//! `reconcile import compose`: docker compose files → one reconcile environment.
//!
//! The steps follow what `docker compose config` does, in its order: parse each
//! file (saphyr, through `spec::yaml`, so every value keeps its line), interpolate
//! `${VAR}` in every string value, check each file against the keys compose knows
//! (an unknown key is an error, as compose rejects it), merge the files as compose
//! merges `-f` overrides, then map each service to an App and the compose secrets
//! to `secrets:` + `files:`.
//!
//! Invariant: every service key is either mapped or reported by name and line as
//! a warning (`code: compose-unmapped`); errors are what compose itself, or
//! reconcile's App spec, would refuse. Pure: the caller supplies file texts,
//! variables and a reader for `env_file`s.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::diag::Diagnostic;
use crate::spec::yaml::{self, Document, Pos};

/// One compose file as given with `-f`.
#[derive(Debug, Clone)]
pub struct ComposeFile {
    /// Path shown in diagnostics.
    pub name: String,
    pub text: String,
}

/// What to import and how to describe the target environment.
pub struct Request<'a> {
    /// The files in `-f` order (later ones override earlier ones).
    pub files: Vec<ComposeFile>,
    /// Name of the environment to write.
    pub env: String,
    /// Absolute path of the project directory (compose's: the first file's directory);
    /// relative bind mounts, env files and secret files are resolved against it.
    pub project_dir: String,
    /// Variables for interpolation: the process environment over the project's `.env`.
    pub vars: &'a BTreeMap<String, String>,
    /// Reads an `env_file` given by its absolute path.
    pub read_file: &'a dyn Fn(&str) -> Result<String, String>,
    /// Docker endpoint of the environment's one host.
    pub docker: String,
    /// Port pool of that host (bridge-mode apps publish on it).
    pub host_ports: String,
    /// Write an nginx LB that listens on the compose published ports (`--lb nginx`).
    pub lb: bool,
}

/// The files of the config repo (relative paths → contents) and what was reported.
/// When `diagnostics` holds an error, `files` is empty: nothing is to be written.
#[derive(Debug, Default)]
pub struct Imported {
    pub files: BTreeMap<String, String>,
    pub diagnostics: Vec<Diagnostic>,
    /// Service name → app name, for the summary.
    pub apps: BTreeMap<String, String>,
}

const CODE_ERR: &str = "compose";
const CODE_UNMAPPED: &str = "compose-unmapped";
const CODE_NOTE: &str = "compose-changed";

/// Every service key of the Compose Specification (and of file formats 2.x/3.x).
const SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volume_driver",
    "volumes",
    "volumes_from",
    "working_dir",
];
const TOP_KEYS: &[&str] =
    &["version", "name", "services", "networks", "volumes", "secrets", "configs", "include", "models"];
const HEALTH_KEYS: &[&str] = &["test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"];

/// Import `req.files` as environment `req.env`.
pub fn import(req: &Request) -> Imported {
    let mut cx = Cx { files: Vec::new(), diags: Vec::new() };
    for f in &req.files {
        match yaml::parse_str_merging(&f.text) {
            Ok(mut doc) => {
                interpolate_doc(&mut cx, &f.name, &mut doc, req.vars);
                check_keys(&mut cx, &f.name, &doc);
                cx.files.push((f.name.clone(), doc));
            }
            Err(e) => {
                let hint = if e.message.contains("empty") {
                    "a compose file needs a `services:` map".to_string()
                } else {
                    e.hint.unwrap_or_default()
                };
                cx.diags.push(Diagnostic::error(CODE_ERR, e.message).hint(hint).at(&f.name, Some(e.pos)));
            }
        }
    }
    if cx.has_errors() {
        return cx.finish(BTreeMap::new(), BTreeMap::new());
    }
    let merged = merge_files(cx.files.iter().map(|(_, d)| &d.value));
    let (files, apps) = map_project(&mut cx, &merged, req);
    cx.finish(files, apps)
}

/// Diagnostics and provenance while importing.
struct Cx {
    files: Vec<(String, Document)>,
    diags: Vec<Diagnostic>,
}

impl Cx {
    /// The last file that sets `ptr` (or its nearest ancestor), with the position.
    fn locate(&self, ptr: &str) -> (String, Option<Pos>) {
        let mut p = ptr.to_string();
        loop {
            for (name, doc) in self.files.iter().rev() {
                if doc.index.has(&p) {
                    return (name.clone(), doc.index.locate_key(&p));
                }
            }
            match p.rfind('/') {
                Some(cut) if !p.is_empty() => p.truncate(cut),
                _ => break,
            }
        }
        (self.files.first().map(|(n, _)| n.clone()).unwrap_or_default(), None)
    }

    fn error(&mut self, ptr: &str, message: impl Into<String>, hint: impl Into<String>) {
        let (file, pos) = self.locate(ptr);
        self.diags.push(Diagnostic::error(CODE_ERR, message).hint(hint).at(file, pos));
    }

    fn unmapped(&mut self, ptr: &str, message: impl Into<String>, hint: impl Into<String>) {
        let (file, pos) = self.locate(ptr);
        self.diags.push(Diagnostic::warning(CODE_UNMAPPED, message).hint(hint).at(file, pos));
    }

    fn note(&mut self, ptr: &str, message: impl Into<String>, hint: impl Into<String>) {
        let (file, pos) = self.locate(ptr);
        self.diags.push(Diagnostic::warning(CODE_NOTE, message).hint(hint).at(file, pos));
    }

    fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }

    fn finish(mut self, files: BTreeMap<String, String>, apps: BTreeMap<String, String>) -> Imported {
        crate::diag::normalize(&mut self.diags);
        let files = if self.has_errors() { BTreeMap::new() } else { files };
        Imported { files, diagnostics: self.diags, apps }
    }
}

fn ptr(parts: &[&str]) -> String {
    parts.iter().map(|p| format!("/{}", yaml::escape(p))).collect()
}

// ---------------------------------------------------------------------------
// Interpolation

/// Why a string cannot be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// `${` without `}`, a bad name, or a `$` not followed by a name, `{` or `$`.
    Syntax(String),
    /// `${VAR:?message}` / `${VAR?message}` with the variable missing.
    Required { name: String, message: String },
}

/// Interpolate `s` as compose does: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or
/// empty), `${VAR-default}` (unset), `${VAR:?err}` / `${VAR?err}` (required),
/// `${VAR:+alt}` / `${VAR+alt}` (replacement when set), `$$` for a literal `$`.
/// Defaults are interpolated themselves. Returns the names of unset variables that
/// were replaced by an empty string (compose warns about those).
///
/// # Errors
/// [`InterpolationError`] for bad syntax and missing required variables.
pub fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> Result<(String, Vec<String>), InterpolationError> {
    let mut out = String::new();
    let mut unset = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let syntax = || InterpolationError::Syntax(s.to_string());
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // find the matching `}` (defaults may nest `${...}`)
                let mut depth = 1;
                let mut j = i + 2;
                while j < chars.len() && depth > 0 {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                if depth != 0 {
                    return Err(syntax());
                }
                let body: String = chars[i + 2..j - 1].iter().collect();
                let name_len = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(body.len());
                let (name, rest) = body.split_at(name_len);
                if !valid_name(name) {
                    return Err(syntax());
                }
                let value = vars.get(name);
                let set = value.is_some();
                let nonempty = value.is_some_and(|v| !v.is_empty());
                let (op, arg) = [":-", ":?", ":+", "-", "?", "+"]
                    .iter()
                    .find_map(|op| rest.strip_prefix(op).map(|a| (*op, a)))
                    .unwrap_or(("", rest));
                if op.is_empty() && !rest.is_empty() {
                    return Err(syntax());
                }
                let sub = |t: &str, unset: &mut Vec<String>| -> Result<String, InterpolationError> {
                    let (v, u) = interpolate(t, vars)?;
                    unset.extend(u);
                    Ok(v)
                };
                let piece = match op {
                    "" => match value {
                        Some(v) => v.clone(),
                        None => {
                            unset.push(name.to_string());
                            String::new()
                        }
                    },
                    ":-" if nonempty => value.cloned().unwrap_or_default(),
                    ":-" => sub(arg, &mut unset)?,
                    "-" if set => value.cloned().unwrap_or_default(),
                    "-" => sub(arg, &mut unset)?,
                    ":?" if !nonempty => {
                        return Err(InterpolationError::Required { name: name.into(), message: sub(arg, &mut unset)? });
                    }
                    "?" if !set => {
                        return Err(InterpolationError::Required { name: name.into(), message: sub(arg, &mut unset)? });
                    }
                    ":?" | "?" => value.cloned().unwrap_or_default(),
                    ":+" if nonempty => sub(arg, &mut unset)?,
                    "+" if set => sub(arg, &mut unset)?,
                    _ => String::new(),
                };
                out.push_str(&piece);
                i = j;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match vars.get(&name) {
                    Some(v) => out.push_str(v),
                    None => unset.push(name),
                }
                i = j;
            }
            _ => return Err(syntax()),
        }
    }
    Ok((out, unset))
}

fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn interpolate_doc(cx: &mut Cx, file: &str, doc: &mut Document, vars: &BTreeMap<String, String>) {
    fn walk(
        v: &mut Value,
        p: &str,
        out: &mut Vec<(String, Result<Vec<String>, InterpolationError>)>,
        vars: &BTreeMap<String, String>,
    ) {
        match v {
            Value::String(s) => match interpolate(s, vars) {
                Ok((new, unset)) => {
                    *s = new;
                    if !unset.is_empty() {
                        out.push((p.to_string(), Ok(unset)));
                    }
                }
                Err(e) => out.push((p.to_string(), Err(e))),
            },
            Value::Array(a) => a.iter_mut().enumerate().for_each(|(i, x)| walk(x, &format!("{p}/{i}"), out, vars)),
            Value::Object(m) => m.iter_mut().for_each(|(k, x)| walk(x, &format!("{p}/{}", yaml::escape(k)), out, vars)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(&mut doc.value, "", &mut found, vars);
    for (p, r) in found {
        let pos = doc.index.locate(&p);
        let d = match r {
            Ok(unset) => Diagnostic::warning(CODE_NOTE, format!("variable {} is not set: an empty string is used", unset.join(", ")))
                .hint("set it in the environment of `reconcile import` or in the project's .env file, or give a default: ${VAR:-default}"),
            Err(InterpolationError::Syntax(s)) => Diagnostic::error(CODE_ERR, format!("invalid interpolation format in {s:?}"))
                .hint("write ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, or $$ for a literal $"),
            Err(InterpolationError::Required { name, message }) => {
                Diagnostic::error(CODE_ERR, format!("required variable {name} is missing a value: {message}"))
                    .hint(format!("set {name} in the environment of `reconcile import` or in the project's .env file"))
            }
        };
        cx.diags.push(d.at(file, pos));
    }
}

// ---------------------------------------------------------------------------
// Structure checks (per file, so the line points at the file that has the key)

fn check_keys(cx: &mut Cx, file: &str, doc: &Document) {
    let at = |p: &str| doc.index.locate_key(p);
    let mut err =
        |p: &str, msg: String, hint: String| cx.diags.push(Diagnostic::error(CODE_ERR, msg).hint(hint).at(file, at(p)));
    let Value::Object(top) = &doc.value else {
        err("", "a compose file must be a mapping".into(), "start the file with `services:`".into());
        return;
    };
    for k in top.keys() {
        if !TOP_KEYS.contains(&k.as_str()) && !k.starts_with("x-") {
            err(&ptr(&[k]), format!("unsupported top-level key `{k}`"), hint_for(k, TOP_KEYS));
        }
    }
    let Some(services) = top.get("services") else { return };
    let Value::Object(services) = services else {
        err(
            "/services",
            "`services` must be a mapping of service names to services".into(),
            "write `services:` followed by `  web: {image: …}`".into(),
        );
        return;
    };
    for (name, svc) in services {
        let Value::Object(svc) = svc else {
            err(
                &ptr(&["services", name]),
                format!("service `{name}` must be a mapping"),
                "give the service at least an `image:`".into(),
            );
            continue;
        };
        for k in svc.keys() {
            if !SERVICE_KEYS.contains(&k.as_str()) && !k.starts_with("x-") {
                err(
                    &ptr(&["services", name, k]),
                    format!("unsupported config option for services.{name}: `{k}`"),
                    hint_for(k, SERVICE_KEYS),
                );
            }
        }
        if let Some(Value::Object(h)) = svc.get("healthcheck") {
            for k in h.keys() {
                if !HEALTH_KEYS.contains(&k.as_str()) {
                    err(
                        &ptr(&["services", name, "healthcheck", k]),
                        format!("unsupported config option for services.{name}.healthcheck: `{k}`"),
                        hint_for(k, HEALTH_KEYS),
                    );
                }
            }
        }
        if let Some(Value::Object(env)) = svc.get("environment") {
            for (k, v) in env {
                if v.is_boolean() || v.is_object() || v.is_array() {
                    err(
                        &ptr(&["services", name, "environment", k]),
                        format!(
                            "services.{name}.environment.{k} contains {v}, which is an invalid type, it should be a string, number, or a null"
                        ),
                        format!("quote the value: {k}: \"{v}\"").replace("\"\"", "\""),
                    );
                }
            }
        }
    }
}

fn hint_for(key: &str, known: &[&str]) -> String {
    let best = known.iter().map(|k| (edit_distance(key, k), *k)).min();
    match best {
        Some((d, k)) if d <= 2 => format!("did you mean `{k}`?"),
        _ => "remove it, or check the spelling against the Compose Specification".into(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Merging several -f files (compose's override rules)

/// Merge compose documents in order. Maps merge deeply; scalars and most lists are
/// replaced, as compose does, except: `environment`, `labels`, `extra_hosts`,
/// `sysctls` merge by key (list or map form); `depends_on` merges by service;
/// `ports`, `expose`, `dns`, `dns_search`, `env_file`, `tmpfs`, `cap_add`,
/// `cap_drop` are concatenated without duplicates; `volumes`, `devices` merge by
/// container path; `secrets`, `configs` by source.
pub fn merge_files<'a>(docs: impl Iterator<Item = &'a Value>) -> Value {
    let mut out = Value::Object(Map::new());
    for d in docs {
        let (Value::Object(base), Value::Object(over)) = (&mut out, d) else { continue };
        for (k, v) in over {
            if k == "services" {
                let slot = base.entry("services").or_insert_with(|| json!({}));
                if let (Value::Object(bs), Value::Object(os)) = (slot, v) {
                    for (name, svc) in os {
                        match bs.get_mut(name) {
                            Some(b) => merge_service(b, svc),
                            None => {
                                bs.insert(name.clone(), svc.clone());
                            }
                        }
                    }
                }
            } else {
                match (base.get_mut(k), v) {
                    (Some(b @ Value::Object(_)), Value::Object(_)) => deep_merge(b, v),
                    _ => {
                        base.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    out
}

fn deep_merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => deep_merge(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn merge_service(base: &mut Value, over: &Value) {
    let (Value::Object(b), Value::Object(o)) = (base, over) else { return };
    for (k, v) in o {
        let merged = match (k.as_str(), b.get(k)) {
            (_, None) => v.clone(),
            ("environment" | "labels" | "extra_hosts" | "sysctls", Some(old)) => {
                let mut m = key_map(old);
                m.extend(key_map(v));
                Value::Object(m)
            }
            ("depends_on", Some(old)) => {
                let mut m = depends_map(old);
                m.extend(depends_map(v));
                Value::Object(m)
            }
            ("ports" | "expose" | "dns" | "dns_search" | "env_file" | "tmpfs" | "cap_add" | "cap_drop", Some(old)) => {
                let mut items = as_list(old);
                for x in as_list(v) {
                    if !items.contains(&x) {
                        items.push(x);
                    }
                }
                Value::Array(items)
            }
            ("volumes" | "devices", Some(old)) => merge_by(old, v, mount_target),
            ("secrets" | "configs", Some(old)) => merge_by(old, v, |x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Object(m) => m.get("source").and_then(Value::as_str).map(str::to_string),
                _ => None,
            }),
            (_, Some(old)) if old.is_object() && v.is_object() => {
                let mut m = old.clone();
                deep_merge(&mut m, v);
                m
            }
            _ => v.clone(),
        };
        b.insert(k.clone(), merged);
    }
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

fn merge_by(old: &Value, new: &Value, key: impl Fn(&Value) -> Option<String>) -> Value {
    let mut items = as_list(old);
    for x in as_list(new) {
        match key(&x).and_then(|k| items.iter().position(|o| key(o).as_deref() == Some(k.as_str()))) {
            Some(i) => items[i] = x,
            None => items.push(x),
        }
    }
    Value::Array(items)
}

fn mount_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            Some(parts.get(1).copied().unwrap_or(parts[0]).to_string())
        }
        Value::Object(m) => m.get("target").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `environment`/`labels` in list form (`K=V`, `K`) or map form → map (a bare `K` → null).
fn key_map(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
                None => (s.to_string(), Value::Null),
            })
            .collect(),
        _ => Map::new(),
    }
}

fn depends_map(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| (s.to_string(), json!({"condition": "service_started"})))
            .collect(),
        _ => Map::new(),
    }
}

// ---------------------------------------------------------------------------
// Mapping

fn map_project(cx: &mut Cx, merged: &Value, req: &Request) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut files = BTreeMap::new();
    let empty = Map::new();
    let top = merged.as_object().unwrap_or(&empty);
    for (k, v) in top {
        match k.as_str() {
            "version" | "name" | "services" | "secrets" => {}
            "networks" | "volumes" | "configs" | "include" | "models" => {
                for name in v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                    let hint = match k.as_str() {
                        "networks" => {
                            "reconcile runs apps with host networking (default) or Docker's bridge; there are no project networks"
                        }
                        "volumes" => {
                            "named volumes are mounted by name (`NAME:/path`) and created by Docker on first use; driver options are not set"
                        }
                        _ => "reconcile has no equivalent; write config files as `files:` templates",
                    };
                    cx.unmapped(&ptr(&[k, &name]), format!("top-level {k} `{name}` is not imported"), hint);
                }
            }
            _ => cx.unmapped(
                &ptr(&[k]),
                format!("top-level key `{k}` is not imported"),
                "extension fields (x-…) are for compose itself",
            ),
        }
    }
    let Some(Value::Object(services)) = top.get("services") else {
        cx.error("", "no services to import", "a compose file needs a `services:` map with at least one service");
        return (files, BTreeMap::new());
    };
    if services.is_empty() {
        cx.error("/services", "no services to import", "add at least one service");
    }
    // service name → app name (lowercase, `_` → `-`): app names are DNS labels
    let mut apps: BTreeMap<String, String> = BTreeMap::new();
    for name in services.keys() {
        let app: String =
            name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let app = app.trim_matches('-').to_string();
        if app.is_empty() || app.len() > 63 {
            cx.error(
                &ptr(&["services", name]),
                format!("service name `{name}` cannot be an app name"),
                "rename the service: lowercase letters, digits and '-', at most 63 characters",
            );
            continue;
        }
        if let Some((other, _)) = apps.iter().find(|(_, a)| **a == app) {
            cx.error(
                &ptr(&["services", name]),
                format!("services `{other}` and `{name}` would both become app `{app}`"),
                "rename one of them",
            );
            continue;
        }
        if app != *name {
            cx.note(
                &ptr(&["services", name]),
                format!("service `{name}` becomes app `{app}`"),
                "app names are lowercase letters, digits and '-'",
            );
        }
        apps.insert(name.clone(), app);
    }
    let secrets = map_secrets(cx, top.get("secrets"), req);
    let mut env_secrets = Map::new();
    let mut lb_ports: BTreeMap<String, String> = BTreeMap::new();
    for (name, svc) in services {
        let Some(app) = apps.get(name).cloned() else { continue };
        let empty = Map::new();
        let svc = svc.as_object().unwrap_or(&empty);
        let mut sx = Svc { cx, name, svc, req, apps: &apps, out: Map::new(), files: &mut files, lb_port: None };
        let doc = sx.map(&app, &secrets, &mut env_secrets);
        if let Some(p) = sx.lb_port {
            lb_ports.insert(app.clone(), p);
        }
        let mut text = format!("# imported from docker compose service `{name}` by `reconcile import compose`\n");
        text.push_str(&super::to_yaml(&doc));
        files.insert(format!("environments/{}/apps/{app}.yaml", req.env), text);
    }
    let mut env = Map::new();
    env.insert("apiVersion".into(), json!("reconcile/v1"));
    env.insert("kind".into(), json!("Environment"));
    env.insert("name".into(), json!(req.env));
    if !env_secrets.is_empty() {
        env.insert("secrets".into(), Value::Object(env_secrets));
    }
    if !lb_ports.is_empty() {
        env.insert(
            "lb".into(),
            json!({
                "template": "templates/nginx.conf.j2",
                "path": format!("/etc/nginx/conf.d/reconcile-{}.conf", req.env),
                "check": ["nginx", "-t"],
                "reload": ["nginx", "-s", "reload"],
            }),
        );
        files.insert(format!("environments/{}/templates/nginx.conf.j2", req.env), nginx_template(&lb_ports));
    }
    env.insert(
        "hosts".into(),
        json!([{"name": "local", "docker": req.docker, "address": "127.0.0.1", "ports": req.host_ports}]),
    );
    let sources: Vec<&str> = req.files.iter().map(|f| f.name.as_str()).collect();
    let mut text = format!(
        "# imported from {} by `reconcile import compose`\n# one host to start with: add your Docker hosts here, and `etcd:` / `lb:` when apps need them\n",
        sources.join(", ")
    );
    text.push_str(&super::to_yaml(&Value::Object(env)));
    files.insert(format!("environments/{}/environment.yaml", req.env), text);
    (files, apps)
}

/// A compose secret as reconcile sees it.
struct SecretDef {
    /// Name in the environment's `secrets:` (a template identifier).
    name: String,
    source: Option<Value>,
}

fn map_secrets(cx: &mut Cx, v: Option<&Value>, req: &Request) -> BTreeMap<String, SecretDef> {
    let mut out = BTreeMap::new();
    let Some(Value::Object(m)) = v else { return out };
    for (name, def) in m {
        let p = ptr(&["secrets", name]);
        let mut ident: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        if ident.starts_with(|c: char| c.is_ascii_digit()) {
            ident.insert(0, '_');
        }
        let source = match def {
            Value::Object(d) if d.get("file").is_some() => {
                let f = d.get("file").and_then(Value::as_str).unwrap_or_default();
                Some(json!({"from_file": absolute(&req.project_dir, f)}))
            }
            Value::Object(d) if d.get("environment").is_some() => {
                let var = d.get("environment").and_then(Value::as_str).unwrap_or_default();
                if valid_name(var) {
                    Some(json!({"from_env": var}))
                } else {
                    cx.error(
                        &format!("{p}/environment"),
                        format!("secret `{name}`: invalid variable name {var:?}"),
                        "name an environment variable: letters, digits, '_'",
                    );
                    None
                }
            }
            Value::Object(d) if d.get("external").is_some_and(|e| e != &Value::Bool(false)) => {
                cx.unmapped(&p, format!("external secret `{name}` is not imported"), "define it in environment.yaml `secrets:` with from_env, from_file, from_age or from_command, then add it to the apps' `files:`");
                None
            }
            _ => {
                cx.error(
                    &p,
                    format!("secret `{name}` has neither `file` nor `environment`"),
                    "write `file: ./path` or `environment: VAR` (or `external: true`)",
                );
                None
            }
        };
        for k in def.as_object().map(|d| d.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            if !["file", "environment", "external"].contains(&k.as_str()) {
                cx.unmapped(
                    &format!("{p}/{}", yaml::escape(&k)),
                    format!("secrets.{name}.{k} is not imported"),
                    "reconcile secrets have only a source",
                );
            }
        }
        out.insert(name.clone(), SecretDef { name: ident, source });
    }
    out
}

fn absolute(dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let path = path.strip_prefix("./").unwrap_or(path);
    let mut parts: Vec<&str> = dir.trim_end_matches('/').split('/').collect();
    for seg in path.split('/') {
        match seg {
            "." | "" => {}
            ".." => {
                if parts.len() > 1 {
                    parts.pop();
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    if joined.is_empty() { "/".into() } else { joined }
}

/// Mapping one service.
struct Svc<'a, 'r> {
    cx: &'a mut Cx,
    name: &'a str,
    svc: &'a Map<String, Value>,
    req: &'a Request<'r>,
    apps: &'a BTreeMap<String, String>,
    out: Map<String, Value>,
    files: &'a mut BTreeMap<String, String>,
    /// With `--lb nginx`: the compose published port the LB listens on for this app.
    lb_port: Option<String>,
}

impl Svc<'_, '_> {
    fn p(&self, rest: &[&str]) -> String {
        let mut parts = vec!["services", self.name];
        parts.extend_from_slice(rest);
        ptr(&parts)
    }

    fn unmapped(&mut self, key: &[&str], hint: &str) {
        let p = self.p(key);
        let dotted = format!("services.{}.{}", self.name, key.join("."));
        self.cx.unmapped(&p, format!("`{dotted}` is not imported"), hint);
    }

    fn error(&mut self, key: &[&str], message: String, hint: &str) {
        let p = self.p(key);
        self.cx.error(&p, message, hint);
    }

    fn map(&mut self, app: &str, secrets: &BTreeMap<String, SecretDef>, env_secrets: &mut Map<String, Value>) -> Value {
        self.out.insert("apiVersion".into(), json!("reconcile/v1"));
        self.out.insert("kind".into(), json!("App"));
        self.out.insert("name".into(), json!(app));
        let svc = self.svc;
        self.image();
        let entrypoint = svc.get("entrypoint").map(|v| self.argv(v, "entrypoint"));
        let command = svc.get("command").map(|v| self.argv(v, "command"));
        match (entrypoint, command) {
            (Some(e), c) => {
                let mut argv = e.unwrap_or_default();
                argv.extend(c.flatten().unwrap_or_default());
                self.cx.note(&self.p(&["entrypoint"]), format!("services.{}.entrypoint is prepended to `command`", self.name),
                    "reconcile sets the container's command and keeps the image's ENTRYPOINT: exact for images without one, otherwise set the command accordingly");
                self.out.insert("command".into(), json!(argv.into_iter().map(literal).collect::<Vec<_>>()));
            }
            (None, Some(Some(c))) => {
                self.out.insert("command".into(), json!(c.into_iter().map(literal).collect::<Vec<_>>()));
            }
            _ => {}
        }
        self.environment();
        self.replicas();
        self.network();
        if let Some(port) = self.lb_port.clone() {
            self.out.insert("lb".into(), json!({"host": app}));
            self.cx.note(
                &self.p(&["ports"]),
                format!("services.{}: the LB (nginx) listens on {port} and proxies to the app's instances", self.name),
                "the generated templates/nginx.conf.j2 has one server per published port; adapt it to your nginx",
            );
        }
        self.health();
        self.resources();
        self.volumes();
        self.secrets(secrets, env_secrets);
        self.depends_on();
        if let Some(v) = svc.get("init") {
            match v.as_bool() {
                Some(b) => {
                    self.out.insert("init".into(), json!(b));
                }
                None => self.error(
                    &["init"],
                    format!("services.{}.init must be true or false", self.name),
                    "write init: true",
                ),
            }
        }
        if let Some(v) = svc.get("stop_grace_period")
            && let Some(d) = self.duration(v, &["stop_grace_period"])
        {
            self.out.insert("stop_timeout".into(), json!(d));
        }
        self.container_fields();
        self.restart();
        self.rest();
        Value::Object(std::mem::take(&mut self.out))
    }

    /// `user`, `working_dir` and `labels`, as they are (reconcile's own `reconcile.`
    /// labels are reported, not imported).
    fn container_fields(&mut self) {
        for key in ["user", "working_dir"] {
            match self.svc.get(key) {
                None | Some(Value::Null) => {}
                Some(v @ (Value::String(_) | Value::Number(_))) => {
                    self.out.insert(key.into(), json!(scalar_string(v)));
                }
                Some(_) => self.error(
                    &[key],
                    format!("services.{}.{key} must be a string", self.name),
                    &format!("write {key}: \"…\""),
                ),
            }
        }
        let Some(v) = self.svc.get("labels") else { return };
        let mut labels = Map::new();
        for (k, v) in key_map(v) {
            if k.starts_with(crate::model::labels::PREFIX) {
                self.unmapped(
                    &["labels", &k],
                    &format!("labels starting with `{}` are reconcile's own", crate::model::labels::PREFIX),
                );
            } else {
                labels.insert(k, json!(scalar_string(&v)));
            }
        }
        if !labels.is_empty() {
            self.out.insert("labels".into(), Value::Object(labels));
        }
    }

    fn image(&mut self) {
        match self.svc.get("image").and_then(Value::as_str) {
            Some(img) => {
                let last = img.rsplit('/').next().unwrap_or(img);
                let image = if img.contains('@') || last.contains(':') {
                    img.to_string()
                } else {
                    self.cx.note(
                        &self.p(&["image"]),
                        format!("image `{img}` has no tag: `{img}:latest` is written"),
                        "pin a version tag: reconcile replaces instances when the tag changes",
                    );
                    format!("{img}:latest")
                };
                self.out.insert("image".into(), json!(image));
                if self.svc.contains_key("build") {
                    self.unmapped(
                        &["build"],
                        "reconcile deploys images: build and push the image in CI, the app uses `image:`",
                    );
                }
            }
            None if self.svc.contains_key("build") => self.error(
                &["build"],
                format!("service `{}` has only `build`: reconcile deploys images", self.name),
                "build and push the image, then add `image: <name>:<tag>` to the service",
            ),
            None => self.error(
                &[],
                format!("service `{}` has neither an image nor a build context specified", self.name),
                "add `image: <name>:<tag>`",
            ),
        }
    }

    /// `command`/`entrypoint`: a list, or a string split like a shell does (compose's shlex).
    fn argv(&mut self, v: &Value, key: &str) -> Option<Vec<String>> {
        match v {
            Value::Null => None,
            Value::String(s) => match shell_split(s) {
                Ok(a) => Some(a),
                Err(e) => {
                    self.error(
                        &[key],
                        format!("services.{}.{key}: {e}", self.name),
                        "close the quote, or write the command as a list",
                    );
                    None
                }
            },
            Value::Array(a) => Some(a.iter().map(scalar_string).collect()),
            _ => {
                self.error(
                    &[key],
                    format!("services.{}.{key} must be a string or a list", self.name),
                    "write command: [\"/app\", \"--flag\"]",
                );
                None
            }
        }
    }

    fn environment(&mut self) {
        let mut env = Map::new();
        // env_file first (in order), then `environment` overrides, as compose does
        let env_files = self.svc.get("env_file").map(as_list).unwrap_or_default();
        for (i, f) in env_files.iter().enumerate() {
            let idx = i.to_string();
            let (path, required) = match f {
                Value::String(s) => (s.clone(), true),
                Value::Object(m) => (
                    m.get("path").and_then(Value::as_str).unwrap_or_default().to_string(),
                    m.get("required").and_then(Value::as_bool).unwrap_or(true),
                ),
                _ => continue,
            };
            let key: Vec<&str> = if self.svc.get("env_file").is_some_and(Value::is_array) {
                vec!["env_file", &idx]
            } else {
                vec!["env_file"]
            };
            let abs = absolute(&self.req.project_dir, &path);
            match (self.req.read_file)(&abs) {
                Ok(text) => match env_file_entries(&text, self.req.vars) {
                    Ok((pairs, unset)) => {
                        if !unset.is_empty() {
                            let p = self.p(&key);
                            let message = format!(
                                "env file {path}: variable {} is not set: an empty string is used",
                                unset.join(", ")
                            );
                            let hint = "set it in the environment of `reconcile import` or in the project's .env \
                                        file, or give a default: ${VAR:-default}";
                            self.cx.note(&p, message, hint);
                        }
                        env.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))));
                    }
                    Err((line, msg)) => self.error(
                        &key,
                        format!("env file {path}, line {line}: {msg}"),
                        "write KEY=VALUE lines; `#` starts a comment",
                    ),
                },
                Err(_) if !required => {}
                Err(e) => self.error(
                    &key,
                    format!("cannot read env file {path}: {e}"),
                    "create the file, or fix the path (relative paths start at the project directory)",
                ),
            }
        }
        if let Some(v) = self.svc.get("environment") {
            for (k, v) in key_map(v) {
                match v {
                    Value::Null => {
                        // `KEY` alone: taken from the environment of compose, if set
                        if let Some(val) = self.req.vars.get(&k) {
                            env.insert(k, json!(val));
                        } else {
                            env.remove(&k);
                        }
                    }
                    other => {
                        env.insert(k, json!(scalar_string(&other)));
                    }
                }
            }
        }
        let mut out = Map::new();
        for (k, v) in env {
            if valid_name(&k) {
                out.insert(k, json!(literal(v.as_str().unwrap_or_default().to_string())));
            } else {
                self.unmapped(
                    &["environment"],
                    &format!(
                        "variable name {k:?} is not a valid name for reconcile (letters, digits, '_'); it is left out"
                    ),
                );
            }
        }
        if !out.is_empty() {
            self.out.insert("env".into(), Value::Object(out));
        }
    }

    fn replicas(&mut self) {
        let deploy = self.svc.get("deploy").and_then(Value::as_object);
        let replicas = deploy
            .and_then(|d| d.get("replicas"))
            .map(|r| (r, vec!["deploy", "replicas"]))
            .or_else(|| self.svc.get("scale").map(|r| (r, vec!["scale"])));
        if let Some((r, key)) = replicas {
            match r.as_u64() {
                Some(n) => {
                    self.out.insert("replicas".into(), json!(n));
                }
                None => self.error(
                    &key,
                    format!("services.{}.{} must be a whole number", self.name, key.join(".")),
                    "write replicas: 2",
                ),
            }
        }
    }

    fn network(&mut self) {
        let mode = self.svc.get("network_mode").and_then(Value::as_str);
        match mode {
            Some("host") => {
                self.out.insert("network".into(), json!("host"));
                if self.svc.contains_key("ports") {
                    self.unmapped(
                        &["ports"],
                        "with network_mode: host the ports are the app's own; compose ignores `ports` too",
                    );
                }
                return;
            }
            Some("bridge") | None => {}
            Some(_) => {
                self.unmapped(&["network_mode"], "reconcile runs apps with host networking or on Docker's bridge")
            }
        }
        self.out.insert("network".into(), json!("bridge"));
        if self.svc.contains_key("networks") {
            self.unmapped(&["networks"], "the app runs on Docker's bridge network; services do not resolve each other by name: use `registry: true` and etcd, or the LB");
        }
        let ports = self.svc.get("ports").map(as_list).unwrap_or_default();
        let mut tcp = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            match parse_port(p) {
                Ok((target, published, proto)) => {
                    if proto == "tcp" {
                        tcp.push((i, target, published));
                    } else {
                        self.unmapped(
                            &["ports", &i.to_string()],
                            &format!("{proto} ports are not published by reconcile"),
                        );
                    }
                }
                Err(e) => self.error(
                    &["ports", &i.to_string()],
                    format!("services.{}.ports: {e}", self.name),
                    "write \"HOST:CONTAINER\", \"IP:HOST:CONTAINER\" or CONTAINER, e.g. \"8080:80\"",
                ),
            }
        }
        if let Some((i, target, published)) = tcp.first().cloned() {
            self.out.insert("port".into(), json!(target));
            let lb_port = published
                .clone()
                .filter(|h| self.req.lb && h.rsplit(':').next().is_some_and(|p| p.parse::<u16>().is_ok()));
            if let Some(h) = lb_port {
                self.lb_port = Some(h);
            } else if let Some(h) = published {
                self.cx.note(&self.p(&["ports", &i.to_string()]),
                    format!("services.{}: container port {target} is published on a port of the host's pool, not on {h}", self.name),
                    "reconcile picks host ports from the host's `ports:` pool; import with `--lb nginx` to have an LB listen on the published ports, or use the registry");
            }
        }
        for (i, target, _) in tcp.iter().skip(1) {
            self.unmapped(
                &["ports", &i.to_string()],
                &format!("an app has one port; container port {target} is not published"),
            );
        }
        if let Some(ex) = self.svc.get("expose")
            && !ex.is_null()
        {
            self.unmapped(&["expose"], "expose is documentation only for reconcile");
        }
    }

    fn health(&mut self) {
        let Some(h) = self.svc.get("healthcheck").and_then(Value::as_object) else { return };
        if h.get("disable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        let mut out = Map::new();
        let cmd: Option<Vec<String>> = match h.get("test") {
            Some(Value::String(s)) => Some(vec!["/bin/sh".into(), "-c".into(), s.clone()]),
            Some(Value::Array(a)) => {
                let items: Vec<String> = a.iter().map(scalar_string).collect();
                match items.split_first() {
                    Some((k, rest)) if k == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
                    Some((k, rest)) if k == "CMD-SHELL" && rest.len() == 1 => {
                        Some(vec!["/bin/sh".into(), "-c".into(), rest[0].clone()])
                    }
                    Some((k, _)) if k == "NONE" => return,
                    _ => {
                        self.error(&["healthcheck", "test"], format!("services.{}.healthcheck.test must start with CMD, CMD-SHELL or NONE", self.name),
                            "write test: [\"CMD\", \"curl\", \"-f\", \"http://localhost\"] or test: [\"CMD-SHELL\", \"curl -f http://localhost\"]");
                        return;
                    }
                }
            }
            _ => None,
        };
        let Some(cmd) = cmd else {
            self.unmapped(&["healthcheck"], "a healthcheck without `test` keeps the image's HEALTHCHECK in compose; reconcile needs a test: add `health:` to the app");
            return;
        };
        out.insert("cmd".into(), json!(cmd.into_iter().map(literal).collect::<Vec<_>>()));
        for key in ["interval", "timeout", "start_period"] {
            if let Some(v) = h.get(key)
                && let Some(d) = self.duration(v, &["healthcheck", key])
            {
                out.insert(key.into(), json!(d));
            }
        }
        if let Some(r) = h.get("retries") {
            match r.as_u64() {
                Some(n) if n > 0 => {
                    out.insert("retries".into(), json!(n));
                }
                _ => self.error(
                    &["healthcheck", "retries"],
                    format!("services.{}.healthcheck.retries must be a positive whole number", self.name),
                    "write retries: 3",
                ),
            }
        }
        if h.contains_key("start_interval") {
            self.unmapped(
                &["healthcheck", "start_interval"],
                "reconcile probes at `interval` during the start period too",
            );
        }
        self.out.insert("health".into(), Value::Object(out));
    }

    fn duration(&mut self, v: &Value, key: &[&str]) -> Option<String> {
        let parsed = match v {
            Value::String(s) => go_duration(s),
            Value::Number(n) => n.as_f64().map(|f| Duration::from_secs_f64(f / 1e6)), // compose: microseconds
            _ => None,
        };
        match parsed {
            Some(d) if d.subsec_nanos() % 1_000_000 == 0 => {
                Some(if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) })
            }
            Some(d) => Some(format!("{}ms", d.as_millis().max(1))),
            None => {
                self.error(
                    key,
                    format!("services.{}.{}: invalid duration {v}", self.name, key.join(".")),
                    "write a duration such as 30s, 1m30s or 500ms",
                );
                None
            }
        }
    }

    fn resources(&mut self) {
        let mut res = Map::new();
        let limits = self
            .svc
            .get("deploy")
            .and_then(|d| d.get("resources"))
            .and_then(|r| r.get("limits"))
            .and_then(Value::as_object);
        let cpus = limits
            .and_then(|l| l.get("cpus"))
            .map(|v| (v, vec!["deploy", "resources", "limits", "cpus"]))
            .or_else(|| self.svc.get("cpus").map(|v| (v, vec!["cpus"])));
        if let Some((v, key)) = cpus {
            match v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
                Some(c) if c > 0.0 => {
                    res.insert("cpus".into(), if v.is_number() { v.clone() } else { json!(c) });
                }
                _ => self.error(
                    &key,
                    format!("services.{}.{}: invalid CPU count {v}", self.name, key.join(".")),
                    "write cpus: \"0.5\"",
                ),
            }
        }
        let mem = limits
            .and_then(|l| l.get("memory"))
            .map(|v| (v, vec!["deploy", "resources", "limits", "memory"]))
            .or_else(|| self.svc.get("mem_limit").map(|v| (v, vec!["mem_limit"])));
        if let Some((v, key)) = mem {
            match docker_bytes(v) {
                Some(b) => {
                    res.insert("memory".into(), memory_text(b));
                }
                None => self.error(
                    &key,
                    format!("services.{}.{}: invalid memory size {v}", self.name, key.join(".")),
                    "write a size such as 512m or 1g",
                ),
            }
        }
        if let Some(l) = limits {
            for k in l.keys().filter(|k| !["cpus", "memory"].contains(&k.as_str())) {
                self.unmapped(&["deploy", "resources", "limits", k], "reconcile limits CPU and memory only");
            }
        }
        if !res.is_empty() {
            self.out.insert("resources".into(), Value::Object(res));
        }
    }

    fn volumes(&mut self) {
        let vols = self.svc.get("volumes").map(as_list).unwrap_or_default();
        let mut out = Vec::new();
        for (i, v) in vols.iter().enumerate() {
            let idx = i.to_string();
            let (source, target, ro, kind) = match v {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    match parts.as_slice() {
                        [t] => (String::new(), t.to_string(), false, "volume"),
                        [src, t] => (src.to_string(), t.to_string(), false, ""),
                        [src, t, mode] => (src.to_string(), t.to_string(), mode.split(',').any(|m| m == "ro"), ""),
                        _ => {
                            self.error(
                                &["volumes", &idx],
                                format!("services.{}.volumes: invalid volume {s:?}", self.name),
                                "write SOURCE:TARGET[:ro]",
                            );
                            continue;
                        }
                    }
                }
                Value::Object(m) => (
                    m.get("source").and_then(Value::as_str).unwrap_or_default().to_string(),
                    m.get("target").and_then(Value::as_str).unwrap_or_default().to_string(),
                    m.get("read_only").and_then(Value::as_bool).unwrap_or(false),
                    match m.get("type").and_then(Value::as_str) {
                        Some("bind") => "bind",
                        Some("volume") => "volume",
                        Some(other) => {
                            self.unmapped(
                                &["volumes", &idx],
                                &format!("{other} mounts are not supported by reconcile"),
                            );
                            continue;
                        }
                        None => "",
                    },
                ),
                _ => continue,
            };
            if source.is_empty() {
                self.unmapped(
                    &["volumes", &idx],
                    &format!("anonymous volume at {target}: reconcile mounts named volumes and host paths only"),
                );
                continue;
            }
            let bind = kind == "bind"
                || (kind.is_empty() && (source.starts_with('/') || source.starts_with('.') || source.starts_with('~')));
            let source = if bind {
                if source.starts_with('~') {
                    self.unmapped(
                        &["volumes", &idx],
                        "`~` paths depend on the user running compose; write an absolute path",
                    );
                    continue;
                }
                absolute(&self.req.project_dir, &source)
            } else {
                self.cx.note(
                    &self.p(&["volumes", &idx]),
                    format!("named volume `{source}` is mounted as `{source}`; compose names it `<project>_{source}`"),
                    "to keep the data, mount compose's volume by its full name, e.g. myproject_data:/var/lib/data",
                );
                source
            };
            out.push(json!(format!("{source}:{target}{}", if ro { ":ro" } else { "" })));
        }
        if !out.is_empty() {
            self.out.insert("volumes".into(), Value::Array(out));
        }
    }

    fn secrets(&mut self, secrets: &BTreeMap<String, SecretDef>, env_secrets: &mut Map<String, Value>) {
        let refs = self.svc.get("secrets").map(as_list).unwrap_or_default();
        let mut files = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let idx = i.to_string();
            let (source, target) = match r {
                Value::String(s) => (s.clone(), s.clone()),
                Value::Object(m) => {
                    for k in m.keys().filter(|k| ["uid", "gid", "mode"].contains(&k.as_str())) {
                        self.unmapped(
                            &["secrets", &idx, k],
                            "secret files are written with the container's default owner and mode 0644",
                        );
                    }
                    let s = m.get("source").and_then(Value::as_str).unwrap_or_default().to_string();
                    let t = m.get("target").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| s.clone());
                    (s, t)
                }
                _ => continue,
            };
            let Some(def) = secrets.get(&source) else {
                self.error(
                    &["secrets", &idx],
                    format!("service `{}` uses an undefined secret `{source}`", self.name),
                    "define it under the top-level `secrets:`",
                );
                continue;
            };
            let Some(src) = &def.source else { continue };
            env_secrets.insert(def.name.clone(), src.clone());
            let template = format!("templates/secrets/{}.j2", def.name);
            self.files
                .insert(format!("environments/{}/{template}", self.req.env), format!("{{{{ secrets.{} }}}}", def.name));
            let path = if target.starts_with('/') { target } else { format!("/run/secrets/{target}") };
            files.push(json!({"template": template, "path": path}));
        }
        if !files.is_empty() {
            self.out.insert("files".into(), Value::Array(files));
        }
    }

    fn depends_on(&mut self) {
        let Some(v) = self.svc.get("depends_on") else { return };
        let mut deps = Vec::new();
        for (dep, cond) in depends_map(v) {
            match self.apps.get(&dep) {
                Some(app) => deps.push(json!(app)),
                None => {
                    self.error(
                        &["depends_on"],
                        format!("service `{}` depends on undefined service `{dep}`", self.name),
                        "name a service of this project",
                    );
                    continue;
                }
            }
            let condition = cond.get("condition").and_then(Value::as_str).unwrap_or("service_started");
            if condition == "service_completed_successfully" {
                self.unmapped(&["depends_on", &dep, "condition"], "reconcile runs long-lived apps: a one-shot job is not supported; the dependency waits until it is running and healthy");
            }
        }
        if !deps.is_empty() {
            self.out.insert("depends_on".into(), Value::Array(deps));
        }
    }

    fn restart(&mut self) {
        match self.svc.get("restart").and_then(Value::as_str) {
            None | Some("always" | "unless-stopped") => {}
            Some(policy) => self.unmapped(
                &["restart"],
                &format!("reconcile always runs containers with `unless-stopped`; `{policy}` is not kept"),
            ),
        }
    }

    /// Every key not handled above is reported.
    fn rest(&mut self) {
        const MAPPED: &[&str] = &[
            "image",
            "build",
            "command",
            "entrypoint",
            "environment",
            "env_file",
            "ports",
            "network_mode",
            "networks",
            "expose",
            "depends_on",
            "healthcheck",
            "deploy",
            "scale",
            "cpus",
            "mem_limit",
            "volumes",
            "restart",
            "stop_grace_period",
            "init",
            "secrets",
            "user",
            "working_dir",
            "labels",
        ];
        let keys: Vec<String> = self.svc.keys().filter(|k| !MAPPED.contains(&k.as_str())).cloned().collect();
        for k in keys {
            let hint = match k.as_str() {
                "container_name" => "reconcile names containers <env>-<app>-<ordinal>",
                "logging" => "containers use the daemon's default log driver",
                "profiles" => "the service is imported whatever the active profiles",
                "hostname" | "extra_hosts" | "dns" | "links" | "external_links" => {
                    "name resolution between apps goes through etcd's registry or the LB"
                }
                "extends" => "inline the base service's keys into this one",
                _ => "reconcile has no equivalent",
            };
            self.unmapped(&[&k], hint);
        }
        if let Some(d) = self.svc.get("deploy").and_then(Value::as_object) {
            for (k, v) in d {
                match k.as_str() {
                    "replicas" => {}
                    "resources" => {
                        for rk in v.as_object().map(|r| r.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                            if rk != "limits" {
                                self.unmapped(
                                    &["deploy", "resources", &rk],
                                    "reconcile sets limits only; reservations need a scheduler",
                                );
                            }
                        }
                    }
                    "mode" if v.as_str() == Some("replicated") => {}
                    "update_config" => self.update_config(v),
                    _ => self.unmapped(
                        &["deploy", k],
                        "reconcile has no equivalent; see `placement:` and `update:` in the App reference",
                    ),
                }
            }
        }
    }

    fn update_config(&mut self, v: &Value) {
        let Some(u) = v.as_object() else { return };
        let mut out = Map::new();
        for (k, x) in u {
            match k.as_str() {
                "parallelism" => match x.as_u64() {
                    Some(n) if n > 0 => {
                        out.insert("batch".into(), json!(n));
                    }
                    _ => self.unmapped(
                        &["deploy", "update_config", k],
                        "parallelism 0 (all at once) has no equivalent: set update.batch",
                    ),
                },
                "order" => {
                    out.insert(
                        "strategy".into(),
                        json!(if x.as_str() == Some("stop-first") { "recreate" } else { "rolling" }),
                    );
                }
                _ => self.unmapped(
                    &["deploy", "update_config", k],
                    "reconcile stops a rollout at the first failed health check",
                ),
            }
        }
        if !out.is_empty() {
            self.out.insert("update".into(), Value::Object(out));
        }
    }
}

/// The LB template for `--lb nginx`: per app, an upstream of its instances and a server
/// on the port compose published it on (`listen` is a map baked in at import).
fn nginx_template(ports: &BTreeMap<String, String>) -> String {
    let listen: Vec<String> = ports.iter().map(|(app, p)| format!("\"{app}\": \"{p}\"")).collect();
    format!(
        "# Rendered by reconcile for {{{{ env.name }}}}; include it from nginx.conf's http block.\n\
         # Written by `reconcile import compose --lb nginx`: one server per port compose published.\n\
         {{% set listen = {{{}}} %}}\n\
         {{% for app in apps %}}\n\
         {{% if app.instances %}}\n\
         upstream {{{{ app.name }}}}_{{{{ env.name }}}} {{\n\
         {{% for i in app.instances %}}\n  server {{{{ i.address }}}}:{{{{ i.port }}}};\n{{% endfor %}}\n\
         }}\n\
         {{% endif %}}\n\
         server {{\n  listen {{{{ listen[app.name] }}}};\n  location {{{{ app.lb.path }}}} {{\n\
         {{% if app.instances %}}\n    proxy_pass http://{{{{ app.name }}}}_{{{{ env.name }}}};\n\
         {{% else %}}\n    return 503;\n{{% endif %}}\n  }}\n}}\n\
         {{% endfor %}}\n",
        listen.join(", ")
    )
}

/// A value that reconcile reads as a MiniJinja template, made literal: `{{`, `{%`, `{#` are
/// wrapped in a raw block.
fn literal(s: String) -> String {
    if s.contains("{{") || s.contains("{%") || s.contains("{#") { format!("{{% raw %}}{s}{{% endraw %}}") } else { s }
}

fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Split like POSIX `sh` words (what compose's shlex does): whitespace separates,
/// single quotes are literal, double quotes allow `\"` and `\\`, a backslash outside
/// quotes escapes the next character.
///
/// # Errors
/// An unterminated quote or a trailing backslash.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match it.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match it.next() {
                        Some('"') => break,
                        Some('\\') => match it.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => return Err(format!("unterminated double quote in {s:?}")),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match it.next() {
                    Some(x) => cur.push(x),
                    None => return Err(format!("trailing backslash in {s:?}")),
                }
            }
            x => {
                in_word = true;
                cur.push(x);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// An env file: `KEY=VALUE` lines, `#` comments, blank lines, optional `export `,
/// values optionally in matching quotes; a bare `KEY` takes the variable's value
/// when set. Values are interpolated as compose v2 does ([`env_file_entries`]).
///
/// # Errors
/// `(line, message)` for a line that is none of these, or a value that cannot be interpolated.
pub fn parse_env_file(text: &str, vars: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, (usize, String)> {
    env_file_entries(text, vars).map(|(entries, _)| entries)
}

/// An env file's entries in order, and the unset variables its values used.
pub type EnvFile = (Vec<(String, String)>, Vec<String>);

/// [`parse_env_file`], with the names of the unset variables that became empty strings.
/// Unquoted and double-quoted values are interpolated (`${VAR}`, `${VAR:-default}`, … as
/// in compose files) from `vars` (the shell environment over the project's `.env`), then
/// from the keys defined above in the same file, as compose v2's dotenv parser looks them
/// up; single-quoted values are literal.
///
/// # Errors
/// As [`parse_env_file`].
pub fn env_file_entries(text: &str, vars: &BTreeMap<String, String>) -> Result<EnvFile, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut unset = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (line, None),
        };
        if !valid_name(k) && !k.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) || k.is_empty() {
            return Err((i + 1, format!("invalid variable name {k:?}")));
        }
        match v {
            Some(v) => {
                let v = v.trim_start();
                let literal = v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'');
                let v =
                    ['"', '\''].iter().find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q))).unwrap_or(v);
                let v = if literal || !v.contains('$') {
                    v.to_string()
                } else {
                    let mut scope: BTreeMap<String, String> = out.iter().cloned().collect();
                    scope.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
                    let (value, missing) = interpolate(v, &scope).map_err(|e| (i + 1, interpolation_message(&e)))?;
                    unset.extend(missing);
                    value
                };
                out.push((k.to_string(), v));
            }
            None => {
                if let Some(val) = vars.get(k) {
                    out.push((k.to_string(), val.clone()));
                }
            }
        }
    }
    Ok((out, unset))
}

/// An interpolation error as a sentence (env files; compose files have their own
/// diagnostics).
fn interpolation_message(e: &InterpolationError) -> String {
    match e {
        InterpolationError::Syntax(s) => format!("invalid interpolation in {s:?}"),
        InterpolationError::Required { name, message } => format!("required variable {name} is missing: {message}"),
    }
}

/// A port entry: `"8080:80"`, `"127.0.0.1:8080:80/tcp"`, `80`, or `{target, published, protocol}`.
/// Returns (container port, host port if published, protocol).
fn parse_port(v: &Value) -> Result<(u16, Option<String>, String), String> {
    let bad = || format!("invalid port {v}");
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .map(|n| (n, None, "tcp".into()))
            .ok_or_else(bad),
        Value::String(s) => {
            let (spec, proto) = s.split_once('/').unwrap_or((s, "tcp"));
            let parts: Vec<&str> = spec.rsplitn(2, ':').collect();
            let target = parts[0];
            // `IP:HOST` or `HOST`, kept whole: the LB listens where compose published
            let published = parts.get(1).map(|h| h.to_string()).filter(|h| !h.is_empty() && !h.ends_with(':'));
            let port: u16 = target.split('-').next().unwrap_or_default().parse().map_err(|_| bad())?;
            if port == 0 {
                return Err(bad());
            }
            Ok((port, published, proto.to_string()))
        }
        Value::Object(m) => {
            let target = m
                .get("target")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(bad)?;
            let published = m.get("published").map(scalar_string).filter(|s| !s.is_empty());
            let proto = m.get("protocol").and_then(Value::as_str).unwrap_or("tcp").to_string();
            Ok((target, published, proto))
        }
        _ => Err(bad()),
    }
}

/// Go's duration syntax as compose uses it: `1h30m`, `10s`, `1.5s`, `500ms`, `100us`.
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let n_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..n_len].parse().ok()?;
        rest = &rest[n_len..];
        let u_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let f = match &rest[..u_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * f;
        rest = &rest[u_len..];
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

/// Docker's byte sizes as compose reads them: a number of bytes, or `512m`, `1g`,
/// `64k`, `100b` (binary units, case-insensitive, optional trailing `b`).
fn docker_bytes(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let f = match unit.trim() {
                "" | "b" => 1u64,
                "k" | "kb" => 1 << 10,
                "m" | "mb" => 1 << 20,
                "g" | "gb" => 1 << 30,
                "t" | "tb" => 1 << 40,
                _ => return None,
            };
            let n: f64 = num.parse().ok()?;
            Some((n * f as f64) as u64)
        }
        _ => None,
    }
}

fn memory_text(bytes: u64) -> Value {
    for (unit, f) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes.is_multiple_of(f) {
            return json!(format!("{}{unit}", bytes / f));
        }
    }
    json!(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Import `files` (name, text) with `vars`; env files come from `disk`.
    fn run_with(files: &[(&str, &str)], vars: &BTreeMap<String, String>, disk: &[(&str, &str)]) -> Imported {
        run_full(files, vars, disk, false)
    }

    fn run_full(files: &[(&str, &str)], vars: &BTreeMap<String, String>, disk: &[(&str, &str)], lb: bool) -> Imported {
        let disk: BTreeMap<String, String> = disk.iter().map(|(k, v)| (format!("/p/{k}"), v.to_string())).collect();
        let read = move |p: &str| disk.get(p).cloned().ok_or_else(|| "No such file or directory".to_string());
        let req = Request {
            files: files.iter().map(|(n, t)| ComposeFile { name: n.to_string(), text: t.to_string() }).collect(),
            env: "imp".into(),
            project_dir: "/p".into(),
            vars,
            read_file: &read,
            docker: "unix:///var/run/docker.sock".into(),
            host_ports: "20000-20999".into(),
            lb,
        };
        import(&req)
    }

    fn run(text: &str) -> Imported {
        run_with(&[("compose.yml", text)], &BTreeMap::new(), &[])
    }

    /// The app file of `app` as a value; panics (with the diagnostics) when missing.
    fn app(imp: &Imported, app: &str) -> Value {
        let path = format!("environments/imp/apps/{app}.yaml");
        let text = imp.files.get(&path).unwrap_or_else(|| panic!("no {path}: {:#?}", imp.diagnostics));
        yaml::parse_str(text).unwrap().value
    }

    fn messages(imp: &Imported, code: &str) -> Vec<String> {
        imp.diagnostics.iter().filter(|d| d.code == code).map(|d| format!("{}: {}", d.location(), d.message)).collect()
    }

    /// The imported files pass reconcile's own validation.
    fn assert_valid(imp: &Imported) {
        let mut snap = crate::spec::snapshot::RepoSnapshot::default();
        for (k, v) in &imp.files {
            snap.files.insert(k.clone(), v.clone().into_bytes());
        }
        let (_, diags) = crate::spec::validate(&snap, None).unwrap();
        let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
        assert!(errors.is_empty(), "{errors:#?}\n{:#?}", imp.files);
    }

    #[test]
    fn interpolation_follows_compose() {
        let v = vars(&[("SET", "x"), ("EMPTY", "")]);
        let i = |s: &str| interpolate(s, &v);
        assert_eq!(i("a${SET}b$SET.").unwrap().0, "axbx.");
        assert_eq!(i("${EMPTY:-d}|${EMPTY-d}|${UNSET-d}|${UNSET:-d}").unwrap().0, "d||d|d");
        assert_eq!(i("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${UNSET+alt}").unwrap().0, "alt||alt|");
        assert_eq!(i("$$HOME costs $$5").unwrap().0, "$HOME costs $5");
        assert_eq!(i("${UNSET:-${SET}-nested}").unwrap().0, "x-nested");
        assert_eq!(i("${UNSET}").unwrap(), (String::new(), vec!["UNSET".to_string()]));
        assert_eq!(i("${SET:?must}").unwrap().0, "x");
        assert_eq!(
            i("${EMPTY:?needs a value}").unwrap_err(),
            InterpolationError::Required { name: "EMPTY".into(), message: "needs a value".into() }
        );
        assert_eq!(i("${EMPTY?x}").unwrap().0, "");
        assert!(matches!(i("${UNSET?gone}"), Err(InterpolationError::Required { .. })));
        for bad in ["${", "${SET", "${1X}", "${SET!x}", "5$", "$ x"] {
            assert!(matches!(i(bad), Err(InterpolationError::Syntax(_))), "{bad}");
        }
    }

    #[test]
    fn interpolation_errors_and_unset_warnings_point_at_the_value() {
        let imp = run("services:\n  a:\n    image: busybox:1\n    environment:\n      X: ${NOPE:?set NOPE}\n");
        assert_eq!(messages(&imp, CODE_ERR), ["compose.yml:5:10: required variable NOPE is missing a value: set NOPE"]);
        assert!(imp.files.is_empty(), "nothing is written when there is an error");
        let imp = run("services:\n  a:\n    image: busybox:${TAG}\n");
        assert_eq!(messages(&imp, CODE_NOTE)[0], "compose.yml:3:12: variable TAG is not set: an empty string is used");
        let imp = run("services:\n  a:\n    image: busybox:1\n    command: echo ${oops\n");
        assert_eq!(messages(&imp, CODE_ERR), ["compose.yml:4:14: invalid interpolation format in \"echo ${oops\""]);
    }

    #[test]
    fn what_compose_rejects_is_an_error_with_file_and_line() {
        let imp = run("services:\n  web:\n    image: busybox:1\n    imagee: x\n");
        assert_eq!(messages(&imp, CODE_ERR), ["compose.yml:4:5: unsupported config option for services.web: `imagee`"]);
        assert_eq!(imp.diagnostics[0].hint.as_deref(), Some("did you mean `image`?"));
        let imp = run("servics:\n  web: {image: busybox:1}\n");
        assert_eq!(messages(&imp, CODE_ERR)[0], "compose.yml:1:1: unsupported top-level key `servics`");
        let imp = run("services:\n  web:\n    image: busybox:1\n    environment:\n      DEBUG: true\n");
        assert!(
            messages(&imp, CODE_ERR)[0].starts_with("compose.yml:5:7: services.web.environment.DEBUG contains true")
        );
        let imp = run("services:\n  web:\n    image: busybox:1\n    depends_on: [db]\n");
        assert_eq!(messages(&imp, CODE_ERR), ["compose.yml:4:5: service `web` depends on undefined service `db`"]);
        let imp = run("services:\n  web:\n    image: busybox:1\n    secrets: [pw]\n");
        assert_eq!(messages(&imp, CODE_ERR), ["compose.yml:4:15: service `web` uses an undefined secret `pw`"]);
        let imp = run("services:\n  web:\n    build: .\n");
        assert!(messages(&imp, CODE_ERR)[0].contains("has only `build`"));
        let imp = run(
            "services:\n  web:\n    image: busybox:1\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      intervall: 5s\n",
        );
        assert_eq!(
            messages(&imp, CODE_ERR)[0],
            "compose.yml:6:7: unsupported config option for services.web.healthcheck: `intervall`"
        );
        let imp = run("services:\n  web: [1]\n");
        assert!(messages(&imp, CODE_ERR)[0].contains("service `web` must be a mapping"));
        let imp = run("services:\n  a: {image: x:1}\n  a: {image: y:1}\n");
        assert!(messages(&imp, CODE_ERR)[0].contains("duplicate"), "{:?}", imp.diagnostics);
    }

    #[test]
    fn image_command_entrypoint_and_env() {
        let imp = run_with(
            &[(
                "c.yml",
                "services:\n  Web_1:\n    image: busybox\n    entrypoint: /bin/sh -c\n    command: 'echo \"hi there\" {{x}}'\n    env_file: [a.env]\n    environment:\n      - B=2\n      - FROM_HOST\n      - NOT_SET\n",
            )],
            &vars(&[("FROM_HOST", "h")]),
            &[("a.env", "# c\nA=1\nB=1\nexport Q='q q'\n")],
        );
        let a = app(&imp, "web-1");
        assert_eq!(a["image"], "busybox:latest");
        assert_eq!(a["command"], json!(["/bin/sh", "-c", "echo", "hi there", "{% raw %}{{x}}{% endraw %}"]));
        assert_eq!(a["env"], json!({"A": "1", "B": "2", "Q": "q q", "FROM_HOST": "h"}));
        assert!(messages(&imp, CODE_NOTE).iter().any(|m| m.contains("service `Web_1` becomes app `web-1`")));
        assert_valid(&imp);
        let missing = run("services:\n  a:\n    image: busybox:1\n    env_file: ./nope.env\n");
        assert_eq!(
            messages(&missing, CODE_ERR),
            ["compose.yml:4:5: cannot read env file ./nope.env: No such file or directory"]
        );
    }

    #[test]
    fn healthchecks_cmd_and_cmd_shell_with_timings() {
        let imp = run(concat!(
            "services:\n",
            "  a:\n    image: busybox:1\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"http://127.0.0.1/\"]\n",
            "      interval: 1m30s\n      timeout: 500ms\n      retries: 3\n      start_period: 40s\n      start_interval: 1s\n",
            "  b:\n    image: busybox:1\n    healthcheck:\n      test: [\"CMD-SHELL\", \"test -f /tmp/ok || exit 1\"]\n",
            "  c:\n    image: busybox:1\n    healthcheck:\n      test: pidof httpd\n",
            "  d:\n    image: busybox:1\n    healthcheck:\n      disable: true\n",
        ));
        assert_eq!(
            app(&imp, "a")["health"],
            json!({"cmd": ["wget", "-q", "http://127.0.0.1/"], "interval": "90s", "timeout": "500ms", "start_period": "40s", "retries": 3})
        );
        assert_eq!(app(&imp, "b")["health"], json!({"cmd": ["/bin/sh", "-c", "test -f /tmp/ok || exit 1"]}));
        assert_eq!(app(&imp, "c")["health"]["cmd"], json!(["/bin/sh", "-c", "pidof httpd"]));
        assert!(app(&imp, "d").get("health").is_none());
        assert_eq!(
            messages(&imp, CODE_UNMAPPED),
            ["compose.yml:10:7: `services.a.healthcheck.start_interval` is not imported"]
        );
        assert_valid(&imp);
    }

    #[test]
    fn resources_replicas_update_and_stop_timeout() {
        let imp = run(concat!(
            "services:\n  a:\n    image: busybox:1\n    stop_grace_period: 1m\n    init: false\n",
            "    deploy:\n      replicas: 3\n      resources:\n        limits: {cpus: '0.25', memory: 64M, pids: 10}\n",
            "      update_config: {parallelism: 2, order: stop-first, delay: 10s}\n",
            "  b:\n    image: busybox:1\n    mem_limit: 1536m\n    cpus: 1.5\n    scale: 2\n",
        ));
        let a = app(&imp, "a");
        assert_eq!(a["resources"], json!({"cpus": 0.25, "memory": "64Mi"}));
        assert_eq!(a["replicas"], 3);
        assert_eq!(a["update"], json!({"batch": 2, "strategy": "recreate"}));
        assert_eq!(a["stop_timeout"], "60s");
        assert_eq!(a["init"], false);
        let b = app(&imp, "b");
        assert_eq!(b["resources"], json!({"cpus": 1.5, "memory": "1536Mi"}));
        assert_eq!(b["replicas"], 2);
        let unmapped = messages(&imp, CODE_UNMAPPED);
        assert!(unmapped.iter().any(|m| m.contains("deploy.resources.limits.pids")), "{unmapped:?}");
        assert!(unmapped.iter().any(|m| m.contains("deploy.update_config.delay")), "{unmapped:?}");
        assert_valid(&imp);
    }

    #[test]
    fn ports_networks_and_volumes() {
        let imp = run(concat!(
            "services:\n  web:\n    image: busybox:1\n    ports: [\"127.0.0.1:8080:80\", \"9000/udp\", {target: 81, published: 8081}]\n",
            "    volumes: [\"./html:/var/www:ro\", \"data:/data\", \"/cache\", {type: bind, source: /etc/ssl, target: /ssl, read_only: true}, {type: tmpfs, target: /tmp}]\n",
            "  host:\n    image: busybox:1\n    network_mode: host\n",
        ));
        let web = app(&imp, "web");
        assert_eq!(web["network"], "bridge");
        assert_eq!(web["port"], 80);
        assert_eq!(web["volumes"], json!(["/p/html:/var/www:ro", "data:/data", "/etc/ssl:/ssl:ro"]));
        assert_eq!(app(&imp, "host")["network"], "host");
        assert!(app(&imp, "host").get("port").is_none());
        let unmapped = messages(&imp, CODE_UNMAPPED).join("\n");
        for key in ["ports.1", "ports.2", "volumes.2", "volumes.4"] {
            assert!(unmapped.contains(&format!("services.web.{key}`")), "{key}: {unmapped}");
        }
        assert!(messages(&imp, CODE_NOTE).iter().any(|m| m.contains("not on 127.0.0.1:8080")));
        assert_valid(&imp);
    }

    #[test]
    fn with_lb_nginx_published_ports_become_lb_entries_and_an_nginx_template() {
        let text = "services:\n  web:\n    image: busybox:1\n    ports: [\"8080:80\"]\n  api:\n    image: busybox:1\n    ports: [\"9000\"]\n";
        let imp = run_full(&[("compose.yml", text)], &BTreeMap::new(), &[], true);
        assert_eq!(app(&imp, "web")["lb"], json!({"host": "web"}));
        assert_eq!(app(&imp, "web")["port"], 80);
        assert!(app(&imp, "api").get("lb").is_none(), "a port compose does not publish has no LB entry");
        let env = yaml::parse_str(&imp.files["environments/imp/environment.yaml"]).unwrap().value;
        assert_eq!(env["lb"]["template"], "templates/nginx.conf.j2");
        assert_eq!(env["lb"]["check"], json!(["nginx", "-t"]));
        let template = &imp.files["environments/imp/templates/nginx.conf.j2"];
        assert!(template.contains("{% set listen = {\"web\": \"8080\"} %}"), "{template}");
        assert!(template.contains("listen {{ listen[app.name] }};"), "{template}");
        assert!(messages(&imp, CODE_NOTE).iter().any(|m| m.contains("the LB (nginx) listens on 8080")));
        // validate renders the template with a representative context: it must render
        assert_valid(&imp);
        // without --lb: no LB, and the note says how to get one
        let plain = run(text);
        assert!(app(&plain, "web").get("lb").is_none());
        assert!(!plain.files.contains_key("environments/imp/templates/nginx.conf.j2"));
    }

    #[test]
    fn secrets_become_secrets_and_files() {
        let imp = run(concat!(
            "services:\n  db:\n    image: busybox:1\n    secrets: [db-pass, {source: api_key, target: key.txt, uid: '0'}]\n",
            "secrets:\n  db-pass: {file: ./secrets/db.txt}\n  api_key: {environment: API_KEY}\n  ext: {external: true}\n",
        ));
        let db = app(&imp, "db");
        assert_eq!(
            db["files"],
            json!([
                {"template": "templates/secrets/db_pass.j2", "path": "/run/secrets/db-pass"},
                {"template": "templates/secrets/api_key.j2", "path": "/run/secrets/key.txt"},
            ])
        );
        assert_eq!(imp.files["environments/imp/templates/secrets/db_pass.j2"], "{{ secrets.db_pass }}");
        let env = yaml::parse_str(&imp.files["environments/imp/environment.yaml"]).unwrap().value;
        assert_eq!(
            env["secrets"],
            json!({"db_pass": {"from_file": "/p/secrets/db.txt"}, "api_key": {"from_env": "API_KEY"}})
        );
        let unmapped = messages(&imp, CODE_UNMAPPED).join("\n");
        assert!(unmapped.contains("external secret `ext`") && unmapped.contains("secrets.1.uid"), "{unmapped}");
        assert_valid(&imp);
    }

    #[test]
    fn depends_on_in_both_forms() {
        let imp = run(concat!(
            "services:\n  web:\n    image: busybox:1\n    depends_on:\n      db: {condition: service_healthy}\n      migrate: {condition: service_completed_successfully}\n",
            "  db: {image: 'busybox:1', depends_on: [migrate]}\n  migrate: {image: 'busybox:1'}\n",
        ));
        assert_eq!(app(&imp, "web")["depends_on"], json!(["db", "migrate"]));
        assert_eq!(app(&imp, "db")["depends_on"], json!(["migrate"]));
        assert!(messages(&imp, CODE_UNMAPPED)[0].contains("depends_on.migrate.condition"));
        assert_valid(&imp);
    }

    #[test]
    fn every_unmapped_key_is_reported_by_name_and_line() {
        let imp = run(concat!(
            "services:\n  a:\n    image: busybox:1\n    labels: {x: y, reconcile.app: b}\n    user: nobody\n    working_dir: /w\n",
            "    cap_add: [NET_ADMIN]\n    restart: on-failure\n    x-note: hi\n    container_name: a1\n",
            "    deploy: {placement: {constraints: [node.role==manager]}}\n",
        ));
        assert_eq!(
            messages(&imp, CODE_UNMAPPED),
            [
                "compose.yml:4:20: `services.a.labels.reconcile.app` is not imported",
                "compose.yml:7:5: `services.a.cap_add` is not imported",
                "compose.yml:8:5: `services.a.restart` is not imported",
                "compose.yml:9:5: `services.a.x-note` is not imported",
                "compose.yml:10:5: `services.a.container_name` is not imported",
                "compose.yml:11:14: `services.a.deploy.placement` is not imported",
            ]
        );
    }

    #[test]
    fn user_working_dir_and_labels_are_mapped() {
        let imp = run(concat!(
            "services:\n  a:\n    image: busybox:1\n    user: \"1000:1000\"\n    working_dir: /srv/a\n",
            "    labels: [com.example.team=shop, com.example.empty]\n",
            "  b:\n    image: busybox:1\n    user: 1000\n    labels: {tier: 2}\n",
        ));
        let a = app(&imp, "a");
        assert_eq!((&a["user"], &a["working_dir"]), (&json!("1000:1000"), &json!("/srv/a")));
        assert_eq!(a["labels"], json!({"com.example.team": "shop", "com.example.empty": ""}));
        let b = app(&imp, "b");
        assert_eq!((&b["user"], &b["labels"]), (&json!("1000"), &json!({"tier": "2"})));
        assert!(messages(&imp, CODE_UNMAPPED).is_empty(), "{:?}", messages(&imp, CODE_UNMAPPED));
        assert_valid(&imp);
    }

    #[test]
    fn several_files_merge_as_compose_merges_them() {
        let base = concat!(
            "services:\n  api:\n    image: api:1\n    command: [serve, --a]\n    environment: [A=1, B=1]\n",
            "    ports: [\"8080:8080\"]\n    volumes: [\"/a:/data\", \"/logs:/logs\"]\n    healthcheck: {test: [CMD, a], interval: 5s}\n",
            "  db: {image: 'db:1'}\n",
        );
        let over = concat!(
            "services:\n  api:\n    image: api:2\n    command: [serve, --b]\n    environment: {B: 2, C: 3}\n",
            "    ports: [\"9090:9090\"]\n    volumes: [\"/b:/data\"]\n    healthcheck: {retries: 4}\n    depends_on: [db]\n",
            "    labels: {late: x}\n",
        );
        let imp = run_with(&[("base.yml", base), ("prod.yml", over)], &BTreeMap::new(), &[]);
        let api = app(&imp, "api");
        assert_eq!(api["image"], "api:2");
        assert_eq!(api["command"], json!(["serve", "--b"]));
        assert_eq!(api["env"], json!({"A": "1", "B": "2", "C": "3"}));
        assert_eq!(api["volumes"], json!(["/b:/data", "/logs:/logs"]));
        assert_eq!(api["health"], json!({"cmd": ["a"], "interval": "5s", "retries": 4}));
        assert_eq!(api["depends_on"], json!(["db"]));
        assert_eq!(api["port"], 8080, "the first port of the concatenated list");
        // a key set in the override is reported at the override's line
        assert_eq!(api["labels"], json!({"late": "x"}));
        let unmapped = messages(&imp, CODE_UNMAPPED);
        assert!(unmapped.iter().any(|m| m.starts_with("prod.yml:6:") && m.contains("ports.1")), "{unmapped:?}");
        assert_valid(&imp);
    }

    #[test]
    fn shell_split_and_env_files() {
        assert_eq!(shell_split(r#"a "b c" 'd e' f\ g "h\"i" ''"#).unwrap(), ["a", "b c", "d e", "f g", "h\"i", ""]);
        assert!(shell_split("echo 'x").is_err());
        let v = vars(&[("H", "from-host")]);
        assert_eq!(
            parse_env_file("# x\n\nA=1\nB = \"two\"\nexport C='3'\nH\nMISSING\nD=a=b\n", &v).unwrap(),
            [("A", "1"), ("B", "two"), ("C", "3"), ("H", "from-host"), ("D", "a=b")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(parse_env_file("A=1\n=x\n", &v).unwrap_err().0, 2);
    }

    #[test]
    fn env_file_values_are_interpolated_as_compose_v2_does() {
        let v = vars(&[("H", "from-host"), ("A", "shell")]);
        let text = "A=file\nB=${H}/x\nC=\"${A}-${NOPE:-dflt}\"\nD='${H}'\nE=$$H\nF=${B}+\nG=${UNSET}\n";
        let (entries, unset) = env_file_entries(text, &v).unwrap();
        let entries: BTreeMap<String, String> = entries.into_iter().collect();
        assert_eq!(entries["B"], "from-host/x");
        // The shell's value wins over the file's own A; a default fills an unset variable.
        assert_eq!(entries["C"], "shell-dflt");
        assert_eq!(entries["D"], "${H}", "single quotes are literal");
        assert_eq!(entries["E"], "$H");
        assert_eq!(entries["F"], "from-host/x+", "keys defined above in the file are visible");
        assert_eq!((entries["G"].as_str(), unset), ("", vec!["UNSET".to_string()]));
        let bad = env_file_entries("A=1\nB=${X:?needed here}\n", &v).unwrap_err();
        assert_eq!(bad, (2, "required variable X is missing: needed here".to_string()));
        assert_eq!(env_file_entries("A=${oops\n", &v).unwrap_err().0, 1);
        // Through an import: interpolated values, and a warning naming the env file.
        let imp = run_with(
            &[("compose.yml", "services:\n  a:\n    image: busybox:1\n    env_file: [a.env]\n")],
            &v,
            &[("a.env", "URL=http://${H}:${PORT:-8080}/\nX=${MISSING}\n")],
        );
        assert_eq!(app(&imp, "a")["env"], json!({"URL": "http://from-host:8080/", "X": ""}));
        let notes = messages(&imp, CODE_NOTE);
        assert!(notes.iter().any(|n| n.contains("env file a.env: variable MISSING is not set")), "{notes:?}");
    }

    #[test]
    fn merge_keys_are_expanded_and_the_services_own_keys_win() {
        let imp = run(concat!(
            "x-base: &base\n  image: busybox:1\n  environment: {A: base, B: base}\n  init: true\n",
            "x-limits: &limits\n  mem_limit: 64m\n  init: false\n",
            "services:\n  a:\n    environment: {A: own}\n    <<: [*base, *limits]\n    cap_add: [X]\n",
        ));
        let a = app(&imp, "a");
        assert_eq!(a["image"], "busybox:1");
        assert_eq!(a["env"], json!({"A": "own"}), "the service's own `environment` replaces the merged one");
        assert_eq!(a["init"], true, "of several merged mappings the first wins");
        assert_eq!(a["resources"]["memory"], "64Mi");
        // keys of the service itself keep their own line
        assert!(
            messages(&imp, CODE_UNMAPPED)
                .contains(&"compose.yml:12:5: `services.a.cap_add` is not imported".to_string())
        );
        let bad = run("x: &s 1\nservices:\n  a:\n    <<: *s\n");
        assert_eq!(messages(&bad, CODE_ERR), ["compose.yml:4:5: a merge key needs a mapping"]);
    }
}
