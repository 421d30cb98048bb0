//! Helpers shared by the integration tests, each defined once: the test environment's
//! variables and endpoints, unique names, running the binary, the config-repo writer
//! and its clean-up, HTTP through the LB and the load generator, waiting loops, daemons
//! with a pid file, and what the daemons and etcd hold (docker CLI, etcdctl).
//!
//! Everything here talks to 127.0.0.1/127.0.0.2 only. Clean-up in `Drop` never panics:
//! a panic in a destructor while a failed test unwinds aborts the whole binary.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reconcile::backend::etcd;
use reconcile::spec::types::{EtcdSpec, HostSpec};

// ------------------------------------------------------------------ the environment

/// A variable of the test environment (`/run/reconcile-test/env`); panics saying how to
/// get it when it is missing (the tests fail, never skip, without the environment).
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test.sh (it starts the test environment)")
    })
}

/// The two Docker daemons' endpoints: `[RECONCILE_TEST_DOCKER1, RECONCILE_TEST_DOCKER2]`
/// (node-1 on 127.0.0.1 and node-2 on 127.0.0.2 in the test environments).
pub fn daemons() -> [String; 2] {
    [var("RECONCILE_TEST_DOCKER1"), var("RECONCILE_TEST_DOCKER2")]
}

/// The test etcd's endpoint (`RECONCILE_TEST_ETCD`).
pub fn etcd_endpoint() -> String {
    var("RECONCILE_TEST_ETCD")
}

/// `it-<scope>-<pid>-<test>`: a name no other test, and no concurrent run, uses.
pub fn unique(scope: &str, test: &str) -> String {
    format!("it-{scope}-{}-{test}", std::process::id())
}

/// `/it-<scope>-<pid>-<test>`: an etcd prefix unique per test and per run.
pub fn unique_prefix(scope: &str, test: &str) -> String {
    format!("/{}", unique(scope, test))
}

/// A host on `docker` at 127.0.0.1 with the pool 20000-20999, no TLS, no labels.
pub fn host(name: &str, docker: &str) -> HostSpec {
    HostSpec {
        name: name.into(),
        docker: docker.into(),
        tls: None,
        address: "127.0.0.1".into(),
        labels: BTreeMap::new(),
        ports: "20000-20999".into(),
    }
}

// ------------------------------------------------------------------ the binary

/// The project root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `reconcile ARGS` to run from `dir`: no colour, no inherited `RUST_LOG`.
pub fn reconcile_cmd_in(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reconcile"));
    c.args(args).current_dir(dir).env("NO_COLOR", "1").env_remove("RUST_LOG");
    c
}

/// `reconcile ARGS` to run from the project root.
pub fn reconcile_cmd(args: &[&str]) -> Command {
    reconcile_cmd_in(&root(), args)
}

/// Run the `reconcile` binary with `args` from the project root.
pub fn reconcile(args: &[&str]) -> Output {
    reconcile_in(&root(), args)
}

pub fn reconcile_in(dir: &Path, args: &[&str]) -> Output {
    reconcile_cmd_in(dir, args).output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run git in `dir` with a throwaway identity; panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The commit `rev` (`HEAD`, `HEAD~1`, …) names in the repo at `dir`, as full hex.
pub fn git_rev(dir: &Path, rev: &str) -> String {
    let o = Command::new("git").args(["rev-parse", rev]).current_dir(dir).output().unwrap();
    assert!(o.status.success(), "git rev-parse {rev}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

// ------------------------------------------------------------------ config repos

/// An app running `command` (a YAML list) in `image`, with more fields in `extra`.
pub fn app_yaml(name: &str, image: &str, command: &str, extra: &str) -> String {
    format!("apiVersion: reconcile/v1\nkind: App\nname: {name}\nimage: {image}\ncommand: {command}\n{extra}")
}

/// A config repo in a temp dir for environment `it-<tag>-<pid>`, with etcd prefix
/// `/it-<kind>-<tag>-<pid>` and registry prefix `<prefix>-reg`. When dropped (also when
/// the test panics) it removes the environment's containers on both daemons and its etcd
/// keys, then the directory.
pub struct TestEnv {
    pub env: String,
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new(kind: &str, tag: &str) -> Self {
        let pid = std::process::id();
        TestEnv {
            env: format!("it-{tag}-{pid}"),
            prefix: format!("/it-{kind}-{tag}-{pid}"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The config repo (`--repo`).
    pub fn repo(&self) -> String {
        self.root().join("repo").to_string_lossy().into_owned()
    }

    /// The environment's directory in the config repo (for tests that add apps or edit files).
    pub fn env_dir(&self) -> PathBuf {
        self.root().join("repo/environments").join(&self.env)
    }

    /// Write `content` to `rel` under the environment's directory, creating directories.
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.env_dir().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// `environment.yaml`: `vars` (a YAML flow map), node-1 on daemon 1 at 127.0.0.1 and
    /// node-2 on `docker2` at 127.0.0.2, both with the port pool `pool`, the test etcd
    /// under this environment's prefixes, and `lb` (the rest of the document after `lb:`).
    pub fn write_environment(&self, vars: &str, docker2: &str, pool: (u16, u16), lb: &str) {
        self.write(
            "environment.yaml",
            &format!(
                "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\nvars: {vars}\nhosts:\n  - {{name: node-1, docker: '{d1}', address: 127.0.0.1, ports: {a}-{b}}}\n  - {{name: node-2, docker: '{docker2}', address: 127.0.0.2, ports: {a}-{b}}}\netcd: {{endpoints: ['{etcd}'], prefix: '{prefix}', registry_prefix: '{prefix}-reg'}}\nlb:{lb}",
                env = self.env,
                d1 = var("RECONCILE_TEST_DOCKER1"),
                etcd = etcd_endpoint(),
                prefix = self.prefix,
                a = pool.0,
                b = pool.1,
            ),
        );
    }

    /// `reconcile apply --yes --timeout 10s` of this environment, plus `extra`.
    pub fn apply(&self, extra: &[&str]) -> Output {
        let repo = self.repo();
        let mut args = vec!["apply", "--env", &self.env, "--repo", &repo, "--yes", "--timeout", "10s"];
        args.extend_from_slice(extra);
        reconcile(&args)
    }

    /// The JSON plan of this environment; panics unless `plan` exits 0.
    pub fn plan_json(&self) -> reconcile::plan::Plan {
        self.plan_json_with(&[])
    }

    /// The JSON plan with `extra` arguments; panics unless `plan` exits 0.
    pub fn plan_json_with(&self, extra: &[&str]) -> reconcile::plan::Plan {
        let repo = self.repo();
        let mut args = vec!["plan", "--env", &self.env, "--repo", &repo, "--format", "json"];
        args.extend_from_slice(extra);
        let o = reconcile(&args);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

impl TestEnv {
    /// Remove the environment's containers on both daemons and its etcd keys (best
    /// effort, never panics: `Drop` uses it too).
    pub fn wipe(&self) {
        remove_env_containers(&self.env);
        let Ok(etcd) = std::env::var("RECONCILE_TEST_ETCD") else { return };
        for p in [self.prefix.clone(), format!("{}-reg", self.prefix)] {
            let _ = Command::new("etcdctl").args(["--endpoints", &etcd, "del", "--prefix", &p]).output();
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.wipe();
    }
}

// ------------------------------------------------------------------ what the world holds

/// `docker -H endpoint ARGS`; panics with docker's stderr on failure; stdout trimmed.
pub fn docker_cli(endpoint: &str, args: &[&str]) -> String {
    let o = Command::new("docker").arg("-H").arg(endpoint).args(args).output().expect("docker CLI");
    assert!(o.status.success(), "docker -H {endpoint} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `docker -H endpoint ARGS`, output discarded and failures ignored (for clean-up).
pub fn docker_quiet(endpoint: &str, args: &[&str]) {
    let _ =
        Command::new("docker").args(["-H", endpoint]).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Remove every container labelled `reconcile.env=<env>` on both daemons (best effort,
/// never panics: destructors use it).
pub fn remove_env_containers(env: &str) {
    for d in ["RECONCILE_TEST_DOCKER1", "RECONCILE_TEST_DOCKER2"].iter().filter_map(|v| std::env::var(v).ok()) {
        if let Ok(o) = Command::new("docker")
            .args(["-H", &d, "ps", "-aq", "--filter", &format!("label=reconcile.env={env}")])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect();
            if !ids.is_empty() {
                docker_quiet(&d, &[&["rm", "-f"], &ids.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat());
            }
        }
    }
}

/// A managed container, as the daemons list it.
#[derive(Debug, Clone)]
pub struct Managed {
    /// 0: node-1 (127.0.0.1), 1: node-2 (127.0.0.2) — the test environments' hosts.
    pub daemon: usize,
    pub id: String,
    pub app: String,
    pub instance: String,
    pub state: String,
    pub port: Option<u16>,
}

impl Managed {
    pub fn address(&self) -> &'static str {
        ["127.0.0.1", "127.0.0.2"][self.daemon]
    }
}

/// The containers of environment `env` on both test daemons.
pub fn managed_env(env: &str) -> Vec<Managed> {
    let mut out = Vec::new();
    for (daemon, d) in daemons().iter().enumerate() {
        let o = Command::new("docker")
            .args([
                "-H",
                d,
                "ps",
                "-a",
                "--filter",
                &format!("label=reconcile.env={env}"),
                "--format",
                "{{.ID}}\t{{.Label \"reconcile.app\"}}\t{{.Label \"reconcile.instance\"}}\t{{.State}}\t{{.Label \"reconcile.port\"}}",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "docker ps: {}", stderr(&o));
        for l in String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty()) {
            let f: Vec<&str> = l.split('\t').collect();
            out.push(Managed {
                daemon,
                id: f[0].to_string(),
                app: f[1].to_string(),
                instance: f[2].to_string(),
                state: f[3].to_string(),
                port: f.get(4).and_then(|p| p.parse().ok()),
            });
        }
    }
    out.sort_by(|a, b| (&a.instance, &a.id).cmp(&(&b.instance, &b.id)));
    out
}

/// Registry entries under `<prefix>-reg/` (the test environments' registry prefix): key → value.
pub fn registry_under(prefix: &str) -> BTreeMap<String, String> {
    let o = Command::new("etcdctl")
        .args(["--endpoints", &etcd_endpoint(), "get", "--prefix", &format!("{prefix}-reg/")])
        .output()
        .unwrap();
    assert!(o.status.success(), "etcdctl: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines.chunks(2).filter(|kv| kv.len() == 2).map(|kv| (kv[0].to_string(), kv[1].to_string())).collect()
}

/// The value of `key` in the test etcd, `""` when absent.
pub fn etcd_get(key: &str) -> String {
    let o = Command::new("etcdctl")
        .args(["--endpoints", &etcd_endpoint(), "get", "--print-value-only", key])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The test etcd under `prefix` (registry under `registry_prefix`).
pub fn etcd_spec(prefix: &str, registry_prefix: &str) -> EtcdSpec {
    EtcdSpec {
        endpoints: vec![etcd_endpoint()],
        prefix: prefix.into(),
        registry_prefix: registry_prefix.into(),
        ..Default::default()
    }
}

/// A client of the test etcd (`spec`'s endpoints), 5 s per request.
pub async fn etcd_client(spec: &EtcdSpec) -> etcd::Client {
    etcd::connect(spec, Duration::from_secs(5)).await.unwrap()
}

/// Deletes everything under its prefixes when created (a previous run with the same pid)
/// and when dropped (also on panic, best effort). Uses etcdctl so clean-up needs no
/// async runtime.
pub struct EtcdCleanup {
    endpoint: String,
    prefixes: Vec<String>,
}

impl EtcdCleanup {
    pub fn new(prefixes: &[&str]) -> Self {
        let c = EtcdCleanup { endpoint: etcd_endpoint(), prefixes: prefixes.iter().map(|p| p.to_string()).collect() };
        for p in &c.prefixes {
            assert!(!p.trim_matches('/').is_empty(), "refusing to delete the whole keyspace");
            let o = c.del(p).unwrap_or_else(|e| panic!("etcdctl: {e}"));
            assert!(o.status.success(), "etcdctl del --prefix {p}: {}", String::from_utf8_lossy(&o.stderr));
        }
        c
    }
    fn del(&self, prefix: &str) -> std::io::Result<Output> {
        Command::new("etcdctl").args(["--endpoints", &self.endpoint, "del", "--prefix", prefix]).output()
    }
}

impl Drop for EtcdCleanup {
    fn drop(&mut self) {
        for p in &self.prefixes {
            match self.del(p) {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("cleanup of {p} failed: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => eprintln!("cleanup of {p} failed: etcdctl: {e}"),
            }
        }
    }
}

// ------------------------------------------------------------------ daemons

/// A daemon we started that writes `pid_file`: SIGTERM to that pid when dropped, then a
/// wait (up to 10 s) for it to exit so its port is free.
pub struct Daemon {
    pub name: &'static str,
    pub pid_file: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> Option<String> {
        std::fs::read_to_string(&self.pid_file).ok().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty())
    }

    pub fn wait_started(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pid().is_none() {
            assert!(Instant::now() < deadline, "{} did not write {}", self.name, self.pid_file.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(pid) = self.pid() else { return };
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ------------------------------------------------------------------ HTTP

/// Send `request` to `address:port` and read until the server closes: what was read,
/// and the error of the step that failed (`connect: …`, `write: …`, `read: …`) if one
/// did. `connect` bounds the connect (`None`: the system's), `read` each read.
pub fn http_exchange(
    address: &str,
    port: u16,
    request: &str,
    connect: Option<Duration>,
    read: Duration,
) -> (String, Option<String>) {
    let conn = match (address.parse::<std::net::IpAddr>(), connect) {
        (Ok(ip), Some(limit)) => TcpStream::connect_timeout(&SocketAddr::new(ip, port), limit),
        _ => TcpStream::connect((address, port)),
    };
    let mut s = match conn {
        Ok(s) => s,
        Err(e) => return (String::new(), Some(format!("connect: {e}"))),
    };
    s.set_read_timeout(Some(read)).ok();
    s.set_write_timeout(Some(Duration::from_secs(2))).ok();
    if let Err(e) = s.write_all(request.as_bytes()) {
        return (String::new(), Some(format!("write: {e}")));
    }
    let mut buf = String::new();
    let error = s.read_to_string(&mut buf).err().map(|e| format!("read: {e}"));
    (buf, error)
}

/// A raw response's status line and body.
pub fn split_response(response: &str) -> (String, String) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// `GET /` with `Host: web.test`, the test apps' `lb.host`.
pub const WEB_REQUEST: &str = "GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n";

/// One [`WEB_REQUEST`] to `address:port`: the body on a 200, else the status line or the error.
pub fn get_web(address: &str, port: u16, connect: Option<Duration>, read: Duration) -> Result<String, String> {
    let (response, error) = http_exchange(address, port, WEB_REQUEST, connect, read);
    if let Some(e) = error {
        return Err(e);
    }
    let (status, body) = split_response(&response);
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(body)
    } else if status.is_empty() {
        Err("(empty answer)".to_string())
    } else {
        Err(status)
    }
}

/// GET / from 127.0.0.1:`port` (see [`http_get_at`]).
pub fn http_get(port: u16) -> Result<String, String> {
    http_get_at("127.0.0.1", port)
}

/// GET / from `address:port` (a loopback address), 5 s to answer: the body on a 200,
/// else the status line or error.
pub fn http_get_at(address: &str, port: u16) -> Result<String, String> {
    get_web(address, port, None, Duration::from_secs(5))
}

/// Poll `answer` every 30 ms until it is what `want` accepts 10 times in a row and for
/// at least `steady` (a reload is asynchronous: for a moment old workers still answer
/// next to new ones); panics with `what` and the last answer after 10 s.
pub fn wait_steady<T: std::fmt::Debug>(
    what: &str,
    steady: Duration,
    mut answer: impl FnMut() -> T,
    want: impl Fn(&T) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut steady_since: Option<Instant> = None;
    let mut streak = 0;
    loop {
        let last = answer();
        if want(&last) {
            streak += 1;
            let since = *steady_since.get_or_insert_with(Instant::now);
            if streak >= 10 && since.elapsed() >= steady {
                return;
            }
        } else {
            (streak, steady_since) = (0, None);
        }
        assert!(Instant::now() < deadline, "{what} never steadily answered as expected; last answer: {last:?}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// What the load generator saw.
#[derive(Debug, Default)]
pub struct Load {
    pub ok: u64,
    pub failed: u64,
    /// The first failures: seconds since `t0`, reason.
    pub errors: Vec<(f64, String)>,
    /// Answers per `version=…` of the body.
    pub versions: BTreeMap<String, u64>,
    /// Seconds since `t0` of the first and the last answer of each version.
    pub first_seen: BTreeMap<String, f64>,
    pub last_seen: BTreeMap<String, f64>,
}

/// GETs (`Host: web.test`) through the LB on 127.0.0.1:`port` in a loop, one connection
/// each (1 s to connect, `read` to answer), ~2 ms apart, until `stop` is set, 120 s
/// have passed since `t0` or 100 000 requests were made; `made` counts them as they go.
pub fn start_load(
    port: u16,
    read: Duration,
    t0: Instant,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Load> {
    start_load_at("127.0.0.1", port, read, t0, stop, made)
}

/// Spawn `cmd` with stdin closed and its output piped.
pub fn spawn_piped(cmd: &mut Command) -> std::process::Child {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

// ------------------------------------------------------------------ several LBs (tests/it/lb_multi.rs)

/// [`start_load`] against `address:port` (a loopback address): the LB instances of an HA
/// pair listen on their hosts' addresses.
pub fn start_load_at(
    address: &'static str,
    port: u16,
    read: Duration,
    t0: Instant,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Load> {
    std::thread::spawn(move || {
        let mut r = Load::default();
        while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(120) && r.ok + r.failed < 100_000 {
            let at = t0.elapsed().as_secs_f64();
            let answer = get_web(address, port, Some(Duration::from_secs(1)), read);
            made.fetch_add(1, Ordering::SeqCst);
            match answer {
                Ok(body) => {
                    r.ok += 1;
                    let v = body.split_whitespace().next().unwrap_or("?").to_string();
                    r.first_seen.entry(v.clone()).or_insert(at);
                    r.last_seen.insert(v.clone(), at);
                    *r.versions.entry(v).or_default() += 1;
                }
                Err(e) => {
                    r.failed += 1;
                    if r.errors.len() < 20 {
                        r.errors.push((at, e));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        r
    })
}

/// `reconcile apply --yes --timeout 10s` of `env` in `repo`, with each line of its stderr
/// (the plan, then one line per step) stamped with the seconds since `t0`, to set the
/// steps against a load's failures.
pub fn apply_stamped(repo: &str, env: &str, t0: Instant) -> Output {
    let mut child =
        spawn_piped(&mut reconcile_cmd(&["apply", "--env", env, "--repo", repo, "--yes", "--timeout", "10s"]));
    let err = child.stderr.take().unwrap();
    let stamper = std::thread::spawn(move || {
        let mut stamped = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(err)) {
            let Ok(line) = line else { break };
            stamped.push_str(&format!("{:7.3}s {line}\n", t0.elapsed().as_secs_f64()));
        }
        stamped
    });
    let mut o = child.wait_with_output().unwrap();
    o.stderr = stamper.join().unwrap().into_bytes();
    o
}

// ------------------------------------------------------------------ secured: watch processes, one-host repos
// (shared by watch.rs and etcd_cluster.rs, and by docker_tls.rs and ssh.rs)

/// A running `reconcile watch` (stdout and stderr in a log file), killed on drop.
pub struct WatchProcess {
    child: Option<std::process::Child>,
    log: PathBuf,
    metrics_port: u16,
}

impl WatchProcess {
    /// `reconcile watch --env ENV --repo REPO --interval 60s --timeout 10s
    /// --metrics-addr 127.0.0.1:PORT EXTRA…` with `RUST_LOG=reconcile=info` and a lock TTL
    /// of 3 s (a standby takes over quickly), its output in `log`.
    pub fn start(env: &str, repo: &str, log: PathBuf, metrics_port: u16, extra: &[&str]) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let addr = format!("127.0.0.1:{metrics_port}");
        let child =
            reconcile_cmd(&["watch", "--env", env, "--repo", repo, "--interval", "60s", "--metrics-addr", &addr])
                .args(["--timeout", "10s"])
                .args(extra)
                .env("RUST_LOG", "reconcile=info")
                .env("RECONCILE_LOCK_TTL", "3s")
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
        WatchProcess { child: Some(child), log, metrics_port }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The whole HTTP response (status line first) to `GET path` on the metrics address.
    pub fn http(&self, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        http_exchange("127.0.0.1", self.metrics_port, &request, None, Duration::from_secs(2)).0
    }

    pub fn metrics(&self) -> String {
        self.http("/metrics")
    }

    /// The value of the sample whose line starts with `prefix` (e.g. `reconcile_watch_leader{`),
    /// `None` while the metrics endpoint does not answer.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        self.metrics().lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then the exit code (panics when it has not exited within 60 s).
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                panic!("watch did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The command of app `web` in [`write_web_app`]: busybox httpd on the instance's
/// address and port, serving /www.
pub const WEB_HTTPD: &str = "[/bin/busybox, httpd, -f, -p, '{{ instance.address }}:{{ instance.port }}', -h, /www]";

/// A config repo in `dir` with environment `env` of one host: `host` is its YAML flow
/// mapping (`{name: …, docker: …, …}`), `top` more top-level YAML. Makes `apps/` and
/// `templates/`; returns the environment's directory.
pub fn write_one_host_env(dir: &Path, env: &str, host: &str, top: &str) -> PathBuf {
    let e = dir.join("environments").join(env);
    std::fs::create_dir_all(e.join("apps")).unwrap();
    std::fs::create_dir_all(e.join("templates")).unwrap();
    std::fs::write(
        e.join("environment.yaml"),
        format!("apiVersion: reconcile/v1\nkind: Environment\nname: {env}\n{top}hosts:\n  - {host}\n"),
    )
    .unwrap();
    e
}

/// App `web` in environment dir `e`: [`WEB_HTTPD`] from the test image, healthy once it
/// answers, serving `page` (a template, written to templates/index.html.j2) at `/`.
pub fn write_web_app(e: &Path, page: &str) {
    std::fs::write(e.join("templates/index.html.j2"), page).unwrap();
    let extra = "port: 8080\nhealth: {http: /, interval: 200ms, timeout: 1s, retries: 20}\nfiles: [{template: templates/index.html.j2, path: /www/index.html}]\nstop_timeout: 1s\n";
    std::fs::write(e.join("apps/web.yaml"), app_yaml("web", &var("RECONCILE_TEST_IMAGE"), WEB_HTTPD, extra)).unwrap();
}

/// `docker run` arguments for a container that looks like instance `web-0` of app `web`
/// of `env` (host network, sleeping 300 s): observation tests make these by hand.
pub fn web_0_run_args(env: &str) -> Vec<String> {
    [
        "run".to_string(),
        "-d".into(),
        "--network".into(),
        "host".into(),
        "--label".into(),
        format!("{}={env}", reconcile::model::labels::ENV),
        "--label".into(),
        format!("{}=web", reconcile::model::labels::APP),
        "--label".into(),
        format!("{}=web-0", reconcile::model::labels::INSTANCE),
        var("RECONCILE_TEST_IMAGE"),
        "sleep".into(),
        "300".into(),
    ]
    .into()
}

// ------------------------------------------------------------------ notification receiver
// (tests/it/notify.rs and tests/it/notify_watch.rs)

use std::io::{BufRead as _, BufReader};
use std::sync::Mutex;

/// One request the [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Got {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When it arrived.
    pub at: Instant,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTP receiver on 127.0.0.1 that records requests and answers 201, or never
/// answers (`hang`).
pub struct Receiver {
    pub port: u16,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    pub fn start(hang: bool) -> Self {
        Self::serve(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), hang)
    }

    fn serve(listener: std::net::TcpListener, hang: bool) -> Self {
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                if hang {
                    held.push(stream); // keep it open, say nothing
                    continue;
                }
                if let Some(r) = read_request(&stream) {
                    sink.lock().unwrap().push(r);
                }
                let mut s = stream;
                let _ = s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Receiver { port, got }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

fn read_request(stream: &std::net::TcpStream) -> Option<Got> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Got { method, path, headers, body: String::from_utf8_lossy(&body).into_owned(), at: Instant::now() })
}

// ------------------------------------------------------------------ a receiver that comes up late
// (tests/it/notify_watch.rs: a delivery kept across watch runs)

impl Receiver {
    /// A port on 127.0.0.1 where nothing listens (one the kernel just handed out and
    /// took back), for a receiver that is down first and [`Receiver::start_at`] later.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// [`Receiver::start`] (answering) on `port`.
    pub fn start_at(port: u16) -> Self {
        Self::serve(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(), false)
    }
}

// ---- comparing observations ----

/// `o` without each container's status text: Docker's "Up Less than a second" becomes
/// "Up 1 second" between two calls, so two observations of the same containers a moment
/// apart are compared without it (state, ids, labels and everything else still count).
pub fn without_status(o: &reconcile::model::HostObservation) -> reconcile::model::HostObservation {
    let mut o = o.clone();
    for i in &mut o.instances {
        i.status.clear();
    }
    o
}
