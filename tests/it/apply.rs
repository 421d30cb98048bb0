//! `reconcile apply` end to end: two real Docker daemons, etcd, a real nginx.
//! Apps are busybox httpd on loopback with host networking; the LB file is
//! included by an nginx this test runs on its own 127.0.0.1 port.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::support::{TestEnv, app_yaml, daemons, reconcile_cmd, registry_under, spawn_piped};
pub use super::support::{http_get, http_get_at, var};
use super::{stderr, stdout};

/// The page the test stacks' web app serves (`files:` of `web_app`).
pub const INDEX_TEMPLATE: &str = "version={{ vars.version }} instance={{ instance.name }}\n";

/// A config repo + an nginx + cleanup of everything the environment made (the
/// `TestEnv` it derefs to: env, prefix, repo, apply, plan).
pub struct Stack {
    t: TestEnv,
    pub lb_port: u16,
    pub pool: (u16, u16),
}

impl Deref for Stack {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.t
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // First nginx; then `t` removes the containers, the etcd keys and the directory.
        let _ = Command::new("nginx").args(["-s", "stop", "-c", &self.nginx_conf().to_string_lossy()]).output();
    }
}

/// `apps/web.yaml` of the test stacks: busybox httpd serving the rendered
/// `index.html.j2` on its pool port, LB-backed and registered, checked over http at
/// `health`; `version` goes into its config key.
pub fn web_app(version: &str, health: &str, replicas: u32) -> String {
    app_yaml(
        "web",
        &var("RECONCILE_TEST_IMAGE"),
        "[/bin/busybox, httpd, -f, -p, '{{ instance.address }}:{{ instance.port }}', -h, /www]",
        &format!(
            "env: {{VERSION: '{{{{ vars.version }}}}'}}\nreplicas: {replicas}\nport: 8080\nhealth: {{http: '{health}', interval: 200ms, timeout: 1s, retries: 10}}\nfiles: [{{template: templates/index.html.j2, path: /www/index.html}}]\nlb: {{host: web.test}}\nregistry: true\nconfig: {{version: '{version}'}}\nstop_timeout: 2s\n"
        ),
    )
}

impl Stack {
    /// `tag` makes names unique; `slot` picks disjoint ports per test (0..20).
    pub fn new(tag: &str, slot: u16) -> Self {
        let base = 22000 + slot * 50;
        let s = Stack { t: TestEnv::new("apply", tag), lb_port: 28100 + slot, pool: (base, base + 49) };
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

    pub fn nginx_conf(&self) -> PathBuf {
        self.root().join("nginx/nginx.conf")
    }
    pub fn lb_file(&self) -> PathBuf {
        self.root().join("nginx/reconcile.conf")
    }

    /// `version` goes into the page and an env var; `health` is the http check path.
    pub fn write_repo(&self, version: &str, health: &str, replicas: u32) {
        let nginx = self.nginx_conf().to_string_lossy().into_owned();
        self.write_environment(
            &format!("{{version: '{version}'}}"),
            &var("RECONCILE_TEST_DOCKER2"),
            self.pool,
            &format!(
                "\n  template: templates/lb.j2\n  path: '{lb}'\n  check: [nginx, -t, -q, -c, '{nginx}']\n  reload: [nginx, -s, reload, -c, '{nginx}']\n",
                lb = self.lb_file().display(),
            ),
        );
        self.write(
            "templates/lb.j2",
            &format!("{{% for app in apps %}}\nupstream {{{{ app.name }}}} {{\n{{% for i in app.instances %}}\n  server {{{{ i.address }}}}:{{{{ i.port }}}};\n{{% else %}}\n  server 127.0.0.1:1 down;\n{{% endfor %}}\n}}\nserver {{\n  listen 127.0.0.1:{port};\n  location / {{ proxy_pass http://{{{{ app.name }}}}; proxy_next_upstream off; }}\n}}\n{{% endfor %}}\n", port = self.lb_port),
        );
        self.write("templates/index.html.j2", INDEX_TEMPLATE);
        self.write("apps/web.yaml", &web_app(version, health, replicas));
        self.write(
            "apps/worker.yaml",
            &app_yaml(
                "worker",
                &var("RECONCILE_TEST_IMAGE2"),
                "[/bin/busybox, sleep, '3600']",
                "depends_on: [web]\nstop_timeout: 1s\n",
            ),
        );
    }

    /// Container ids of the environment by name, on both daemons.
    pub fn containers(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for d in daemons() {
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

    /// The registry's keys (under `<prefix>-reg/`).
    pub fn registry(&self) -> Vec<String> {
        registry_under(&self.prefix).into_keys().collect()
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
    s.wipe();
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
        spawn_piped(&mut reconcile_cmd(&["apply", "--env", &s.env, "--repo", &repo, "--yes", "--lock-timeout", "60s"]))
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
