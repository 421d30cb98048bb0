//! Property and unit tests of the pure planner (no daemons): convergence,
//! determinism, minimality, stability, masking.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::simulate::simulate;
use super::*;
use crate::model::{ContainerState, EtcdObservation, HostObservation, ObservedState};
use crate::spec::{RepoSnapshot, load};

/// A repo with `replicas.len()` apps (app-0 is LB-backed with a file, all register).
fn repo(replicas: &[u32], env_values: &[String]) -> RepoSnapshot {
    let mut files = BTreeMap::new();
    let mut put = |p: &str, s: String| {
        files.insert(p.to_string(), s.into_bytes());
    };
    put(
        "environments/t/environment.yaml",
        "apiVersion: reconcile/v1\nkind: Environment\nname: t\nvars: {level: info}\nsecrets: {pw: {from_env: PW}}\nhosts:\n  - {name: h1, docker: 'unix:///a.sock', address: 127.0.0.1, labels: {zone: a}, ports: 20000-20999}\n  - {name: h2, docker: 'unix:///b.sock', address: 127.0.0.2, labels: {zone: b}, ports: 20000-20999}\n  - {name: h3, docker: 'unix:///c.sock', address: 127.0.0.3, labels: {zone: a}, ports: 20000-20999}\netcd: {endpoints: ['http://127.0.0.1:23790']}\nlb: {template: lb.j2, path: /tmp/lb.conf, reload: ['true']}\n".into(),
    );
    put("environments/t/lb.j2", "{% for app in apps %}{{ app.name }}:{% for i in app.instances %} {{ i.address }}:{{ i.port }}{% endfor %}\n{% endfor %}".into());
    put("environments/t/f.j2", "level={{ vars.level }}\npw={{ secrets.pw }}\nme={{ instance.name }}\n".into());
    for (i, r) in replicas.iter().enumerate() {
        let extra = if i == 0 { "lb: {host: a.test}\nfiles: [{template: f.j2, path: /etc/f}]\n" } else { "" };
        let v = env_values.get(i).cloned().unwrap_or_else(|| "x".into());
        put(
            &format!("environments/t/apps/app-{i}.yaml"),
            format!(
                "apiVersion: reconcile/v1\nkind: App\nname: app-{i}\nimage: img/app:{i}\nreplicas: {r}\nport: 8080\nregistry: true\nconfig: {{k: v{i}}}\nenv: {{V: {v:?}, L: '{{{{ vars.level }}}}'}}\n{extra}"
            ),
        );
    }
    RepoSnapshot { files, origin: Default::default() }
}

fn empty_observed() -> ObservedState {
    ObservedState {
        env: "t".into(),
        hosts: ["h1", "h2", "h3"].iter().map(|h| (h.to_string(), HostObservation::default())).collect(),
        etcd: Some(EtcdObservation::default()),
        lbs: [("default".to_string(), None)].into(),
    }
}

fn plan_for(snap: &RepoSnapshot, secrets: &BTreeMap<String, Secret>, o: &ObservedState) -> Plan {
    let loaded = load(snap);
    assert!(loaded.diagnostics.iter().all(|d| !d.is_error()), "{:?}", loaded.diagnostics);
    let env = &loaded.envs["t"];
    let origin = Origin::default();
    let d = Desired { env, files: Arc::new(snap.files.clone()), origin: &origin, secrets, digests: Default::default() };
    plan(&d, o).unwrap()
}

fn secrets(pw: &str) -> BTreeMap<String, Secret> {
    [("pw".to_string(), Secret::new(pw.into()))].into()
}

fn converged(snap: &RepoSnapshot, s: &BTreeMap<String, Secret>) -> ObservedState {
    let p = plan_for(snap, s, &empty_observed());
    simulate(&p, &empty_observed(), "c1")
}

fn instance_actions(p: &Plan) -> Vec<&Action> {
    p.actions.iter().filter(|a| a.app().is_some()).collect()
}

#[test]
fn first_plan_creates_everything_then_converges() {
    let snap = repo(&[2, 1], &[]);
    let s = secrets("pw1");
    let p = plan_for(&snap, &s, &empty_observed());
    assert_eq!(p.summary.add, 3);
    assert!(p.summary.lb_write && p.summary.lb_reload);
    let after = simulate(&p, &empty_observed(), "c1");
    let again = plan_for(&snap, &s, &after);
    assert!(again.actions.is_empty(), "{:#?}", again.actions);
    assert_eq!(again.summary.to_string(), "No changes: the environment matches the repo.");
}

#[test]
fn secrets_are_masked_but_their_change_is_shown() {
    let snap = repo(&[1], &[]);
    let after = converged(&snap, &secrets("old-secret-value"));
    let p = plan_for(&snap, &secrets("new-secret-value"), &after);
    let json = render::json(&p);
    let text = render::text(&p, false);
    assert!(!json.contains("secret-value") && !text.contains("secret-value"), "{text}");
    assert_eq!(p.summary.replace, 1, "{text}");
    assert!(text.contains("files./etc/f: (sensitive value changed)"), "{text}");
}

#[test]
fn json_form_matches_its_schema() {
    let snap = repo(&[2, 1], &[]);
    let s = secrets("pw");
    let mut o = converged(&snap, &s);
    // A mix of every action kind: a stopped instance, a duplicate, a changed app, a stray key.
    let h = o.hosts.values_mut().find(|h| !h.instances.is_empty()).unwrap();
    h.instances[0].state = ContainerState::Exited;
    let mut dup = h.instances[0].clone();
    dup.container_id = "dup".into();
    h.instances.push(dup);
    o.etcd.as_mut().unwrap().keys.insert("/reconcile/t/config/gone/k".into(), "v".into());
    let p = plan_for(&repo(&[1, 2, 1], &["changed".into()]), &s, &o);
    let schema: Value = serde_json::from_str(crate::spec::schema::PLAN).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let json: Value = serde_json::from_str(&render::json(&p)).unwrap();
    let errors: Vec<String> =
        validator.iter_errors(&json).map(|e| format!("{} at {}", e, e.instance_path().as_str())).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let kinds: BTreeSet<&str> =
        json["actions"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert!(kinds.len() >= 6, "{kinds:?}");
    // And it round-trips: a saved plan reads back as the same value.
    let back: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn stopped_instance_is_started_and_duplicates_removed() {
    let snap = repo(&[2], &[]);
    let s = secrets("pw");
    let mut o = converged(&snap, &s);
    let h = o.hosts.values_mut().find(|h| !h.instances.is_empty()).unwrap();
    h.instances[0].state = ContainerState::Exited;
    let mut dup = h.instances[0].clone();
    dup.container_id = "dup".into();
    dup.created += 100;
    h.instances.push(dup);
    let p = plan_for(&snap, &s, &o);
    let kinds: Vec<String> = instance_actions(&p).iter().map(|a| format!("{:?}", std::mem::discriminant(*a))).collect();
    assert_eq!(p.summary.start + p.summary.remove, 2, "{kinds:?} {:#?}", p.actions);
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::Remove { reason: Reason::Duplicate, old, .. } if old.container_id == "dup"))
    );
}

#[test]
fn of_two_duplicates_created_in_the_same_second_the_registered_one_stays() {
    // An apply killed mid-replace leaves the old instance (serving, in the registry) and a
    // half-made new one on a fresh port, both running and, when fast, with the same
    // whole-second `created`. The serving one stays whatever the container ids.
    let snap = repo(&[1], &[]);
    let s = secrets("pw");
    let mut o = converged(&snap, &s);
    let h = o.hosts.values_mut().find(|h| !h.instances.is_empty()).unwrap();
    let old = h.instances[0].clone();
    let mut new = old.clone();
    new.container_id = "0".into();
    new.port = Some(old.port.unwrap() + 1);
    assert!(new.container_id < old.container_id, "the id alone would keep the new one");
    h.instances.push(new);
    let p = plan_for(&snap, &s, &o);
    let removed: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { reason: Reason::Duplicate, old, .. } => Some(old.container_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["0"], "{:#?}", p.actions);
}

#[test]
fn markdown_is_split_into_valid_parts() {
    let snap = repo(&[40, 40, 40, 40, 40, 40, 40, 40], &[]);
    let p = plan_for(&snap, &secrets("pw"), &empty_observed());
    let parts = render::markdown(&p, 4_000);
    assert!(parts.len() > 1);
    for part in &parts {
        assert!(part.len() <= 4_000, "{}", part.len());
        assert_eq!(part.matches("<details>").count(), part.matches("</details>").count());
        assert_eq!(part.matches("```").count() % 2, 0);
    }
    let one = render::markdown(&p, render::MARKDOWN_LIMIT);
    assert_eq!(one.len(), 1);
}

fn arb_case() -> impl proptest::strategy::Strategy<Value = (Vec<u32>, Vec<String>, usize, String, u64)> {
    (
        prop::collection::vec(0u32..4, 1..5),
        prop::collection::vec("[a-z]{1,3}", 5),
        0usize..5,
        "[a-z]{1,3}",
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn converges_and_is_deterministic((reps, vals, _i, _v, seed) in arb_case()) {
        let snap = repo(&reps, &vals);
        let s = secrets("pw");
        let p1 = plan_for(&snap, &s, &empty_observed());
        let after = simulate(&p1, &empty_observed(), "c1");
        // Planning against an observation equal to the desired state: empty.
        prop_assert!(plan_for(&snap, &s, &after).actions.is_empty());
        // Observation order does not matter.
        let mut shuffled = after.clone();
        for h in shuffled.hosts.values_mut() {
            let n = h.instances.len().max(1);
            h.instances.rotate_left((seed as usize) % n);
            if seed.is_multiple_of(2) { h.instances.reverse(); }
        }
        let changed = { let mut v = vals.clone(); v[0].push('z'); repo(&reps, &v) };
        prop_assert_eq!(plan_for(&changed, &s, &after), plan_for(&changed, &s, &shuffled));
    }

    #[test]
    fn one_env_var_touches_only_its_app((reps, vals, i, v, _seed) in arb_case()) {
        let i = i % reps.len();
        let snap = repo(&reps, &vals);
        let s = secrets("pw");
        let after = converged(&snap, &s);
        let mut vals2 = vals.clone();
        vals2[i] = format!("{}-{v}", vals[i]);
        let p = plan_for(&repo(&reps, &vals2), &s, &after);
        let app = format!("app-{i}");
        for a in &p.actions {
            match a {
                Action::PutKey { key, .. } | Action::DeleteKey { key, .. } => {
                    // Only the app's desired copy, and its registry entries when its ports move.
                    prop_assert!(key.contains(&format!("/apps/{app}")) || key.contains(&format!("/{app}_t/")), "{}", key);
                }
                Action::WriteLb { .. } | Action::ReloadLb { .. } => prop_assert!(i == 0, "LB changed for a non-LB app"),
                other => prop_assert_eq!(other.app(), Some(app.as_str())),
            }
        }
        prop_assert_eq!(p.summary.replace, reps[i] as usize);
        // The other apps keep host and port.
        let next = simulate(&p, &after, "c2");
        for (h, obs) in &after.hosts {
            for inst in obs.instances.iter().filter(|x| x.app != app) {
                prop_assert!(next.hosts[h].instances.iter().any(|y| y.container_id == inst.container_id && y.port == inst.port));
            }
        }
    }

    #[test]
    fn one_edited_etcd_key_yields_exactly_that_key((reps, vals, i, v, _seed) in arb_case()) {
        let snap = repo(&reps, &vals);
        let s = secrets("pw");
        let mut after = converged(&snap, &s);
        let etcd = after.etcd.as_mut().unwrap();
        let key = etcd.keys.keys().nth(i % etcd.keys.len()).unwrap().clone();
        etcd.keys.insert(key.clone(), format!("edited-{v}"));
        let p = plan_for(&snap, &s, &after);
        prop_assert_eq!(p.actions.len(), 1);
        let is_put = matches!(&p.actions[0], Action::PutKey { key: k, .. } if *k == key);
        prop_assert!(is_put);
    }

    #[test]
    fn plans_only_touch_observed_containers((reps, vals, _i, _v, seed) in arb_case()) {
        let snap = repo(&reps, &vals);
        let s = secrets("pw");
        let mut after = converged(&snap, &s);
        // Knock out or stop some instances, scale the repo differently.
        for h in after.hosts.values_mut() {
            h.instances.retain(|x| !(x.created as u64 + seed).is_multiple_of(3));
            for x in h.instances.iter_mut().filter(|x| (x.created as u64 + seed).is_multiple_of(5)) { x.state = ContainerState::Exited; }
        }
        let reps2: Vec<u32> = reps.iter().map(|r| (r + (seed % 3) as u32) % 4).collect();
        let p = plan_for(&repo(&reps2, &vals), &s, &after);
        let ids: Vec<&str> = after.hosts.values().flat_map(|h| h.instances.iter().map(|x| x.container_id.as_str())).collect();
        for a in &p.actions {
            match a {
                Action::Remove { old, .. } | Action::Replace { old, .. } | Action::Start { old, .. } => prop_assert!(ids.contains(&old.container_id.as_str())),
                _ => {}
            }
        }
        // And it converges.
        let next = simulate(&p, &after, "c2");
        prop_assert!(plan_for(&repo(&reps2, &vals), &s, &next).actions.is_empty());
    }
}

/// The observed container of `instance` (after `converged`).
fn container_of(o: &ObservedState, instance: &str) -> crate::model::ObservedInstance {
    o.hosts.values().flat_map(|h| h.instances.iter()).find(|i| i.instance == instance).unwrap().clone()
}

fn with_mark(mut o: ObservedState, container: &str) -> (ObservedState, String) {
    let key = keys::health("/reconcile", "t", container);
    o.etcd.as_mut().unwrap().keys.insert(key.clone(), "{\"instance\":\"x\"}".into());
    (o, key)
}

#[test]
fn a_health_mark_takes_a_kept_instance_out_of_registry_and_lb_only() {
    let snap = repo(&[2, 1], &[]);
    let s = secrets("pw1");
    let o = converged(&snap, &s);
    let c = container_of(&o, "app-0-0");
    let addr = format!(
        "{}:{}",
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"][["h1", "h2", "h3"].iter().position(|h| *h == c.host).unwrap()],
        c.port.unwrap()
    );
    let (marked, key) = with_mark(o, &c.name);
    let p = plan_for(&snap, &s, &marked);
    assert!(instance_actions(&p).is_empty(), "the container stays: {:#?}", p.actions);
    let deleted: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| if let Action::DeleteKey { key, .. } = a { Some(key.as_str()) } else { None })
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(deleted[0].contains("/app-0_t/") && deleted[0].ends_with(&addr.replace(':', "-")), "{deleted:?}");
    assert!(!deleted.contains(&key.as_str()), "the mark stays while its container does");
    let lb = p.actions.iter().find_map(|a| if let Action::WriteLb { content, .. } = a { Some(content) } else { None });
    assert!(lb.is_some_and(|c| !c.contains(&addr)), "LB without {addr}: {lb:?}");
    // Applied, the plan converges with the mark in place.
    let after = simulate(&p, &marked, "c1");
    let again = plan_for(&snap, &s, &after);
    assert!(again.actions.is_empty(), "{:#?}", again.actions);
}

#[test]
fn when_every_instance_of_an_app_is_marked_none_leaves_traffic() {
    let snap = repo(&[2, 1], &[]);
    let s = secrets("pw1");
    let o = converged(&snap, &s);
    let c = container_of(&o, "app-1-0");
    let (marked, _) = with_mark(o, &c.name);
    let p = plan_for(&snap, &s, &marked);
    assert!(p.actions.is_empty(), "fail open: {:#?}", p.actions);
}

#[test]
fn a_mark_of_a_container_that_is_gone_is_deleted() {
    let snap = repo(&[2, 1], &[]);
    let s = secrets("pw1");
    let (o, key) = with_mark(converged(&snap, &s), "t-app-0-7-deadbeef");
    let p = plan_for(&snap, &s, &o);
    assert_eq!(p.actions.len(), 1, "{:#?}", p.actions);
    assert!(matches!(&p.actions[0], Action::DeleteKey { key: k, .. } if *k == key));
}

#[test]
fn held_instances_are_neither_created_nor_registered() {
    let snap = repo(&[2, 1], &[]);
    let s = secrets("pw1");
    let mut o = converged(&snap, &s);
    for h in o.hosts.values_mut() {
        h.instances.retain(|i| i.instance != "app-1-0");
    }
    let loaded = load(&snap);
    let env = &loaded.envs["t"];
    let origin = Origin::default();
    let d =
        Desired { env, files: Arc::new(snap.files.clone()), origin: &origin, secrets: &s, digests: Default::default() };
    let (free, _) = plan_with_specs(&d, &o).unwrap();
    assert_eq!(free.summary.add, 1);
    let (held, _) = plan_holding(&d, &o, &["app-1-0".to_string()].into()).unwrap();
    assert_eq!(held.summary.add, 0, "{:#?}", held.actions);
    // Its registry entry (still in etcd from before) goes: it does not run.
    assert!(held.actions.iter().all(|a| !matches!(a, Action::PutKey { key, .. } if key.contains("/app-1_t/"))));
    assert!(held.actions.iter().any(|a| matches!(a, Action::DeleteKey { key, .. } if key.contains("/app-1_t/"))));
}

#[test]
fn a_pending_lb_reload_is_planned_and_its_mark_kept_for_apply() {
    let snap = repo(&[2, 1], &[]);
    let s = secrets("pw1");
    let mut o = converged(&snap, &s);
    let key = keys::lb_reload_pending("/reconcile", "t");
    o.etcd.as_mut().unwrap().keys.insert(key, "2026-11-29T00:00:00Z".into());
    let p = plan_for(&snap, &s, &o);
    assert_eq!(p.actions, vec![Action::ReloadLb { lb: "default".into() }], "{:#?}", p.actions);
    assert!(p.summary.lb_reload && !p.summary.lb_write);
}
