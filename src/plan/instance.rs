//! Rendering one instance: everything that defines a container, with secrets
//! both real (for the container and the spec-hash) and masked (for display).
//!
//! Each template is rendered twice: with the real secret values and with every
//! secret replaced by `(sensitive)`. The masked form is what plans, labels and
//! etcd ever see; the real form only reaches Docker and the hash.
//!
//! Invariant: pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::secret::{MASK, Secret};
use crate::spec::load::App;
use crate::spec::template::{TemplateError, Templates};
use crate::spec::types::{AppSpec, HealthSpec, Network};
use crate::spec::units;

/// A rendered string: the real text and what may be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    real: Secret,
    pub shown: String,
}

impl Rendered {
    pub fn plain(s: impl Into<String>) -> Self {
        let s = s.into();
        Self { real: Secret::new(s.clone()), shown: s }
    }
    /// The real value (may contain secrets): for Docker only.
    pub fn expose(&self) -> &str {
        self.real.expose()
    }
    /// True when the value depends on a secret.
    pub fn is_sensitive(&self) -> bool {
        self.real.expose() != self.shown
    }
}

/// Everything that defines one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub image: String,
    pub command: Option<Vec<Rendered>>,
    pub env: BTreeMap<String, Rendered>,
    pub network: Network,
    /// The pool port (host mode: the app listens on it; bridge: published to `container_port`).
    pub port: Option<u16>,
    pub container_port: Option<u16>,
    pub init: bool,
    pub nano_cpus: Option<u64>,
    pub memory: Option<u64>,
    pub volumes: Vec<String>,
    /// Container path → content.
    pub files: BTreeMap<String, Rendered>,
    pub health: Option<HealthSpec>,
    pub stop_timeout_secs: u64,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// The app's own container labels (reconcile's are added at create).
    pub labels: BTreeMap<String, String>,
    /// Secret-bearing field → digest of the secrets it contains (names and values).
    /// Compared across plans to tell "a secret in this field changed" even when the
    /// masked text changed too; reveals no more than the spec-hash label does.
    pub sensitive: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Canonical<'a> {
    image: &'a str,
    command: Option<Vec<&'a str>>,
    env: BTreeMap<&'a str, &'a str>,
    network: Network,
    port: Option<u16>,
    container_port: Option<u16>,
    init: bool,
    nano_cpus: Option<u64>,
    memory: Option<u64>,
    volumes: &'a [String],
    files: BTreeMap<&'a str, &'a str>,
    health: &'a Option<HealthSpec>,
    stop_timeout_secs: u64,
    // Skipped when unset: the spec-hash of an instance without them stays what it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    /// Masked form only: a digest per secret-bearing field, so that a changed secret
    /// shows as a changed field ("(sensitive value changed)") even when other fields
    /// change too. It reveals no more than the spec-hash label already does.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sensitive: BTreeMap<String, String>,
}

impl InstanceSpec {
    fn canonical(&self, real: bool) -> Canonical<'_> {
        fn pick(r: &Rendered, real: bool) -> &str {
            if real { r.expose() } else { r.shown.as_str() }
        }
        Canonical {
            image: &self.image,
            command: self.command.as_ref().map(|c| c.iter().map(|r| pick(r, real)).collect()),
            env: self.env.iter().map(|(k, v)| (k.as_str(), pick(v, real))).collect(),
            network: self.network,
            port: self.port,
            container_port: self.container_port,
            init: self.init,
            nano_cpus: self.nano_cpus,
            memory: self.memory,
            volumes: &self.volumes,
            files: self.files.iter().map(|(k, v)| (k.as_str(), pick(v, real))).collect(),
            health: &self.health,
            stop_timeout_secs: self.stop_timeout_secs,
            user: self.user.as_deref(),
            working_dir: self.working_dir.as_deref(),
            labels: &self.labels,
            sensitive: if real { BTreeMap::new() } else { self.sensitive.clone() },
        }
    }

    /// The spec as shown: secrets masked. This is what goes into plans and labels.
    pub fn masked(&self) -> Value {
        serde_json::to_value(self.canonical(false)).unwrap_or(Value::Null)
    }

    /// sha256 over the canonical form with real values: a changed secret changes the
    /// hash, and the hash is all that is stored.
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(&self.canonical(true)).unwrap_or_default();
        hex(&Sha256::digest(&bytes))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Where an instance runs, as templates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot<'a> {
    pub ordinal: u32,
    pub host: &'a str,
    pub address: &'a str,
    pub port: Option<u16>,
}

/// Template contexts: one with real secrets, one masked (converted to MiniJinja
/// values once, then extended per app and per instance without copying).
pub struct Contexts {
    pub real: minijinja::Value,
    pub masked: minijinja::Value,
    /// (name, value) of the resolved secrets, sorted by name.
    secrets: Vec<(String, Secret)>,
}

impl Contexts {
    /// Digest of the secrets whose values occur in `r` (for a sensitive field).
    fn digest(&self, field: &str, r: &Rendered) -> Option<String> {
        if !r.is_sensitive() {
            return None;
        }
        let mut h = Sha256::new();
        h.update(b"reconcile/v1 sensitive\0");
        h.update(field.as_bytes());
        for (name, value) in
            self.secrets.iter().filter(|(_, v)| !v.expose().is_empty() && r.expose().contains(v.expose()))
        {
            h.update(b"\0");
            h.update(name.as_bytes());
            h.update(b"=");
            h.update(value.expose().as_bytes());
        }
        Some(hex(&h.finalize()[..8]))
    }
}

/// `env`, `vars`, `secrets` for an environment, real and masked.
pub fn contexts(
    env_name: &str,
    vars: &serde_json::Map<String, Value>,
    secrets: &BTreeMap<String, Secret>,
    names: &[String],
) -> Contexts {
    let real: serde_json::Map<String, Value> =
        names.iter().map(|n| (n.clone(), Value::from(secrets.get(n).map_or(MASK, |s| s.expose())))).collect();
    let masked: serde_json::Map<String, Value> = names.iter().map(|n| (n.clone(), Value::from(MASK))).collect();
    let mj = |v: Value| minijinja::Value::from(minijinja::value::Serde(v));
    Contexts {
        real: mj(json!({"env": {"name": env_name}, "vars": vars, "secrets": real})),
        masked: mj(json!({"env": {"name": env_name}, "vars": vars, "secrets": masked})),
        secrets: names.iter().filter_map(|n| secrets.get(n).map(|s| (n.clone(), s.clone()))).collect(),
    }
}

/// An app's templates, compiled, and its contexts (the environment's plus `app`).
pub struct AppTemplates {
    real: minijinja::Value,
    masked: minijinja::Value,
    /// Inline template source → (compiled name, mentions secrets), for env values and command arguments.
    inline: BTreeMap<String, (String, bool)>,
    /// File template name → may use secrets (it mentions them, or includes other templates).
    files_with_secrets: BTreeSet<String>,
}

/// Prepare an app for rendering many instances: compile its inline templates and
/// convert its spec to a template value once.
///
/// # Errors
/// An inline template does not parse.
pub fn prepare(app: &App, ctx: &Contexts, t: &mut Templates) -> Result<AppTemplates, TemplateError> {
    let a = minijinja::Value::from(minijinja::value::Serde(&app.doc.value));
    let mut inline = BTreeMap::new();
    let sources =
        app.spec.env.values().filter_map(Value::as_str).chain(app.spec.command.iter().flatten().map(String::as_str));
    for src in sources.filter(|s| crate::spec::template::is_template(s)) {
        inline.insert(src.to_string(), (t.add_inline(src)?, src.contains("secrets")));
    }
    let files_with_secrets = app
        .spec
        .files
        .iter()
        .filter(|f| {
            t.source(&f.template)
                .is_none_or(|src| ["secrets", "include", "import", "extends"].iter().any(|w| src.contains(w)))
        })
        .map(|f| f.template.clone())
        .collect();
    Ok(AppTemplates {
        real: minijinja::context! { app => a.clone(), ..ctx.real.clone() },
        masked: minijinja::context! { app => a, ..ctx.masked.clone() },
        inline,
        files_with_secrets,
    })
}

/// Render one instance of `app` at `slot` (after [`prepare`]). With `mask` false,
/// secret-bearing values are not rendered a second time for display: the result
/// has the right hash (which uses real values only) but must not be shown — the
/// planner uses this for instances it keeps, and renders masked ones it creates.
///
/// # Errors
/// A template fails to render (validate reports these with positions first).
pub fn render(
    app: &App,
    slot: &Slot<'_>,
    at: &AppTemplates,
    ctx: &Contexts,
    t: &Templates,
    env_name: &str,
    mask: bool,
) -> Result<InstanceSpec, TemplateError> {
    let s = &app.spec;
    let r = Renderer::new(s, slot, at, t, mask);
    let env = r.env(slot, env_name)?;
    let command = match &s.command {
        Some(c) => Some(c.iter().map(|a| r.inline(a)).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    let files = r.files()?;
    let sensitive = sensitive_fields(ctx, command.as_deref(), &env, &files);
    let resources = s.resources.as_ref();
    Ok(InstanceSpec {
        image: s.image.clone(),
        command,
        env,
        network: s.network,
        port: slot.port,
        container_port: if s.network == Network::Bridge { s.port } else { None },
        init: s.init,
        nano_cpus: resources.and_then(|r| r.cpus.as_ref()).and_then(|c| units::cpus(c).ok()),
        memory: resources.and_then(|r| r.memory.as_ref()).and_then(|m| units::memory(m).ok()),
        volumes: s.volumes.clone(),
        files,
        health: s.health.clone(),
        stop_timeout_secs: s
            .stop_timeout
            .as_deref()
            .and_then(|d| units::duration(d).ok())
            .map_or(10, |d| d.as_secs().max(1)),
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        labels: s.labels.clone(),
        sensitive,
    })
}

/// The rendering of one instance's templates: its contexts (real and masked, with
/// `instance`) and whether the masked side is wanted.
struct Renderer<'a> {
    s: &'a AppSpec,
    at: &'a AppTemplates,
    t: &'a Templates,
    real: minijinja::Value,
    masked: minijinja::Value,
    mask: bool,
}

impl<'a> Renderer<'a> {
    fn new(s: &'a AppSpec, slot: &Slot<'_>, at: &'a AppTemplates, t: &'a Templates, mask: bool) -> Self {
        let instance = minijinja::context! {
            name => format!("{}-{}", s.name, slot.ordinal),
            ordinal => slot.ordinal,
            host => slot.host,
            address => slot.address,
            port => slot.port,
        };
        let real = minijinja::context! { instance => instance.clone(), ..at.real.clone() };
        let masked = minijinja::context! { instance => instance, ..at.masked.clone() };
        Self { s, at, t, real, masked, mask }
    }

    /// An env value or command argument: a template when `prepare` compiled it.
    fn inline(&self, src: &str) -> Result<Rendered, TemplateError> {
        match self.at.inline.get(src) {
            None => Ok(Rendered::plain(src)),
            // A template that cannot see a secret renders the same masked: render once.
            Some((name, secret)) if !secret || !self.mask => {
                Ok(Rendered::plain(self.t.render_value(name, &self.real)?))
            }
            Some((name, _)) => Ok(Rendered {
                real: Secret::new(self.t.render_value(name, &self.real)?),
                shown: self.t.render_value(name, &self.masked)?,
            }),
        }
    }

    /// The app's env, then `PORT` and the `RECONCILE_*` variables.
    fn env(&self, slot: &Slot<'_>, env_name: &str) -> Result<BTreeMap<String, Rendered>, TemplateError> {
        let s = self.s;
        let mut env = BTreeMap::new();
        for (k, v) in &s.env {
            let r = match v {
                Value::String(text) => self.inline(text)?,
                other => Rendered::plain(other.to_string()),
            };
            env.insert(k.clone(), r);
        }
        if let Some(p) = slot.port.filter(|_| s.network == Network::Host) {
            env.insert("PORT".into(), Rendered::plain(p.to_string()));
        } else if let Some(p) = s.port {
            env.insert("PORT".into(), Rendered::plain(p.to_string()));
        }
        env.insert("RECONCILE_ENV".into(), Rendered::plain(env_name));
        env.insert("RECONCILE_APP".into(), Rendered::plain(s.name.clone()));
        env.insert("RECONCILE_INSTANCE".into(), Rendered::plain(format!("{}-{}", s.name, slot.ordinal)));
        Ok(env)
    }

    /// The rendered files, by container path.
    fn files(&self) -> Result<BTreeMap<String, Rendered>, TemplateError> {
        let mut files = BTreeMap::new();
        for f in &self.s.files {
            let content = if self.mask && self.at.files_with_secrets.contains(&f.template) {
                Rendered {
                    real: Secret::new(self.t.render_value(&f.template, &self.real)?),
                    shown: self.t.render_value(&f.template, &self.masked)?,
                }
            } else {
                Rendered::plain(self.t.render_value(&f.template, &self.real)?)
            };
            files.insert(f.path.clone(), content);
        }
        Ok(files)
    }
}

/// Secret-bearing field (`command.N`, `env.K`, `files.PATH`) → digest of its secrets.
fn sensitive_fields(
    ctx: &Contexts,
    command: Option<&[Rendered]>,
    env: &BTreeMap<String, Rendered>,
    files: &BTreeMap<String, Rendered>,
) -> BTreeMap<String, String> {
    let mut sensitive = BTreeMap::new();
    let fields = command.into_iter().flatten().enumerate().map(|(i, r)| (format!("command.{i}"), r));
    let fields = fields.chain(env.iter().map(|(k, r)| (format!("env.{k}"), r)));
    for (f, r) in fields.chain(files.iter().map(|(k, r)| (format!("files.{k}"), r))) {
        if let Some(d) = ctx.digest(&f, r) {
            sensitive.insert(f, d);
        }
    }
    sensitive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            image: "img:1".into(),
            command: None,
            env: BTreeMap::new(),
            network: Network::Host,
            port: Some(20000),
            container_port: None,
            init: true,
            nano_cpus: None,
            memory: None,
            volumes: vec![],
            files: BTreeMap::new(),
            health: None,
            stop_timeout_secs: 10,
            user: None,
            working_dir: None,
            labels: BTreeMap::new(),
            sensitive: BTreeMap::new(),
        }
    }

    #[test]
    fn user_working_dir_and_labels_change_the_hash_only_when_set() {
        let plain = spec();
        // Unset, they are not in the canonical form: existing instances keep their hash.
        let shown = plain.masked();
        assert!(["user", "working_dir", "labels"].iter().all(|k| shown.get(k).is_none()), "{shown}");
        let with = |f: &dyn Fn(&mut InstanceSpec)| {
            let mut s = spec();
            f(&mut s);
            s.hash()
        };
        let hashes = [
            plain.hash(),
            with(&|s| s.user = Some("1000".into())),
            with(&|s| s.working_dir = Some("/srv".into())),
            with(&|s| s.labels = BTreeMap::from([("team".to_string(), "shop".to_string())])),
        ];
        let distinct: BTreeSet<&String> = hashes.iter().collect();
        assert_eq!(distinct.len(), hashes.len(), "{hashes:?}");
    }
}
