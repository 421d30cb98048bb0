//! Notifications from `reconcile watch`, end to end against Docker daemon 1 and the
//! test etcd, told to the local HTTP receiver: a heal is told once; a failure that
//! watch's retries repeat is told once, reminded after `repeat` and resolved when it is
//! fixed; drift in `--dry-run` is told once and resolved when it is gone; a hanging
//! receiver holds up nothing and its failed deliveries show in /metrics.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::support::{
    Got, Receiver, TestEnv, app_yaml, docker_cli, etcd_endpoint, http_exchange, managed_env, reconcile_cmd, stderr,
    stdout, var,
};

/// The environment: daemon 1, etcd, no LB; a webhook (`IT_HOOK_URL`, reminders every
/// 2s) and, with `hang`, a Slack target (`IT_HANG_URL`) with a 1s timeout.
fn environment(t: &TestEnv, hang: bool) {
    environment_with(t, hang, "repeat: 2s");
}

/// [`environment`] with the webhook's own fields (`repeat: 2s`, `timeout: 1s`, …).
fn environment_with(t: &TestEnv, hang: bool, webhook: &str) {
    let slack = if hang { "  - {kind: slack, url: hang_url, timeout: 1s}\n" } else { "" };
    t.write(
        "environment.yaml",
        &format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\nsecrets:\n  hook_url: {{from_env: IT_HOOK_URL}}\n  hang_url: {{from_env: IT_HANG_URL}}\nhosts:\n  - {{name: node-1, docker: '{d1}', address: 127.0.0.1, ports: 26950-26959}}\netcd: {{endpoints: ['{etcd}'], prefix: '{prefix}', registry_prefix: '{prefix}-reg'}}\nnotifications:\n  - {{kind: webhook, url: hook_url, {webhook}}}\n{slack}",
            env = t.env,
            d1 = var("RECONCILE_TEST_DOCKER1"),
            etcd = etcd_endpoint(),
            prefix = t.prefix,
        ),
    );
}

/// `apps/job.yaml`: busybox sleeping, with `health` (a YAML flow map) if given.
fn job(t: &TestEnv, health: Option<&str>) {
    let extra = match health {
        Some(h) => format!("stop_timeout: 1s\nhealth: {h}\n"),
        None => "stop_timeout: 1s\n".to_string(),
    };
    t.write("apps/job.yaml", &app_yaml("job", &var("RECONCILE_TEST_IMAGE"), "[/bin/busybox, sleep, '3600']", &extra));
}

/// A running `reconcile watch` with its metrics on a port of its choosing; killed on drop.
struct Watch {
    child: Child,
    log: std::path::PathBuf,
    env: String,
}

impl Watch {
    fn start(t: &TestEnv, hook: &Receiver, hang: Option<&Receiver>, extra: &[&str]) -> Self {
        Self::start_to(t, &hook.url("/hook"), hang, extra)
    }

    /// [`Watch::start`] with the webhook's URL given (a receiver that is not up yet).
    fn start_to(t: &TestEnv, hook_url: &str, hang: Option<&Receiver>, extra: &[&str]) -> Self {
        let log = t.root().join("watch.log");
        let file = std::fs::File::create(&log).unwrap();
        let repo = t.repo();
        let child = reconcile_cmd(&["watch", "--env", &t.env, "--repo", &repo, "--metrics-addr", "127.0.0.1:0"])
            .args(["--timeout", "10s", "--health-hold", "1s"])
            .args(extra)
            .env("RUST_LOG", "reconcile=info")
            .env("RECONCILE_LOCK_TTL", "3s")
            .env("IT_HOOK_URL", hook_url)
            .env("IT_HANG_URL", hang.map(|h| h.url("/hang")).unwrap_or_else(|| format!("{hook_url}/unused")))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Watch { child, log, env: t.env.clone() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The metrics port, from the "serving /metrics" line of the log.
    fn port(&self) -> Option<u16> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("serving /metrics"))?;
        line.rsplit("127.0.0.1:").next()?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    fn metrics(&self) -> String {
        let Some(port) = self.port() else { return String::new() };
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        http_exchange("127.0.0.1", port, request, None, Duration::from_secs(2)).0
    }

    /// The value of the sample `name{env="<env>",<labels>}`, 0 when absent.
    fn metric(&self, name: &str, labels: &str) -> f64 {
        let prefix = format!("{name}{{env=\"{}\"{labels}}} ", self.env);
        let m = self.metrics();
        m.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
    }

    fn runs(&self, result: &str) -> f64 {
        self.metric("reconcile_watch_runs_total", &format!(",result=\"{result}\""))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` every 100 ms until true, or panic with `what`, the log and what arrived.
fn wait_for(what: &str, limit: Duration, w: &Watch, rx: &Receiver, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}\n--- received ---\n{:#?}\n--- watch log ---\n{}",
            events(rx),
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The webhook payloads received so far, with their arrival.
fn events(rx: &Receiver) -> Vec<(serde_json::Value, Instant)> {
    rx.requests()
        .iter()
        .filter(|g: &&Got| g.path == "/hook")
        .map(|g| (serde_json::from_str(&g.body).unwrap(), g.at))
        .collect()
}

fn of(rx: &Receiver, event: &str) -> Vec<(serde_json::Value, Instant)> {
    events(rx).into_iter().filter(|(v, _)| v["event"] == event).collect()
}

/// No more sends of one problem than `repeat` (2s) allows over the time they span. Measured
/// on arrival, where a delivery's own latency shifts single gaps (on a loaded machine by
/// more than a second), so the count is checked, with one send of slack: a send per run
/// (1s apart) would exceed it.
fn assert_no_two_sends_within_repeat(told: &[(serde_json::Value, Instant)]) {
    let (Some(first), Some(last)) = (told.first(), told.last()) else { return };
    let span = last.1.duration_since(first.1).as_secs_f64();
    let allowed = (span / 2.0).floor() as usize + 2;
    assert!(told.len() <= allowed, "{} sends over {span:.1}s with repeat 2s: {told:#?}", told.len());
}

#[test]
fn watch_tells_a_heal_once() {
    let rx = Receiver::start(false);
    let t = TestEnv::new("notify", "nwheal");
    environment(&t, false);
    job(&t, None);
    let w = Watch::start(&t, &rx, None, &["--interval", "3s"]);
    let running = || managed_env(&t.env).into_iter().find(|m| m.instance == "job-0" && m.state == "running");
    wait_for("job-0 running and the first run done", Duration::from_secs(90), &w, &rx, || {
        running().is_some() && w.runs("ok") >= 1.0
    });
    let first = running().unwrap();
    docker_cli(&var("RECONCILE_TEST_DOCKER1"), &["kill", &first.id]);
    wait_for("a heal to be told", Duration::from_secs(60), &w, &rx, || !of(&rx, "heal").is_empty());
    wait_for("job-0 running again", Duration::from_secs(30), &w, &rx, || running().is_some());
    // Later runs (a resync, the events of the restart) tell nothing more of it.
    let runs = w.runs("ok");
    wait_for("two more runs", Duration::from_secs(60), &w, &rx, || w.runs("ok") >= runs + 2.0);
    let heals = of(&rx, "heal");
    assert_eq!(heals.len(), 1, "one heal, told once: {heals:#?}");
    let v = &heals[0].0;
    assert_eq!(
        (v["instance"].as_str(), v["app"].as_str(), v["status"].as_str()),
        (Some("job-0"), Some("job"), Some("new"))
    );
    assert!(v["message"].as_str().unwrap().starts_with("job-0 "), "{v}");
    assert!(of(&rx, "apply_failed").is_empty(), "{:#?}", events(&rx));
}

#[test]
fn a_failure_repeated_by_retries_is_told_once_reminded_after_repeat_and_resolved_when_fixed() {
    let rx = Receiver::start(false);
    let t = TestEnv::new("notify", "nwfail");
    environment(&t, false);
    // The health check never passes: every run's apply of job fails and is retried.
    job(&t, Some("{cmd: [/bin/busybox, 'false'], interval: 200ms, timeout: 1s, retries: 2}"));
    let w = Watch::start(&t, &rx, None, &["--interval", "60s", "--backoff-base", "500ms", "--backoff-max", "2s"]);
    let failures = || -> Vec<(serde_json::Value, Instant)> {
        of(&rx, "apply_failed").into_iter().filter(|(v, _)| v["app"] == "job").collect()
    };
    wait_for("the failure to be told", Duration::from_secs(90), &w, &rx, || !failures().is_empty());
    wait_for("a reminder", Duration::from_secs(60), &w, &rx, || {
        failures().iter().any(|(v, _)| v["status"] == "reminder")
    });
    wait_for("watch to retry the failing run twice", Duration::from_secs(90), &w, &rx, || w.runs("failed") >= 3.0);
    let failed_runs = w.runs("failed");
    let told = failures();
    let new: Vec<_> = told.iter().filter(|(v, _)| v["status"] == "new").collect();
    assert_eq!(new.len(), 1, "told once as new, not once per retry ({failed_runs} failed runs): {told:#?}");
    assert!(new[0].0["message"].as_str().unwrap().contains("job-0"), "{told:#?}");
    assert_no_two_sends_within_repeat(&told);

    // Fixed: the next run converges and the failure is resolved.
    job(&t, Some("{cmd: [/bin/busybox, 'true'], interval: 200ms, timeout: 1s, retries: 2}"));
    wait_for("the failure resolved", Duration::from_secs(90), &w, &rx, || {
        events(&rx)
            .iter()
            .any(|(v, _)| v["status"] == "resolved" && v["problem"] == "apply_failed" && v["app"] == "job")
    });
    let resolved: Vec<_> = events(&rx).into_iter().filter(|(v, _)| v["status"] == "resolved").collect();
    let v = &resolved.iter().find(|(v, _)| v["problem"] == "apply_failed").unwrap().0;
    assert_eq!(v["event"], "apply_succeeded", "{v}");
    assert!(managed_env(&t.env).iter().any(|m| m.instance == "job-0" && m.state == "running"));
}

#[test]
fn drift_in_a_dry_run_is_told_once_and_a_hanging_receiver_holds_nothing_up() {
    let rx = Receiver::start(false);
    let hang = Receiver::start(true);
    let t = TestEnv::new("notify", "nwdrift");
    environment(&t, true);
    job(&t, None);
    let w = Watch::start(&t, &rx, Some(&hang), &["--dry-run", "--interval", "1s"]);
    // Runs go on every second while the hanging receiver's delivery waits out its timeout.
    wait_for("the drift told", Duration::from_secs(60), &w, &rx, || !of(&rx, "drift").is_empty());
    let runs = w.runs("dry_run");
    wait_for("three more dry runs", Duration::from_secs(60), &w, &rx, || w.runs("dry_run") >= runs + 3.0);
    let drift = of(&rx, "drift");
    let new: Vec<_> = drift.iter().filter(|(v, _)| v["status"] == "new").collect();
    assert_eq!(new.len(), 1, "told once, then only as reminders (repeat 2s), not once per run: {drift:#?}");
    assert_no_two_sends_within_repeat(&drift);
    let v = &new[0].0;
    assert!(v["summary"].as_str().unwrap().starts_with("1 to add"), "{v}");
    assert!(managed_env(&t.env).is_empty(), "a dry run changes nothing");
    wait_for("the failed delivery in /metrics", Duration::from_secs(30), &w, &rx, || {
        w.metric("reconcile_notifications_failed_total", ",kind=\"slack\"") >= 1.0
    });
    assert!(w.metric("reconcile_notifications_sent_total", ",kind=\"webhook\"") >= 1.0, "{}", w.metrics());
    assert!(w.log().contains("notification not delivered"), "{}", w.log());

    // The drift gone (applied by hand), the next dry run tells it resolved.
    let o = reconcile_cmd(&["apply", "--env", &t.env, "--repo", &t.repo(), "--yes", "--timeout", "10s"])
        .env("IT_HOOK_URL", rx.url("/hook"))
        .env("IT_HANG_URL", hang.url("/hang"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    wait_for("the drift resolved", Duration::from_secs(60), &w, &rx, || {
        events(&rx).iter().any(|(v, _)| v["event"] == "recovered" && v["problem"] == "drift")
    });
    let drift = of(&rx, "drift");
    assert_eq!(drift.iter().filter(|(v, _)| v["status"] == "new").count(), 1, "{drift:#?}");
    assert_no_two_sends_within_repeat(&drift);
}

#[test]
fn a_delivery_that_failed_is_kept_and_arrives_once_when_the_receiver_is_back() {
    // Nothing listens on the webhook's port at first: the first run's news (in sync at
    // the commit) fails within its 1s timeout and is kept for a later run.
    let port = Receiver::free_port();
    let t = TestEnv::new("notify", "nwretry");
    environment_with(&t, false, "timeout: 1s");
    job(&t, None);
    let w = Watch::start_to(&t, &format!("http://127.0.0.1:{port}/hook"), None, &["--interval", "2s"]);
    let queued = || w.metric("reconcile_notifications_queued", "");
    let down = Receiver::start(false); // only for wait_for's report: receives nothing
    wait_for("the failed delivery kept", Duration::from_secs(90), &w, &down, || queued() >= 1.0);
    assert!(w.metric("reconcile_notifications_failed_total", ",kind=\"webhook\"") >= 1.0, "{}", w.metrics());
    assert!(w.log().contains("notification not delivered"), "{}", w.log());

    // The receiver comes up: a later run sends the kept delivery, once.
    let rx = Receiver::start_at(port);
    wait_for("the kept delivery to arrive", Duration::from_secs(60), &w, &rx, || !events(&rx).is_empty());
    let runs = w.runs("ok");
    wait_for("three more runs", Duration::from_secs(60), &w, &rx, || w.runs("ok") >= runs + 3.0);
    let got = events(&rx);
    assert_eq!(got.len(), 1, "the kept message, once; later runs in sync are quiet: {got:#?}");
    let v = &got[0].0;
    assert_eq!((v["event"].as_str(), v["status"].as_str()), (Some("apply_succeeded"), Some("new")), "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("in sync at "), "{v}");
    assert!(w.metric("reconcile_notifications_retried_total", "") >= 1.0, "{}", w.metrics());
    assert_eq!(queued(), 0.0, "{}", w.metrics());
    assert_eq!(w.metric("reconcile_notifications_dropped_total", ""), 0.0, "{}", w.metrics());
}
