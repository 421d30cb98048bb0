//! The executor's decisions, in process: the plan is applied to the in-memory world
//! (`apply::memory`) and the recorded calls are checked — order, pacing, gating,
//! failure handling and the lock. No daemons.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::memory::{Memory, running, writes};
use super::*;
use crate::model::{EtcdObservation, HostObservation, keys};
use crate::plan::{self, Action, Desired, NewInstance, OldInstance, simulate::simulate};
use crate::spec::{Loaded, RepoSnapshot, load};

const DRAIN: Duration = Duration::from_millis(1500);

/// The executor's options in these tests: 4 in parallel, 1 s timeouts, recorded as an apply.
fn options() -> Options {
    Options {
        parallelism: 4,
        timeout: Duration::from_secs(1),
        lock_timeout: Duration::from_secs(1),
        kind: HistoryKind::Apply,
    }
}

// `apply --report`: the recorded milestones, in the same in-memory world.
#[path = "report_tests.rs"]
mod report_tests;

/// db ← web (LB, http check) ← edge; worker alone (no check). `web_update` is web's
/// `update:` block, `v` a value every app's env has.
fn repo(web_replicas: u32, web_update: &str, v: &str) -> RepoSnapshot {
    let mut files = BTreeMap::new();
    let mut put = |p: &str, s: String| {
        files.insert(p.to_string(), s.into_bytes());
    };
    put(
        "environments/t/environment.yaml",
        format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: t\nvars: {{v: {v:?}}}\nsecrets: {{pw: {{from_env: PW}}}}\n\
             hosts:\n  - {{name: h1, docker: 'unix:///a.sock', address: 127.0.0.1, ports: 20000-20999}}\n  \
             - {{name: h2, docker: 'unix:///b.sock', address: 127.0.0.2, ports: 20000-20999}}\n\
             etcd: {{endpoints: ['http://127.0.0.1:1'], registry_prefix: /services}}\nlb: {{template: lb.j2, path: /tmp/lb.conf, reload: ['true']}}\n"
        ),
    );
    put(
        "environments/t/lb.j2",
        "{% for app in apps %}{{ app.name }}:{% for i in app.instances %} {{ i.address }}:{{ i.port }}{% endfor %}\n{% endfor %}"
            .into(),
    );
    let app = |name: &str, extra: &str| {
        format!(
            "apiVersion: reconcile/v1\nkind: App\nname: {name}\nimage: img/{name}:1\nport: 8080\nregistry: true\n\
             env: {{V: '{{{{ vars.v }}}}', PW: '{{{{ secrets.pw }}}}'}}\n{extra}"
        )
    };
    put("environments/t/apps/db.yaml", app("db", "replicas: 1\nhealth: {tcp: true}\n"));
    put(
        "environments/t/apps/web.yaml",
        app(
            "web",
            &format!(
                "replicas: {web_replicas}\ndepends_on: [db]\nlb: {{host: a.test}}\nhealth: {{http: /healthz}}\n{web_update}"
            ),
        ),
    );
    put("environments/t/apps/edge.yaml", app("edge", "replicas: 1\ndepends_on: [web]\nhealth: {tcp: true}\n"));
    put("environments/t/apps/worker.yaml", app("worker", "replicas: 1\n"));
    RepoSnapshot { files, origin: Default::default() }
}

fn loaded(snap: &RepoSnapshot) -> Loaded {
    let l = load(snap);
    assert!(l.diagnostics.iter().all(|d| !d.is_error()), "{:?}", l.diagnostics);
    l
}

fn empty() -> ObservedState {
    ObservedState {
        env: "t".into(),
        hosts: ["h1", "h2"].iter().map(|h| (h.to_string(), HostObservation::default())).collect(),
        etcd: Some(EtcdObservation::default()),
        lbs: [("default".to_string(), None)].into(),
    }
}

fn secrets() -> BTreeMap<String, Secret> {
    [("pw".to_string(), Secret::new("hunter2-very-secret".into()))].into()
}

/// Plan `snap` against `observed` and execute it on `fx` (built by `world` from the
/// observation and the plan).
async fn run(
    snap: &RepoSnapshot,
    observed: &ObservedState,
    world: impl FnOnce(Memory) -> Memory,
) -> (Plan, Memory, Report) {
    run_mode(snap, observed, &plan::canary::Mode::Normal, world).await
}

/// [`run`] for a canary mode (promote, abort).
async fn run_mode(
    snap: &RepoSnapshot,
    observed: &ObservedState,
    mode: &plan::canary::Mode,
    world: impl FnOnce(Memory) -> Memory,
) -> (Plan, Memory, Report) {
    let l = loaded(snap);
    let env = &l.envs["t"];
    let s = secrets();
    let origin = Default::default();
    let files = Arc::new(snap.files.clone());
    let d = Desired { env, files: Arc::clone(&files), origin: &origin, secrets: &s, digests: BTreeMap::new() };
    let (p, specs) = plan::plan_mode(&d, observed, &Default::default(), mode).unwrap();
    let fx = world(Memory::new(observed, &p));
    let job = Job { env, files, plan: &p, specs: &specs, observed, secrets: &s };
    let report = execute(&fx, job, options(), DRAIN.into(), Arc::new(|_| {})).await;
    (p, fx, report)
}

/// The world after the first apply of `snap`.
async fn deployed(snap: &RepoSnapshot) -> ObservedState {
    let (_, fx, report) = run(snap, &empty(), |m| m).await;
    assert!(report.ok(), "{report:?}");
    fx.observed()
}

/// Deploy `replicas` web instances with `update`, then change every app: the plan of the
/// change (all ok) and the world it ran in.
async fn redeploy(replicas: u32, update: &str) -> (Plan, Memory) {
    let before = deployed(&repo(replicas, update, "a")).await;
    let (p, fx, report) = run(&repo(replicas, update, "b"), &before, |m| m).await;
    assert!(report.ok(), "{report:?}");
    (p, fx)
}

fn replaces<'p>(p: &'p Plan, app: &str) -> Vec<(&'p OldInstance, &'p NewInstance)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Replace { app: a, old, new, .. } if a == app => Some((old, new)),
            _ => None,
        })
        .collect()
}

fn creates<'p>(p: &'p Plan, app: &str) -> Vec<&'p NewInstance> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { app: a, new, .. } if a == app => Some(new),
            _ => None,
        })
        .collect()
}

fn pos(calls: &[String], call: &str) -> usize {
    calls.iter().position(|c| c == call).unwrap_or_else(|| panic!("no `{call}` in {calls:#?}"))
}

fn registry_key(host_ip: &str, app: &str, port: Option<u16>) -> String {
    keys::registry("/services", app, "t", host_ip, port.unwrap())
}

fn ip(host: &str) -> &'static str {
    if host == "h1" { "127.0.0.1" } else { "127.0.0.2" }
}

#[tokio::test]
async fn the_executor_ends_where_the_model_says_and_then_nothing_is_left_to_do() {
    let snap = repo(2, "", "a");
    let (p, fx, report) = run(&snap, &empty(), |m| m).await;
    assert!(report.ok(), "{report:?}");
    let model = simulate(&p, &empty(), "");
    let real = fx.observed();
    assert_eq!(running(&real), running(&model));
    assert_eq!(real.etcd, model.etcd);
    assert_eq!(real.lbs, model.lbs);
    assert_eq!(fx.lb_live(), model.lbs.get("default").cloned().flatten(), "the LB serves the final file");
    // Converged: a second plan against the result has nothing to do.
    let (again, fx2, _) = run(&snap, &real, |m| m).await;
    assert!(again.actions.is_empty(), "{:#?}", again.actions);
    assert_eq!(writes(&fx2.calls()), vec!["record apply: ok"]);
    // Then a change of every app converges too.
    let changed = repo(2, "", "b");
    let (p3, fx3, report) = run(&changed, &real, |m| m).await;
    assert!(report.ok() && p3.summary.replace == 5, "{report:?} {}", p3.summary);
    let (last, ..) = run(&changed, &fx3.observed(), |m| m).await;
    assert!(last.actions.is_empty(), "{:#?}", last.actions);
}

#[tokio::test]
async fn a_dependent_is_created_only_after_its_dependency_is_healthy() {
    let (p, fx, report) = run(&repo(2, "", "a"), &empty(), |m| m).await;
    assert!(report.ok(), "{report:?}");
    let calls = fx.calls();
    let [db] = creates(&p, "db")[..] else { panic!() };
    let [edge] = creates(&p, "edge")[..] else { panic!() };
    let db_healthy = pos(&calls, &format!("healthy {}", db.container_name));
    let db_registered = pos(&calls, &format!("put {}", registry_key(ip(&db.host), "db", db.port)));
    let webs = creates(&p, "web");
    assert_eq!(webs.len(), 2);
    for w in &webs {
        let created = pos(&calls, &format!("create {}", w.container_name));
        assert!(db_healthy < created && db_registered < created, "{calls:#?}");
        assert!(
            pos(&calls, &format!("healthy {}", w.container_name))
                < pos(&calls, &format!("create {}", edge.container_name))
        );
    }
    // worker has no dependency and no check: it only has to keep running a moment.
    let [worker] = creates(&p, "worker")[..] else { panic!() };
    let started = pos(&calls, &format!("start {}", worker.container_name));
    assert!(calls[started + 1..].iter().any(|c| c == "sleep 300ms"), "{calls:#?}");
}

#[tokio::test]
async fn a_replace_is_the_zero_downtime_sequence() {
    let (p, fx) = redeploy(1, "").await;
    let calls = fx.calls();
    let [(old, new)] = replaces(&p, "web")[..] else { panic!("{:#?}", p.actions) };
    let pending = keys::lb_reload_pending("/reconcile", "t");
    let lb = |out: &mut Vec<String>| {
        out.extend([format!("put {pending}"), "lb write".into(), "lb reload".into(), format!("delete {pending}")]);
    };
    let mut expected = vec![
        format!("image {} img/web:1", new.host),
        format!("create {}", new.container_name),
        format!("start {}", new.container_name),
        format!("healthy {}", new.container_name),
        format!("put {}", registry_key(ip(&new.host), "web", new.port)),
    ];
    lb(&mut expected);
    expected.push(format!("delete {}", registry_key(ip(&old.host), "web", old.port)));
    lb(&mut expected);
    expected.push("sleep 1.5s".into());
    expected.push(format!("stop {}", old.container_name));
    let start = pos(&calls, &expected[0]);
    assert_eq!(calls[start..start + expected.len()], expected[..], "{calls:#?}");
    // The LB serves the new instance only, as the plan's file says.
    let live = fx.lb_live().unwrap();
    assert!(live.contains(&format!("{}:{}", ip(&new.host), new.port.unwrap())), "{live}");
    assert!(new.port == old.port || !live.contains(&format!("{}:{}", ip(&old.host), old.port.unwrap())), "{live}");
}

#[tokio::test]
async fn replaces_go_a_batch_at_a_time() {
    let (p, fx) = redeploy(4, "update: {batch: 2}\n").await;
    let calls = fx.calls();
    let rs = replaces(&p, "web");
    assert_eq!(rs.len(), 4);
    let at = |verb: &str, name: &str| pos(&calls, &format!("{verb} {name}"));
    for (first, second) in [(0, 1), (2, 3)] {
        // Both new instances of a batch are healthy before either old one leaves…
        let last_new_healthy =
            at("healthy", &rs[first].1.container_name).max(at("healthy", &rs[second].1.container_name));
        let first_old_out = at("stop", &rs[first].0.container_name).min(at("stop", &rs[second].0.container_name));
        assert!(last_new_healthy < first_old_out, "{calls:#?}");
    }
    // …and the second batch starts only when the first one's old instances are gone.
    let first_done = at("stop", &rs[0].0.container_name).max(at("stop", &rs[1].0.container_name));
    let second_begins = at("create", &rs[2].1.container_name).min(at("create", &rs[3].1.container_name));
    assert!(first_done < second_begins, "{calls:#?}");
}

#[tokio::test]
async fn recreate_stops_the_old_instance_before_the_new_one_is_created() {
    let (p, fx) = redeploy(1, "update: {strategy: recreate}\n").await;
    let calls = fx.calls();
    let [(old, new)] = replaces(&p, "web")[..] else { panic!() };
    let deregistered = pos(&calls, &format!("delete {}", registry_key(ip(&old.host), "web", old.port)));
    let stopped = pos(&calls, &format!("stop {}", old.container_name));
    let created = pos(&calls, &format!("create {}", new.container_name));
    assert!(deregistered < stopped && stopped < created, "{calls:#?}");
    assert!(calls[deregistered..stopped].contains(&"lb reload".to_string()), "{calls:#?}");
}

#[tokio::test]
async fn a_failed_health_check_stops_only_that_app_and_its_dependents() {
    let before = deployed(&repo(2, "", "a")).await;
    let (p, fx, report) =
        run(&repo(2, "", "b"), &before, |m| m.unhealthy("web-0", "listening on :8080\nbind: address in use")).await;
    let calls = fx.calls();
    let web = &report.apps["web"];
    let error = web.error.as_deref().unwrap();
    assert!(error.starts_with("web-0 on h"), "{error}");
    assert!(error.contains("the new container was removed"), "{error}");
    assert!(error.contains("bind: address in use"), "the app's own output is kept: {error}");
    assert_eq!(report.apps["edge"].error.as_deref(), Some("not started: dependency web failed"), "{report:?}");
    assert!(report.apps["db"].error.is_none() && report.apps["worker"].error.is_none(), "{report:?}");
    assert_eq!(report.apps["worker"].done.len(), 1, "independent apps are still done");
    let rs = replaces(&p, "web");
    let (failed_old, failed_new) = rs[0];
    // The failed new container: its output read, then removed, never registered.
    assert!(
        pos(&calls, &format!("logs {}", failed_new.container_name))
            < pos(&calls, &format!("stop {}", failed_new.container_name))
    );
    let after = fx.observed();
    let now = running(&after);
    assert!(!now.iter().any(|(_, n)| *n == failed_new.container_name), "{now:?}");
    // The old ones keep serving, registered and in the LB; web-1 was not touched.
    let keys_now = &after.etcd.as_ref().unwrap().keys;
    let live = fx.lb_live().unwrap();
    for (old, new) in &rs {
        assert!(now.contains(&(old.host.clone(), old.container_name.clone())), "{now:?}");
        assert!(keys_now.contains_key(&registry_key(ip(&old.host), "web", old.port)), "{keys_now:#?}");
        assert!(live.contains(&format!("{}:{}", ip(&old.host), old.port.unwrap())), "{live}");
        if new.container_name != failed_new.container_name {
            assert!(!calls.iter().any(|c| c.contains(&new.container_name)), "{calls:#?}");
        }
    }
    assert!(!calls.contains(&format!("stop {}", failed_old.container_name)));
    // edge was not touched at all.
    let [(edge_old, edge_new)] = replaces(&p, "edge")[..] else { panic!() };
    assert!(!calls.iter().any(|c| c.contains(&edge_new.container_name) || c.contains(&edge_old.container_name)));
}

#[tokio::test]
async fn evidence_of_a_failed_container_is_bounded_and_masks_secrets() {
    let noisy: String =
        (0..50).map(|i| format!("line {i}\n")).collect::<String>() + "password is hunter2-very-secret\n";
    let (_, _, report) = run(&repo(1, "", "a"), &empty(), |m| m.unhealthy("db-0", &noisy)).await;
    let error = report.apps["db"].error.as_deref().unwrap();
    assert!(error.contains("password is (sensitive)"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    assert!(error.contains("line 49") && !error.contains("line 29\n"), "the last 20 lines only: {error}");
    assert_eq!(report.apps["web"].error.as_deref(), Some("not started: dependency db failed"));
}

#[tokio::test]
async fn a_refused_lb_config_removes_the_new_instances_and_keeps_the_old_ones() {
    let before = deployed(&repo(1, "", "a")).await;
    let before_lb = before.lbs.get("default").cloned().flatten().unwrap();
    // The check rejects any config with a web instance the old file does not have.
    let (p, _, _) = run(&repo(1, "", "b"), &before, |m| m).await;
    let [(old, new)] = replaces(&p, "web")[..] else { panic!() };
    let rendered = format!("{}:{}", ip(&new.host), new.port.unwrap());
    assert!(!before_lb.contains(&rendered), "the new instance has its own address: {before_lb}");
    let (_, fx, report) = run(&repo(1, "", "b"), &before, |m| m.lb_rejects(&rendered)).await;
    let error = report.apps["web"].error.as_deref().unwrap();
    assert!(error.ends_with("the new instances were removed, the old ones keep serving"), "{error}");
    let calls = fx.calls();
    let stopped = pos(&calls, &format!("stop {}", new.container_name));
    assert!(pos(&calls, &format!("delete {}", registry_key(ip(&new.host), "web", new.port))) < stopped);
    assert!(!calls.contains(&format!("stop {}", old.container_name)), "{calls:#?}");
    assert_eq!(fx.lb_live(), Some(before_lb));
}

#[tokio::test]
async fn after_the_lock_is_lost_nothing_more_is_written() {
    let before = deployed(&repo(2, "", "a")).await;
    let snap = repo(2, "", "b");
    let (_, fx, report) = run(&snap, &before, |m| m).await;
    assert!(report.ok(), "{report:?}");
    let total = writes(&fx.calls()).len();
    assert!(total > 20, "{total}");
    // Lose the lock after every possible write: the executor makes no write after it.
    for n in 0..total {
        let (_, fx, report) = run(&snap, &before, |m| m.lose_lock_after(n)).await;
        let calls = fx.calls();
        assert_eq!(writes(&calls).len(), n, "lock lost after {n} writes, yet: {calls:#?}");
        assert!(!report.ok(), "{n}: {report:?}");
        assert!(
            report.result_line().contains("was lost") || report.result_line().contains("no longer ours"),
            "{n}: {}",
            report.result_line()
        );
    }
}

#[tokio::test]
async fn a_removed_instance_leaves_traffic_drains_and_only_then_stops() {
    let before = deployed(&repo(2, "", "a")).await;
    let (p, fx, report) = run(&repo(1, "", "a"), &before, |m| m).await;
    assert!(report.ok(), "{report:?}");
    let [old] = p
        .actions
        .iter()
        .filter_map(|a| if let Action::Remove { old, .. } = a { Some(old) } else { None })
        .collect::<Vec<_>>()[..]
    else {
        panic!("{:#?}", p.actions)
    };
    let pending = keys::lb_reload_pending("/reconcile", "t");
    let expected = [
        format!("delete {}", registry_key(ip(&old.host), "web", old.port)),
        format!("put {pending}"),
        "lb write".into(),
        "lb reload".into(),
        format!("delete {pending}"),
        "sleep 1.5s".into(),
        format!("stop {}", old.container_name),
    ];
    let calls = fx.calls();
    let start = pos(&calls, &expected[0]);
    assert_eq!(calls[start..start + expected.len()], expected[..], "{calls:#?}");
}

#[tokio::test]
async fn a_stopped_instance_is_started_checked_and_put_back_in_traffic() {
    let mut before = deployed(&repo(1, "", "a")).await;
    let web = before.hosts.values_mut().flat_map(|h| h.instances.iter_mut()).find(|i| i.app == "web").unwrap();
    web.state = crate::model::ContainerState::Exited;
    let (name, host, port) = (web.name.clone(), web.host.clone(), web.port);
    let (p, fx, report) = run(&repo(1, "", "a"), &before, |m| m).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(p.summary.start, 1, "{}", p.summary);
    let calls = fx.calls();
    let started = pos(&calls, &format!("start {name}"));
    assert_eq!(calls[started + 1], format!("healthy {name}"), "{calls:#?}");
    assert!(started < pos(&calls, &format!("put {}", registry_key(ip(&host), "web", port))), "{calls:#?}");
    assert!(fx.lb_live().unwrap().contains(&format!("{}:{}", ip(&host), port.unwrap())));
    assert_eq!(report.apps["web"].done, vec![format!("{host}: started web-0")]);
}

/// Issue 10 item 5: an instance stopped outside reconcile whose start then fails its
/// health check leaves the registry and the LB in that apply (it used to stay registered).
#[tokio::test]
async fn a_stopped_instance_that_fails_its_restart_leaves_the_registry_and_the_lb() {
    let mut before = deployed(&repo(2, "", "a")).await;
    let web = before.hosts.values_mut().flat_map(|h| h.instances.iter_mut()).find(|i| i.instance == "web-1").unwrap();
    web.state = crate::model::ContainerState::Exited;
    let (name, host, port) = (web.name.clone(), web.host.clone(), web.port);
    let other = before.hosts.values().flat_map(|h| &h.instances).find(|i| i.instance == "web-0").unwrap().clone();
    let key = registry_key(ip(&host), "web", port);
    assert!(before.etcd.as_ref().unwrap().keys.contains_key(&key), "registered before it was stopped");
    let (p, fx, report) =
        run(&repo(2, "", "a"), &before, |m| m.unhealthy_when_restarted("web-1", "boom: no config")).await;
    assert_eq!(p.summary.start, 1, "{}", p.summary);
    assert!(!report.ok());
    let error = report.apps["web"].error.as_deref().unwrap_or_default();
    assert!(error.contains("web-1") && error.contains("removed") && error.contains("boom: no config"), "{error}");
    let after = fx.observed();
    let keys = &after.etcd.as_ref().unwrap().keys;
    assert!(!keys.contains_key(&key), "the failed instance is still registered: {keys:#?}");
    assert!(keys.contains_key(&registry_key(ip(&other.host), "web", other.port)), "{keys:#?}");
    let live = fx.lb_live().unwrap();
    assert!(!live.contains(&format!("{}:{}", ip(&host), port.unwrap())), "{live}");
    assert!(live.contains(&format!("{}:{}", ip(&other.host), other.port.unwrap())), "{live}");
    assert!(!running(&after).contains(&(host, name.clone())), "the unhealthy container still runs");
    // The registry entry went before the start: nothing pointed at it while it was down.
    let calls = fx.calls();
    assert!(pos(&calls, &format!("delete {key}")) < pos(&calls, &format!("start {name}")), "{calls:#?}");
}

// --- canaries (plan::canary, apply::canary) ---

const CANARY: &str = "update: {strategy: canary, canary: 1}\n";

/// web's containers now: (container name, spec-hash), by name.
fn webs(o: &ObservedState) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = o
        .hosts
        .values()
        .flat_map(|h| h.instances.iter())
        .filter(|i| i.app == "web")
        .map(|i| (i.name.clone(), i.spec_hash.clone()))
        .collect();
    v.sort();
    v
}

fn canary_key() -> String {
    keys::canary("/reconcile", "t", "web")
}

fn canary_record(o: &ObservedState) -> Option<crate::model::CanaryRecord> {
    o.etcd.as_ref()?.keys.get(&canary_key()).map(|v| serde_json::from_str(v).unwrap())
}

/// 3 web instances at "a", then "b" applied: one canary beside the three old ones.
async fn canary_started() -> (ObservedState, ObservedState, Plan) {
    let before = deployed(&repo(3, CANARY, "a")).await;
    let (p, fx, report) = run(&repo(3, CANARY, "b"), &before, |m| m).await;
    assert!(report.ok(), "{report:?}");
    (before, fx.observed(), p)
}

#[tokio::test]
async fn a_canary_starts_beside_every_old_instance_and_nothing_old_stops() {
    let (before, after, p) = canary_started().await;
    let step = &p.canaries[..];
    assert_eq!(step.len(), 1, "{step:?}");
    assert_eq!(
        (step[0].state, step[0].instances.clone(), step[0].replicas),
        (plan::canary::CanaryState::Start, vec!["web-0".to_string()], 3)
    );
    let [(old, new)] = replaces(&p, "web")[..] else { panic!("{:#?}", p.actions) };
    assert_ne!(old.port, new.port, "a canary gets a fresh pool port");
    // The three old containers still run, the canary beside them.
    let old_webs = webs(&before);
    let now = webs(&after);
    assert_eq!(now.len(), 4, "{now:?}");
    assert!(old_webs.iter().all(|w| now.contains(w)), "{now:?}");
    assert!(now.iter().any(|(n, h)| *n == new.container_name && *h == new.spec_hash));
    // Recorded, registered and in the LB.
    let rec = canary_record(&after).expect("canary record");
    assert_eq!(rec.instances.len(), 1);
    assert_eq!((rec.instances[0].container.as_str(), rec.instances[0].port), (new.container_name.as_str(), new.port));
    let keys = &after.etcd.as_ref().unwrap().keys;
    assert!(keys.contains_key(&registry_key(ip(&new.host), "web", new.port)));
    assert!(keys.contains_key(&registry_key(ip(&old.host), "web", old.port)));
    let live = after.lbs.get("default").cloned().flatten().unwrap();
    assert_eq!(live.lines().find(|l| l.starts_with("web:")).unwrap().split(' ').count(), 5, "{live}");
    // The plan of the same commit keeps the canary as it is.
    let (again, fx, report) = run(&repo(3, CANARY, "b"), &after, |m| m).await;
    assert!(report.ok());
    assert!(again.actions.is_empty(), "{:#?}", again.actions);
    assert_eq!(again.canaries[0].state, plan::canary::CanaryState::Running);
    assert_eq!(writes(&fx.calls()), vec!["record apply: ok"]);
    let text = plan::render::text(&again, false);
    assert!(text.contains("canary web: 1 of 3 serving"), "{text}");
    assert!(text.contains("reconcile promote --env t --app web"), "{text}");
}

#[tokio::test]
async fn promote_makes_the_canary_the_first_new_instance_and_rolls_the_rest() {
    let (_, after, p) = canary_started().await;
    let [(_, canary)] = replaces(&p, "web")[..] else { panic!() };
    let (pp, fx, report) =
        run_mode(&repo(3, CANARY, "b"), &after, &plan::canary::Mode::Promote("web".into()), |m| m).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(pp.canaries[0].state, plan::canary::CanaryState::Promote);
    assert_eq!(replaces(&pp, "web").len(), 2, "the canary counts as the first new instance");
    assert!(replaces(&pp, "web").iter().all(|(o, n)| o.port != n.port), "rolling, side by side");
    let done = fx.observed();
    let now = webs(&done);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().any(|(n, _)| *n == canary.container_name), "the canary stays: {now:?}");
    assert!(canary_record(&done).is_none(), "the record is deleted after the promote");
    // Old instances left traffic before they stopped.
    let calls = fx.calls();
    for a in &pp.actions {
        if let Action::Remove { old, .. } | Action::Replace { old, .. } = a {
            let out = pos(&calls, &format!("delete {}", registry_key(ip(&old.host), "web", old.port)));
            assert!(out < pos(&calls, &format!("stop {}", old.container_name)), "{calls:#?}");
        }
    }
    let (last, ..) = run(&repo(3, CANARY, "b"), &done, |m| m).await;
    assert!(last.actions.is_empty() && last.canaries.is_empty(), "{:#?} {:?}", last.actions, last.canaries);
}

#[tokio::test]
async fn abort_removes_the_canary_out_of_traffic_first_and_keeps_the_old_ones() {
    let (before, after, p) = canary_started().await;
    let [(_, canary)] = replaces(&p, "web")[..] else { panic!() };
    let (pa, fx, report) =
        run_mode(&repo(3, CANARY, "b"), &after, &plan::canary::Mode::Abort("web".into()), |m| m).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(pa.canaries[0].state, plan::canary::CanaryState::Abort);
    let done = fx.observed();
    assert_eq!(webs(&done), webs(&before), "the old instances, untouched");
    assert!(canary_record(&done).is_none());
    let calls = fx.calls();
    let out = pos(&calls, &format!("delete {}", registry_key(ip(&canary.host), "web", canary.port)));
    assert!(out < pos(&calls, &format!("stop {}", canary.container_name)), "{calls:#?}");
    // Nothing to promote or abort any more: a clear error, not an empty run.
    let l = loaded(&repo(3, CANARY, "b"));
    let s = secrets();
    let (origin, files) = (Default::default(), Arc::new(repo(3, CANARY, "b").files));
    let d = Desired { env: &l.envs["t"], files, origin: &origin, secrets: &s, digests: BTreeMap::new() };
    let e = plan::plan_mode(&d, &done, &Default::default(), &plan::canary::Mode::Promote("web".into())).unwrap_err();
    assert!(e.to_string().contains("no canary running"), "{e}");
}

#[tokio::test]
async fn a_new_commit_replaces_the_canary_and_a_revert_ends_it() {
    let (before, after, p) = canary_started().await;
    let [(_, first)] = replaces(&p, "web")[..] else { panic!() };
    let (pc, fx, report) = run(&repo(3, CANARY, "c"), &after, |m| m).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(pc.canaries[0].state, plan::canary::CanaryState::Replace);
    let now = fx.observed();
    let rec = canary_record(&now).unwrap();
    assert_ne!(rec.instances[0].container, first.container_name, "a new canary");
    assert!(!webs(&now).iter().any(|(n, _)| *n == first.container_name), "the older canary is gone");
    assert_eq!(webs(&now).len(), 4);
    // Back to the old instances' spec: the canary is removed, the record deleted.
    let (pe, fx, report) = run(&repo(3, CANARY, "a"), &now, |m| m).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(pe.canaries[0].state, plan::canary::CanaryState::End);
    let end = fx.observed();
    assert_eq!(webs(&end), webs(&before));
    assert!(canary_record(&end).is_none());
}

#[tokio::test]
async fn a_canary_that_fails_its_health_check_is_removed_and_not_recorded() {
    let before = deployed(&repo(3, CANARY, "a")).await;
    let (_, fx, report) = run(&repo(3, CANARY, "b"), &before, |m| m.unhealthy("web-0", "boom")).await;
    assert!(!report.ok());
    let done = fx.observed();
    assert_eq!(webs(&done), webs(&before));
    assert!(canary_record(&done).is_none());
}

#[tokio::test]
async fn lb_weights_give_the_canary_its_traffic_share() {
    let update = "update: {strategy: canary, canary: 1, traffic: 10%}\n";
    let tmpl = "{% for app in apps %}{{ app.name }}:{% for i in app.instances %} {{ i.port }}/{{ i.weight }}/{{ i.canary }}{% endfor %}\n{% endfor %}";
    let with = |v: &str| {
        let mut r = repo(3, update, v);
        r.files.insert("environments/t/lb.j2".into(), tmpl.as_bytes().to_vec());
        r
    };
    let before = deployed(&with("a")).await;
    let (p, fx, report) = run(&with("b"), &before, |m| m).await;
    assert!(report.ok(), "{report:?}");
    let [(_, canary)] = replaces(&p, "web")[..] else { panic!() };
    let live = fx.lb_live().unwrap();
    let web = live.lines().find(|l| l.starts_with("web:")).unwrap();
    let entries: Vec<&str> = web.split(' ').skip(1).collect();
    assert_eq!(entries.len(), 4, "{web}");
    for e in entries {
        let canary_entry = e.starts_with(&format!("{}/", canary.port.unwrap()));
        // 1 canary beside 3 old at 10%: weights 1 and 3 (1 / (1 + 3·3) = 10%).
        let want = if canary_entry { "/1/true" } else { "/3/false" };
        assert!(e.to_lowercase().ends_with(want), "{web}");
    }
}

// --- promote refused when the canary no longer runs the repo's spec (canary2) ---------

/// `promote_refusal` for web's promote plan of `snap` against `observed`.
fn promote_refusal(snap: &RepoSnapshot, observed: &ObservedState) -> Option<String> {
    let l = loaded(snap);
    let env = &l.envs["t"];
    let s = secrets();
    let origin = Default::default();
    let d =
        Desired { env, files: Arc::new(snap.files.clone()), origin: &origin, secrets: &s, digests: BTreeMap::new() };
    let mode = plan::canary::Mode::Promote("web".into());
    let (p, _) = plan::plan_mode(&d, observed, &Default::default(), &mode).unwrap();
    canary::promote_refusal(env, &p, observed, "web")
}

#[tokio::test]
async fn promote_is_refused_when_a_commit_changed_the_app_during_its_canary() {
    let (_, after, _) = canary_started().await;
    assert_eq!(promote_refusal(&repo(3, CANARY, "b"), &after), None, "the canary runs the repo's spec");
    // Another app changed: web's canary still runs what the repo asks for.
    let mut other = repo(3, CANARY, "b");
    let worker = other.files.get_mut("environments/t/apps/worker.yaml").unwrap();
    *worker = String::from_utf8(worker.clone()).unwrap().replace("img/worker:1", "img/worker:2").into_bytes();
    assert_eq!(promote_refusal(&other, &after), None, "only web's own spec counts");
    // web changed again (every app's env): refused, saying what to run instead.
    let why = promote_refusal(&repo(3, CANARY, "c"), &after).expect("refused");
    for part in
        ["app `web` (web-0)", "reconcile apply --env t", "reconcile abort --env t --app web", "never ran as a canary"]
    {
        assert!(why.contains(part), "{part:?} in {why}");
    }
}

#[tokio::test]
async fn a_held_app_starts_no_canary_again_after_its_abort() {
    let (before, after, _) = canary_started().await;
    let abort = plan::canary::Mode::Abort("web".into());
    let (_, fx, report) = run_mode(&repo(3, CANARY, "b"), &after, &abort, |m| m).await;
    assert!(report.ok(), "{report:?}");
    let aborted = fx.observed();
    // Watch holds web (its canary turned unhealthy): the same spec starts nothing.
    let held = plan::canary::Mode::Held(["web".to_string()].into());
    let (p, fx, report) = run_mode(&repo(3, CANARY, "b"), &aborted, &held, |m| m).await;
    assert!(report.ok(), "{report:?}");
    assert!(p.actions.iter().all(|a| a.app() != Some("web")), "{:#?}", p.actions);
    assert!(p.canaries.is_empty(), "{:?}", p.canaries);
    assert_eq!(webs(&fx.observed()), webs(&before), "the old instances serve on");
    // Not held (apply, or watch after a new commit): the canary starts again.
    let (p, ..) = run(&repo(3, CANARY, "b"), &aborted, |m| m).await;
    assert_eq!(p.canaries[0].state, plan::canary::CanaryState::Start, "{:?}", p.canaries);
}
