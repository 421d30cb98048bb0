//! Semantic checks of a loaded environment: what a schema cannot say.
//!
//! Hosts (duplicates, endpoints, addresses, port pools), apps (image references,
//! quantities, health checks, volumes, what needs etcd or an LB), dependencies
//! (unknown, cycles), placement (unknown hosts and labels, spread, pool sizes),
//! and templates (missing, escaping the chain, failing to render with a
//! representative context as in the contract's "Template context").
//!
//! Invariant: pure; secrets are never resolved here (templates see a placeholder).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::load::{Env, Merged};
use super::template::{PathProblem, TemplateError, Templates};
use super::types::{AppSpec, LbChoice, SecretSource, Strategy};
use super::units::{self, Invalid};
use super::yaml::escape;
use crate::diag::Diagnostic;
use crate::placement::{self, Assignment, Demand, HostSlot};

/// The value templates see in place of a secret when no value is resolved.
pub const SECRET_PLACEHOLDER: &str = "(sensitive)";

/// Check one loaded, non-abstract environment. `files` is the snapshot's file map
/// (templates are read from it); `display` turns repo paths into shown paths.
pub fn check(env: &Env, files: &Arc<BTreeMap<String, Vec<u8>>>, display: &dyn Fn(&str) -> String) -> Vec<Diagnostic> {
    let mut c = Checker { env, out: Vec::new(), display, files };
    let templates = Templates::new(env.dirs.clone(), Arc::clone(files));
    let hosts = c.hosts();
    c.load_balancers();
    c.notifications();
    c.apps(&hosts);
    c.secrets_and_etcd();
    c.registries();
    c.dependencies();
    let assignments = c.placement(&hosts);
    c.templates(&templates, &hosts, &assignments);
    c.out
}

struct Checker<'a> {
    env: &'a Env,
    out: Vec<Diagnostic>,
    display: &'a dyn Fn(&str) -> String,
    files: &'a BTreeMap<String, Vec<u8>>,
}

impl Checker<'_> {
    /// Notification targets: the secrets they name exist, durations parse.
    fn notifications(&mut self) {
        let env = self.env;
        for (i, n) in env.spec.notifications.iter().enumerate() {
            let p = format!("/notifications/{i}");
            let named = [("url", &n.url), ("signing_secret", &n.signing_secret), ("token", &n.token)];
            for (field, name) in named {
                let Some(name) = name else { continue };
                if !env.spec.secrets.contains_key(name) {
                    self.at(
                        &env.doc,
                        &format!("{p}/{field}"),
                        Diagnostic::error(
                            "unknown-secret",
                            format!("notification `{field}` names secret `{name}`, which `secrets` does not declare"),
                        )
                        .hint(format!("declare it, e.g. secrets: {{{name}: {{from_env: {}}}}}", name.to_uppercase())),
                    );
                }
            }
            for (field, value) in [("repeat", &n.repeat), ("timeout", &n.timeout)] {
                if let Some(Err(e)) = value.as_deref().map(units::duration) {
                    self.invalid(&env.doc, &format!("{p}/{field}"), e);
                }
            }
        }
    }

    fn at(&mut self, doc: &Merged, ptr: &str, d: Diagnostic) {
        let (file, pos) = doc.locate(ptr);
        self.out.push(d.at((self.display)(&file), pos));
    }

    fn invalid(&mut self, doc: &Merged, ptr: &str, e: Invalid) {
        self.at(doc, ptr, Diagnostic::error("value", e.message).hint(e.hint));
    }

    /// `user`, `working_dir` and `labels` of an app (the schema checked their types).
    fn container_fields(&mut self, d: &Merged, s: &AppSpec) {
        if let Some(u) = &s.user {
            let part_ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            let mut parts = u.splitn(2, ':');
            if !parts.all(part_ok) {
                let message = format!("invalid user {u:?}: expected a user name or uid, optionally :group or :gid");
                let hint = "e.g. user: \"1000\", user: \"1000:1000\" or user: app:app".into();
                self.invalid(d, "/user", Invalid { message, hint });
            }
        }
        if let Some(w) = s.working_dir.as_deref().filter(|w| !w.starts_with('/')) {
            let message = format!("invalid working_dir {w:?}: not an absolute path in the container");
            self.invalid(d, "/working_dir", Invalid { message, hint: "e.g. working_dir: /srv/app".into() });
        }
        for k in s.labels.keys() {
            let ptr = format!("/labels/{}", escape(k));
            if k.starts_with(crate::model::labels::PREFIX) {
                let message = format!(
                    "label `{k}` is reserved: reconcile sets the `{}` labels itself and identifies its containers by them",
                    crate::model::labels::PREFIX
                );
                let hint = "rename the label, e.g. with your organisation's prefix (com.example.team)";
                self.at(d, &ptr, Diagnostic::error("reserved-label", message).hint(hint));
            } else if k.trim().is_empty() || k.contains('=') {
                let message = format!("invalid label name {k:?}: empty or containing `=`");
                self.invalid(d, &ptr, Invalid { message, hint: "e.g. labels: {com.example.team: shop}".into() });
            }
        }
    }

    /// `update.auto_promote` and `update.traffic`: valid values, and only with strategy canary.
    fn canary_options(&mut self, d: &Merged, name: &str, u: &crate::spec::types::UpdateSpec) {
        let canary = u.strategy == Strategy::Canary;
        if let Some(v) = u.auto_promote.as_deref() {
            if let Err(e) = units::duration(v) {
                self.invalid(d, "/update/auto_promote", e);
            } else if !canary {
                self.at(
                    d,
                    "/update/auto_promote",
                    Diagnostic::error(
                        "update",
                        format!("app `{name}`: `auto_promote` applies only to strategy: canary"),
                    )
                    .hint("set strategy: canary, or remove auto_promote"),
                );
            }
        }
        if let Some(v) = u.traffic.as_deref() {
            if crate::spec::types::parse_percent(v).is_none() {
                self.at(
                    d,
                    "/update/traffic",
                    Diagnostic::error("update", format!("app `{name}`: traffic `{v}` is not a share from 1% to 99%"))
                        .hint("write the canaries' share of requests as a percentage, e.g. `traffic: 10%`"),
                );
            } else if !canary {
                self.at(
                    d,
                    "/update/traffic",
                    Diagnostic::error("update", format!("app `{name}`: `traffic` applies only to strategy: canary"))
                        .hint("set strategy: canary, or remove traffic"),
                );
            }
        }
    }

    /// Host checks; returns the hosts usable by placement.
    fn hosts(&mut self) -> Vec<HostSlot> {
        let env = self.env;
        let doc = &env.doc;
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut slots = Vec::new();
        for (i, h) in env.spec.hosts.iter().enumerate() {
            let p = format!("/hosts/{i}");
            if let Some(first) = seen.insert(&h.name, i) {
                self.at(
                    doc,
                    &format!("{p}/name"),
                    Diagnostic::error(
                        "duplicate-host",
                        format!("host `{}` is declared twice (also hosts[{first}])", h.name),
                    )
                    .hint("host names must be unique within an environment"),
                );
            }
            match units::docker_endpoint(&h.docker) {
                Ok(units::Endpoint::Tcp { .. }) if h.tls.is_none() => self.at(
                    doc,
                    &format!("{p}/docker"),
                    Diagnostic::warning(
                        "endpoint",
                        format!("host `{}` uses tcp without TLS: anyone on the network controls this daemon", h.name),
                    )
                    .hint("add tls: {ca, cert, key}, or use ssh://"),
                ),
                Ok(units::Endpoint::Tcp { .. }) | Err(_) => {}
                Ok(units::Endpoint::Ssh { port: Some(port), .. }) if port != 22 => self.at(
                    doc,
                    &format!("{p}/docker"),
                    Diagnostic::error(
                        "endpoint",
                        format!(
                            "host `{}`: ssh on port {port} is not supported in the endpoint (the Docker client \
                             library passes HOST:{port} to ssh as a host name)",
                            h.name
                        ),
                    )
                    .hint(format!(
                        "give the port in ~/.ssh/config (Host ALIAS / HostName … / Port {port}) and write ssh://[USER@]ALIAS"
                    )),
                ),
                Ok(_) if h.tls.is_some() => self.at(
                    doc,
                    &format!("{p}/tls"),
                    Diagnostic::error("endpoint", format!("host `{}` has tls files but a non-tcp endpoint", h.name))
                        .hint("tls applies to tcp:// endpoints only; remove it"),
                ),
                Ok(_) => {}
            }
            if let Err(e) = units::docker_endpoint(&h.docker) {
                self.invalid(doc, &format!("{p}/docker"), e);
            }
            if h.address.parse::<IpAddr>().is_err() {
                self.at(
                    doc,
                    &format!("{p}/address"),
                    Diagnostic::error(
                        "value",
                        format!("address {:?} of host `{}` is not an IP address", h.address, h.name),
                    )
                    .hint("write the IP at which the LB reaches the host, e.g. 10.0.0.11"),
                );
            }
            match units::port_range(&h.ports) {
                Ok(pool) => slots.push(HostSlot {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    labels: h.labels.clone(),
                    pool,
                }),
                Err(e) => self.invalid(doc, &format!("{p}/ports"), e),
            }
        }
        // Hosts with one address share one network namespace (host networking): their pools must not overlap.
        for (i, a) in slots.iter().enumerate() {
            for b in &slots[i + 1..] {
                if a.address == b.address && a.pool.overlaps(&b.pool) {
                    let j = env.spec.hosts.iter().position(|h| h.name == b.name).unwrap_or(0);
                    self.at(
                        doc,
                        &format!("/hosts/{j}/ports"),
                        Diagnostic::error(
                            "port-pool",
                            format!(
                                "port pools of hosts `{}` and `{}` overlap, and both have address {}",
                                a.name, b.name, a.address
                            ),
                        )
                        .hint("hosts on one address share its ports; give each a separate range"),
                    );
                }
            }
        }
        // Placement keeps going with unique names only.
        let mut names = BTreeSet::new();
        slots.retain(|s| names.insert(s.name.clone()));
        slots
    }

    fn apps(&mut self, hosts: &[HostSlot]) {
        let env = self.env;
        let mut routes: BTreeMap<(String, String, String), String> = BTreeMap::new();
        for (name, app) in &env.apps {
            let s = &app.spec;
            let d = &app.doc;
            match units::image(&s.image) {
                Ok(img) if img.tag.is_none() && img.digest.is_none() => self.at(
                    d,
                    "/image",
                    Diagnostic::warning(
                        "image",
                        format!(
                            "image {:?} has no tag, so Docker uses :latest and plans are not reproducible",
                            s.image
                        ),
                    )
                    .hint("pin a version, e.g. api:1.4.2"),
                ),
                Ok(img) if img.tag.as_deref() == Some("latest") => self.at(
                    d,
                    "/image",
                    Diagnostic::warning("image", format!("image {:?} uses the moving tag latest", s.image))
                        .hint("pin a version, e.g. api:1.4.2"),
                ),
                Ok(_) => {}
                Err(e) => self.invalid(d, "/image", e),
            }
            if let Some(t) = &s.stop_timeout
                && let Err(e) = units::duration(t)
            {
                self.invalid(d, "/stop_timeout", e);
            }
            self.container_fields(d, s);
            if let Some(r) = &s.resources {
                if let Some(c) = &r.cpus
                    && let Err(e) = units::cpus(c)
                {
                    self.invalid(d, "/resources/cpus", e);
                }
                if let Some(m) = &r.memory
                    && let Err(e) = units::memory(m)
                {
                    self.invalid(d, "/resources/memory", e);
                }
            }
            for (i, v) in s.volumes.iter().enumerate() {
                if let Err(e) = units::volume(v) {
                    self.invalid(d, &format!("/volumes/{i}"), e);
                }
            }
            if let Some(h) = &s.health {
                let kinds = [h.http.is_some(), h.tcp == Some(true), h.cmd.is_some()].iter().filter(|x| **x).count();
                if kinds != 1 {
                    self.at(d, "/health", Diagnostic::error("health", format!("health check of app `{name}` must have exactly one of http, tcp: true or cmd (found {kinds})")).hint("e.g. health: {http: /healthz}"));
                }
                if (h.http.is_some() || h.tcp == Some(true)) && s.port.is_none() {
                    self.at(
                        d,
                        "/health",
                        Diagnostic::error("health", format!("app `{name}` has an http/tcp health check but no `port`"))
                            .hint("add `port:` (the port the app listens on), or use a cmd check"),
                    );
                }
                for f in ["interval", "timeout", "start_period"] {
                    let v = match f {
                        "interval" => &h.interval,
                        "timeout" => &h.timeout,
                        _ => &h.start_period,
                    };
                    if let Some(v) = v
                        && let Err(e) = units::duration(v)
                    {
                        self.invalid(d, &format!("/health/{f}"), e);
                    }
                }
            }
            if let Some(lb) = &s.lb {
                if s.port.is_none() {
                    self.at(
                        d,
                        "/lb",
                        Diagnostic::error("lb", format!("app `{name}` is routed by the LB but has no `port`"))
                            .hint("add `port:` so the LB knows where instances listen"),
                    );
                }
                let chosen = match env.spec.lb_for(lb.via.as_deref()) {
                    Ok(chosen) => chosen.to_string(),
                    Err(why) => {
                        self.lb_choice(d, name, why);
                        String::new()
                    }
                };
                if let Some(other) = routes.insert((chosen, lb.host.clone(), lb.path.clone()), name.clone()) {
                    self.at(
                        d,
                        "/lb",
                        Diagnostic::error(
                            "lb",
                            format!("apps `{other}` and `{name}` both route {}{}", lb.host, lb.path),
                        )
                        .hint("give each app its own lb host or path"),
                    );
                }
            }
            if s.registry {
                if s.port.is_none() {
                    self.at(
                        d,
                        "/registry",
                        Diagnostic::error("registry", format!("app `{name}` registers in etcd but has no `port`"))
                            .hint("add `port:`; registry entries are <ip>:<port>"),
                    );
                }
                if env.spec.etcd.is_none() {
                    self.at(
                        d,
                        "/registry",
                        Diagnostic::error(
                            "registry",
                            format!(
                                "app `{name}` asks for registry entries, but environment `{}` has no `etcd`",
                                env.name
                            ),
                        )
                        .hint("add an etcd section to environment.yaml, or set registry: false"),
                    );
                }
            }
            if !s.config.is_empty() && env.spec.etcd.is_none() {
                self.at(
                    d,
                    "/config",
                    Diagnostic::error(
                        "config",
                        format!("app `{name}` publishes config, but environment `{}` has no `etcd`", env.name),
                    )
                    .hint("add an etcd section to environment.yaml, or remove `config`"),
                );
            }
            match (s.update.strategy, s.update.canary) {
                (Strategy::Canary, None) => self.at(
                    d,
                    "/update",
                    Diagnostic::error("update", format!("app `{name}` uses the canary strategy without `canary`"))
                        .hint("add `canary: N`, the number of instances that get the new version first"),
                ),
                (Strategy::Canary, Some(n)) if n > s.replicas => self.at(
                    d,
                    "/update/canary",
                    Diagnostic::error(
                        "update",
                        format!("canary of {n} is more than app `{name}`'s {} replicas", s.replicas),
                    )
                    .hint("use a canary count no larger than replicas"),
                ),
                (Strategy::Rolling | Strategy::Recreate, Some(_)) => self.at(
                    d,
                    "/update/canary",
                    Diagnostic::error("update", "`canary` applies only to strategy: canary")
                        .hint("set strategy: canary, or remove canary"),
                ),
                _ => {}
            }
            self.canary_options(d, name, &s.update);
            if s.update.strategy == Strategy::Canary && env.spec.etcd.is_none() {
                self.at(
                    d,
                    "/update/strategy",
                    Diagnostic::error(
                        "update",
                        format!(
                            "app `{name}` uses the canary strategy, but environment `{}` has no `etcd` (where a \
                             running canary is recorded)",
                            env.name
                        ),
                    )
                    .hint("add an etcd section to environment.yaml, or use strategy: rolling"),
                );
            }
            let mut paths = BTreeSet::new();
            for (i, f) in s.files.iter().enumerate() {
                if !paths.insert(f.path.as_str()) {
                    self.at(
                        d,
                        &format!("/files/{i}/path"),
                        Diagnostic::error("files", format!("app `{name}` renders two files to {}", f.path))
                            .hint("each file needs its own path"),
                    );
                }
            }
            // Placement: named hosts and labels must exist.
            if let Some(list) = &s.placement.hosts {
                for (i, h) in list.iter().enumerate() {
                    if !env.spec.hosts.iter().any(|x| &x.name == h) {
                        let known: Vec<String> = env.spec.hosts.iter().map(|x| x.name.clone()).collect();
                        let hint = match super::schema::closest(h, &known) {
                            Some(k) => format!("did you mean `{k}`? hosts of `{}`: {}", env.name, known.join(", ")),
                            None => format!("hosts of `{}`: {}", env.name, known.join(", ")),
                        };
                        self.at(
                            d,
                            &format!("/placement/hosts/{i}"),
                            Diagnostic::error("placement", format!("app `{name}` is placed on unknown host `{h}`"))
                                .hint(hint),
                        );
                    }
                }
            }
            for (k, v) in &s.placement.labels {
                if !hosts.iter().any(|h| h.labels.get(k) == Some(v)) {
                    let values: BTreeSet<&String> = hosts.iter().filter_map(|h| h.labels.get(k)).collect();
                    let hint = if values.is_empty() {
                        format!("no host of `{}` has a label `{k}`", env.name)
                    } else {
                        format!("hosts have {k}: {}", values.into_iter().cloned().collect::<Vec<_>>().join(", "))
                    };
                    self.at(
                        d,
                        &format!("/placement/labels/{}", escape(k)),
                        Diagnostic::error(
                            "placement",
                            format!("no host has label {k}={v}, which app `{name}` requires"),
                        )
                        .hint(hint),
                    );
                }
            }
        }
    }

    fn dependencies(&mut self) {
        let env = self.env;
        let known: BTreeSet<&String> = env.apps.keys().chain(env.broken_apps.iter()).collect();
        for (name, app) in &env.apps {
            for (i, dep) in app.spec.depends_on.iter().enumerate() {
                if dep == name {
                    self.at(
                        &app.doc,
                        &format!("/depends_on/{i}"),
                        Diagnostic::error("depends-on", format!("app `{name}` depends on itself"))
                            .hint("remove it from depends_on"),
                    );
                } else if !known.contains(dep) {
                    let names: Vec<String> = known.iter().map(|s| s.to_string()).collect();
                    let hint = match super::schema::closest(dep, &names) {
                        Some(k) => format!("did you mean `{k}`?"),
                        None => format!("apps of `{}`: {}", env.name, names.join(", ")),
                    };
                    self.at(
                        &app.doc,
                        &format!("/depends_on/{i}"),
                        Diagnostic::error("depends-on", format!("app `{name}` depends on unknown app `{dep}`"))
                            .hint(hint),
                    );
                }
            }
        }
        // Cycles: depth-first search, each cycle reported once at its smallest member.
        let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
        for start in env.apps.keys() {
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            while let Some((node, path)) = stack.pop() {
                let Some(app) = env.apps.get(&node) else { continue };
                for dep in &app.spec.depends_on {
                    if dep == start && path.len() > 1 {
                        let mut key = path.clone();
                        key.sort();
                        if reported.insert(key) {
                            let mut cyc = path.clone();
                            cyc.push(start.clone());
                            let i = env.apps[start].spec.depends_on.iter().position(|d| d == &path[1]).unwrap_or(0);
                            self.at(&env.apps[start].doc, &format!("/depends_on/{i}"), Diagnostic::error("depends-on", format!("dependency cycle: {}", cyc.join(" -> "))).hint("apps start after their dependencies, so a cycle can never start; remove one of these depends_on entries"));
                        }
                    } else if !path.contains(dep) && path.len() < 64 {
                        let mut p = path.clone();
                        p.push(dep.clone());
                        stack.push((dep.clone(), p));
                    }
                }
            }
        }
    }

    fn placement(&mut self, hosts: &[HostSlot]) -> Vec<Assignment> {
        let env = self.env;
        let demands: Vec<Demand> = env.apps.values().map(|a| demand(&a.spec)).collect();
        let (assignments, errors) = placement::place(&demands, hosts, &[]);
        for e in errors {
            let (app, ptr, hint) = match &e {
                placement::PlacementError::NoEligibleHost { app } => {
                    (app, "/placement", "loosen placement, or add a host that matches it".to_string())
                }
                placement::PlacementError::SpreadInfeasible { app, .. } => {
                    (app, "/replicas", "lower replicas, set spread: false, or allow more hosts".to_string())
                }
                placement::PlacementError::PoolsExhausted { app, .. } => {
                    (app, "/replicas", "widen the hosts' port pools (ports: START-END) or lower replicas".to_string())
                }
            };
            if let Some(a) = env.apps.get(app) {
                // Unknown hosts/labels are already reported precisely; don't add a vaguer error.
                if matches!(e, placement::PlacementError::NoEligibleHost { .. })
                    && self.out.iter().any(|d| d.code == "placement" && d.message.contains(&format!("`{app}`")))
                {
                    continue;
                }
                self.at(&a.doc, ptr, Diagnostic::error("placement", e.to_string()).hint(hint));
            }
        }
        assignments
    }

    fn templates(&mut self, t: &Templates, hosts: &[HostSlot], assignments: &[Assignment]) {
        let env = self.env;
        let base = base_context(env);
        // Indexed once (the first host of a name, the first assignment of an app, as a
        // search from the front finds them), not searched per app: 10,000 apps × 100,000
        // assignments otherwise.
        let mut address: BTreeMap<&str, &str> = BTreeMap::new();
        for h in hosts {
            address.entry(h.name.as_str()).or_insert(h.address.as_str());
        }
        let mut first: BTreeMap<&str, &Assignment> = BTreeMap::new();
        for a in assignments {
            first.entry(a.app.as_str()).or_insert(a);
        }
        let addr = |h: &str| address.get(h).map(|a| a.to_string()).unwrap_or_default();
        for (name, app) in &env.apps {
            let a = first.get(name.as_str());
            let instance = json!({
                "name": format!("{name}-0"),
                "ordinal": 0,
                "host": a.map(|x| x.host.clone()).unwrap_or_default(),
                "address": a.map(|x| addr(&x.host)).unwrap_or_default(),
                "port": a.and_then(|x| x.port).or(app.spec.port),
            });
            let mut ctx = base.clone();
            ctx["app"] = app.doc.value.clone();
            ctx["instance"] = instance;
            for (k, v) in &app.spec.env {
                if let Value::String(s) = v
                    && let Err(e) = t.render_str(s, &ctx)
                {
                    self.template_error(&app.doc, &format!("/env/{}", escape(k)), e);
                }
            }
            for (i, arg) in app.spec.command.iter().flatten().enumerate() {
                if let Err(e) = t.render_str(arg, &ctx) {
                    self.template_error(&app.doc, &format!("/command/{i}"), e);
                }
            }
            for (i, f) in app.spec.files.iter().enumerate() {
                let ptr = format!("/files/{i}/template");
                if self.template_path(&app.doc, &ptr, t, &f.template)
                    && let Err(e) = t.render_file(&f.template, &ctx)
                {
                    self.template_error(&app.doc, &ptr, e);
                }
            }
        }
        for (name, lb) in env.spec.load_balancers() {
            let ptr = format!("{}/template", lb_pointer(env, name));
            if self.template_path(&env.doc, &ptr, t, &lb.template) {
                let mut ctx = base.clone();
                ctx["apps"] = lb_apps_via(env, hosts, assignments, name);
                if let Err(e) = t.render_file(&lb.template, &ctx) {
                    self.template_error(&env.doc, &ptr, e);
                }
            }
        }
    }

    /// Check a template name; true when it resolves.
    fn template_path(&mut self, doc: &Merged, ptr: &str, t: &Templates, name: &str) -> bool {
        match t.resolve(name) {
            Ok(_) => true,
            Err(PathProblem::Escapes) => {
                self.at(doc, ptr, Diagnostic::error("template-path", format!("template path {name:?} escapes the environment's directory")).hint("template paths are relative to the environment directory and may not use `..` or start with `/`"));
                false
            }
            Err(PathProblem::NotFound) => {
                let dirs = self.env.dirs.join(", ");
                self.at(
                    doc,
                    ptr,
                    Diagnostic::error("template-path", format!("template {name:?} not found"))
                        .hint(format!("looked in {dirs}; paths are relative to the environment directory")),
                );
                false
            }
        }
    }

    fn template_error(&mut self, doc: &Merged, ptr: &str, e: TemplateError) {
        let d = Diagnostic::error("template", e.message).hint(e.hint);
        match (&e.file, e.line) {
            (Some(file), Some(line)) => {
                let text = self.files.get(file).map(|b| String::from_utf8_lossy(b)).unwrap_or_default();
                let pos = position_in(&text, line, e.range.clone());
                self.out.push(d.at((self.display)(file), Some(pos)));
            }
            _ => self.at(doc, ptr, d),
        }
    }
}

/// Placement demand of an app.
pub fn demand(s: &AppSpec) -> Demand {
    Demand {
        app: s.name.clone(),
        replicas: s.replicas,
        labels: s.placement.labels.clone(),
        hosts: s.placement.hosts.clone(),
        spread: s.placement.spread,
        needs_port: s.port.is_some(),
    }
}

// -- etcdsec: secrets (from_age, from_command, in app env) and etcd TLS/auth --
impl Checker<'_> {
    fn secrets_and_etcd(&mut self) {
        let env = self.env;
        for (name, source) in &env.spec.secrets {
            let ptr = format!("/secrets/{}", escape(name));
            match source {
                SecretSource::FromAge(rel) => self.age_secret(name, &ptr, rel),
                SecretSource::FromCommand(argv) if argv.first().is_none_or(|p| p.trim().is_empty()) => self.at(
                    &env.doc,
                    &format!("{ptr}/from_command"),
                    Diagnostic::error("secret", format!("secret `{name}`: from_command has no program"))
                        .hint("write the program and its arguments, e.g. [vault, kv, get, -field=password, secret/db]"),
                ),
                _ => {}
            }
        }
        if let Some(age) = &env.spec.age {
            for (i, r) in age.recipients.iter().enumerate() {
                if let Err(e) = crate::secret::parse_recipient(r) {
                    self.at(
                        &env.doc,
                        &format!("/age/recipients/{i}"),
                        Diagnostic::error("age", e).hint("copy the recipient that `age-keygen -y KEYFILE` prints"),
                    );
                }
            }
        }
        self.etcd_auth();
        self.secrets_in_env();
    }

    fn age_secret(&mut self, name: &str, ptr: &str, rel: &str) {
        let env = self.env;
        let at = format!("{ptr}/from_age");
        let clean = rel.trim_start_matches("./");
        if clean.starts_with('/') || clean.split('/').any(|c| c == "..") {
            return self.at(
                &env.doc,
                &at,
                Diagnostic::error(
                    "secret",
                    format!("secret `{name}`: from_age {rel} leaves the environment directory"),
                )
                .hint("write a path relative to the environment directory without `..`, e.g. secrets/db.age"),
            );
        }
        match env.secret_refs.get(name).and_then(|r| r.age_file.as_ref()) {
            None => self.at(
                &env.doc,
                &at,
                Diagnostic::error(
                    "secret",
                    format!("secret `{name}`: age file {clean} is in none of {}", env.dirs.join(", ")),
                )
                .hint(format!("create it with `reconcile secret set --env {} {name}` and commit it", env.name)),
            ),
            Some(f) => {
                if let Err(e) = crate::secret::check_age_header(&f.bytes) {
                    self.at(
                        &env.doc,
                        &at,
                        Diagnostic::error("secret", format!("secret `{name}`: {}: {e}", (self.display)(&f.path)))
                            .hint("write it with `age -r RECIPIENT` or `reconcile secret set`"),
                    );
                }
            }
        }
    }

    fn etcd_auth(&mut self) {
        let env = self.env;
        let Some(etcd) = &env.spec.etcd else { return };
        let doc = &env.doc;
        match (&etcd.username, &etcd.password) {
            (Some(_), None) => self.at(
                doc,
                "/etcd/username",
                Diagnostic::error("etcd", "etcd.username is set without etcd.password")
                    .hint("add `password: NAME`, the name of an entry in `secrets` holding the user's password"),
            ),
            (None, Some(_)) => self.at(
                doc,
                "/etcd/password",
                Diagnostic::error("etcd", "etcd.password is set without etcd.username")
                    .hint("add `username: USER`, the etcd user the password belongs to"),
            ),
            _ => {}
        }
        if let Some(p) = &etcd.password
            && !env.spec.secrets.contains_key(p)
        {
            let known: Vec<&str> = env.spec.secrets.keys().map(String::as_str).collect();
            self.at(
                doc,
                "/etcd/password",
                Diagnostic::error("etcd", format!("etcd.password names `{p}`, which is not an entry in `secrets`"))
                    .hint(if known.is_empty() {
                        format!("add `secrets: {{{p}: {{from_env: ETCD_PASSWORD}}}}` (or from_age, from_command)")
                    } else {
                        format!("the secrets are: {}; or add `{p}` to `secrets`", known.join(", "))
                    }),
            );
        }
        let https = etcd.endpoints.iter().filter(|e| e.starts_with("https://")).count();
        match &etcd.tls {
            Some(tls) => {
                if tls.cert.is_some() != tls.key.is_some() {
                    let (have, missing) = if tls.cert.is_some() { ("cert", "key") } else { ("key", "cert") };
                    self.at(
                        doc,
                        &format!("/etcd/tls/{have}"),
                        Diagnostic::error("etcd", format!("etcd.tls has {have} without {missing}"))
                            .hint("client-certificate auth needs both cert and key; give both or neither"),
                    );
                }
                if https < etcd.endpoints.len() {
                    self.at(
                        doc,
                        "/etcd/endpoints",
                        Diagnostic::error("etcd", "etcd.tls is set but some endpoints are http://")
                            .hint("TLS needs https:// endpoints; write https://HOST:PORT for every endpoint"),
                    );
                }
            }
            None if https > 0 => self.at(
                doc,
                "/etcd/endpoints",
                Diagnostic::error("etcd", "https:// etcd endpoints need etcd.tls")
                    .hint("add `tls: {ca: /path/to/etcd-ca.pem}` (and cert + key for client-certificate auth)"),
            ),
            None => {}
        }
    }

    /// A secret in an app's `env` is visible to anyone who can `docker inspect` the container.
    fn secrets_in_env(&mut self) {
        let env = self.env;
        let names: Vec<&String> = env.spec.secrets.keys().collect();
        for app in env.apps.values() {
            for (key, value) in &app.spec.env {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let used: Vec<&str> = names.iter().filter(|n| mentions_secret(&text, n)).map(|n| n.as_str()).collect();
                if used.is_empty() {
                    continue;
                }
                self.at(
                    &app.doc,
                    &format!("/env/{}", escape(key)),
                    Diagnostic::warning(
                        "secret-in-env",
                        format!(
                            "app `{}`: env {key} carries secret {}: anyone who can `docker inspect` the container reads it",
                            app.spec.name,
                            used.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                        ),
                    )
                    .hint("deliver it in a file instead (`files:` with a template using the secret; files are uploaded through the API and are not in docker inspect), and point the app at the file"),
                );
            }
        }
    }
}

/// Whether template text refers to `secrets.NAME` / `secrets['NAME']` / `secrets["NAME"]`.
fn mentions_secret(text: &str, name: &str) -> bool {
    let dotted = format!("secrets.{name}");
    let by_dot = text
        .match_indices(&dotted)
        .any(|(i, m)| text[i + m.len()..].chars().next().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_')));
    by_dot || text.contains(&format!("secrets['{name}']")) || text.contains(&format!("secrets[\"{name}\"]"))
}

/// `env`, `vars`, and `secrets` (placeholders) for template rendering.
pub fn base_context(env: &Env) -> Value {
    let secrets: serde_json::Map<String, Value> =
        env.spec.secrets.keys().map(|k| (k.clone(), Value::from(SECRET_PLACEHOLDER))).collect();
    json!({
        "env": {"name": env.name},
        "vars": env.spec.vars,
        "secrets": secrets,
    })
}

/// The LB template's `apps`: apps with `lb`, sorted by name, with their instances.
pub fn lb_apps(env: &Env, hosts: &[HostSlot], assignments: &[Assignment]) -> Value {
    // Looked up only (the output follows `env.apps`' order), so hashed; and only the apps
    // behind an LB collect their instances (a fleet has many more that are not).
    let address: HashMap<&str, &str> = hosts.iter().map(|h| (h.name.as_str(), h.address.as_str())).collect();
    let mut by_app: HashMap<&str, Vec<&Assignment>> =
        env.apps.values().filter(|a| a.spec.lb.is_some()).map(|a| (a.spec.name.as_str(), Vec::new())).collect();
    for a in assignments {
        if let Some(list) = by_app.get_mut(a.app.as_str()) {
            list.push(a);
        }
    }
    let apps: Vec<Value> = env
        .apps
        .values()
        .filter_map(|a| {
            let lb = a.spec.lb.as_ref()?;
            let instances: Vec<Value> = by_app
                .get(a.spec.name.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|x| {
                    let address = address.get(x.host.as_str()).copied().unwrap_or_default();
                    json!({"name": format!("{}-{}", x.app, x.ordinal), "host": x.host, "address": address, "port": x.port, "canary": false, "weight": 1})
                })
                .collect();
            Some(json!({
                "name": a.spec.name,
                "lb": {"host": lb.host, "path": lb.path},
                "maintenance": lb.maintenance,
                "instances": instances,
            }))
        })
        .collect();
    Value::Array(apps)
}

/// Where LB `name` is written: `/lb` (the single `lb:`) or `/lbs/<name>`.
fn lb_pointer(env: &Env, name: &str) -> String {
    if env.spec.lb.is_some() && env.spec.lbs.is_empty() { "/lb".into() } else { format!("/lbs/{}", escape(name)) }
}

// --- several named LBs, LBs in containers (issue 10) ----------------------------------

impl Checker<'_> {
    /// `lb` xor `lbs`; per LB: `path` xor `container`, its drain, and for an LB in
    /// containers an app of this environment rolled out `recreate`, one at a time, and a
    /// check that names `{file}` (the candidate is checked at a side path in every instance).
    fn load_balancers(&mut self) {
        let env = self.env;
        if env.spec.lb.is_some() && !env.spec.lbs.is_empty() {
            self.at(
                &env.doc,
                "/lbs",
                Diagnostic::error("lb", "both `lb` and `lbs` are given").hint(
                    "`lb:` means `lbs: {default: …}`: move it into `lbs` under the name `default`, or use only `lb`",
                ),
            );
        }
        for (name, lb) in env.spec.load_balancers() {
            let ptr = lb_pointer(env, name);
            if let Some(Err(e)) = lb.drain.as_deref().map(units::duration) {
                self.invalid(&env.doc, &format!("{ptr}/drain"), e);
            }
            if lb.target().is_none() {
                self.at(
                    &env.doc,
                    &ptr,
                    Diagnostic::error("lb", format!("lb `{name}` needs exactly one of `path` and `container`"))
                        .hint("`path:` for a config file on the machine that runs reconcile, `container: {app, path}` for an LB inside managed containers"),
                );
            }
            let Some(c) = &lb.container else { continue };
            let cptr = format!("{ptr}/container/app");
            match env.apps.get(&c.app) {
                None => {
                    let apps: Vec<&str> = env.apps.keys().map(String::as_str).collect();
                    self.at(
                        &env.doc,
                        &cptr,
                        Diagnostic::error(
                            "lb",
                            format!(
                                "lb `{name}` runs in app `{}`, which environment `{}` does not have",
                                c.app, env.name
                            ),
                        )
                        .hint(format!(
                            "add apps/{}.yaml, or name one of: {}",
                            c.app,
                            apps.join(", ")
                        )),
                    );
                }
                Some(app) if app.spec.update.strategy != Strategy::Recreate || app.spec.update.batch != 1 => {
                    self.at(
                        &app.doc,
                        "/update",
                        Diagnostic::error("lb", format!("app `{}` runs lb `{name}`, so it must be rolled out one instance at a time", c.app))
                            .hint("set `update: {strategy: recreate, batch: 1}`: the LB instances use the same address and port, and the pair must never go down together"),
                    );
                }
                Some(_) => {}
            }
            if lb.check.as_ref().is_some_and(|argv| !argv.iter().any(|a| a.contains("{file}"))) {
                self.at(
                    &env.doc,
                    &format!("{ptr}/check"),
                    Diagnostic::error("lb", format!("the check of lb `{name}` (in containers) must name the candidate as `{{file}}`"))
                        .hint("the candidate is checked at a side path in every instance before any is replaced, e.g. [haproxy, -c, -f, \"{file}\"] or [nginx, -t, -c, \"{file}\"]"),
                );
            }
        }
    }

    /// Why app `name`'s LB cannot be chosen, at its `lb`.
    fn lb_choice(&mut self, d: &Merged, name: &str, why: LbChoice) {
        let env = self.env;
        let (ptr, diag) = match why {
            LbChoice::NoLb => (
                "/lb",
                Diagnostic::error("lb", format!("app `{name}` asks for the LB, but environment `{}` has no `lb`", env.name))
                    .hint("add an lb section to environment.yaml, or remove `lb` from the app"),
            ),
            LbChoice::Unknown { via, choices } => (
                "/lb/via",
                Diagnostic::error("lb", format!("app `{name}` is routed via `{via}`, but environment `{}` has no LB `{via}`", env.name))
                    .hint(format!("name one of its LBs: {}", choices.join(", "))),
            ),
            LbChoice::Ambiguous { choices } => (
                "/lb",
                Diagnostic::error("lb", format!("app `{name}` does not say which LB routes it, and environment `{}` has several, none named `default`", env.name))
                    .hint(format!("add `via:` to the app's lb with one of: {}", choices.join(", "))),
            ),
        };
        self.at(d, ptr, diag);
    }
}

/// [`lb_apps`] of the apps routed through LB `lb` only (`EnvironmentSpec::lb_for` of
/// each app's `lb.via`): each LB's template sees its own apps.
pub fn lb_apps_via(env: &Env, hosts: &[HostSlot], assignments: &[Assignment], lb: &str) -> Value {
    let routed = |name: &str| {
        env.apps
            .get(name)
            .and_then(|a| a.spec.lb.as_ref())
            .is_some_and(|l| env.spec.lb_for(l.via.as_deref()).is_ok_and(|chosen| chosen == lb))
    };
    match lb_apps(env, hosts, assignments) {
        Value::Array(apps) => Value::Array(
            apps.into_iter().filter(|a| a.get("name").and_then(Value::as_str).is_some_and(routed)).collect(),
        ),
        other => other,
    }
}

/// A position in a template from minijinja's 1-based line and byte range.
fn position_in(text: &str, line: usize, range: Option<std::ops::Range<usize>>) -> super::yaml::Pos {
    let line_start = if line <= 1 { 0 } else { text.match_indices('\n').nth(line - 2).map_or(0, |(i, _)| i + 1) };
    let (offset, len) = match range {
        Some(r) if r.start <= text.len() => (r.start, r.end.min(text.len()).saturating_sub(r.start)),
        _ => (line_start.min(text.len()), 0),
    };
    let col = text.get(line_start..offset).map_or(1, |s| s.chars().count() + 1);
    super::yaml::Pos { line, col, offset, len }
}

#[cfg(test)]
mod etcdsec_tests {
    #[test]
    fn secret_mentions_need_the_whole_name() {
        assert!(super::mentions_secret("{{ secrets.db }}", "db"));
        assert!(super::mentions_secret("x{{secrets['db']}}", "db"));
        assert!(super::mentions_secret("{{ secrets[\"db\"] | trim }}", "db"));
        assert!(!super::mentions_secret("{{ secrets.db_password }}", "db"));
        assert!(!super::mentions_secret("{{ vars.db }}", "db"));
    }
}

// --- private registries (issue 9, item 1) ---------------------------------------

/// `HOST` or `HOST:PORT` as in image references (`registry.example:5000`, `localhost`,
/// `127.0.0.1:5000`, `docker.io`): DNS labels of letters, digits and `-`, a port 1-65535.
pub fn registry_host(s: &str) -> Result<(), Invalid> {
    let bad = |why: &str| Invalid {
        message: format!("invalid registry host {s:?}: {why}"),
        hint: "write the registry as it appears in image references: HOST or HOST:PORT, e.g. registry.example:5000 \
               (no scheme, no path)"
            .into(),
    };
    if s.contains("://") {
        return Err(bad("a scheme is not part of it"));
    }
    if s.contains('/') {
        return Err(bad("a path is not part of it"));
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(bad("the host name is not valid"));
    }
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    Ok(())
}

impl Checker<'_> {
    /// `registries`: host syntax, one entry per host, `password` names a secret.
    fn registries(&mut self) {
        let env = self.env;
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, r) in env.spec.registries.iter().enumerate() {
            let p = format!("/registries/{i}");
            if let Err(e) = registry_host(&r.host) {
                self.invalid(&env.doc, &format!("{p}/host"), e);
            } else if let Some(first) = seen.insert(&r.host, i) {
                self.at(
                    &env.doc,
                    &format!("{p}/host"),
                    Diagnostic::error(
                        "duplicate-registry",
                        format!("registry `{}` has credentials twice (also registries[{first}])", r.host),
                    )
                    .hint("keep one entry per registry host"),
                );
            }
            if !env.spec.secrets.contains_key(&r.password) {
                let known: Vec<&str> = env.spec.secrets.keys().map(String::as_str).collect();
                let hint = if known.is_empty() {
                    format!("declare it: secrets: {{{}: {{from_env: VARIABLE}}}}", r.password)
                } else {
                    format!(
                        "`password` names an entry of `secrets` (known: {}); declare `{}` there, e.g. \
                         {{from_env: VARIABLE}}",
                        known.join(", "),
                        r.password
                    )
                };
                self.at(
                    &env.doc,
                    &format!("{p}/password"),
                    Diagnostic::error(
                        "unknown-secret",
                        format!("registry `{}`: password names unknown secret `{}`", r.host, r.password),
                    )
                    .hint(hint),
                );
            }
        }
    }
}

#[cfg(test)]
mod registry_tests {
    use super::registry_host;

    #[test]
    fn registry_hosts() {
        for ok in ["registry.example", "registry.example:5000", "localhost", "127.0.0.1:25000", "docker.io", "a-b.c"] {
            assert!(registry_host(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("https://registry.example", "scheme"),
            ("registry.example/team", "path"),
            ("registry.example:0", "port"),
            ("registry.example:99999", "port"),
            ("registry.example:", "port"),
            ("-x.example", "host name"),
            ("reg..example", "host name"),
            ("reg_istry", "host name"),
            ("", "host name"),
        ] {
            let e = registry_host(bad).unwrap_err();
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }
}

#[cfg(test)]
mod container_field_tests {
    use crate::spec::snapshot::RepoSnapshot;

    /// The errors of an environment whose one app has `extra` fields.
    fn errors(extra: &str) -> Vec<String> {
        let mut snap = RepoSnapshot::default();
        snap.files.insert(
            "environments/t/environment.yaml".into(),
            b"apiVersion: reconcile/v1\nkind: Environment\nname: t\nhosts:\n  - {name: h1, docker: 'unix:///a.sock', address: 127.0.0.1, ports: 20000-20999}\n".to_vec(),
        );
        snap.files.insert(
            "environments/t/apps/a.yaml".into(),
            format!("apiVersion: reconcile/v1\nkind: App\nname: a\nimage: img:1\n{extra}").into_bytes(),
        );
        let (_, diags) = crate::spec::validate(&snap, None).unwrap();
        diags.iter().filter(|d| d.is_error()).map(|d| format!("{}: {}", d.location(), d.message)).collect()
    }

    #[test]
    fn user_working_dir_and_labels_are_checked_at_their_line() {
        assert_eq!(errors("user: '1000:1000'\nworking_dir: /srv\nlabels: {com.example.team: shop}\n"), [] as [&str; 0]);
        assert_eq!(errors("user: app:app\n"), [] as [&str; 0]);
        let bad = errors("user: 'a b'\nworking_dir: srv\nlabels: {reconcile.env: x, ok: y}\n");
        assert_eq!(bad.len(), 3, "{bad:#?}");
        assert!(
            bad[0].starts_with("environments/t/apps/a.yaml:5:") && bad[0].contains("invalid user \"a b\""),
            "{bad:#?}"
        );
        assert!(
            bad[1].starts_with("environments/t/apps/a.yaml:6:") && bad[1].contains("not an absolute path"),
            "{bad:#?}"
        );
        assert!(
            bad[2].starts_with("environments/t/apps/a.yaml:7:") && bad[2].contains("`reconcile.env` is reserved"),
            "{bad:#?}"
        );
    }
}

#[cfg(test)]
mod lbs_tests {
    use std::collections::BTreeMap;

    use crate::spec::{RepoSnapshot, validate};

    const HOSTS: &str = "apiVersion: reconcile/v1\nkind: Environment\nname: t\n\
        hosts: [{name: h1, docker: 'unix:///a.sock', address: 127.0.0.1, ports: 20000-20999}]\n";
    const EDGE: &str = "{template: lb.j2, path: /tmp/edge.conf, reload: ['true']}";

    /// The error messages (with line) of validating `env` (appended to the hosts) and apps.
    fn errors(env: &str, apps: &[(&str, &str)]) -> Vec<String> {
        let mut files = BTreeMap::new();
        files.insert("environments/t/environment.yaml".to_string(), format!("{HOSTS}{env}").into_bytes());
        files.insert("environments/t/lb.j2".to_string(), b"{% for a in apps %}{{ a.name }}\n{% endfor %}".to_vec());
        for (name, extra) in apps {
            let doc =
                format!("apiVersion: reconcile/v1\nkind: App\nname: {name}\nimage: img/{name}:1\nport: 8080\n{extra}");
            files.insert(format!("environments/t/apps/{name}.yaml"), doc.into_bytes());
        }
        let (_, diags) = validate(&RepoSnapshot { files, origin: Default::default() }, Some("t")).unwrap();
        diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{}:{}: {}", d.file.as_deref().unwrap_or(""), d.line.unwrap_or(0), d.message))
            .collect()
    }

    #[test]
    fn named_lbs_with_via_validate() {
        let env = format!("lbs:\n  edge: {EDGE}\n  internal: {EDGE}\n");
        let e = errors(&env, &[("web", "lb: {via: edge, host: a}\n"), ("api", "lb: {via: internal, host: a}\n")]);
        assert_eq!(e, Vec::<String>::new(), "the same host and path on two LBs is fine");
    }

    #[test]
    fn lb_and_lbs_together_are_an_error() {
        let e = errors(&format!("lb: {EDGE}\nlbs:\n  edge: {EDGE}\n"), &[]);
        assert!(e.iter().any(|m| m.contains("environment.yaml:7: both `lb` and `lbs` are given")), "{e:?}");
    }

    #[test]
    fn an_app_without_via_among_several_lbs_names_the_choices() {
        let env = format!("lbs:\n  edge: {EDGE}\n  internal: {EDGE}\n");
        let e = errors(&env, &[("web", "lb: {host: a}\n"), ("api", "lb: {via: nope, host: b}\n")]);
        assert!(e.iter().any(|m| m.contains("web.yaml:6: app `web` does not say which LB routes it")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("api.yaml:6: app `api` is routed via `nope`")), "{e:?}");
    }

    #[test]
    fn a_container_lb_needs_its_app_rolled_one_at_a_time_and_a_file_check() {
        let env = "lbs:\n  internal: {template: lb.j2, container: {app: ilb, path: /etc/h.cfg}, check: [haproxy, -c], reload: ['true']}\n  \
                   other: {template: lb.j2, container: {app: ghost, path: /etc/h.cfg}, reload: ['true']}\n  \
                   both: {template: lb.j2, path: /x, container: {app: ilb, path: /etc/h.cfg}, reload: ['true']}\n";
        let e = errors(env, &[("ilb", "")]);
        assert!(
            e.iter().any(|m| m.contains("ilb.yaml") && m.contains("must be rolled out one instance at a time")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("environment.yaml:6: the check of lb `internal`")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("environment.yaml:7: lb `other` runs in app `ghost`")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("environment.yaml:8: lb `both` needs exactly one of")), "{e:?}");
        let ok = errors(
            "lbs:\n  internal: {template: lb.j2, container: {app: ilb, path: /etc/h.cfg}, check: [haproxy, -c, -f, '{file}'], reload: ['true']}\n",
            &[("ilb", "update: {strategy: recreate}\n")],
        );
        assert_eq!(ok, Vec::<String>::new());
    }
}
