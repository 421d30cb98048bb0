//! Rendering one instance: everything that defines a container, with secrets
//! both real (for the container and the spec-hash) and masked (for display).
//!
//! Each template is rendered twice: with the real secret values and with every
//! secret replaced by `(sensitive)`. The masked form is what plans, labels and
//! etcd ever see; the real form only reaches Docker and the hash.
//!
//! Invariant: pure.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

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

/// The form the spec-hash is taken over (and the masked spec shown). `M` is a map of
/// name → text: the spec's own (`Picked`), or [`hash_at`]'s borrowed one.
#[derive(Serialize)]
struct Canonical<'a, M> {
    image: &'a str,
    command: Option<Vec<&'a str>>,
    env: M,
    network: Network,
    port: Option<u16>,
    container_port: Option<u16>,
    init: bool,
    nano_cpus: Option<u64>,
    memory: Option<u64>,
    volumes: &'a [String],
    files: M,
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

/// A map of rendered values serialised as name → real or shown text, in key order,
/// straight from the spec's map (no map built per hash).
struct Picked<'a> {
    map: &'a BTreeMap<String, Rendered>,
    real: bool,
}

impl Serialize for Picked<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.map.iter().map(|(k, v)| (k, if self.real { v.expose() } else { v.shown.as_str() })))
    }
}

impl InstanceSpec {
    fn canonical(&self, real: bool) -> Canonical<'_, Picked<'_>> {
        fn pick(r: &Rendered, real: bool) -> &str {
            if real { r.expose() } else { r.shown.as_str() }
        }
        Canonical {
            image: &self.image,
            command: self.command.as_ref().map(|c| c.iter().map(|r| pick(r, real)).collect()),
            env: Picked { map: &self.env, real },
            network: self.network,
            port: self.port,
            container_port: self.container_port,
            init: self.init,
            nano_cpus: self.nano_cpus,
            memory: self.memory,
            volumes: &self.volumes,
            files: Picked { map: &self.files, real },
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
    /// Inline template source → how to render it, for env values and command arguments.
    inline: BTreeMap<String, Compiled>,
    /// File template name → may use secrets (it mentions them, or includes other templates).
    files_with_secrets: BTreeSet<String>,
    /// File template name → its output, when it cannot depend on the instance.
    fixed_files: BTreeMap<String, Fixed>,
    shared: Shared,
}

/// An inline template, compiled.
struct Compiled {
    name: String,
    /// It mentions `secrets` (so its masked form differs).
    secret: bool,
    /// Its output, when it cannot depend on the instance.
    fixed: Option<Fixed>,
}

/// The output of a template that cannot see the instance: the same for every instance
/// of the app, so rendered once (on first use, so an app nobody renders renders nothing,
/// and from any render worker).
#[derive(Default)]
struct Fixed {
    real: OnceLock<Result<String, TemplateError>>,
    masked: OnceLock<Result<String, TemplateError>>,
}

impl Fixed {
    fn get(&self, masked: bool, render: impl FnOnce() -> Result<String, TemplateError>) -> Result<&str, TemplateError> {
        let cell = if masked { &self.masked } else { &self.real };
        match cell.get_or_init(render) {
            Ok(text) => Ok(text),
            Err(e) => Err(e.clone()),
        }
    }
}

/// What an app's instances share besides templates: the spec's values in the form the
/// instance spec holds them, converted once per app.
struct Shared {
    container_port: Option<u16>,
    nano_cpus: Option<u64>,
    memory: Option<u64>,
    stop_timeout_secs: u64,
}

impl Shared {
    fn of(s: &AppSpec) -> Self {
        let resources = s.resources.as_ref();
        Shared {
            container_port: if s.network == Network::Bridge { s.port } else { None },
            nano_cpus: resources.and_then(|r| r.cpus.as_ref()).and_then(|c| units::cpus(c).ok()),
            memory: resources.and_then(|r| r.memory.as_ref()).and_then(|m| units::memory(m).ok()),
            stop_timeout_secs: s
                .stop_timeout
                .as_deref()
                .and_then(|d| units::duration(d).ok())
                .map_or(10, |d| d.as_secs().max(1)),
        }
    }
}

/// True when a template's output cannot depend on the instance: it never names
/// `instance` (the only per-instance variable), and cannot reach it through another
/// template or `debug()` (which prints the whole context). A textual test, so it errs
/// towards "may depend" (a mention in a comment or string counts).
fn instance_free(src: &str) -> bool {
    !["instance", "debug", "include", "import", "extends"].iter().any(|w| src.contains(w))
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
        let fixed = instance_free(src).then(Fixed::default);
        inline.insert(src.to_string(), Compiled { name: t.add_inline(src)?, secret: src.contains("secrets"), fixed });
    }
    let mut files_with_secrets = BTreeSet::new();
    let mut fixed_files = BTreeMap::new();
    for f in &app.spec.files {
        let src = t.source(&f.template);
        if src.is_none_or(|src| ["secrets", "include", "import", "extends"].iter().any(|w| src.contains(w))) {
            files_with_secrets.insert(f.template.clone());
        }
        if src.is_some_and(instance_free) {
            fixed_files.insert(f.template.clone(), Fixed::default());
        }
    }
    Ok(AppTemplates {
        real: minijinja::context! { app => a.clone(), ..ctx.real.clone() },
        masked: minijinja::context! { app => a, ..ctx.masked.clone() },
        inline,
        files_with_secrets,
        fixed_files,
        shared: Shared::of(&app.spec),
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
    // Unmasked, every value is shown as it is (none is sensitive): nothing to digest.
    let sensitive = if mask { sensitive_fields(ctx, command.as_deref(), &env, &files) } else { BTreeMap::new() };
    let shared = &at.shared;
    Ok(InstanceSpec {
        image: s.image.clone(),
        command,
        env,
        network: s.network,
        port: slot.port,
        container_port: shared.container_port,
        init: s.init,
        nano_cpus: shared.nano_cpus,
        memory: shared.memory,
        volumes: s.volumes.clone(),
        files,
        health: s.health.clone(),
        stop_timeout_secs: shared.stop_timeout_secs,
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        labels: s.labels.clone(),
        sensitive,
    })
}

/// The spec-hash of `app`'s instance at `slot`: what `render(.., mask: false)?.hash()`
/// gives, without building the spec. Values are borrowed from the app (or its templates'
/// per-app outputs) into one small map per field, and serialised into `buf` (reused
/// across calls). `hash_matches_render` (tests) holds the two together.
///
/// # Errors
/// As [`render`].
pub fn hash_at(
    app: &App,
    slot: &Slot<'_>,
    at: &AppTemplates,
    t: &Templates,
    env_name: &str,
    buf: &mut Vec<u8>,
) -> Result<String, TemplateError> {
    let s = &app.spec;
    let r = Renderer::new(s, slot, at, t, false);
    let mut env: BTreeMap<&str, Cow<'_, str>> = BTreeMap::new();
    for (k, v) in &s.env {
        let text = match v {
            Value::String(text) => r.real(text)?,
            other => Cow::Owned(other.to_string()),
        };
        env.insert(k, text);
    }
    for (k, v) in extra_env(s, slot, env_name) {
        env.insert(k, Cow::Owned(v));
    }
    let command = match &s.command {
        Some(c) => Some(c.iter().map(|a| r.real(a)).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    let mut files = BTreeMap::new();
    for f in &s.files {
        files.insert(f.path.as_str(), r.file(&f.template, false)?);
    }
    let shared = &at.shared;
    let c = Canonical {
        image: &s.image,
        command: command.as_ref().map(|c| c.iter().map(AsRef::as_ref).collect()),
        env: &env,
        network: s.network,
        port: slot.port,
        container_port: shared.container_port,
        init: s.init,
        nano_cpus: shared.nano_cpus,
        memory: shared.memory,
        volumes: &s.volumes,
        files: &files,
        health: &s.health,
        stop_timeout_secs: shared.stop_timeout_secs,
        user: s.user.as_deref(),
        working_dir: s.working_dir.as_deref(),
        labels: &s.labels,
        sensitive: BTreeMap::new(),
    };
    buf.clear();
    // Serialising plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &c);
    Ok(hex(&Sha256::digest(&buf)))
}

/// `PORT` and the `RECONCILE_*` variables, set over the app's own env (in this order).
fn extra_env(s: &AppSpec, slot: &Slot<'_>, env_name: &str) -> Vec<(&'static str, String)> {
    let mut extra = Vec::with_capacity(4);
    if let Some(p) = slot.port.filter(|_| s.network == Network::Host) {
        extra.push(("PORT", p.to_string()));
    } else if let Some(p) = s.port {
        extra.push(("PORT", p.to_string()));
    }
    extra.push(("RECONCILE_ENV", env_name.to_string()));
    extra.push(("RECONCILE_APP", s.name.clone()));
    extra.push(("RECONCILE_INSTANCE", format!("{}-{}", s.name, slot.ordinal)));
    extra
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

    /// One template's output with the real or the masked context: the app's, when it
    /// cannot see the instance (`fixed`).
    fn output(&self, name: &str, fixed: Option<&'a Fixed>, masked: bool) -> Result<Cow<'a, str>, TemplateError> {
        let ctx = if masked { &self.masked } else { &self.real };
        match fixed {
            Some(f) => f.get(masked, || self.t.render_value(name, ctx)).map(Cow::Borrowed),
            None => self.t.render_value(name, ctx).map(Cow::Owned),
        }
    }

    /// The real text of an env value or command argument (a template when `prepare`
    /// compiled it).
    fn real(&self, src: &'a str) -> Result<Cow<'a, str>, TemplateError> {
        let at: &'a AppTemplates = self.at;
        match at.inline.get(src) {
            None => Ok(Cow::Borrowed(src)),
            Some(c) => self.output(&c.name, c.fixed.as_ref(), false),
        }
    }

    /// A file template's output.
    fn file(&self, template: &str, masked: bool) -> Result<Cow<'a, str>, TemplateError> {
        let at: &'a AppTemplates = self.at;
        self.output(template, at.fixed_files.get(template), masked)
    }

    /// An env value or command argument: a template when `prepare` compiled it.
    fn inline(&self, src: &str) -> Result<Rendered, TemplateError> {
        let at: &'a AppTemplates = self.at;
        let Some(c) = at.inline.get(src) else { return Ok(Rendered::plain(src)) };
        // A template that cannot see a secret renders the same masked: render once.
        if !c.secret || !self.mask {
            return Ok(Rendered::plain(self.output(&c.name, c.fixed.as_ref(), false)?));
        }
        Ok(Rendered {
            real: Secret::new(self.output(&c.name, c.fixed.as_ref(), false)?.into_owned()),
            shown: self.output(&c.name, c.fixed.as_ref(), true)?.into_owned(),
        })
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
        for (k, v) in extra_env(s, slot, env_name) {
            env.insert(k.to_string(), Rendered::plain(v));
        }
        Ok(env)
    }

    /// The rendered files, by container path.
    fn files(&self) -> Result<BTreeMap<String, Rendered>, TemplateError> {
        let mut files = BTreeMap::new();
        for f in &self.s.files {
            let content = if self.mask && self.at.files_with_secrets.contains(&f.template) {
                Rendered {
                    real: Secret::new(self.file(&f.template, false)?.into_owned()),
                    shown: self.file(&f.template, true)?.into_owned(),
                }
            } else {
                Rendered::plain(self.file(&f.template, false)?)
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

    /// `hash_at` (the planner's fast path) gives `render(.., false).hash()` for apps using
    /// every field: templates that see the instance and that do not, secrets, non-string
    /// env values, an app `PORT` overridden, command, files, bridge, resources, labels.
    #[test]
    fn hash_matches_render() {
        use crate::spec::{RepoSnapshot, load};
        use std::sync::Arc;
        let mut files = BTreeMap::new();
        let mut put = |p: &str, s: &str| {
            files.insert(p.to_string(), s.as_bytes().to_vec());
        };
        put(
            "environments/t/environment.yaml",
            "apiVersion: reconcile/v1\nkind: Environment\nname: t\nvars: {level: info}\nsecrets: {pw: {from_env: PW}}\nhosts:\n  - {name: h1, docker: 'unix:///a.sock', address: 127.0.0.1, ports: 20000-20999}\n",
        );
        put("environments/t/f.j2", "me={{ instance.name }} at {{ instance.address }}:{{ instance.port }}\n");
        put("environments/t/g.j2", "level={{ vars.level }} pw={{ secrets.pw }} app={{ app.name }}\n");
        put(
            "environments/t/apps/a.yaml",
            "apiVersion: reconcile/v1\nkind: App\nname: a\nimage: img/a:1\nreplicas: 3\nport: 8080\nenv: {PORT: '1', N: 3, B: true, L: '{{ vars.level }}', P: '{{ secrets.pw }}', I: '{{ instance.ordinal }}-{{ instance.host }}'}\ncommand: [run, '--pw={{ secrets.pw }}', '--me={{ instance.name }}']\nfiles: [{template: f.j2, path: /etc/f}, {template: g.j2, path: /etc/g}]\nuser: '1000'\nworking_dir: /srv\nlabels: {team: shop}\nresources: {cpus: '0.5', memory: 64m}\nstop_timeout: 30s\n",
        );
        put(
            "environments/t/apps/b.yaml",
            "apiVersion: reconcile/v1\nkind: App\nname: b\nimage: img/b:1\nreplicas: 2\nnetwork: bridge\nport: 80\nenv: {X: plain}\nfiles: [{template: g.j2, path: /etc/g}]\n",
        );
        put(
            "environments/t/apps/c.yaml",
            "apiVersion: reconcile/v1\nkind: App\nname: c\nimage: img/c:1\nreplicas: 1\n",
        );
        let snap = RepoSnapshot { files, origin: Default::default() };
        let loaded = load(&snap);
        assert!(loaded.diagnostics.iter().all(|d| !d.is_error()), "{:?}", loaded.diagnostics);
        let env = &loaded.envs["t"];
        let mut t = Templates::new(env.dirs.clone(), Arc::new(snap.files.clone()));
        let secrets: BTreeMap<String, Secret> = [("pw".to_string(), Secret::new("s3cret".into()))].into();
        let names: Vec<String> = env.spec.secrets.keys().cloned().collect();
        let ctx = contexts(&env.name, &env.spec.vars, &secrets, &names);
        let mut buf = Vec::new();
        let mut hashes = BTreeSet::new();
        for app in env.apps.values() {
            let at = prepare(app, &ctx, &mut t).unwrap();
            // Twice over: the second round reads the per-app outputs the first one stored.
            for (ordinal, port) in [(0, Some(20000)), (1, Some(20001)), (2, None), (0, Some(20000)), (1, Some(20001))] {
                let slot = Slot { ordinal, host: "h1", address: "127.0.0.1", port };
                let want = render(app, &slot, &at, &ctx, &t, "t", false).unwrap().hash();
                assert_eq!(hash_at(app, &slot, &at, &t, "t", &mut buf).unwrap(), want, "{} at {slot:?}", app.spec.name);
                // The masked render (what a create shows) hashes the same as well.
                assert_eq!(render(app, &slot, &at, &ctx, &t, "t", true).unwrap().hash(), want);
                hashes.insert(want);
            }
        }
        // Distinct instances hash apart (the test compares something that varies).
        assert_eq!(hashes.len(), 3 + 3 + 3, "{hashes:?}");
    }
}
