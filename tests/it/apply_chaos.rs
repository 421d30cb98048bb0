//! `reconcile apply` under stress, against the real test environment (two Docker
//! daemons, etcd, an nginx per test; see `apply::Stack`):
//! - a rolling update under load loses no request (nginx with `proxy_next_upstream off`);
//! - SIGKILL at many points of an apply, then a normal apply: the contract's crash
//!   invariants hold (no duplicates, no registry entry or upstream pointing at a dead
//!   instance, lock free, nothing left to plan);
//! - one app failing while an independent one succeeds, with a blocked dependent;
//! - saved plans (applied as is; refused when stale);
//! - no confirmation possible without a TTY (refused, lock released);
//! - a crash between writing the LB file and reloading the LB (the file is right, the
//!   running LB is not): the next apply still reloads before it stops anything.
//!
//! Port slots 10..=15 (tests/it/apply.rs uses 0..=3).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::apply::{Stack, http_get_at, var};
pub use super::support::{Managed, etcd_get, managed_env, registry_under};
use super::support::{WEB_REQUEST, app_yaml, daemons, http_exchange, reconcile_cmd, spawn_piped, start_load};
use super::{stderr, stdout};

/// The apply lock's lease TTL for the kill test (`RECONCILE_LOCK_TTL`): a SIGKILLed
/// apply's lock expires after this instead of the default 15 s.
const KILL_TEST_LOCK_TTL: &str = "2s";

/// Trials of `sigkill_at_any_point_then_apply_converges`: `RECONCILE_SOAK_TRIALS` (a soak
/// run: `RECONCILE_SOAK_TRIALS=200 cargo test --test it sigkill_at_any_point`), default 12.
const SOAK_TRIALS_VAR: &str = "RECONCILE_SOAK_TRIALS";
const DEFAULT_KILL_TRIALS: usize = 12;

/// How long one GET through the LB may take to answer under load before it counts as failed.
const LOAD_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// `reconcile ARGS` from the project root, with `envs` set.
fn cmd(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = reconcile_cmd(args);
    c.envs(envs.iter().copied());
    c
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    cmd(args, envs).stdin(Stdio::null()).output().unwrap()
}

pub fn managed(s: &Stack) -> Vec<Managed> {
    managed_env(&s.env)
}

/// Registry entries under the Stack's registry prefix: key → value.
pub fn registry_values(s: &Stack) -> BTreeMap<String, String> {
    registry_under(&s.prefix)
}

/// `address:port` of every live `server` line of the LB file (`… down;` placeholders skipped).
pub fn lb_upstreams(s: &Stack) -> BTreeSet<String> {
    std::fs::read_to_string(s.lb_file())
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server ") && l.ends_with(';') && !l.contains(" down"))
        .map(|l| l.trim_start_matches("server ").trim_end_matches(';').trim().to_string())
        .collect()
}

#[test]
fn rolling_update_under_load_loses_no_request() {
    let s = Stack::new("roll", 10);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let web: Vec<Managed> = managed(&s).into_iter().filter(|m| m.app == "web").collect();
    assert_eq!(web.len(), 2, "{web:?}");
    let daemons: BTreeSet<usize> = web.iter().map(|m| m.daemon).collect();
    assert_eq!(daemons.len(), 2, "web is spread over both daemons: {web:?}");
    assert!(s.get().unwrap().starts_with("version=1 "), "{:?}", s.get());

    s.write_repo("2", "/", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let load = start_load(s.lb_port, LOAD_READ_TIMEOUT, Instant::now(), Arc::clone(&stop), Arc::clone(&made));
    std::thread::sleep(Duration::from_millis(300)); // traffic flows before the apply starts
    let (t0, made_before) = (Instant::now(), made.load(Ordering::SeqCst));
    let o = s.apply(&[]);
    let (rollout, during) = (t0.elapsed(), made.load(Ordering::SeqCst) - made_before);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let r = load.join().unwrap();
    eprintln!(
        "rolling update under load: apply took {:.2}s with {during} requests during it; in all {} ok, {} failed; \
         answers per version {:?}; first/last seen {:?} / {:?} (s since load start; the apply started at ~0.30s)",
        rollout.as_secs_f64(),
        r.ok,
        r.failed,
        r.versions,
        r.first_seen,
        r.last_seen
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        r.failed,
        0,
        "requests failed during the rollout (s since load start, reason): {:#?}\napply's log:\n{}\nnginx error.log:\n{}",
        r.errors,
        stderr(&o),
        std::fs::read_to_string(s.root().join("nginx/error.log")).unwrap_or_default()
    );
    assert!(during >= 300, "too few requests during the rollout to prove anything: {during}");
    assert!(r.versions.get("version=1").is_some_and(|n| *n > 0), "{:?}", r.versions);
    assert!(r.versions.get("version=2").is_some_and(|n| *n > 0), "{:?}", r.versions);
    let after: Vec<Managed> = managed(&s).into_iter().filter(|m| m.app == "web").collect();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|m| m.state == "running" && web.iter().all(|w| w.id != m.id)), "{after:?}");
}

/// The crash invariants after a converging apply of `version`; each violation as a line.
fn crash_invariants(s: &Stack, version: &str, envs: &[(&str, &str)]) -> Vec<String> {
    let mut bad = Vec::new();
    let repo = s.repo();
    // Nothing left to plan.
    let o = run(&["plan", "--env", &s.env, "--repo", &repo, "--format", "json"], envs);
    if o.status.code() == Some(0) {
        let p: reconcile::plan::Plan = serde_json::from_slice(&o.stdout).unwrap();
        if !p.actions.is_empty() {
            bad.push(format!("plan after apply is not empty: {}", p.summary));
        }
    } else {
        bad.push(format!("plan failed: {}", stderr(&o)));
    }
    // Exactly one container per instance, running.
    let m = managed(s);
    let mut per: BTreeMap<&str, Vec<&Managed>> = BTreeMap::new();
    for c in &m {
        per.entry(c.instance.as_str()).or_default().push(c);
    }
    let want: BTreeSet<&str> = ["web-0", "web-1", "worker-0"].into();
    if per.keys().copied().collect::<BTreeSet<_>>() != want {
        bad.push(format!("instances {:?}, want {want:?}", per.keys().collect::<Vec<_>>()));
    }
    for (i, cs) in &per {
        if cs.len() != 1 {
            bad.push(format!("{i}: {} containers (duplicates): {cs:?}", cs.len()));
        }
        if cs.iter().any(|c| c.state != "running") {
            bad.push(format!("{i}: not running: {cs:?}"));
        }
    }
    // Registry: exactly the running web instances, each answering 200 with the new version.
    let running: BTreeSet<String> = m
        .iter()
        .filter(|c| c.app == "web" && c.state == "running")
        .filter_map(|c| c.port.map(|p| format!("{}:{p}", c.address())))
        .collect();
    let reg = registry_values(s);
    let reg_addrs: BTreeSet<String> = reg.values().cloned().collect();
    if reg_addrs != running {
        bad.push(format!("registry {reg:?} != running web instances {running:?}"));
    }
    for (k, v) in &reg {
        let (ip, port) = v.rsplit_once(':').unwrap_or((v, "0"));
        match http_get_at(ip, port.parse().unwrap_or(0)) {
            Ok(body) if body.starts_with(&format!("version={version} ")) => {}
            other => bad.push(format!("registry entry {k} = {v} does not answer version {version}: {other:?}")),
        }
    }
    // LB upstreams: exactly the running web instances; the LB serves the new version.
    let ups = lb_upstreams(s);
    if ups != running {
        bad.push(format!("LB upstreams {ups:?} != running web instances {running:?}"));
    }
    match s.get() {
        Ok(body) if body.starts_with(&format!("version={version} ")) => {}
        other => bad.push(format!("GET through the LB: {other:?}")),
    }
    // The lock is free: a further apply does not wait for it.
    let o = run(&["apply", "--env", &s.env, "--repo", &repo, "--yes", "--lock-timeout", "1s"], envs);
    if o.status.code() != Some(0) || stderr(&o).contains("waiting for the apply lock") {
        bad.push(format!("apply after recovery (lock free?): exit {:?}: {}", o.status.code(), stderr(&o)));
    }
    bad
}

/// What a killed apply left: containers per instance (state, `*` = not yet running the
/// new version's spec… shown by state only), registry entries, LB upstreams.
fn left_behind(s: &Stack) -> String {
    let mut per: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in managed(s).into_iter().filter(|c| c.app == "web") {
        per.entry(c.instance).or_default().push(c.state);
    }
    let containers: Vec<String> = per.iter().map(|(i, st)| format!("{i}[{}]", st.join(","))).collect();
    format!("{} reg={} ups={}", containers.join(" "), registry_values(s).len(), lb_upstreams(s).len())
}

/// Deterministic delays spread over `0.05 s ..= span`: one per equal slice, at a
/// pseudo-random point of it (a fixed-seed LCG).
fn kill_delays(n: usize, span: Duration, seed: u64) -> Vec<Duration> {
    let mut x = seed;
    let lo = 50.0;
    let width = (span.as_secs_f64() * 1000.0 - lo).max(100.0) / n as f64;
    (0..n)
        .map(|i| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let frac = (x >> 11) as f64 / (1u64 << 53) as f64;
            Duration::from_millis((lo + width * (i as f64 + frac)) as u64)
        })
        .collect()
}

#[test]
fn sigkill_at_any_point_then_apply_converges() {
    let trials = match std::env::var(SOAK_TRIALS_VAR) {
        Ok(v) => v.parse::<usize>().ok().filter(|n| *n > 0).unwrap_or_else(|| {
            panic!("{SOAK_TRIALS_VAR}={v:?} is not a number of trials: set a whole number ≥ 1 or unset it (default {DEFAULT_KILL_TRIALS})")
        }),
        Err(_) => DEFAULT_KILL_TRIALS,
    };
    let s = Stack::new("kill", 14);
    let envs = [("RECONCILE_LOCK_TTL", KILL_TEST_LOCK_TTL)];
    let repo = s.repo();
    let apply_args = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = ["apply", "--env", &s.env, "--repo", &repo, "--yes", "--timeout", "10s"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let run_apply = |extra: &[&'static str]| {
        let a = apply_args(extra);
        run(&a.iter().map(String::as_str).collect::<Vec<_>>(), &envs)
    };
    let o = run_apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // How long an undisturbed rolling update takes: the kills are spread over it.
    s.write_repo("base", "/", 2);
    let t0 = Instant::now();
    let o = run_apply(&[]);
    let full = t0.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let bad = crash_invariants(&s, "base", &envs);
    assert!(bad.is_empty(), "before any kill: {bad:#?}");

    let seed = 0x5eed_c0de;
    let delays = kill_delays(trials, full.max(Duration::from_secs(2)), seed);
    eprintln!("undisturbed rolling update: {:.2}s; kill delays (seed {seed:#x}): {delays:?}", full.as_secs_f64());
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    for (trial, delay) in delays.iter().enumerate() {
        let version = format!("k{trial}");
        s.write_repo(&version, "/", 2);
        let a = apply_args(&["--lock-timeout", "30s"]);
        let mut child = spawn_piped(&mut cmd(&a.iter().map(String::as_str).collect::<Vec<_>>(), &envs));
        std::thread::sleep(*delay);
        let killed = match child.try_wait().unwrap() {
            Some(status) => format!("finished first ({status})"),
            None => {
                child.kill().unwrap(); // SIGKILL
                "SIGKILL".to_string()
            }
        };
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        let last_step = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output yet)").to_string();
        let left = left_behind(&s);
        let t = Instant::now();
        let o = run_apply(&["--lock-timeout", "30s"]);
        let recovery = t.elapsed();
        let mut bad = Vec::new();
        if o.status.code() != Some(0) {
            bad.push(format!("recovery apply exit {:?}: {}{}", o.status.code(), stdout(&o), stderr(&o)));
        }
        bad.extend(crash_invariants(&s, &version, &envs));
        let row = format!(
            "trial {trial:>2}: kill after {:>5} ms: {killed:<10.24} last step: {last_step:<60.60} | left: {left} | recovery {:.2}s: {}",
            delay.as_millis(),
            recovery.as_secs_f64(),
            if bad.is_empty() { "ok".to_string() } else { format!("{} VIOLATION(S)", bad.len()) }
        );
        eprintln!("{row}");
        rows.push(row);
        if !bad.is_empty() {
            failures.push(format!("trial {trial} (kill after {} ms): {bad:#?}", delay.as_millis()));
        }
    }
    eprintln!("{} trials in {:.1}s", delays.len(), started.elapsed().as_secs_f64());
    let killed = rows.iter().filter(|r| r.contains("SIGKILL")).count();
    // At least 10 of every 12 applies are really killed mid-way (10 of the default 12).
    let need = (delays.len() * 10).div_ceil(12);
    assert!(killed >= need, "at least {need} applies must really be killed mid-way:\n{}", rows.join("\n"));
    assert!(failures.is_empty(), "invariant violations:\n{}", failures.join("\n"));
}

#[test]
fn one_app_fails_independent_work_is_done_dependents_are_not_started() {
    let s = Stack::new("part", 11);
    let env_file = s.env_dir().join("environment.yaml");
    // An unreachable host: observing fails, naming it, and nothing is done (by design: no
    // plan that silently leaves a host out).
    let good = std::fs::read_to_string(&env_file).unwrap();
    let broken = good.replace(&var("RECONCILE_TEST_DOCKER2"), "unix:///nonexistent/reconcile-it-docker.sock");
    assert_ne!(good, broken);
    std::fs::write(&env_file, broken).unwrap();
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("node-2"), "the error names the host: {}", stderr(&o));
    eprintln!("with node-2 unreachable: {}", stderr(&o).trim());
    assert!(managed(&s).is_empty(), "{:?}", managed(&s));

    // Reachable again. `web` (node-1 only) never gets healthy; `solo` (node-2 only) does
    // not depend on it; `worker` depends on `web`.
    s.write_repo("1", "/nope", 1);
    let web_file = s.env_dir().join("apps/web.yaml");
    let web = std::fs::read_to_string(&web_file).unwrap();
    std::fs::write(&web_file, format!("{web}placement: {{hosts: [node-1]}}\n")).unwrap();
    s.write(
        "apps/solo.yaml",
        &app_yaml(
            "solo",
            &var("RECONCILE_TEST_IMAGE2"),
            "[/bin/busybox, sleep, '3600']",
            "placement: {hosts: [node-2]}\nstop_timeout: 1s\n",
        ),
    );
    let o = s.apply(&[]);
    let (out, err) = (stdout(&o), stderr(&o));
    eprintln!("{out}");
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("app solo: ok"), "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("app web: FAILED: ") && l.contains("404")), "{out}{err}");
    assert!(out.contains("app worker: FAILED: not started: dependency web failed"), "{out}{err}");
    assert!(out.contains("apply incomplete"), "{out}");
    let m = managed(&s);
    assert!(
        m.iter().any(|c| c.app == "solo" && c.daemon == 1 && c.state == "running"),
        "the independent app runs on node-2: {m:?}"
    );
    assert!(m.iter().all(|c| c.app == "solo"), "no web (removed after its failed check), no worker: {m:?}");

    // The next apply picks up where this one stopped.
    s.write_repo("1", "/", 1);
    std::fs::write(
        &web_file,
        format!("{}placement: {{hosts: [node-1]}}\n", std::fs::read_to_string(&web_file).unwrap()),
    )
    .unwrap();
    let solo_id = m.iter().find(|c| c.app == "solo").unwrap().id.clone();
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("app web: ok") && stdout(&o).contains("app worker: ok"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("app solo"), "solo had nothing to do: {}", stdout(&o));
    let m = managed(&s);
    assert!(m.iter().any(|c| c.id == solo_id), "solo untouched: {m:?}");
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(s.get().unwrap().starts_with("version=1 "));
}

#[test]
fn saved_plan_applies_as_is_and_is_refused_when_stale() {
    let s = Stack::new("saved", 12);
    let repo = s.repo();
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    // Saved, then applied without --yes and without a terminal.
    s.write_repo("2", "/", 2);
    let file = s.root().join("v2.plan.json");
    let file_s = file.to_string_lossy().into_owned();
    let o = run(&["plan", "--env", &s.env, "--repo", &repo, "--out", &file_s], &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["apply", "--repo", &repo, &file_s], &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("app web: ok"), "{}", stdout(&o));
    assert!(s.get().unwrap().starts_with("version=2 "), "{:?}", s.get());
    assert!(s.plan_json().actions.is_empty());

    // Saved, then the world changes out of band: refused, nothing changed.
    s.write_repo("3", "/", 2);
    let file = s.root().join("v3.plan.json");
    let file_s = file.to_string_lossy().into_owned();
    let o = run(&["plan", "--env", &s.env, "--repo", &repo, "--out", &file_s], &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let victim = managed(&s).into_iter().find(|m| m.app == "web").unwrap();
    let d = daemons()[victim.daemon].clone();
    let rm = Command::new("docker").args(["-H", &d, "rm", "-f", &victim.id]).output().unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    let before = (s.containers(), registry_values(&s), std::fs::read_to_string(s.lb_file()).unwrap());
    let config_key = format!("{}/{}/config/web/version", s.prefix, s.env);
    assert_eq!(etcd_get(&config_key), "2");
    let o = run(&["apply", "--repo", &repo, &file_s], &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("stale plan"), "{}", stderr(&o));
    let after = (s.containers(), registry_values(&s), std::fs::read_to_string(s.lb_file()).unwrap());
    assert_eq!(before, after, "nothing changed");
    assert_eq!(etcd_get(&config_key), "2", "the config center was not written");
}

#[test]
fn apply_without_a_terminal_refuses_to_ask_and_releases_the_lock() {
    let s = Stack::new("notty", 13);
    let repo = s.repo();
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    s.write_repo("2", "/", 2);
    let before = (s.containers(), registry_values(&s), std::fs::read_to_string(s.lb_file()).unwrap());
    // No --yes, stdin not a terminal (null): nobody to ask.
    let o = run(&["apply", "--env", &s.env, "--repo", &repo], &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("stdin is not a terminal") && stderr(&o).contains("--yes"), "{}", stderr(&o));
    let after = (s.containers(), registry_values(&s), std::fs::read_to_string(s.lb_file()).unwrap());
    assert_eq!(before, after, "nothing changed");
    // The lock was released at once (its lease would hold it for 15 s otherwise).
    let t0 = Instant::now();
    let o = run(&["apply", "--env", &s.env, "--repo", &repo, "--yes", "--lock-timeout", "2s"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(!stderr(&o).contains("waiting for the apply lock"), "{}", stderr(&o));
    eprintln!("apply after the refused one: {:.2}s, no lock wait", t0.elapsed().as_secs_f64());
    assert!(s.get().unwrap().starts_with("version=2 "));
}

#[test]
fn crash_between_lb_write_and_reload_is_repaired_before_anything_stops() {
    let s = Stack::new("reload", 15);
    s.write_repo("1", "/", 3);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // Scale down to 2, and play the apply that got killed right after writing the LB file
    // without web-2 (and deregistering it), before its `nginx -s reload`.
    s.write_repo("1", "/", 2);
    let p = s.plan_json();
    let content = p
        .actions
        .iter()
        .find_map(|a| match a {
            reconcile::plan::Action::WriteLb { content, .. } => Some(content.clone()),
            _ => None,
        })
        .expect("the scale-down rewrites the LB file");
    std::fs::write(s.lb_file(), content).unwrap();
    let web2 = managed(&s).into_iter().find(|m| m.instance == "web-2").unwrap();
    let key = format!("{}-reg/web_{}/{}-{}", s.prefix, s.env, web2.address(), web2.port.unwrap());
    let o = Command::new("etcdctl").args(["--endpoints", &var("RECONCILE_TEST_ETCD"), "del", &key]).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "1", "{}", stdout(&o));
    // The running nginx still sends a third of the requests to web-2; the file says it does not.
    let p = s.plan_json();
    assert!(
        p.actions.iter().all(|a| !matches!(a, reconcile::plan::Action::WriteLb { .. })),
        "the file already matches: {:#?}",
        p.actions
    );

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let load = start_load(s.lb_port, LOAD_READ_TIMEOUT, Instant::now(), Arc::clone(&stop), Arc::clone(&made));
    std::thread::sleep(Duration::from_millis(300));
    let o = s.apply(&[]);
    // Traffic after web-2 is gone: every request must still be answered.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let r = load.join().unwrap();
    eprintln!("scale-down after a crash before the LB reload: {} ok, {} failed", r.ok, r.failed);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(managed(&s).iter().all(|m| m.instance != "web-2"), "{:?}", managed(&s));
    assert_eq!(r.failed, 0, "requests failed: {:#?}\n{}", r.errors, stderr(&o));
    assert!(r.ok >= 100, "{}", r.ok);
}

#[test]
fn a_frozen_apply_that_lost_its_lock_stops_writing() {
    let s = Stack::new("frozen", 16);
    let envs = [("RECONCILE_LOCK_TTL", KILL_TEST_LOCK_TTL)];
    let repo = s.repo();
    let args = ["apply", "--env", &s.env, "--repo", &repo, "--yes", "--lock-timeout", "30s"];
    let o = run(&args, &envs);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    s.write_repo("2", "/", 2);
    // Apply A freezes mid-rollout (a stalled host) for longer than the lock's TTL…
    let a = spawn_piped(&mut cmd(&args, &envs));
    let pid = a.id().to_string();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_secs(4));
    // …so apply B takes the lock and converges…
    let b = run(&args, &envs);
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert_eq!(b.status.code(), Some(0), "{}{}", stdout(&b), stderr(&b));
    // …and A, thawed, notices and stops writing instead of undoing B's work.
    let a = a.wait_with_output().unwrap();
    eprintln!("thawed apply: exit {:?}\n{}{}", a.status.code(), stdout(&a), stderr(&a));
    assert_eq!(a.status.code(), Some(1), "{}{}", stdout(&a), stderr(&a));
    assert!(stdout(&a).contains("apply lock") && stdout(&a).contains("was lost"), "{}", stdout(&a));
    let bad = crash_invariants(&s, "2", &envs);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The raw response (status line and headers included) of GET / through the LB.
fn get_raw(port: u16) -> String {
    http_exchange("127.0.0.1", port, WEB_REQUEST, None, Duration::from_secs(2)).0
}

#[test]
fn an_lb_reload_that_did_not_happen_is_redone_by_the_next_apply() {
    let s = Stack::new("pending", 18);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let env_file = s.env_dir().join("environment.yaml");
    let template = s.env_dir().join("templates/lb.j2");
    let real_env = std::fs::read_to_string(&env_file).unwrap();
    let reload_line = real_env.lines().find(|l| l.trim_start().starts_with("reload:")).unwrap().to_string();
    // A visible LB change, and a reload that does not happen (the command fails, as if the
    // apply had been killed right after writing the file).
    let t = std::fs::read_to_string(&template).unwrap();
    std::fs::write(
        &template,
        t.replace("proxy_next_upstream off;", "proxy_next_upstream off; add_header X-Rev two always;"),
    )
    .unwrap();
    std::fs::write(&env_file, real_env.replace(&reload_line, "  reload: ['false']")).unwrap();
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(1), "the reload failed: {}{}", stdout(&o), stderr(&o));
    assert!(std::fs::read_to_string(s.lb_file()).unwrap().contains("X-Rev"), "the file was written");
    let pending = format!("{}/{}/lb/reload-pending", s.prefix, s.env);
    assert_ne!(etcd_get(&pending), "", "the reload is marked pending");
    assert!(!get_raw(s.lb_port).contains("X-Rev"), "nginx still runs the old config");

    // The next plan (the file already right) reloads; apply does it and clears the mark.
    std::fs::write(&env_file, &real_env).unwrap();
    let p = s.plan_json();
    assert_eq!(p.actions, vec![reconcile::plan::Action::ReloadLb { lb: "default".into() }], "{:#?}", p.actions);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(etcd_get(&pending), "", "the mark is gone after the reload");
    let t0 = std::time::Instant::now();
    while !get_raw(s.lb_port).contains("X-Rev: two") {
        assert!(t0.elapsed() < Duration::from_secs(10), "nginx never loaded the new config: {}", get_raw(s.lb_port));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.plan_json().actions.is_empty(), "{:#?}", s.plan_json().actions);
}
