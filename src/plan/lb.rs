//! Phase 6: each LB's config rendered over the serving instances of the apps it routes,
//! written (and reloaded) only when it differs from what was observed — or reloaded
//! alone when an earlier apply left that LB's reload pending.
//!
//! An environment has LBs by name (`EnvironmentSpec::load_balancers`: `lbs`, or `lb` as
//! `default`); an app is routed by one of them (`EnvironmentSpec::lb_for`). Actions carry
//! the LB's name; `default` is left out of the JSON plan, so an environment with one
//! `lb:` plans exactly as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::context::host_slots;
use super::instance::contexts;
use super::{Action, PlanError};
use crate::placement::Assignment;
use crate::spec::check::lb_apps_via;
use crate::spec::load::Env;
use crate::spec::template::Templates;
use crate::spec::types::DEFAULT_LB;

/// `serde(default)` of an action's LB name.
pub fn default_lb() -> String {
    DEFAULT_LB.to_string()
}

/// `serde(skip_serializing_if)` of an action's LB name: `default` is not written.
pub fn is_default_lb(name: &str) -> bool {
    name == DEFAULT_LB
}

/// Render LB `lb`'s config for an arbitrary set of serving instances (apply renders
/// intermediate configs during a rolling replace: new instance added, old removed).
/// Only the apps routed through `lb` reach its template.
///
/// # Errors
/// The LB template fails, or the environment has no LB named `lb`.
pub fn lb_content(
    env: &Env,
    files: Arc<BTreeMap<String, Vec<u8>>>,
    lb: &str,
    serving: &[Assignment],
) -> Result<String, PlanError> {
    lb_content_with(env, files, lb, serving, &std::collections::BTreeSet::new())
}

/// [`lb_content`], where the instances in `canaries` are canaries: the template's
/// `instance.canary` and `instance.weight` (`plan::canary::weigh`).
///
/// # Errors
/// As [`lb_content`].
pub fn lb_content_with(
    env: &Env,
    files: Arc<BTreeMap<String, Vec<u8>>>,
    lb: &str,
    serving: &[Assignment],
    canaries: &std::collections::BTreeSet<Assignment>,
) -> Result<String, PlanError> {
    let lbs = env.spec.load_balancers();
    let Some(spec) = lbs.get(lb) else {
        return Err(PlanError::LbTemplate { lb: lb.to_string(), message: "the environment has no such lb".into() });
    };
    let t = Templates::new(env.dirs.clone(), files);
    let names: Vec<String> = env.spec.secrets.keys().cloned().collect();
    let ctx = contexts(&env.name, &env.spec.vars, &BTreeMap::new(), &names);
    let slots = host_slots(env)?;
    let mut apps = lb_apps_via(env, &slots, serving, lb);
    super::canary::weigh(&mut apps, env, canaries);
    let apps = minijinja::Value::from(minijinja::value::Serde(apps));
    let c = minijinja::context! { apps => apps, ..ctx.masked };
    t.render_value(&spec.template, &c).map_err(|e| PlanError::LbTemplate { lb: lb.to_string(), message: e.message })
}

/// The actions of LB `lb` (its target described by `path`) for `content`, given what
/// was observed (`None`: no file, or container instances that do not agree) and whether
/// an earlier apply left its reload pending.
pub fn lb_actions(
    lb: &str,
    path: &str,
    content: String,
    current: Option<&String>,
    reload_pending: bool,
) -> Vec<Action> {
    let lb = lb.to_string();
    if current != Some(&content) {
        vec![
            Action::WriteLb { lb: lb.clone(), path: path.to_string(), content, old: current.cloned() },
            Action::ReloadLb { lb },
        ]
    } else if reload_pending {
        // An earlier apply wrote this config but did not see the LB reload it.
        vec![Action::ReloadLb { lb }]
    } else {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lb: &str, content: &str, old: Option<&str>) -> Action {
        Action::WriteLb { lb: lb.into(), path: "/lb.conf".into(), content: content.into(), old: old.map(Into::into) }
    }
    fn reload(lb: &str) -> Action {
        Action::ReloadLb { lb: lb.into() }
    }

    #[test]
    fn the_lb_is_written_and_reloaded_only_when_its_content_differs() {
        let same = "upstream a {}".to_string();
        assert_eq!(lb_actions("default", "/lb.conf", same.clone(), Some(&same), false), []);
        assert_eq!(
            lb_actions("default", "/lb.conf", same.clone(), None, false),
            [write("default", &same, None), reload("default")]
        );
        let old = "upstream b {}".to_string();
        assert_eq!(
            lb_actions("edge", "/lb.conf", same.clone(), Some(&old), true),
            [write("edge", &same, Some(&old)), reload("edge")]
        );
    }

    #[test]
    fn a_pending_reload_of_an_unchanged_file_is_redone() {
        let same = "x".to_string();
        assert_eq!(lb_actions("internal", "/lb.conf", same.clone(), Some(&same), true), [reload("internal")]);
    }

    #[test]
    fn the_default_lb_is_left_out_of_the_json_and_read_back() {
        let json = serde_json::to_value([write("default", "x", None), reload("default")]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"action": "write_lb", "path": "/lb.conf", "content": "x", "old": null},
                {"action": "reload_lb"}
            ])
        );
        let back: Vec<Action> = serde_json::from_value(json).unwrap();
        assert_eq!(back, [write("default", "x", None), reload("default")]);
        let named = serde_json::to_value(reload("edge")).unwrap();
        assert_eq!(named, serde_json::json!({"action": "reload_lb", "lb": "edge"}));
    }
}

/// Several named LBs: one file LB and one in containers (pure: no daemon).
#[cfg(test)]
mod multi_tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use crate::model::{EtcdObservation, HostObservation, ObservedState, keys};
    use crate::plan::simulate::simulate;
    use crate::plan::{Action, Desired, Plan, plan, render};
    use crate::spec::{RepoSnapshot, load};

    const ENV: &str = "apiVersion: reconcile/v1\nkind: Environment\nname: t\n\
        hosts:\n  - {name: h1, docker: 'unix:///a.sock', address: 127.0.0.1, ports: 20000-20999}\n  \
        - {name: h2, docker: 'unix:///b.sock', address: 127.0.0.2, ports: 20000-20999}\n\
        etcd: {endpoints: ['http://127.0.0.1:23790']}\n\
        lbs:\n  edge: {template: lb.j2, path: /tmp/edge.conf, reload: ['true']}\n  \
        internal: {template: lb.j2, container: {app: ilb, path: /etc/haproxy/haproxy.cfg}, check: [haproxy, -c, -f, '{file}'], reload: [kill, -USR2, '1']}\n";

    fn app(name: &str, replicas: u32, extra: &str) -> String {
        format!(
            "apiVersion: reconcile/v1\nkind: App\nname: {name}\nimage: img/{name}:1\nreplicas: {replicas}\nport: 8080\n{extra}"
        )
    }

    fn repo(api_replicas: u32) -> RepoSnapshot {
        let mut files = BTreeMap::new();
        let mut put = |p: &str, s: String| {
            files.insert(format!("environments/t/{p}"), s.into_bytes());
        };
        put("environment.yaml", ENV.into());
        put("lb.j2", "{% for app in apps %}{{ app.name }}:{% for i in app.instances %} {{ i.address }}:{{ i.port }}{% endfor %}\n{% endfor %}".into());
        put("apps/web.yaml", app("web", 2, "lb: {via: edge, host: web.test}\n"));
        put("apps/api.yaml", app("api", api_replicas, "lb: {via: internal, host: api.test}\n"));
        put("apps/ilb.yaml", app("ilb", 2, "update: {strategy: recreate}\nplacement: {spread: true}\n"));
        RepoSnapshot { files, origin: Default::default() }
    }

    fn empty() -> ObservedState {
        ObservedState {
            env: "t".into(),
            hosts: ["h1", "h2"].iter().map(|h| (h.to_string(), HostObservation::default())).collect(),
            etcd: Some(EtcdObservation::default()),
            lbs: [("edge".to_string(), None), ("internal".to_string(), None)].into(),
        }
    }

    fn plan_for(snap: &RepoSnapshot, o: &ObservedState) -> Plan {
        let loaded = load(snap);
        assert!(loaded.diagnostics.iter().all(|d| !d.is_error()), "{:?}", loaded.diagnostics);
        let env = &loaded.envs["t"];
        let origin = Default::default();
        let secrets = BTreeMap::new();
        let d = Desired {
            env,
            files: Arc::new(snap.files.clone()),
            origin: &origin,
            secrets: &secrets,
            digests: Default::default(),
        };
        plan(&d, o).unwrap()
    }

    fn written(p: &Plan) -> BTreeMap<String, String> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteLb { lb, content, .. } => Some((lb.clone(), content.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_lb_is_planned_on_its_own_with_only_the_apps_it_routes() {
        let p = plan_for(&repo(1), &empty());
        let w = written(&p);
        assert_eq!(w.keys().collect::<Vec<_>>(), ["edge", "internal"]);
        assert!(w["edge"].starts_with("web:") && !w["edge"].contains("api"), "{}", w["edge"]);
        assert!(w["internal"].starts_with("api:") && !w["internal"].contains("web"), "{}", w["internal"]);
        assert!(!w["edge"].contains("ilb") && !w["internal"].contains("ilb"), "the LB app is not routed");
        let reloads: Vec<&str> = p
            .actions
            .iter()
            .filter_map(|a| if let Action::ReloadLb { lb } = a { Some(lb.as_str()) } else { None })
            .collect();
        assert_eq!(reloads, ["edge", "internal"]);
        let text = render::text(&p, false);
        assert!(text.contains("lb edge\n  ~ write /tmp/edge.conf (new file)"), "{text}");
        assert!(text.contains("lb internal\n  ~ write /etc/haproxy/haproxy.cfg in ilb (new file)"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render::json(&p)).unwrap();
        let lbs: Vec<&str> = json["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "write_lb")
            .map(|a| a["lb"].as_str().unwrap())
            .collect();
        assert_eq!(lbs, ["edge", "internal"]);
        // Converged: nothing more to do for either LB.
        let after = simulate(&p, &empty(), "c1");
        assert_eq!(plan_for(&repo(1), &after).actions, []);
    }

    #[test]
    fn a_change_to_one_app_rewrites_only_the_lb_that_routes_it() {
        let after = simulate(&plan_for(&repo(1), &empty()), &empty(), "c1");
        let p = plan_for(&repo(2), &after);
        assert_eq!(written(&p).keys().collect::<Vec<_>>(), ["internal"], "{:#?}", p.actions);
        assert!(!p.actions.iter().any(|a| matches!(a, Action::ReloadLb { lb } if lb == "edge")));
    }

    #[test]
    fn a_pending_reload_is_kept_and_redone_per_lb() {
        let mut o = simulate(&plan_for(&repo(1), &empty()), &empty(), "c1");
        let key = keys::lb_reload_pending_for("/reconcile", "t", "internal");
        assert_eq!(key, "/reconcile/t/lb/internal/reload-pending");
        assert_eq!(keys::lb_reload_pending_for("/reconcile", "t", "default"), "/reconcile/t/lb/reload-pending");
        o.etcd.as_mut().unwrap().keys.insert(key, "2026-12-01T00:00:00Z".into());
        let p = plan_for(&repo(1), &o);
        assert_eq!(p.actions, [Action::ReloadLb { lb: "internal".into() }], "the mark is not deleted by the plan");
    }
}
