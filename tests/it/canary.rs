//! Canary releases end to end: two real Docker daemons, etcd and a real nginx (the
//! `apply::Stack`), traffic on 127.0.0.1 only. 1 canary beside 3 old instances gets about
//! a quarter of the requests; `promote` ends at 3 new instances without a failed request;
//! `abort` ends at the 3 old ones and no canary key; `traffic: 10%` gives about 10%.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use super::apply::Stack;
use super::support::{etcd_get, reconcile, start_load};
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
    let update = "{strategy: canary, canary: 1}";
    write(&s, "1", update);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    write(&s, "2", update);
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
