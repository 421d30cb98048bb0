//! Several named LBs (issue 10): a file LB (`edge`: the host's nginx, as today) and an LB
//! inside managed containers (`internal`: haproxy in app `ilb`, an HA pair, one instance
//! on each daemon), real daemons, etcd, nginx and haproxy, loopback only.
//!
//! `ilb` runs `reconcile-test/haproxy:1` (built by scripts/test-env.sh: a debootstrap
//! rootfs with Debian's haproxy, `docker import`ed) with host networking; each instance
//! binds its own host's address and pool port (`LB_BIND` from `instance.address` /
//! `instance.port`, read by haproxy's `bind "${LB_BIND}"`), so the identical config works
//! in both. The config is written through the Docker API, checked with `haproxy -c -f
//! {file}` in every instance, and reloaded with `kill -USR2 1` (haproxy's master is PID 1:
//! `init: false`).
//!
//! Ports: nginx on 127.0.0.1:28157, the hosts' pool 24170-24199 (no other test uses them).

use std::ops::Deref;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::apply::{INDEX_TEMPLATE, var};
use super::support::{
    Load, Managed, TestEnv, app_yaml, apply_stamped, docker_cli, get_web, managed_env, start_load, start_load_at,
    wait_steady,
};
use super::{stderr, stdout};

const NGINX_PORT: u16 = 28157;
const POOL: (u16, u16) = (24170, 24199);
const HAPROXY_IMAGE: &str = "reconcile-test/haproxy:1";
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The repo, the host's nginx, and clean-up (nginx first, then the environment).
struct Multi {
    t: TestEnv,
}

impl Deref for Multi {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.t
    }
}

impl Drop for Multi {
    fn drop(&mut self) {
        let _ = Command::new("nginx").args(["-s", "stop", "-c", &self.nginx_conf()]).output();
    }
}

impl Multi {
    fn new() -> Self {
        let images = Command::new("docker").args(["image", "inspect", HAPROXY_IMAGE]).output().unwrap();
        assert!(images.status.success(), "{HAPROXY_IMAGE} is missing: run scripts/test-env.sh up (it builds it)");
        let m = Multi { t: TestEnv::new("lbmulti", "lbmulti") };
        let d = m.root().join("nginx");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            m.nginx_conf(),
            format!(
                "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_processes 1;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  include {d}/reconcile.conf;\n}}\n",
                d = d.display()
            ),
        )
        .unwrap();
        std::fs::write(m.edge_file(), format!("server {{ listen 127.0.0.1:{NGINX_PORT}; return 503; }}\n")).unwrap();
        let o = Command::new("nginx").args(["-c", &m.nginx_conf()]).output().unwrap();
        assert!(o.status.success(), "nginx: {}", String::from_utf8_lossy(&o.stderr));
        m.write_repo("1", "");
        m
    }

    fn nginx_conf(&self) -> String {
        self.root().join("nginx/nginx.conf").to_string_lossy().into_owned()
    }
    fn edge_file(&self) -> String {
        self.root().join("nginx/reconcile.conf").to_string_lossy().into_owned()
    }

    /// `version` goes into both apps' pages; `extra` into every backend of the internal
    /// LB's template (to make haproxy refuse it).
    fn write_repo(&self, version: &str, extra: &str) {
        let nginx = self.nginx_conf();
        self.write(
            "environment.yaml",
            &format!(
                "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\nvars: {{version: '{version}'}}\nhosts:\n  - {{name: node-1, docker: '{d1}', address: 127.0.0.1, ports: {a}-{b}}}\n  - {{name: node-2, docker: '{d2}', address: 127.0.0.2, ports: {a}-{b}}}\netcd: {{endpoints: ['{etcd}'], prefix: '{prefix}', registry_prefix: '{prefix}-reg'}}\nlbs:\n  edge:\n    template: templates/nginx.conf.j2\n    path: '{edge}'\n    check: [nginx, -t, -q, -c, '{nginx}']\n    reload: [nginx, -s, reload, -c, '{nginx}']\n  internal:\n    template: templates/haproxy.cfg.j2\n    container: {{app: ilb, path: /etc/haproxy/haproxy.cfg}}\n    check: [haproxy, -c, -q, -f, '{{file}}']\n    reload: [kill, -USR2, '1']\n    drain: 2s\n",
                env = self.env,
                d1 = var("RECONCILE_TEST_DOCKER1"),
                d2 = var("RECONCILE_TEST_DOCKER2"),
                etcd = super::support::etcd_endpoint(),
                prefix = self.prefix,
                a = POOL.0,
                b = POOL.1,
                edge = self.edge_file(),
            ),
        );
        self.write(
            "templates/nginx.conf.j2",
            &format!("{{% for app in apps %}}\nupstream {{{{ app.name }}}} {{\n{{% for i in app.instances %}}\n  server {{{{ i.address }}}}:{{{{ i.port }}}};\n{{% else %}}\n  server 127.0.0.1:1 down;\n{{% endfor %}}\n}}\nserver {{\n  listen 127.0.0.1:{NGINX_PORT};\n  location / {{ proxy_pass http://{{{{ app.name }}}}; proxy_next_upstream off; }}\n}}\n{{% endfor %}}\n"),
        );
        // apply_haproxy's config, except that every instance binds its own `LB_BIND`.
        self.write(
            "templates/haproxy.cfg.j2",
            &super::apply_haproxy::TEMPLATE.replace("127.0.0.1:@PORT@", "\"${LB_BIND}\"").replace("@EXTRA@", extra),
        );
        self.write("templates/index.html.j2", INDEX_TEMPLATE);
        for (name, via) in [("web", "edge"), ("api", "internal")] {
            self.write(
                &format!("apps/{name}.yaml"),
                &app_yaml(
                    name,
                    &var("RECONCILE_TEST_IMAGE"),
                    "[/bin/busybox, httpd, -f, -p, '{{ instance.address }}:{{ instance.port }}', -h, /www]",
                    &format!(
                        "replicas: 2\nport: 8080\nhealth: {{http: /, interval: 200ms, timeout: 1s, retries: 10}}\nfiles: [{{template: templates/index.html.j2, path: /www/index.html}}]\nlb: {{via: {via}, host: web.test}}\nregistry: true\nstop_timeout: 2s\nenv: {{VERSION: '{{{{ vars.version }}}}'}}\n"
                    ),
                ),
            );
        }
        self.write(
            "apps/ilb.yaml",
            &format!(
                "apiVersion: reconcile/v1\nkind: App\nname: ilb\nimage: {HAPROXY_IMAGE}\ncommand: [haproxy, -W, -db, -f, /etc/haproxy/haproxy.cfg]\nenv: {{LB_BIND: '{{{{ instance.address }}}}:{{{{ instance.port }}}}'}}\nreplicas: 2\nplacement: {{spread: true}}\nport: 8080\ninit: false\nhealth: {{tcp: true, interval: 200ms, timeout: 1s, retries: 25}}\nupdate: {{strategy: recreate, batch: 1}}\nstop_timeout: 2s\n"
            ),
        );
    }

    /// The running `ilb` containers (node-1's first).
    fn ilbs(&self) -> Vec<Managed> {
        let mut v: Vec<Managed> =
            managed_env(&self.env).into_iter().filter(|c| c.app == "ilb" && c.state == "running").collect();
        v.sort_by_key(|c| c.daemon);
        v
    }

    fn endpoint(c: &Managed) -> String {
        super::support::daemons()[c.daemon].clone()
    }

    /// The internal LB's config inside `c`.
    fn config_in(c: &Managed) -> String {
        docker_cli(&Self::endpoint(c), &["exec", &c.id, "cat", "/etc/haproxy/haproxy.cfg"])
    }

    /// Leftover candidates (`.<name>.reconcile-tmp`) in `c`'s config directory.
    fn candidates_in(c: &Managed) -> Vec<String> {
        let ls = docker_cli(&Self::endpoint(c), &["exec", &c.id, "ls", "-a", "/etc/haproxy"]);
        assert!(ls.contains("haproxy.cfg"), "ls -a /etc/haproxy in {c:?}: {ls}");
        ls.lines().filter(|l| l.contains("reconcile-tmp")).map(str::to_string).collect()
    }

    /// `apply` in the background, its stderr stamped with the seconds since `t0`.
    fn apply_async(&self, t0: Instant) -> JoinHandle<Output> {
        let (repo, env) = (self.repo(), self.env.clone());
        std::thread::spawn(move || apply_stamped(&repo, &env, t0))
    }
}

fn get_at(address: &str, port: u16) -> Result<String, String> {
    get_web(address, port, Some(Duration::from_secs(1)), READ_TIMEOUT)
}

fn wait_serving(what: &str, address: &'static str, port: u16, prefix: &str) {
    wait_steady(
        what,
        Duration::ZERO,
        || get_at(address, port),
        |last| last.as_deref().is_ok_and(|b| b.starts_with(prefix)),
    );
}

fn address(c: &Managed) -> &'static str {
    c.address()
}

fn assert_no_failures(what: &str, r: &Load, o: &Output) {
    assert_eq!(r.failed, 0, "{what}: requests failed (s, reason): {:#?}\napply:\n{}", r.errors, stderr(o));
    assert!(r.ok >= 50, "{what}: too few requests to prove anything: {r:?}");
}

#[test]
fn a_file_lb_and_an_ha_pair_in_containers_roll_refuse_and_survive_a_killed_instance() {
    let m = Multi::new();

    // 1. First apply: web behind nginx (edge), api behind the haproxy pair (internal).
    let o = m.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let ilbs = m.ilbs();
    assert_eq!(ilbs.len(), 2, "{ilbs:?}");
    assert_ne!(ilbs[0].daemon, ilbs[1].daemon, "one LB instance per daemon: {ilbs:?}");
    wait_serving("nginx (edge)", "127.0.0.1", NGINX_PORT, "version=1 instance=web-");
    for c in &ilbs {
        wait_serving("haproxy (internal)", address(c), c.port.unwrap(), "version=1 instance=api-");
    }
    let config = Multi::config_in(&ilbs[0]);
    assert_eq!(Multi::config_in(&ilbs[1]), config, "the pair holds the same config");
    for c in &ilbs {
        assert_eq!(Multi::candidates_in(c), Vec::<String>::new(), "a checked candidate stayed behind in {c:?}");
    }
    assert!(config.contains("backend api") && !config.contains("backend web"), "only api is routed here:\n{config}");
    let edge = std::fs::read_to_string(m.edge_file()).unwrap();
    assert!(edge.contains("upstream web") && !edge.contains("upstream api"), "only web is routed here:\n{edge}");
    let plan = m.plan_json();
    assert!(plan.actions.is_empty(), "plan after apply: {:#?}", plan.actions);

    // 2. Version 2 under load through both LBs (and both LB instances): nothing fails.
    m.write_repo("2", "");
    let plan = m.plan_json();
    let lbs: Vec<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            reconcile::plan::Action::WriteLb { lb, .. } => Some(lb.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(lbs, ["edge", "internal"], "{:#?}", plan.actions);
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let loads = [
        start_load(NGINX_PORT, READ_TIMEOUT, t0, Arc::clone(&stop), Arc::clone(&made)),
        start_load_at(address(&ilbs[0]), ilbs[0].port.unwrap(), READ_TIMEOUT, t0, Arc::clone(&stop), Arc::clone(&made)),
        start_load_at(address(&ilbs[1]), ilbs[1].port.unwrap(), READ_TIMEOUT, t0, Arc::clone(&stop), Arc::clone(&made)),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let o = m.apply_async(t0).join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<Load> = loads.into_iter().map(|l| l.join().unwrap()).collect();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    for (what, r) in ["through nginx", "through ilb on node-1", "through ilb on node-2"].iter().zip(&results) {
        eprintln!("rolling update {what}: {} ok, {} failed, {:?}", r.ok, r.failed, r.versions);
        assert_no_failures(what, r, &o);
        assert!(r.versions.get("version=2").is_some_and(|n| *n > 0), "{what}: {:?}", r.versions);
    }
    assert!(stderr(&o).contains("lb: waiting 2s for the reload to drain api's leaving instances"), "{}", stderr(&o));
    assert!(m.plan_json().actions.is_empty(), "{:#?}", m.plan_json().actions);

    // 3. A config haproxy refuses reaches neither instance; both keep serving version 2.
    let before: Vec<String> = ilbs.iter().map(Multi::config_in).collect();
    m.write_repo("3", "  bogus-directive-reconcile-test\n");
    let o = m.apply(&[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(out.contains("rejected the new /etc/haproxy/haproxy.cfg"), "{out}");
    for (c, old) in ilbs.iter().zip(&before) {
        assert_eq!(&Multi::config_in(c), old, "the refused config reached {c:?}");
        assert_eq!(Multi::candidates_in(c), Vec::<String>::new(), "the refused candidate stayed behind in {c:?}");
        assert!(get_at(address(c), c.port.unwrap()).is_ok_and(|b| b.starts_with("version=2 ")), "{c:?}");
    }

    // 4. Version 4; one LB instance is killed during the apply: the other keeps serving,
    //    and the next apply converges.
    m.write_repo("4", "");
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let survivor =
        start_load_at(address(&ilbs[0]), ilbs[0].port.unwrap(), READ_TIMEOUT, t0, Arc::clone(&stop), Arc::clone(&made));
    std::thread::sleep(Duration::from_millis(300));
    let apply = m.apply_async(t0);
    std::thread::sleep(Duration::from_millis(1500));
    docker_cli(&Multi::endpoint(&ilbs[1]), &["kill", &ilbs[1].id]);
    let o = apply.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let r = survivor.join().unwrap();
    eprintln!(
        "with one LB instance killed: apply exit {:?}; {} ok, {} failed, {:?}",
        o.status.code(),
        r.ok,
        r.failed,
        r.versions
    );
    assert_no_failures("through the surviving ilb", &r, &o);
    let o = m.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let ilbs = m.ilbs();
    assert_eq!(ilbs.len(), 2, "{ilbs:?}");
    for c in &ilbs {
        wait_serving("haproxy (internal) after converging", address(c), c.port.unwrap(), "version=4 instance=api-");
    }
    assert_eq!(Multi::config_in(&ilbs[0]), Multi::config_in(&ilbs[1]), "the pair holds the same config again");
    assert!(m.plan_json().actions.is_empty(), "{:#?}", m.plan_json().actions);
}
