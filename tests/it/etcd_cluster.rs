//! etcd as a real three-member cluster (scripts/test-env.sh: clients 127.0.0.1:23792-23794):
//! the raft leader is killed in the middle of applies. Each apply either completes
//! through the other members or fails cleanly (exit 1 with a message, no panic), the
//! next apply converges, and two concurrent applies never both act (no duplicate
//! containers: the lock was never held twice). The killed member is restarted after.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::apply::var;
use super::{stderr, stdout};

const MEMBERS: [&str; 3] = ["http://127.0.0.1:23792", "http://127.0.0.1:23793", "http://127.0.0.1:23794"];

fn endpoints() -> String {
    std::env::var("RECONCILE_TEST_ETCD_CLUSTER").unwrap_or_else(|_| MEMBERS.join(","))
}

fn etcdctl(args: &[&str]) -> Output {
    Command::new("etcdctl").env("ETCDCTL_API", "3").args(["--endpoints", &endpoints()]).args(args).output().unwrap()
}

/// The member number (1..=3) that is the raft leader, from `etcdctl endpoint status`.
fn leader() -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = etcdctl(&["endpoint", "status", "-w", "json"]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            for m in v.as_array().into_iter().flatten() {
                let s = &m["Status"];
                if s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"] {
                    let ep = m["Endpoint"].as_str().unwrap_or_default();
                    if let Some(i) = MEMBERS.iter().position(|u| u.ends_with(ep.trim_start_matches("http://"))) {
                        return i + 1;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no etcd leader: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The tests kill members of the one cluster: one at a time, or quorum is lost.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Restarts killed members when dropped (and when made, in case an earlier run left one down).
struct Cluster;

impl Cluster {
    fn up() -> Self {
        restart_members();
        Cluster
    }
    fn kill(&self, member: usize) {
        let pid = std::fs::read_to_string(format!("/run/reconcile-test/etcd-m{member}.pid"))
            .expect("cluster pid file: run scripts/test-env.sh");
        let o = Command::new("kill").args(["-9", pid.trim()]).output().unwrap();
        assert!(o.status.success(), "kill etcd m{member}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        restart_members();
    }
}

fn restart_members() {
    let o = Command::new("bash").arg(super::root().join("scripts/test-env.sh")).arg("etcd-cluster").output().unwrap();
    assert!(o.status.success(), "test-env.sh etcd-cluster: {}", String::from_utf8_lossy(&o.stderr));
}

struct Env {
    dir: tempfile::TempDir,
    env: String,
    prefix: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        for d in [var("RECONCILE_TEST_DOCKER1"), var("RECONCILE_TEST_DOCKER2")] {
            for id in ids(&d, &self.env) {
                let _ = Command::new("docker").args(["-H", &d, "rm", "-f", &id]).output();
            }
        }
        let _ = etcdctl(&["del", "--prefix", &self.prefix]);
    }
}

fn ids(docker: &str, env: &str) -> Vec<String> {
    let o = Command::new("docker")
        .args(["-H", docker, "ps", "-aq", "--filter", &format!("label=reconcile.env={env}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect()
}

impl Env {
    /// `first` becomes healthy ~2 s after it starts; `second` depends on it, so an apply
    /// spends seconds between its first container and its last etcd writes.
    fn new(tag: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env = format!("it-cluster-{tag}-{}", std::process::id());
        let prefix = format!("/it-cluster-{tag}-{}", std::process::id());
        let e = dir.path().join("environments").join(&env);
        std::fs::create_dir_all(e.join("apps")).unwrap();
        let eps: Vec<String> = endpoints().split(',').map(|s| format!("'{s}'")).collect();
        std::fs::write(
            e.join("environment.yaml"),
            format!(
                "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\nhosts:\n  - {{name: node-1, docker: '{d1}', address: 127.0.0.1, ports: 29800-29809}}\n  - {{name: node-2, docker: '{d2}', address: 127.0.0.2, ports: 29800-29809}}\netcd: {{endpoints: [{eps}], prefix: '{prefix}', registry_prefix: '{prefix}-reg'}}\n",
                d1 = var("RECONCILE_TEST_DOCKER1"),
                d2 = var("RECONCILE_TEST_DOCKER2"),
                eps = eps.join(", "),
            ),
        )
        .unwrap();
        let img = var("RECONCILE_TEST_IMAGE");
        std::fs::write(
            e.join("apps/first.yaml"),
            format!("apiVersion: reconcile/v1\nkind: App\nname: first\nimage: {img}\ncommand: [/bin/busybox, sh, -c, 'sleep 2; touch /tmp/ready; exec sleep 3600']\nreplicas: 2\nhealth: {{cmd: [/bin/busybox, test, -f, /tmp/ready], interval: 200ms, timeout: 1s, retries: 40}}\nconfig: {{a: '1'}}\nstop_timeout: 1s\n"),
        )
        .unwrap();
        std::fs::write(
            e.join("apps/second.yaml"),
            format!("apiVersion: reconcile/v1\nkind: App\nname: second\nimage: {img}\ncommand: [/bin/busybox, sleep, '3600']\nreplicas: 2\ndepends_on: [first]\nconfig: {{b: '2'}}\nstop_timeout: 1s\n"),
        )
        .unwrap();
        Env { dir, env, prefix }
    }

    fn repo(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    fn command(&self, cmd: &str) -> Command {
        let repo = self.repo();
        let mut c = Command::new(env!("CARGO_BIN_EXE_reconcile"));
        c.args([cmd, "--env", &self.env, "--repo", &repo, "--timeout", "10s"])
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        if cmd == "apply" {
            c.args(["--yes", "--lock-timeout", "60s"]);
        }
        if cmd == "plan" {
            c.arg("--detailed-exitcode");
        }
        c
    }

    fn spawn_apply(&self) -> Child {
        self.command("apply").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    fn containers(&self) -> usize {
        [var("RECONCILE_TEST_DOCKER1"), var("RECONCILE_TEST_DOCKER2")].iter().map(|d| ids(d, &self.env).len()).sum()
    }

    fn wait_for_first_container(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.containers() == 0 {
            assert!(Instant::now() < deadline, "apply created nothing within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An apply's outcome must be a success or a clean failure.
fn finished_cleanly(o: &Output) -> bool {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "apply panicked: {err}");
    match o.status.code() {
        Some(0) => true,
        Some(1) => {
            assert!(err.contains("error"), "a failed apply says why: {err}");
            false
        }
        other => panic!("apply ended with {other:?}: {}{err}", stdout(o)),
    }
}

fn converge(e: &Env) {
    let o = e.command("apply").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "the next apply converges: {}{}", stdout(&o), stderr(&o));
    let o = e.command("plan").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "and leaves nothing to do: {}{}", stdout(&o), stderr(&o));
    assert_eq!(e.containers(), 4, "two instances of each app, no duplicates");
}

#[test]
fn the_etcd_leader_killed_mid_apply_then_the_next_apply_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::up();
    let e = Env::new("kill");
    let child = e.spawn_apply();
    e.wait_for_first_container();
    let victim = leader();
    cluster.kill(victim);
    let o = child.wait_with_output().unwrap();
    let completed = finished_cleanly(&o);
    eprintln!("apply with etcd m{victim} killed: {}", if completed { "completed" } else { "failed cleanly" });
    converge(&e);
    drop(cluster);
    assert_eq!(etcdctl(&["endpoint", "health"]).status.code(), Some(0), "all members back");
}

#[test]
fn two_applies_across_a_leader_change_never_both_act() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::up();
    let e = Env::new("two");
    let a = e.spawn_apply();
    let b = e.spawn_apply();
    e.wait_for_first_container();
    cluster.kill(leader());
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    finished_cleanly(&oa);
    finished_cleanly(&ob);
    // Two lock holders acting at once would both create the missing instances.
    assert!(e.containers() <= 4, "duplicates: both applies acted ({} containers)", e.containers());
    converge(&e);
}

/// A `reconcile watch` of `e`, its log in a file, its metrics on `port`.
struct Watcher {
    child: Child,
    log: std::path::PathBuf,
    port: u16,
}

impl Watcher {
    fn start(e: &Env, name: &str, port: u16) -> Self {
        let log = e.dir.path().join(format!("watch-{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let repo = e.repo();
        let child = Command::new(env!("CARGO_BIN_EXE_reconcile"))
            .args(["watch", "--env", &e.env, "--repo", &repo, "--interval", "60s", "--timeout", "10s"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "reconcile=info")
            .env("RECONCILE_LOCK_TTL", "3s")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Watcher { child, log, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The leader gauge, `None` while the metrics endpoint does not answer.
    fn leader(&self) -> Option<f64> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().find(|l| l.starts_with("reconcile_watch_leader{")).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_keeps_running_and_stays_the_single_leader_across_an_etcd_leader_change() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::up();
    let e = Env::new("watch");
    converge(&e);
    let mut a = Watcher::start(&e, "a", 28291);
    let mut b = Watcher::start(&e, "b", 28292);
    let logs = |a: &Watcher, b: &Watcher| format!("--- a ---\n{}\n--- b ---\n{}", a.log(), b.log());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let standing_by = a.log().contains("standing by") || b.log().contains("standing by");
        if standing_by && matches!((a.leader(), b.leader()), (Some(x), Some(y)) if x + y == 1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no single watch leader within 30 s\n{}", logs(&a, &b));
        std::thread::sleep(Duration::from_millis(100));
    }

    cluster.kill(leader());
    // Across the etcd leader change: both keep running, never two leaders at once.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert!(a.alive() && b.alive(), "a watcher exited\n{}", logs(&a, &b));
        let leaders = a.leader().unwrap_or(0.0) + b.leader().unwrap_or(0.0);
        assert!(leaders <= 1.0, "two watchers lead at once\n{}", logs(&a, &b));
        std::thread::sleep(Duration::from_millis(100));
    }
    // And one of them still acts: a removed container comes back.
    let d = var("RECONCILE_TEST_DOCKER1");
    let victim = ids(&d, &e.env).into_iter().next().expect("a container on docker1");
    let o = Command::new("docker").args(["-H", &d, "rm", "-f", &victim]).output().unwrap();
    assert!(o.status.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let leaders = a.leader().unwrap_or(0.0) + b.leader().unwrap_or(0.0);
        assert!(leaders <= 1.0, "two watchers lead at once\n{}", logs(&a, &b));
        if leaders == 1.0 && e.containers() == 4 && !ids(&d, &e.env).contains(&victim) {
            break;
        }
        assert!(Instant::now() < deadline, "the removed container was not re-created\n{}", logs(&a, &b));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.alive() && b.alive(), "a watcher exited\n{}", logs(&a, &b));
}
