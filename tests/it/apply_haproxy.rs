//! `reconcile apply` end to end with HAProxy as the load balancer: two real Docker
//! daemons, etcd, and a real `haproxy` (master-worker, `-W -D -p <pid file>`) this test
//! runs on 127.0.0.1:28130. The LB file is haproxy's whole config, rendered from the
//! environment's template; `check: [haproxy, -c, -f, "{file}"]` (the candidate is
//! checked before it replaces the file) and `reload: [sh, scripts/haproxy-reload, <pid
//! file>]` (SIGUSR2 to the master: it re-executes, new workers take over, old ones finish
//! their requests; the script returns once the new worker exists, because haproxy 2.6
//! drops a SIGUSR2 that arrives while it still re-executes for the previous one — the
//! cause of this test's 503s under load with a bare `pkill -USR2`), as README.md
//! describes; `drain: 3s` before old instances stop.
//!
//! Ports: the LB on 28130, the hosts' pool 23500-23549 (slot 30 of `apply::Stack`'s
//! scheme, which no other test uses).

use std::net::TcpStream;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::apply::{INDEX_TEMPLATE, http_get_at, var};
use super::support::{Daemon, TestEnv, get_web, managed_env, registry_under, start_load, wait_steady};
use super::{stderr, stdout};

const LB_PORT: u16 = 28130;
const POOL: (u16, u16) = (23500, 23549);

/// The LB template: a frontend routing on each app's `lb.host`, a backend per app with a
/// `server` line per serving instance. Server names carry the port: during a rolling
/// replace the old and the new container of one instance (same `name`) serve side by
/// side, and haproxy refuses two servers of one name in a backend. `retries 0` and no
/// `option redispatch`: a request sent to a stopped instance fails visibly.
pub const TEMPLATE: &str = r"# managed by reconcile for {{ env.name }}
global
  maxconn 512
defaults
  mode http
  retries 0
  timeout connect 2s
  timeout client 5s
  timeout server 5s
frontend fe
  bind 127.0.0.1:@PORT@
{% for app in apps %}
  use_backend {{ app.name }} if { hdr(host) -i {{ app.lb.host }} }
{% endfor %}
{% for app in apps %}
backend {{ app.name }}
{% for i in app.instances %}
  server {{ i.name }}_{{ i.port }} {{ i.address }}:{{ i.port }}
{% endfor %}
@EXTRA@{% endfor %}
";

/// How long one GET through haproxy may take to answer before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// A config repo + a running haproxy + cleanup of everything the environment made
/// (fields drop in order: haproxy first, then the environment's containers and keys).
struct HaStack {
    haproxy: Daemon,
    t: TestEnv,
}

impl Deref for HaStack {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.t
    }
}

impl HaStack {
    fn new(tag: &str) -> Self {
        let t = TestEnv::new("apply", tag);
        let haproxy = Daemon { name: "haproxy", pid_file: t.root().join("haproxy/haproxy.pid") };
        let s = HaStack { haproxy, t };
        s.write_repo("1", ""); // first: it needs the test environment's variables
        // haproxy binds with SO_REUSEPORT: a leftover one on the port would share the traffic.
        assert!(
            TcpStream::connect(("127.0.0.1", LB_PORT)).is_err(),
            "127.0.0.1:{LB_PORT} is already in use (a haproxy left by a killed run?)"
        );
        std::fs::create_dir_all(s.haproxy_dir()).unwrap();
        // haproxy needs a config to start: the frontend only, answering 503.
        std::fs::write(
            s.lb_file(),
            format!(
                "defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
                 frontend fe\n  bind 127.0.0.1:{LB_PORT}\n  http-request return status 503\n"
            ),
        )
        .unwrap();
        let cfg = s.lb_file().to_string_lossy().into_owned();
        let pid_file = s.pid_file().to_string_lossy().into_owned();
        // Daemonised: its output goes to a file, so it cannot hold our pipes open.
        let log = s.haproxy_dir().join("start.log");
        let out = std::fs::File::create(&log).unwrap();
        let status = Command::new("haproxy")
            .args(["-W", "-D", "-f", &cfg, "-p", &pid_file])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run haproxy (is it installed and on PATH?): {e}"));
        assert!(status.success(), "haproxy failed ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.haproxy_pid().is_none() || !get_lb().is_err_and(|e| e.contains("503")) {
            assert!(Instant::now() < deadline, "haproxy did not come up on 127.0.0.1:{LB_PORT}: {:?}", get_lb());
            std::thread::sleep(Duration::from_millis(30));
        }
        s
    }

    fn haproxy_dir(&self) -> PathBuf {
        self.root().join("haproxy")
    }
    /// lb.path: the whole haproxy config.
    fn lb_file(&self) -> PathBuf {
        self.haproxy_dir().join("haproxy.cfg")
    }
    fn pid_file(&self) -> &Path {
        &self.haproxy.pid_file
    }
    fn haproxy_pid(&self) -> Option<String> {
        self.haproxy.pid()
    }

    /// `version` goes into the page and an env var; `extra` is added to every backend of
    /// the LB template (to break it).
    fn write_repo(&self, version: &str, extra: &str) {
        self.write_environment(
            &format!("{{version: '{version}'}}"),
            &var("RECONCILE_TEST_DOCKER2"),
            POOL,
            &format!(
                "\n  template: templates/lb.j2\n  path: '{lb}'\n  check: [haproxy, -c, -f, '{{file}}']\n  reload: [sh, '{script}', '{pid}']\n  drain: 3s\n",
                lb = self.lb_file().display(),
                script = super::root().join("scripts/haproxy-reload").display(),
                pid = self.pid_file().display(),
            ),
        );
        self.write("templates/lb.j2", &TEMPLATE.replace("@PORT@", &LB_PORT.to_string()).replace("@EXTRA@", extra));
        self.write("templates/index.html.j2", INDEX_TEMPLATE);
        self.write("apps/web.yaml", &super::apply::web_app(version, "/", 2));
    }

    /// `apply`, with each line of its stderr (the plan, then one line per step) stamped
    /// with the seconds since `t0`, to set the steps against the load's failures.
    fn apply_stamped(&self, t0: Instant) -> Output {
        super::support::apply_stamped(&self.repo(), &self.env, t0)
    }

    /// `address:port` of every `server` line of the LB file.
    fn lb_servers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_to_string(self.lb_file())
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("server "))
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// `haproxy -c -f <the LB file>`.
    fn haproxy_check(&self) -> Output {
        Command::new("haproxy").args(["-c", "-f", &self.lb_file().to_string_lossy()]).output().unwrap()
    }

    /// Poll GET through haproxy until it answers with a body starting `prefix`, steadily
    /// (a reload is asynchronous); panics with the last answer after 10 s.
    fn wait_serving(&self, prefix: &str) {
        wait_steady(&format!("haproxy (for {prefix:?})"), Duration::ZERO, get_lb, |last| {
            last.as_deref().is_ok_and(|b| b.starts_with(prefix))
        });
    }
}

/// One GET / with Host web.test through haproxy, short timeouts: the body on a 200, else
/// the status line or the error.
fn get_lb() -> Result<String, String> {
    get_web("127.0.0.1", LB_PORT, Some(Duration::from_secs(1)), READ_TIMEOUT)
}

/// Names of the files in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn apply_with_haproxy_converges_rolls_under_load_and_rejects_a_broken_config() {
    let s = HaStack::new("haproxy");

    // 1. First apply: two web instances behind haproxy, the config valid, nothing left to plan.
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("app web: ok"), "{}", stdout(&o));
    s.wait_serving("version=1 instance=web-");
    let v1 = managed_env(&s.env);
    assert_eq!(v1.len(), 2, "{v1:?}");
    assert!(v1.iter().all(|c| c.state == "running"), "{v1:?}");
    assert_eq!(v1.iter().map(|c| c.daemon).collect::<std::collections::BTreeSet<_>>().len(), 2, "spread: {v1:?}");
    let running: Vec<String> = {
        let mut v: Vec<String> = v1.iter().map(|c| format!("{}:{}", c.address(), c.port.unwrap())).collect();
        v.sort();
        v
    };
    assert_eq!(s.lb_servers(), running, "{}", std::fs::read_to_string(s.lb_file()).unwrap());
    let mut reg: Vec<String> = registry_under(&s.prefix).into_values().collect();
    reg.sort();
    assert_eq!(reg, running, "registry vs running instances");
    for addr in &reg {
        let (ip, port) = addr.rsplit_once(':').unwrap();
        assert!(http_get_at(ip, port.parse().unwrap()).unwrap().starts_with("version=1 "), "{addr}");
    }
    let check = s.haproxy_check();
    assert!(check.status.success(), "haproxy -c rejects the rendered file: {}{}", stdout(&check), stderr(&check));
    let plan = s.plan_json();
    assert!(plan.actions.is_empty(), "plan after apply: {:#?}", plan.actions);
    let master = s.haproxy_pid().unwrap();

    // 2. Version 2 under load: a rolling replace, every request answered.
    s.write_repo("2", "");
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let load_t0 = Instant::now();
    let load = start_load(LB_PORT, READ_TIMEOUT, load_t0, Arc::clone(&stop), Arc::clone(&made));
    std::thread::sleep(Duration::from_millis(300)); // traffic flows before the apply starts
    let (t0, made_before) = (Instant::now(), made.load(Ordering::SeqCst));
    let o = s.apply_stamped(load_t0);
    let (rollout, during) = (t0.elapsed(), made.load(Ordering::SeqCst) - made_before);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let r = load.join().unwrap();
    eprintln!(
        "haproxy rolling update under load: apply took {:.2}s with {during} requests during it; in all {} ok, {} \
         failed; answers per version {:?}",
        rollout.as_secs_f64(),
        r.ok,
        r.failed,
        r.versions
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        r.failed,
        0,
        "requests failed (s since load start, reason): {:#?}\napply (same clock):\n{}",
        r.errors,
        stderr(&o)
    );
    assert!(during >= 100, "too few requests during the rollout to prove anything: {during}");
    // The environment's `lb.drain: 3s` (longer than the 1.5 s default: a haproxy starved
    // of CPU takes longer to hand over to its new worker) paced the stopping of old ones.
    assert!(stderr(&o).contains("lb: waiting 3s for the reload to drain web's leaving instances"), "{}", stderr(&o));
    assert!(r.versions.get("version=1").is_some_and(|n| *n > 0), "{:?}", r.versions);
    assert!(r.versions.get("version=2").is_some_and(|n| *n > 0), "{:?}", r.versions);
    s.wait_serving("version=2 ");
    let v2 = managed_env(&s.env);
    assert_eq!(v2.len(), 2, "old containers are gone: {v2:?}");
    assert!(v2.iter().all(|c| c.state == "running" && v1.iter().all(|old| old.id != c.id)), "{v2:?} vs {v1:?}");
    let running2: Vec<String> = {
        let mut v: Vec<String> = v2.iter().map(|c| format!("{}:{}", c.address(), c.port.unwrap())).collect();
        v.sort();
        v
    };
    assert_eq!(s.lb_servers(), running2, "{}", std::fs::read_to_string(s.lb_file()).unwrap());
    let mut reg2: Vec<String> = registry_under(&s.prefix).into_values().collect();
    reg2.sort();
    assert_eq!(reg2, running2);
    assert_eq!(s.haproxy_pid().unwrap(), master, "reloaded in place, not restarted");
    assert!(s.haproxy_check().status.success());
    assert!(s.plan_json().actions.is_empty(), "{:#?}", s.plan_json().actions);

    // 3. A template rendering a config haproxy rejects: apply fails the check, the file
    // and haproxy stay as they were.
    s.write_repo("2", "  no-such-keyword-reconcile-it\n");
    let p = s.plan_json();
    assert!(
        p.actions.iter().any(|a| matches!(a, reconcile::plan::Action::WriteLb { .. })),
        "the broken template changes the LB file: {:#?}",
        p.actions
    );
    let before = std::fs::read_to_string(s.lb_file()).unwrap();
    let mtime = std::fs::metadata(s.lb_file()).unwrap().modified().unwrap();
    let files = files_in(&s.haproxy_dir());
    let o = s.apply(&[]);
    let (out, err) = (stdout(&o), stderr(&o));
    eprintln!("apply with a broken haproxy config: exit {:?}\nstdout:\n{out}\nstderr:\n{err}", o.status.code());
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    // The check's failure and haproxy's own message reach the user. (They are in apply's
    // report, which README.md sends to stdout — "Logs go to stderr; reports to stdout" —
    // so both streams are searched.)
    let all = format!("{out}{err}");
    assert!(all.contains("the LB config check `haproxy -c -f "), "the failed check is named: {all}");
    assert!(
        all.contains("unknown keyword 'no-such-keyword-reconcile-it' in 'backend' section"),
        "the checker's output: {all}"
    );
    assert_eq!(std::fs::read_to_string(s.lb_file()).unwrap(), before, "the LB file changed");
    assert_eq!(std::fs::metadata(s.lb_file()).unwrap().modified().unwrap(), mtime, "the LB file was rewritten");
    assert_eq!(files_in(&s.haproxy_dir()), files, "no candidate or backup left behind");
    assert_eq!(
        managed_env(&s.env).iter().map(|c| &c.id).collect::<Vec<_>>(),
        v2.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
    assert_eq!(s.haproxy_pid().unwrap(), master);
    s.wait_serving("version=2 ");

    // 4. A new version AND a config haproxy rejects: the first new instance is healthy,
    // but the LB refuses the config that adds it — as with a failed health check, the new
    // instance leaves the registry and is removed; the old ones keep serving.
    let reg_before = registry_under(&s.prefix);
    s.write_repo("3", "  no-such-keyword-reconcile-it\n");
    let o = s.apply(&[]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(all.contains("the new instances were removed, the old ones keep serving"), "{all}");
    assert_eq!(
        managed_env(&s.env).iter().map(|c| &c.id).collect::<Vec<_>>(),
        v2.iter().map(|c| &c.id).collect::<Vec<_>>(),
        "only the old containers run: {all}"
    );
    assert_eq!(registry_under(&s.prefix), reg_before, "the registry holds the old instances only");
    assert_eq!(std::fs::read_to_string(s.lb_file()).unwrap(), before, "the LB file is unchanged");
    s.wait_serving("version=2 ");
}
