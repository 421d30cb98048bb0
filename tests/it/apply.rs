//! `reconcile apply` end to end: two real Docker daemons, etcd, a real nginx.
//! Apps are busybox httpd on loopback with host networking; the LB file is
//! included by an nginx this test runs on its own 127.0.0.1 port.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{stderr, stdout};

pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
}

/// A config repo + an nginx + cleanup of everything the environment made.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub env: String,
    pub prefix: String,
    pub lb_port: u16,
    pub pool: (u16, u16),
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("nginx").args(["-s", "stop", "-c", &self.nginx_conf().to_string_lossy()]).output();
        for d in [var("RECONCILE_TEST_DOCKER1"), var("RECONCILE_TEST_DOCKER2")] {
            if let Ok(o) = Command::new("docker")
                .args(["-H", &d, "ps", "-aq", "--filter", &format!("label=reconcile.env={}", self.env)])
                .output()
            {
                for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["-H", &d, "rm", "-f", id]).output();
                }
            }
        }
        let etcd = var("RECONCILE_TEST_ETCD");
        for p in [self.prefix.clone(), format!("{}-reg", self.prefix)] {
            let _ = Command::new("etcdctl").args(["--endpoints", &etcd, "del", "--prefix", &p]).output();
        }
    }
}

/// `apps/web.yaml` of the test stacks: busybox httpd serving the rendered
/// `index.html.j2` on its pool port, LB-backed and registered, checked over http at
/// `health`; `version` goes into its config key.
pub fn web_app(version: &str, health: &str, replicas: u32) -> String {
    format!(
        "apiVersion: reconcile/v1\nkind: App\nname: web\nimage: {img}\ncommand: [/bin/busybox, httpd, -f, -p, '{{{{ instance.address }}}}:{{{{ instance.port }}}}', -h, /www]\nenv: {{VERSION: '{{{{ vars.version }}}}'}}\nreplicas: {replicas}\nport: 8080\nhealth: {{http: '{health}', interval: 200ms, timeout: 1s, retries: 10}}\nfiles: [{{template: templates/index.html.j2, path: /www/index.html}}]\nlb: {{host: web.test}}\nregistry: true\nconfig: {{version: '{version}'}}\nstop_timeout: 2s\n",
        img = var("RECONCILE_TEST_IMAGE"),
    )
}

impl Stack {
    /// `tag` makes names unique; `slot` picks disjoint ports per test (0..20).
    pub fn new(tag: &str, slot: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let base = 22000 + slot * 50;
        let s = Stack {
            dir,
            env: format!("it-{tag}-{pid}"),
            prefix: format!("/it-apply-{tag}-{pid}"),
            lb_port: 28100 + slot,
            pool: (base, base + 49),
        };
        std::fs::create_dir_all(s.root().join("nginx")).unwrap();
        std::fs::write(
            s.nginx_conf(),
            format!(
                "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_processes 1;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  include {d}/reconcile.conf;\n}}\n",
                d = s.root().join("nginx").display()
            ),
        )
        .unwrap();
        // nginx needs the included file to exist before it starts.
        std::fs::write(s.lb_file(), format!("server {{ listen 127.0.0.1:{}; return 503; }}\n", s.lb_port)).unwrap();
        let o = Command::new("nginx").args(["-c", &s.nginx_conf().to_string_lossy()]).output().unwrap();
        assert!(o.status.success(), "nginx: {}", String::from_utf8_lossy(&o.stderr));
        s.write_repo("1", "/", 2);
        s
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn nginx_conf(&self) -> PathBuf {
        self.root().join("nginx/nginx.conf")
    }
    pub fn lb_file(&self) -> PathBuf {
        self.root().join("nginx/reconcile.conf")
    }
    pub fn repo(&self) -> String {
        self.root().join("repo").to_string_lossy().into_owned()
    }
    /// The environment's directory in the config repo (for tests that add apps or edit files).
    pub fn env_dir(&self) -> PathBuf {
        self.root().join("repo/environments").join(&self.env)
    }

    /// `version` goes into the page and an env var; `health` is the http check path.
    pub fn write_repo(&self, version: &str, health: &str, replicas: u32) {
        let e = self.root().join("repo/environments").join(&self.env);
        std::fs::create_dir_all(e.join("apps")).unwrap();
        std::fs::create_dir_all(e.join("templates")).unwrap();
        let nginx = self.nginx_conf().to_string_lossy().into_owned();
        std::fs::write(
            e.join("environment.yaml"),
            format!(
                "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\nvars: {{version: '{version}'}}\nhosts:\n  - {{name: node-1, docker: '{d1}', address: 127.0.0.1, ports: {a}-{b}}}\n  - {{name: node-2, docker: '{d2}', address: 127.0.0.2, ports: {a}-{b}}}\netcd: {{endpoints: ['{etcd}'], prefix: '{prefix}', registry_prefix: '{prefix}-reg'}}\nlb:\n  template: templates/lb.j2\n  path: '{lb}'\n  check: [nginx, -t, -q, -c, '{nginx}']\n  reload: [nginx, -s, reload, -c, '{nginx}']\n",
                env = self.env,
                d1 = var("RECONCILE_TEST_DOCKER1"),
                d2 = var("RECONCILE_TEST_DOCKER2"),
                etcd = var("RECONCILE_TEST_ETCD"),
                prefix = self.prefix,
                lb = self.lb_file().display(),
                a = self.pool.0,
                b = self.pool.1,
            ),
        )
        .unwrap();
        std::fs::write(
            e.join("templates/lb.j2"),
            format!("{{% for app in apps %}}\nupstream {{{{ app.name }}}} {{\n{{% for i in app.instances %}}\n  server {{{{ i.address }}}}:{{{{ i.port }}}};\n{{% else %}}\n  server 127.0.0.1:1 down;\n{{% endfor %}}\n}}\nserver {{\n  listen 127.0.0.1:{port};\n  location / {{ proxy_pass http://{{{{ app.name }}}}; proxy_next_upstream off; }}\n}}\n{{% endfor %}}\n", port = self.lb_port),
        )
        .unwrap();
        std::fs::write(e.join("templates/index.html.j2"), "version={{ vars.version }} instance={{ instance.name }}\n")
            .unwrap();
        std::fs::write(e.join("apps/web.yaml"), web_app(version, health, replicas)).unwrap();
        std::fs::write(
            e.join("apps/worker.yaml"),
            format!("apiVersion: reconcile/v1\nkind: App\nname: worker\nimage: {}\ncommand: [/bin/busybox, sleep, '3600']\ndepends_on: [web]\nstop_timeout: 1s\n", var("RECONCILE_TEST_IMAGE2")),
        )
        .unwrap();
    }

    pub fn apply(&self, extra: &[&str]) -> Output {
        let repo = self.repo();
        let mut args = vec!["apply", "--env", &self.env, "--repo", &repo, "--yes", "--timeout", "10s"];
        args.extend_from_slice(extra);
        super::reconcile(&args)
    }

    pub fn plan_json(&self) -> reconcile::plan::Plan {
        let repo = self.repo();
        let o = super::reconcile(&["plan", "--env", &self.env, "--repo", &repo, "--format", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Container ids of the environment by name, on both daemons.
    pub fn containers(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for d in [var("RECONCILE_TEST_DOCKER1"), var("RECONCILE_TEST_DOCKER2")] {
            let o = Command::new("docker")
                .args([
                    "-H",
                    &d,
                    "ps",
                    "-a",
                    "--filter",
                    &format!("label=reconcile.env={}", self.env),
                    "--format",
                    "{{.ID}} {{.Names}} {{.State}}",
                ])
                .output()
                .unwrap();
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                let mut p = l.split_whitespace();
                out.push((
                    p.next().unwrap_or_default().to_string(),
                    p.next().unwrap_or_default().to_string(),
                    p.next().unwrap_or_default().to_string(),
                ));
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// GET / through nginx.
    pub fn get(&self) -> Result<String, String> {
        http_get(self.lb_port)
    }

    pub fn registry(&self) -> Vec<String> {
        let o = Command::new("etcdctl")
            .args([
                "--endpoints",
                &var("RECONCILE_TEST_ETCD"),
                "get",
                "--prefix",
                "--keys-only",
                &format!("{}-reg/", self.prefix),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
    }
}

pub fn http_get(port: u16) -> Result<String, String> {
    http_get_at("127.0.0.1", port)
}

/// GET / from `address:port` (a loopback address); the body on a 200, else the status line or error.
pub fn http_get_at(address: &str, port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect((address, port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if buf.starts_with("HTTP/1.1 200") {
        Ok(buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    } else {
        Err(buf.lines().next().unwrap_or_default().to_string())
    }
}

#[test]
fn apply_converges_and_a_change_replaces_only_that_app() {
    let s = Stack::new("conv", 0);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(s.get().unwrap().starts_with("version=1 instance=web-"), "{:?}", s.get());
    let before = s.containers();
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().all(|c| c.2 == "running"), "{before:?}");
    assert_eq!(s.registry().len(), 2, "{:?}", s.registry());
    // Plan after apply: nothing.
    assert!(s.plan_json().actions.is_empty(), "{:#?}", s.plan_json().actions);
    // Worker started after web (dependency order): its creation time is later.
    // Change web's env var: only web's containers are replaced; the worker keeps its id.
    s.write_repo("2", "/", 2);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let after = s.containers();
    let worker_before: Vec<_> = before.iter().filter(|c| c.1.contains("-worker-")).collect();
    let worker_after: Vec<_> = after.iter().filter(|c| c.1.contains("-worker-")).collect();
    assert_eq!(worker_before, worker_after, "the worker was touched");
    let web_ids_before: Vec<&str> = before.iter().filter(|c| c.1.contains("-web-")).map(|c| c.0.as_str()).collect();
    assert!(
        after.iter().filter(|c| c.1.contains("-web-")).all(|c| !web_ids_before.contains(&c.0.as_str())),
        "{after:?}"
    );
    assert_eq!(after.len(), 3, "no leftovers: {after:?}");
    assert!(s.get().unwrap().starts_with("version=2"), "{:?}", s.get());
    assert!(s.plan_json().actions.is_empty());
    assert_eq!(s.registry().len(), 2, "{:?}", s.registry());
}

#[test]
fn failed_health_check_stops_the_rollout_and_old_instances_keep_serving() {
    let s = Stack::new("fail", 1);
    assert_eq!(s.apply(&[]).status.code(), Some(0));
    let before = s.containers();
    let registry = s.registry();
    // Version 2 checks a path that does not exist: never healthy.
    s.write_repo("2", "/nope", 2);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("app web: FAILED") && stdout(&o).contains("404"), "{}", stdout(&o));
    assert!(stdout(&o).contains("app worker: ok") || !stdout(&o).contains("app worker"), "{}", stdout(&o));
    assert_eq!(s.containers(), before, "the failed new container is gone, the old ones untouched");
    assert_eq!(s.registry(), registry);
    assert!(s.get().unwrap().starts_with("version=1"), "old instances still serve: {:?}", s.get());
}

#[test]
fn dr_drill_rebuilds_a_wiped_environment() {
    let s = Stack::new("dr", 2);
    assert_eq!(s.apply(&[]).status.code(), Some(0));
    // Disaster: containers, etcd keys and the LB file are gone.
    for d in [var("RECONCILE_TEST_DOCKER1"), var("RECONCILE_TEST_DOCKER2")] {
        let o = Command::new("docker")
            .args(["-H", &d, "ps", "-aq", "--filter", &format!("label=reconcile.env={}", s.env)])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            Command::new("docker").args(["-H", &d, "rm", "-f", id]).output().unwrap();
        }
    }
    let etcd = var("RECONCILE_TEST_ETCD");
    Command::new("etcdctl").args(["--endpoints", &etcd, "del", "--prefix", &s.prefix]).output().unwrap();
    Command::new("etcdctl")
        .args(["--endpoints", &etcd, "del", "--prefix", &format!("{}-reg", s.prefix)])
        .output()
        .unwrap();
    std::fs::write(s.lb_file(), format!("server {{ listen 127.0.0.1:{}; return 503; }}\n", s.lb_port)).unwrap();
    Command::new("nginx").args(["-s", "reload", "-c", &s.nginx_conf().to_string_lossy()]).output().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.get().is_err());
    let t0 = Instant::now();
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    while s.get().is_err() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("DR drill: environment rebuilt and serving through the LB in {:.2}s", t0.elapsed().as_secs_f64());
    assert!(s.get().is_ok());
    assert!(s.plan_json().actions.is_empty());
}

#[test]
fn concurrent_applies_do_nothing_twice() {
    let s = Stack::new("lock", 3);
    let repo = s.repo();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_reconcile"))
            .args(["apply", "--env", &s.env, "--repo", &repo, "--yes", "--lock-timeout", "60s"])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!((oa.status.code(), ob.status.code()), (Some(0), Some(0)), "{}\n{}", stderr(&oa), stderr(&ob));
    // One of them waited for the other's lock, then found nothing left to do or a fresh plan.
    let waited =
        stderr(&oa).contains("waiting for the apply lock") || stderr(&ob).contains("waiting for the apply lock");
    assert!(waited, "{}\n{}", stderr(&oa), stderr(&ob));
    let c = s.containers();
    assert_eq!(c.len(), 3, "nothing done twice: {c:?}");
}
