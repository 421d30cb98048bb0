//! `apply --report` against the in-memory world: the executor records each milestone
//! right after the effect that made it true, in order, and the report built from the
//! timeline says so (times, statuses, RTO), validates against schema/report.schema.json
//! and holds no secret. The clock is the number of effects done so far, so an event's
//! time points at the call just before it.

use super::report::{self, AppStatus, Outcome, RecoveryReport, Timeline};
use super::*;

/// The calls made so far as the clock: an event at `t` ms happened right after call `t - 1`.
fn clocked(fx: &Arc<Memory>) -> Arc<Timeline> {
    let fx = Arc::clone(fx);
    Arc::new(Timeline::new(Arc::new(move || Duration::from_millis(fx.calls().len() as u64))))
}

/// [`run`] with a timeline: the plan, the world, the executor's report and the recovery report.
async fn run_timed(
    snap: &RepoSnapshot,
    observed: &ObservedState,
    world: impl FnOnce(Memory) -> Memory,
) -> (Plan, Arc<Memory>, Report, RecoveryReport) {
    let l = loaded(snap);
    let env = &l.envs["t"];
    let s = secrets();
    let origin = Default::default();
    let files = Arc::new(snap.files.clone());
    let d = Desired { env, files: Arc::clone(&files), origin: &origin, secrets: &s, digests: BTreeMap::new() };
    let (p, specs) = plan::plan_with_specs(&d, observed).unwrap();
    let fx = Arc::new(world(Memory::new(observed, &p)));
    let timeline = clocked(&fx);
    timeline.execution_started();
    let job = Job { env, files, plan: &p, specs: &specs, observed, secrets: &s };
    let done =
        execute_recorded(&*fx, job, super::options(), DRAIN.into(), Arc::new(|_| {}), Some(Arc::clone(&timeline)))
            .await;
    let events = timeline.events();
    let r = report::build(&report::Facts {
        env,
        origin: &origin,
        started: "2026-12-01T00:00:00Z".into(),
        outcome: Some(&done),
        events: &events,
        execution_started: timeline.execution_started_at(),
        finished: timeline.now(),
    });
    (p, fx, done, r)
}

/// The call just before `ms` on the memory world's clock.
fn call_before(calls: &[String], ms: u64) -> &str {
    calls[usize::try_from(ms).unwrap() - 1].as_str()
}

fn address(host: &str) -> &'static str {
    if host == "h1" { "127.0.0.1" } else { "127.0.0.2" }
}

fn schema_errors(r: &RecoveryReport) -> Vec<String> {
    let schema: serde_json::Value = serde_json::from_str(crate::spec::schema::REPORT).unwrap();
    let v = jsonschema::draft202012::new(&schema).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&report::json(r)).unwrap();
    v.iter_errors(&doc).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

#[tokio::test]
async fn a_cold_apply_records_every_milestone_right_after_its_effect() {
    let (p, fx, done, r) = run_timed(&repo(2, "", "a"), &empty(), |m| m).await;
    assert!(done.ok(), "{done:?}");
    let calls = fx.calls();
    assert_eq!(r.outcome, Outcome::Complete);
    for app in ["db", "web", "edge", "worker"] {
        let a = &r.apps[app];
        assert_eq!(a.status, AppStatus::Serving, "{app}: {a:?}");
        assert_eq!(a.lb, app == "web", "{app}");
        assert!(a.registry, "{app}");
        let news = creates(&p, app);
        assert_eq!(a.instances.len(), news.len(), "{app}: one entry per instance created");
        for new in news {
            let (name, i) = a.instances.iter().find(|(_, i)| i.port == new.port && i.host == new.host).unwrap();
            let (healthy, registered, serving) =
                (i.healthy_ms.unwrap(), i.registered_ms.unwrap(), i.serving_ms.unwrap());
            assert!(i.created_ms <= healthy && healthy <= registered && registered <= serving, "{name}: {i:?}");
            assert_eq!(call_before(&calls, i.created_ms), format!("start {}", new.container_name), "{name}");
            let health =
                if app == "worker" { "sleep 300ms".to_string() } else { format!("healthy {}", new.container_name) };
            assert_eq!(call_before(&calls, healthy), health, "{name}");
            let key = keys::registry("/services", app, "t", address(&new.host), new.port.unwrap());
            assert_eq!(call_before(&calls, registered), format!("put {key}"), "{name}");
            if app == "web" {
                // Serving through the LB: a reload happened after the registration.
                let between = &calls[usize::try_from(registered).unwrap()..usize::try_from(serving).unwrap()];
                assert!(between.iter().any(|c| c == "lb reload"), "{name}: {between:?}");
            } else {
                assert_eq!(serving, registered, "{name}: without an LB an instance serves once registered");
            }
        }
        assert_eq!(a.serving_ms, a.instances.values().filter_map(|i| i.serving_ms).max(), "{app}");
    }
    // Dependencies first: web starts only once db serves, edge once web serves.
    let first_created = |app: &str| r.apps[app].instances.values().map(|i| i.created_ms).min().unwrap();
    assert!(r.apps["db"].serving_ms.unwrap() <= first_created("web"));
    assert!(r.apps["web"].serving_ms.unwrap() <= first_created("edge"));
    let last = r.apps.values().filter_map(|a| a.serving_ms).max();
    assert_eq!(r.rto_ms, last);
    assert_eq!(r.time_to_serving_ms, Some(last.unwrap() - r.execution_started_ms.unwrap()));
    assert!(r.rto_ms.unwrap() <= r.finished_ms);
    assert_eq!(schema_errors(&r), Vec::<String>::new());
    let md = report::markdown(&r);
    let rto = last.unwrap();
    assert!(md.contains(&format!("| **RTO** | **{}.{:03} s**", rto / 1000, rto % 1000)), "{md}");
    assert!(md.contains("| web | serving | LB | 2 |"), "{md}");
    for text in [report::json(&r), md] {
        assert!(!text.contains("hunter2"), "a secret value leaked into the report:\n{text}");
    }
}

#[tokio::test]
async fn a_failed_health_check_leaves_no_rto_and_names_the_app() {
    let (_, _, done, r) =
        run_timed(&repo(2, "", "a"), &empty(), |m| m.unhealthy("web-0", "boom hunter2-very-secret")).await;
    assert!(!done.ok());
    assert_eq!(r.outcome, Outcome::Incomplete);
    assert_eq!(r.apps["db"].status, AppStatus::Serving);
    assert_eq!(r.apps["web"].status, AppStatus::Failed);
    assert!(r.apps["web"].instances["web-0"].serving_ms.is_none(), "{:?}", r.apps["web"]);
    // edge depends on web: not started, so nothing of it was timed.
    assert_eq!(r.apps["edge"].status, AppStatus::Failed);
    assert!(r.apps["edge"].instances.is_empty());
    assert_eq!((r.rto_ms, r.time_to_serving_ms), (None, None));
    assert_eq!(schema_errors(&r), Vec::<String>::new());
    let md = report::markdown(&r);
    assert!(md.contains("| web | **failed** |") && md.contains("## Errors"), "{md}");
    assert!(!md.contains("hunter2") && !report::json(&r).contains("hunter2"), "{md}");
}

#[tokio::test]
async fn a_rolling_replace_times_the_new_instances_not_the_old_ones() {
    let before = deployed(&repo(2, "", "a")).await;
    let (p, fx, done, r) = run_timed(&repo(2, "", "b"), &before, |m| m).await;
    assert!(done.ok(), "{done:?}");
    let calls = fx.calls();
    let web = &r.apps["web"];
    assert_eq!(web.status, AppStatus::Serving);
    for (old, new) in replaces(&p, "web") {
        let i = web.instances.values().find(|i| i.port == new.port && i.host == new.host).unwrap();
        assert_ne!((old.host.as_str(), old.port), (i.host.as_str(), i.port), "side by side: a fresh port");
        let (registered, serving) = (i.registered_ms.unwrap(), i.serving_ms.unwrap());
        let between = &calls[usize::try_from(registered).unwrap()..usize::try_from(serving).unwrap()];
        assert!(between.iter().any(|c| c == "lb reload"), "{between:?}");
        // The new instance serves before its old one is stopped.
        let stopped = calls.iter().position(|c| *c == format!("stop {}", old.container_name)).unwrap();
        assert!(usize::try_from(serving).unwrap() <= stopped, "{calls:?}");
    }
    assert!(r.rto_ms.is_some());
    assert_eq!(schema_errors(&r), Vec::<String>::new());
}

#[test]
fn nothing_executed_is_reported_as_no_changes() {
    let l = loaded(&repo(1, "", "a"));
    let r = report::build(&report::Facts {
        env: &l.envs["t"],
        origin: &Default::default(),
        started: "2026-12-01T00:00:00Z".into(),
        outcome: None,
        events: &[],
        execution_started: None,
        finished: Duration::from_millis(42),
    });
    assert_eq!(r.outcome, Outcome::NoChanges);
    assert!(r.apps.values().all(|a| a.status == AppStatus::Unchanged));
    assert_eq!((r.rto_ms, r.finished_ms), (None, 42));
    assert_eq!(schema_errors(&r), Vec::<String>::new());
}

/// [`repo`] plus `n` LB-backed apps `lb1`…`lbn` without dependencies (2 replicas, http
/// check): with db and worker, one dependency level of `n` + 2 apps.
fn with_lb_apps(n: usize) -> RepoSnapshot {
    let mut snap = repo(2, "", "a");
    for k in 1..=n {
        let app = format!(
            "apiVersion: reconcile/v1\nkind: App\nname: lb{k}\nimage: img/lb{k}:1\nport: 8080\nregistry: true\n\
             replicas: 2\nlb: {{host: lb{k}.test}}\nhealth: {{http: /healthz}}\n"
        );
        snap.files.insert(format!("environments/t/apps/lb{k}.yaml"), app.into_bytes());
    }
    snap
}

#[tokio::test]
async fn apps_that_finish_together_share_lb_reloads_and_each_serves_only_once_the_lb_has_it() {
    let (p, fx, done, r) = run_timed(&with_lb_apps(4), &empty(), Memory::slow_lb).await;
    assert!(done.ok(), "{done:?}");
    let calls = fx.calls();
    // The four lb apps came up together (db and worker beside them, web after db).
    let web_first_create =
        creates(&p, "web").iter().map(|n| pos(&calls, &format!("create {}", n.container_name))).min();
    let level_one = &calls[..web_first_create.unwrap()];
    let reloads = level_one.iter().filter(|c| *c == "lb reload").count();
    assert!((1..4).contains(&reloads), "4 apps, {reloads} reloads: {level_one:#?}");
    // Yet an instance is reported serving only once the LB runs a config with it.
    for k in 1..=4 {
        let app = &r.apps[&format!("lb{k}")];
        assert_eq!(app.status, AppStatus::Serving, "lb{k}: {app:?}");
        for (name, i) in &app.instances {
            let serving = usize::try_from(i.serving_ms.unwrap()).unwrap();
            let live = fx.lb_live_at("default", serving).unwrap_or_default();
            let at = format!("{}:{}", address(&i.host), i.port.unwrap());
            assert!(live.contains(&at), "{name} ({at}) reported serving at {serving}, the LB ran:\n{live}");
        }
    }
    // And the end is what the model says.
    let model = simulate(&p, &empty(), "");
    assert_eq!(running(&fx.observed()), running(&model));
    assert_eq!(fx.lb_live(), model.lbs.get("default").cloned().flatten(), "the LB serves the final file");
}
