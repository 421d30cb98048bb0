//! Canary releases end to end: two real Docker daemons, etcd and a real nginx (the
//! `apply::Stack`), traffic on 127.0.0.1 only. 1 canary beside 3 old instances gets about
//! a quarter of the requests; `promote` ends at 3 new instances without a failed request;
//! `abort` ends at the 3 old ones and no canary key; `traffic: 10%` gives about 10%; a
//! canary that turns unhealthy is aborted by `watch` (and not started again until a new
//! version), told to the local notification receiver; `promote` refuses a canary that a
//! new commit outdated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use super::apply::Stack;
use super::support::{Receiver, WatchProcess, daemons, docker_cli, etcd_get, reconcile, start_load, wait_steady};
use super::{stderr, stdout};

/// The Stack's repo at `version`, 3 web replicas with `update`, and an LB template that
/// writes the weights.
fn write(s: &Stack, version: &str, update: &str) {
    s.write_repo(version, "/", 3);
    let web = std::fs::read_to_string(s.env_dir().join("apps/web.yaml")).unwrap();
    s.write("apps/web.yaml", &format!("{web}update: {update}\n"));
    let lb = std::fs::read_to_string(s.env_dir().join("templates/lb.j2")).unwrap();
    assert!(lb.contains("{{ i.port }};"), "{lb}");
    s.write("templates/lb.j2", &lb.replace("{{ i.port }};", "{{ i.port }} weight={{ i.weight }};"));
}

fn canary_key(s: &Stack) -> String {
    format!("{}/{}/canary/web", s.prefix, s.env)
}

/// The share of `n` GETs through the LB answered by `version`.
fn share(s: &Stack, version: &str, n: usize) -> f64 {
    let want = format!("version={version} ");
    let hits = (0..n).filter(|_| s.get().is_ok_and(|b| b.starts_with(&want))).count();
    hits as f64 / n as f64
}

fn web_containers(s: &Stack) -> usize {
    s.containers().iter().filter(|c| c.1.contains("-web-") && c.2 == "running").count()
}

fn cmd(s: &Stack, what: &str) -> std::process::Output {
    let repo = s.repo();
    reconcile(&[what, "--env", &s.env, "--app", "web", "--repo", &repo, "--timeout", "10s"])
}

#[test]
fn one_canary_of_three_gets_a_quarter_and_promote_loses_no_request() {
    let s = Stack::new("canary", 19);
    let hook = Receiver::start(false);
    write_notifying(&s, &hook, "1", CANARY_1);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    write_notifying(&s, &hook, "2", CANARY_1);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("canary web: 1 of 3 serving"), "{}", stdout(&o));
    assert!(stdout(&o).contains("reconcile promote --env"), "{}", stdout(&o));
    assert_eq!(web_containers(&s), 4, "{:?}", s.containers());
    assert!(etcd_get(&canary_key(&s)).contains("\"instances\""), "no canary record");
    // Binomial bounds: 400 requests, 1/4 ± 0.1.
    let p = share(&s, "2", 400);
    assert!((0.15..=0.35).contains(&p), "canary share {p}");
    // The plan keeps the canary and says so.
    let plan = s.plan_json();
    assert!(plan.actions.iter().all(|a| a.app() != Some("web")), "{:#?}", plan.actions);
    assert_eq!(plan.canaries.len(), 1, "{:?}", plan.canaries);
    // Promote under load: no failed request.
    let stop = Arc::new(AtomicBool::new(false));
    let load =
        start_load(s.lb_port, Duration::from_secs(5), Instant::now(), Arc::clone(&stop), Arc::new(AtomicU64::new(0)));
    let o = cmd(&s, "promote");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = load.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(seen.ok > 0 && seen.failed == 0, "{seen:?}");
    assert_eq!(web_containers(&s), 3, "{:?}", s.containers());
    assert!((share(&s, "2", 30) - 1.0).abs() < f64::EPSILON, "not all new");
    assert_eq!(etcd_get(&canary_key(&s)), "", "the canary key is deleted");
    let promoted = told(&hook, "canary_promoted");
    assert_eq!(promoted.len(), 1, "{:#?}", hook.requests());
    assert!(
        promoted[0]["app"] == "web" && promoted[0]["message"] == "canary web: promoted, 3 of 3 new",
        "{:#}",
        promoted[0]
    );
    assert!(s.plan_json().actions.is_empty());
    let o = cmd(&s, "promote");
    assert_eq!(o.status.code(), Some(1), "promote without a canary: {}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("no canary running"), "{}", stderr(&o));
}

#[test]
fn traffic_ten_percent_and_abort_keeps_the_old_instances() {
    let s = Stack::new("canab", 16);
    let update = "{strategy: canary, canary: 1, traffic: 10%}";
    write(&s, "1", update);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let old: Vec<String> = s.containers().into_iter().filter(|c| c.1.contains("-web-")).map(|c| c.0).collect();
    write(&s, "2", update);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(web_containers(&s), 4, "{:?}", s.containers());
    // 400 requests, 10% ± 0.06 (nginx's weighted round robin is smooth: close to exact).
    let p = share(&s, "2", 400);
    assert!((0.04..=0.16).contains(&p), "canary share {p}");
    let o = cmd(&s, "abort");
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let now: Vec<String> = s.containers().into_iter().filter(|c| c.1.contains("-web-")).map(|c| c.0).collect();
    assert_eq!(now, old, "the old instances, untouched");
    assert_eq!(etcd_get(&canary_key(&s)), "", "the canary key is deleted");
    assert!((share(&s, "1", 30) - 1.0).abs() < f64::EPSILON, "not all old");
}

// --- watch aborts an unhealthy canary; canary notifications; promote refused (canary2) --

/// The Stack's repo (as [`write`]) with a webhook target whose URL (a `from_file` secret)
/// is the local receiver's.
fn write_notifying(s: &Stack, hook: &Receiver, version: &str, update: &str) {
    write(s, version, update);
    let url_file = s.root().join("hook-url");
    std::fs::write(&url_file, hook.url("/hook")).unwrap();
    let env = std::fs::read_to_string(s.env_dir().join("environment.yaml")).unwrap();
    s.write(
        "environment.yaml",
        &format!(
            "{env}secrets:\n  hook_url: {{from_file: '{}'}}\nnotifications:\n  - {{kind: webhook, url: hook_url}}\n",
            url_file.display()
        ),
    );
}

/// The receiver's webhook payloads of `event`.
fn told(hook: &Receiver, event: &str) -> Vec<serde_json::Value> {
    hook.requests()
        .iter()
        .filter_map(|g| serde_json::from_str::<serde_json::Value>(&g.body).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// The running canary's record (panics without one).
fn record(s: &Stack) -> reconcile::model::CanaryRecord {
    let v = etcd_get(&canary_key(s));
    serde_json::from_str(&v).unwrap_or_else(|e| panic!("no canary record ({e}): {v:?}"))
}

fn history_kinds(s: &Stack) -> Vec<String> {
    let o = reconcile(&["history", "--env", &s.env, "--repo", &s.repo(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["entries"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str().map(str::to_string)).collect()
}

/// Ids of the running web containers.
fn web_ids(s: &Stack) -> Vec<String> {
    s.containers().into_iter().filter(|c| c.1.contains("-web-") && c.2 == "running").map(|c| c.0).collect()
}

const CANARY_1: &str = "{strategy: canary, canary: 1}";

/// Version 1 applied (3 web instances), then version 2 (1 canary beside them), each
/// apply exiting 0: the old instances' ids.
fn canary_of_version_2(s: &Stack, hook: &Receiver) -> Vec<String> {
    write_notifying(s, hook, "1", CANARY_1);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let old = web_ids(s);
    assert_eq!(old.len(), 3, "{:?}", s.containers());
    write_notifying(s, hook, "2", CANARY_1);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    old
}

#[test]
fn watch_aborts_a_canary_that_turns_unhealthy_and_tells_it() {
    let s = Stack::new("canwatch", 54);
    let hook = Receiver::start(false);
    // apply starts the canary and tells `canary_started` for web.
    let old = canary_of_version_2(&s, &hook);
    let started = told(&hook, "canary_started");
    assert_eq!(started.len(), 1, "{:#?}", hook.requests());
    assert_eq!(started[0]["app"], "web");
    assert!(started[0]["message"].as_str().unwrap().contains("canary web: 1 of 3 serving"), "{:#}", started[0]);
    let canary = record(&s).instances.remove(0);
    assert_eq!(web_ids(&s).len(), 4);

    // Watch keeps the canary while it is healthy ...
    let mut w = WatchProcess::start(&s.env, &s.repo(), s.root().join("watch.log"), 28354, &[]);
    wait_steady(
        "watch's first run",
        Duration::ZERO,
        || w.metric("reconcile_watch_runs_total{"),
        |n| n.is_some_and(|n| n >= 1.0),
    );
    assert_eq!(w.metric("reconcile_canary_instances{"), Some(1.0), "{}", w.metrics());
    assert_eq!(record(&s).instances[0].container, canary.container, "watch keeps a healthy canary");
    // ... until its page goes away and its health check fails: then it aborts it.
    let daemon = &daemons()[if canary.host == "node-1" { 0 } else { 1 }];
    docker_cli(daemon, &["exec", &canary.container, "rm", "/www/index.html"]);
    let t0 = Instant::now();
    while !history_kinds(&s).iter().any(|k| k == "abort") || told(&hook, "canary_aborted").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no abort within 60 s:\n{}", w.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let aborted = told(&hook, "canary_aborted");
    assert_eq!(aborted[0]["app"], "web", "{:#}", aborted[0]);
    assert!(aborted[0]["message"].as_str().unwrap().contains("aborted"), "{:#}", aborted[0]);
    wait_steady(
        "the failed run in /metrics",
        Duration::ZERO,
        || w.metrics(),
        |m| m.contains("reconcile_watch_failures_total{") && m.contains("stage=\"canary\"} 1"),
    );
    assert!(
        w.metrics().lines().any(|l| l.starts_with("reconcile_watch_runs_total{") && l.contains("result=\"failed\"")),
        "{}",
        w.metrics()
    );
    // Later runs (the removed container's events, the retry) do not start it again.
    std::thread::sleep(Duration::from_secs(5));
    assert!(w.alive(), "{}", w.log());
    assert!(w.log().contains("watch starts no canary for app `web` again"), "{}", w.log());
    assert_eq!(web_ids(&s), old, "the old instances, untouched, and no canary:\n{}", w.log());
    assert_eq!(etcd_get(&canary_key(&s)), "", "the canary key is deleted");
    assert!((share(&s, "1", 30) - 1.0).abs() < f64::EPSILON, "not all old");
    assert_eq!(told(&hook, "canary_started").len(), 1, "no canary started again: {:#?}", hook.requests());
    // A new version lets go: watch starts its canary and tells `canary_started` itself.
    write_notifying(&s, &hook, "3", CANARY_1);
    let t0 = Instant::now();
    while told(&hook, "canary_started").len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no new canary within 60 s:\n{}", w.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(told(&hook, "canary_started")[1]["message"].as_str().unwrap().contains("canary web: 1 of 3 serving"));
    assert!(w.log().contains("canaries start again"), "{}", w.log());
    assert_ne!(record(&s).instances[0].container, canary.container, "a new canary");
    assert_eq!(web_ids(&s).len(), 4, "{:?}", s.containers());
    assert_eq!(w.terminate(), Some(0), "{}", w.log());
}

#[test]
fn promote_refuses_a_canary_that_a_new_commit_outdated_and_abort_still_works() {
    let s = Stack::new("canstale", 55);
    let hook = Receiver::start(false);
    let old = canary_of_version_2(&s, &hook);
    let canary = record(&s);
    // A new commit changes web again while its canary runs version 2.
    write_notifying(&s, &hook, "3", CANARY_1);
    let o = cmd(&s, "promote");
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("never ran as a canary"), "{err}");
    assert!(err.contains(&format!("reconcile apply --env {}", s.env)), "{err}");
    assert!(err.contains(&format!("reconcile abort --env {} --app web", s.env)), "{err}");
    assert_eq!(record(&s), canary, "nothing changed");
    assert_eq!(web_ids(&s).len(), 4, "{:?}", s.containers());
    assert!(history_kinds(&s).iter().all(|k| k != "promote"), "{:?}", history_kinds(&s));
    assert!(told(&hook, "canary_promoted").is_empty(), "a refused promote tells nothing: {:#?}", hook.requests());
    // Abort is never refused, and tells `canary_aborted` for web (the environment's
    // event stays `apply_succeeded`).
    let o = cmd(&s, "abort");
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(web_ids(&s), old);
    assert_eq!(etcd_get(&canary_key(&s)), "");
    let aborted = told(&hook, "canary_aborted");
    assert_eq!(aborted.len(), 1, "{:#?}", hook.requests());
    assert_eq!(aborted[0]["app"], "web");
    let last = hook.requests().last().and_then(|g| serde_json::from_str::<serde_json::Value>(&g.body).ok()).unwrap();
    assert!(last["event"] == "apply_succeeded" && last["app"].is_null(), "{last:#}");
}
