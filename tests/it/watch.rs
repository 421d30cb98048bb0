//! `reconcile watch` end to end against the real daemons, etcd and nginx of the
//! test environment: self-healing (kill, rm -f), a commit to a watched local repo,
//! health-driven deregistration, leader election, SIGTERM, /metrics.

use std::process::Command;
use std::time::{Duration, Instant};

use super::apply::{Stack, var};
use super::apply_chaos::{etcd_get, lb_upstreams, managed, registry_values};
use super::support::{WatchProcess, app_yaml, daemons, docker_cli};
use super::{git, stderr};

/// A running `reconcile watch` of the stack, its log in the stack's directory.
type Watcher = WatchProcess;

/// `reconcile watch` of `s` (health hold 1 s), metrics on `metrics_port`, log `watch-NAME.log`.
fn watcher(s: &Stack, name: &str, metrics_port: u16, extra: &[&str]) -> Watcher {
    let args = [&["--health-hold", "1s"][..], extra].concat();
    WatchProcess::start(&s.env, &s.repo(), s.root().join(format!("watch-{name}.log")), metrics_port, &args)
}

/// Poll `f` every 50 ms until it is true; the time it took, or a panic with `what` and the log.
fn wait_for(what: &str, limit: Duration, w: &Watcher, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for: {what}\n--- watch log ---\n{}", w.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// `docker ARGS` on daemon `daemon` (0 or 1, as in `Managed`); panics when it fails.
pub fn docker(daemon: usize, args: &[&str]) {
    docker_cli(&daemons()[daemon], args);
}

fn running(s: &Stack, instance: &str) -> Option<String> {
    managed(s).into_iter().find(|m| m.instance == instance && m.state == "running").map(|m| m.id)
}

fn all_running(s: &Stack, n: usize) -> bool {
    let m = managed(s);
    m.len() == n && m.iter().all(|c| c.state == "running")
}

#[test]
fn watch_heals_kills_and_removals_applies_commits_and_exits_clean_on_sigterm() {
    let s = Stack::new("wheal", 5);
    git(s.root().join("repo").as_path(), &["init", "-q"]);
    git(s.root().join("repo").as_path(), &["add", "-A"]);
    git(s.root().join("repo").as_path(), &["commit", "-qm", "v1"]);
    let mut w = watcher(&s, "a", 28195, &[]);

    // It converges the empty environment on start (web ×2, worker ×1).
    let t = wait_for("the first run to converge", Duration::from_secs(90), &w, || {
        all_running(&s, 3) && s.get().is_ok_and(|b| b.contains("version=1"))
    });
    println!("watch: environment converged from empty in {t:?}");
    wait_for("the first run to finish", Duration::from_secs(30), &w, || {
        w.metric(&format!("reconcile_watch_runs_total{{env=\"{}\",result=\"ok\"}}", s.env)).unwrap_or(0.0) >= 1.0
    });

    // A killed container comes back (started again, or re-created).
    let worker = managed(&s).into_iter().find(|m| m.app == "worker").unwrap();
    docker(worker.daemon, &["kill", &worker.id]);
    let t0 = Instant::now();
    wait_for("the killed worker to run again", Duration::from_secs(30), &w, || running(&s, "worker-0").is_some());
    println!("watch: killed container serving again {:?} after the kill (goal < 2 s)", t0.elapsed());

    // A removed container is re-created.
    let web0 = managed(&s).into_iter().find(|m| m.instance == "web-0").unwrap();
    docker(web0.daemon, &["rm", "-f", &web0.id]);
    let t0 = Instant::now();
    wait_for("web-0 to be re-created", Duration::from_secs(30), &w, || {
        running(&s, "web-0").is_some_and(|id| !web0.id.starts_with(&id) && !id.starts_with(&web0.id))
    });
    println!("watch: removed container re-created {:?} after docker rm -f", t0.elapsed());
    wait_for("web-0 back in the registry", Duration::from_secs(30), &w, || registry_values(&s).len() == 2);
    assert_eq!(
        managed(&s).len(),
        3,
        "no duplicates: {:?}",
        managed(&s).iter().map(|m| &m.instance).collect::<Vec<_>>()
    );

    // A commit to the watched checkout is applied (rolling replace of web).
    s.write_repo("2", "/", 2);
    git(s.root().join("repo").as_path(), &["commit", "-qam", "v2"]);
    let t0 = Instant::now();
    wait_for("version 2 to serve through the LB", Duration::from_secs(90), &w, || {
        s.get().is_ok_and(|b| b.contains("version=2"))
    });
    println!("watch: commit serving through the LB {:?} after the commit", t0.elapsed());
    wait_for("the rollout to finish", Duration::from_secs(60), &w, || {
        let m = managed(&s);
        m.len() == 3 && m.iter().all(|c| c.state == "running") && lb_upstreams(&s).len() == 2
    });

    // Metrics say what happened.
    let metrics = w.metrics();
    assert!(metrics.contains("reconcile_watch_leader{"), "{metrics}");
    assert_eq!(w.metric("reconcile_watch_leader{"), Some(1.0), "{metrics}");
    assert!(w.metric("reconcile_watch_heals_total{").unwrap_or(0.0) >= 2.0, "{metrics}");
    assert!(metrics.contains("kind=\"docker\"}") && metrics.contains("reconcile_watch_last_sync_info{"), "{metrics}");
    let history = super::reconcile(&["history", "--env", &s.env, "--repo", &s.repo()]);
    assert!(super::stdout(&history).contains("watch"), "history: {}", super::stdout(&history));

    // SIGTERM: exit 0, no lock and no leader key left behind.
    assert_eq!(w.terminate(), Some(0), "{}", w.log());
    assert_eq!(etcd_get(&format!("{}/{}/lock", s.prefix, s.env)), "");
    assert_eq!(etcd_get(&format!("{}/{}/watch-leader", s.prefix, s.env)), "");
}

#[test]
fn an_unhealthy_instance_leaves_the_registry_and_the_lb_and_comes_back() {
    let s = Stack::new("whealth", 6);
    s.write_repo("1", "/index.html", 2);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let w = watcher(&s, "h", 28196, &[]);
    wait_for("the watcher to lead", Duration::from_secs(30), &w, || w.metric("reconcile_watch_leader{") == Some(1.0));
    let web0 = managed(&s).into_iter().find(|m| m.instance == "web-0").unwrap();
    let port = web0.port.unwrap();
    let entry = format!("{}:{port}", web0.address());
    assert!(lb_upstreams(&s).contains(&entry));

    // Break its health check (the page goes away; the container keeps running).
    docker(web0.daemon, &["exec", &web0.id, "mv", "/www/index.html", "/www/gone.html"]);
    let t = wait_for("web-0 out of the registry and the LB", Duration::from_secs(30), &w, || {
        !registry_values(&s).values().any(|v| *v == entry) && !lb_upstreams(&s).contains(&entry)
    });
    println!("watch: unhealthy instance out of traffic after {t:?}");
    assert_eq!(registry_values(&s).len(), 1);
    // The healthy instance serves everything (once nginx's old workers are gone).
    wait_for("the LB to serve from the healthy instance only", Duration::from_secs(10), &w, || {
        (0..5).all(|_| s.get().is_ok())
    });
    let mark = etcd_get(&format!("{}/{}/health/{}", s.prefix, s.env, managed_name(&s, &web0.id)));
    assert!(mark.contains("\"instance\":\"web-0\""), "health mark: {mark:?}");
    assert_eq!(w.metric("reconcile_watch_unhealthy_instances{"), Some(1.0));
    let status = super::reconcile(&["status", "--env", &s.env, "--repo", &s.repo()]);
    assert!(super::stdout(&status).contains("out of traffic"), "status: {}", super::stdout(&status));
    // Plain `plan` agrees: nothing to change while it is marked.
    assert!(s.plan_json().actions.is_empty(), "plan while marked: {:?}", s.plan_json().actions);

    // Healthy again: back in after its hold.
    docker(web0.daemon, &["exec", &web0.id, "mv", "/www/gone.html", "/www/index.html"]);
    let t = wait_for("web-0 back in the registry and the LB", Duration::from_secs(30), &w, || {
        registry_values(&s).values().any(|v| *v == entry) && lb_upstreams(&s).contains(&entry)
    });
    println!("watch: recovered instance back in traffic after {t:?}");
    assert_eq!(running(&s, "web-0").as_deref(), Some(web0.id.as_str()), "the instance was not replaced");
}

pub fn managed_name(s: &Stack, id: &str) -> String {
    let m = managed(s).into_iter().find(|m| m.id == id).unwrap();
    let o = Command::new("docker")
        .args(["-H", &daemons()[m.daemon], "inspect", "--format", "{{.Name}}", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().trim_start_matches('/').to_string()
}

#[test]
fn of_two_watchers_only_the_leader_acts_and_the_other_takes_over() {
    let s = Stack::new("wlead", 7);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut a = watcher(&s, "a", 28197, &[]);
    let mut b = watcher(&s, "b", 28198, &[]);
    wait_for("one leader", Duration::from_secs(30), &a, || {
        let (la, lb) = (a.metric("reconcile_watch_leader{"), b.metric("reconcile_watch_leader{"));
        matches!((la, lb), (Some(x), Some(y)) if x + y == 1.0)
    });
    let (leader, follower) =
        if a.metric("reconcile_watch_leader{") == Some(1.0) { (&mut a, &mut b) } else { (&mut b, &mut a) };
    // (The gauge is 0 before the first campaign too: wait for the follower to see the leader.)
    wait_for("the follower to stand by", Duration::from_secs(30), follower, || follower.log().contains("standing by"));

    // One removal, one re-creation: the follower does nothing.
    let worker = managed(&s).into_iter().find(|m| m.app == "worker").unwrap();
    docker(worker.daemon, &["rm", "-f", &worker.id]);
    wait_for("the worker re-created", Duration::from_secs(30), leader, || running(&s, "worker-0").is_some());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(managed(&s).len(), 3, "nothing done twice");
    let follower_runs: f64 = follower
        .metrics()
        .lines()
        .filter(|l| l.starts_with("reconcile_watch_runs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(follower_runs, 0.0, "the follower ran:\n{}", follower.log());

    // SIGTERM to the leader (right after a trigger, mid-run or between runs): exit 0,
    // the follower takes over and heals the next removal.
    let web1 = managed(&s).into_iter().find(|m| m.instance == "web-1").unwrap();
    docker(web1.daemon, &["rm", "-f", &web1.id]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(leader.terminate(), Some(0), "{}", leader.log());
    let t = wait_for("the follower to lead and heal web-1", Duration::from_secs(30), follower, || {
        follower.metric("reconcile_watch_leader{") == Some(1.0) && running(&s, "web-1").is_some()
    });
    println!("watch: failover and heal in {t:?}");
    wait_for("three instances", Duration::from_secs(30), follower, || all_running(&s, 3));
    assert_eq!(follower.terminate(), Some(0));
    assert_eq!(etcd_get(&format!("{}/{}/lock", s.prefix, s.env)), "", "no apply lock left behind");
    assert_eq!(etcd_get(&format!("{}/{}/watch-leader", s.prefix, s.env)), "", "no leader key left behind");
}

#[test]
fn dry_run_reports_drift_and_changes_nothing() {
    let s = Stack::new("wdry", 8);
    let mut w = watcher(&s, "d", 28199, &["--dry-run"]);
    wait_for("a dry run", Duration::from_secs(30), &w, || {
        w.metric(&format!("reconcile_watch_runs_total{{env=\"{}\",result=\"dry_run\"}}", s.env)).unwrap_or(0.0) >= 1.0
    });
    assert!(managed(&s).is_empty(), "dry run created containers");
    assert!(w.log().contains("to add"), "{}", w.log());
    assert_eq!(w.terminate(), Some(0));
}

#[test]
fn bad_input_at_start_is_exit_1() {
    let s = Stack::new("wbad", 9);
    std::fs::write(s.env_dir().join("apps/web.yaml"), "apiVersion: reconcile/v1\nkind: App\nname: web\nimage: [\n")
        .unwrap();
    let o = super::reconcile(&["watch", "--env", &s.env, "--repo", &s.repo(), "--metrics-addr", "off"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("web.yaml"), "{}", stderr(&o));
}

#[test]
fn a_crash_looping_app_is_reported_and_never_restarted_in_a_tight_loop() {
    let s = Stack::new("wcrash", 17);
    s.write(
        "apps/crash.yaml",
        &app_yaml(
            "crash",
            &var("RECONCILE_TEST_IMAGE"),
            "[/bin/busybox, sh, -c, 'sleep 1; exit 1']",
            "stop_timeout: 1s\n",
        ),
    );
    let w = watcher(&s, "c", 28191, &[]);
    let mut most = 0;
    let t = wait_for("a crash-loop report", Duration::from_secs(60), &w, || {
        most = most.max(managed(&s).iter().filter(|m| m.app == "crash").count());
        w.log().contains("crash-looping")
    });
    println!("watch: crash loop reported after {t:?}");
    // Keep watching for a while: never more than one container, few heals.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        most = most.max(managed(&s).iter().filter(|m| m.app == "crash").count());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(most, 1, "one container for the crashing instance at any time");
    let heals = w.metric("reconcile_watch_heals_total{").unwrap_or(0.0);
    assert!(heals <= 5.0, "healed {heals} times: back-off must space restarts\n{}", w.log());
    assert_eq!(w.metric("reconcile_watch_crash_looping_instances{"), Some(1.0), "{}", w.metrics());
    let status = super::reconcile(&["status", "--env", &s.env, "--repo", &s.repo()]);
    let line = super::stdout(&status).lines().find(|l| l.starts_with("crash ")).unwrap_or_default().to_string();
    assert!(!line.is_empty(), "status shows the crashing instance: {}", super::stdout(&status));
    println!("watch: status of the crash-looping instance: {line}");
}

#[test]
fn failed_runs_are_retried_with_back_off_and_turn_healthz_unhealthy_until_one_succeeds() {
    let s = Stack::new("wretry", 19);
    // A reload command that always fails: every run fails (and leaves the reload pending,
    // so the next plan is never empty). The resync is 60 s away: only retries run again.
    let env_file = s.env_dir().join("environment.yaml");
    let real_env = std::fs::read_to_string(&env_file).unwrap();
    let reload_line = real_env.lines().find(|l| l.trim_start().starts_with("reload:")).unwrap().to_string();
    std::fs::write(&env_file, real_env.replace(&reload_line, "  reload: ['false']")).unwrap();
    let mut w = watcher(&s, "r", 28192, &[]);
    let failed = format!("reconcile_watch_runs_total{{env=\"{}\",result=\"failed\"}}", s.env);
    let t = wait_for("/healthz to answer 503", Duration::from_secs(45), &w, || {
        w.http("/healthz").starts_with("HTTP/1.1 503")
    });
    println!("watch: /healthz unhealthy {t:?} after start (3 failed runs, retried after 1 s, 2 s)");
    assert!(w.metric(&failed).unwrap_or(0.0) >= 3.0, "{}", w.metrics());
    let retries =
        w.metric(&format!("reconcile_watch_triggers_total{{env=\"{}\",kind=\"retry\"}}", s.env)).unwrap_or(0.0);
    assert!(retries >= 2.0, "the runs after the first came from retries: {}", w.metrics());
    assert!(w.log().contains("retrying"), "{}", w.log());

    // The repo fixed: the next retry succeeds and /healthz is healthy again.
    std::fs::write(&env_file, &real_env).unwrap();
    let t0 = Instant::now();
    wait_for("/healthz to answer 200 again", Duration::from_secs(60), &w, || {
        w.http("/healthz").starts_with("HTTP/1.1 200")
    });
    println!("watch: healthy again {:?} after the fix", t0.elapsed());
    assert_eq!(etcd_get(&format!("{}/{}/lb/reload-pending", s.prefix, s.env)), "", "the reload was done");
    wait_for("web serving through the LB", Duration::from_secs(10), &w, || {
        s.get().is_ok_and(|b| b.contains("version=1"))
    });
    assert_eq!(registry_values(&s).len(), 2);
    assert_eq!(w.terminate(), Some(0), "{}", w.log());
}

#[test]
fn a_rollback_pins_what_watch_converges_to_until_it_is_released() {
    let s = Stack::new("wpin", 20);
    let repo = s.root().join("repo");
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "v1"]);
    s.write_repo("2", "/", 2);
    git(&repo, &["commit", "-qam", "v2"]);
    let mut w = watcher(&s, "p", 28193, &[]);
    wait_for("version 2 to serve", Duration::from_secs(90), &w, || s.get().is_ok_and(|b| b.contains("version=2")));

    // Roll back while watch runs: it waits for watch's lock, pins, applies v1.
    let o = super::reconcile(&["rollback", "--env", &s.env, "--repo", &s.repo(), "--to", "HEAD~1", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", super::stdout(&o), stderr(&o));
    assert!(s.get().unwrap().starts_with("version=1"), "{:?}", s.get());

    // Watch runs again (a killed container to heal) and keeps v1: the pin, not the head.
    let ok_runs = format!("reconcile_watch_runs_total{{env=\"{}\",result=\"ok\"}}", s.env);
    let runs_before = w.metric(&ok_runs).unwrap_or(0.0);
    let web0 = managed(&s).into_iter().find(|m| m.instance == "web-0").unwrap();
    docker(web0.daemon, &["rm", "-f", &web0.id]);
    wait_for("web-0 re-created", Duration::from_secs(30), &w, || {
        running(&s, "web-0").is_some_and(|id| !web0.id.starts_with(&id) && !id.starts_with(&web0.id))
    });
    // The healing run converges to exactly the pinned commit: nothing to do against HEAD~1.
    // (Polled: a run queued by the rollback's own container events may finish first, and
    // the healing run registers the re-created instance at its end.)
    let plan_pinned =
        || super::reconcile(&["plan", "--env", &s.env, "--repo", &s.repo(), "--ref", "HEAD~1", "--detailed-exitcode"]);
    wait_for("the healing run to converge to the pinned commit", Duration::from_secs(30), &w, || {
        w.metric(&ok_runs).unwrap_or(0.0) > runs_before && plan_pinned().status.code() == Some(0)
    });
    assert_eq!(w.metric("reconcile_watch_pinned{"), Some(1.0), "{}", w.metrics());
    assert!(w.log().contains("pinned by a rollback"), "{}", w.log());
    let o = plan_pinned();
    assert_eq!(o.status.code(), Some(0), "{}{}", super::stdout(&o), stderr(&o));
    assert_eq!(registry_values(&s).len(), 2);
    let pages: Vec<String> = (0..6).filter_map(|_| s.get().ok()).collect();
    assert!(pages.iter().all(|p| p.starts_with("version=1")), "watch left the pinned version: {pages:?}");

    // Released, the next commit is followed again.
    let o = super::reconcile(&["rollback", "--env", &s.env, "--repo", &s.repo(), "--release"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", super::stdout(&o), stderr(&o));
    s.write_repo("3", "/", 2);
    git(&repo, &["commit", "-qam", "v3"]);
    wait_for("version 3 to serve", Duration::from_secs(90), &w, || s.get().is_ok_and(|b| b.contains("version=3")));
    wait_for("the pin gone from the metrics", Duration::from_secs(30), &w, || {
        w.metric("reconcile_watch_pinned{") == Some(0.0)
    });
    assert!(w.log().contains("the rollback pin was released"), "{}", w.log());
    assert_eq!(w.log().matches("pinned by a rollback").count(), 1, "logged once, not every run:\n{}", w.log());
    assert_eq!(w.terminate(), Some(0), "{}", w.log());
}
