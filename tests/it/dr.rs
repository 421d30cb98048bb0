//! A disaster-recovery drill of `examples/multi-env`, end to end: `production` runs on
//! daemon 1, is lost, and `production-dr` is rebuilt from the repo alone on daemon 2,
//! with `apply --report` timing it.
//!
//! The example is copied as it is. What cannot run here is swapped by a child
//! environment per site, the only files the test adds: `it-prodsite-<pid>` extends
//! `production` and `it-drsite-<pid>` extends `production-dr`. Each keeps the example's
//! first host name and zone but points it at a test daemon (one host per site: the
//! observation lists a daemon's containers once per host, so hosts cannot share one
//! daemon, which is why the child turns `api`'s `spread` off), the test etcd under its
//! own prefixes, an nginx this test runs on 127.0.0.1:29390, and the test image for the
//! apps (busybox httpd serving `/healthz` and a page naming the instance and host).
//! Unique names keep it apart from concurrent tests.
//!
//! "Losing daemon 1" cannot stop the shared daemon 1 (other tests use it at the same
//! time), so the test does what the site's loss leaves behind: production's containers
//! are removed, its etcd keys (registry included) deleted, the LB file deleted (nginx
//! keeps running on its old config, whose upstreams are dead), and production's hosts
//! are pointed at an unreachable endpoint — a `plan` of production then fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::schemas::{assert_valid, validator};
use super::support::{
    TestEnv, daemons, etcd_endpoint, git, http_exchange, managed_env, reconcile_cmd_in, registry_under, split_response,
    var,
};
use super::{root, stderr, stdout};

const LB_PORT: u16 = 29390;
const POOL: &str = "29300-29349";
const HOST_HEADER: &str = "api.shop.test";

/// The secret the example's apps get as `DB_PASSWORD`: it must appear nowhere in the report.
const DB_PASSWORD: &str = "dr-drill-secret-9f2c";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// The drill's files: the example, the two site environments, nginx's config.
struct Drill {
    /// Owns the temp dir; the DR site's environment.
    dr: TestEnv,
    /// Production's environment (its own temp dir stays empty; it cleans up its env).
    prod: TestEnv,
}

impl Drop for Drill {
    fn drop(&mut self) {
        let _ = Command::new("nginx").args(["-s", "stop", "-c", &self.nginx_conf().to_string_lossy()]).output();
    }
}

impl Drill {
    fn new() -> Drill {
        let d = Drill { dr: TestEnv::new("dr", "drsite"), prod: TestEnv::new("dr", "prodsite") };
        copy_dir(&root().join("examples/multi-env/environments"), &d.environments());
        write(
            &d.nginx_conf(),
            &format!(
                "pid {n}/nginx.pid;\nerror_log {n}/error.log;\nworker_processes 1;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {n}/tmp;\n  proxy_temp_path {n}/tmp;\n  include {lb};\n}}\n",
                n = d.nginx_dir().display(),
                lb = d.lb_file().display()
            ),
        );
        // nginx needs the included file to exist before it starts.
        write(&d.lb_file(), &format!("server {{ listen 127.0.0.1:{LB_PORT}; return 503; }}\n"));
        let o = Command::new("nginx").args(["-c", &d.nginx_conf().to_string_lossy()]).output().unwrap();
        assert!(o.status.success(), "nginx: {}", String::from_utf8_lossy(&o.stderr));
        let d1 = var("RECONCILE_TEST_DOCKER1");
        let d2 = var("RECONCILE_TEST_DOCKER2");
        d.site(&d.prod, "production", ("prod-a1", "a"), &d1, "127.0.0.1");
        d.site(&d.dr, "production-dr", ("dr-1", "dr-a"), &d2, "127.0.0.2");
        d.commit("the drill's site environments");
        d
    }

    fn repo(&self) -> PathBuf {
        self.dr.root().join("repo")
    }
    fn environments(&self) -> PathBuf {
        self.repo().join("environments")
    }
    fn nginx_dir(&self) -> PathBuf {
        self.dr.root().join("nginx")
    }
    fn nginx_conf(&self) -> PathBuf {
        self.nginx_dir().join("nginx.conf")
    }
    fn lb_file(&self) -> PathBuf {
        self.nginx_dir().join("reconcile.conf")
    }

    fn commit(&self, message: &str) {
        let repo = self.repo();
        if !repo.join(".git").exists() {
            git(&repo, &["init", "-q"]);
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", message]);
    }

    /// `t`'s environment: `extends` with the example's host `host` in `zone` on `docker`
    /// at `address`, the test etcd, the nginx LB and runnable apps.
    fn site(&self, t: &TestEnv, extends: &str, (host, zone): (&str, &str), docker: &str, address: &str) {
        let dir = self.environments().join(&t.env);
        let hosts = format!(
            "  - {{name: {host}, docker: '{docker}', address: {address}, labels: {{zone: {zone}}}, ports: {POOL}}}\n"
        );
        let nginx = self.nginx_conf().display().to_string();
        write(
            &dir.join("environment.yaml"),
            &format!(
                "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\nextends: {extends}\nhosts:\n{hosts}\
                 etcd: {{endpoints: ['{etcd}'], prefix: '{prefix}', registry_prefix: '{prefix}-reg'}}\n\
                 lb:\n  template: templates/nginx.conf.j2\n  path: '{lb}'\n  check: [nginx, -t, -q, -c, '{nginx}']\n  \
                 reload: [nginx, -s, reload, -c, '{nginx}']\n  drain: 0s\n",
                env = t.env,
                etcd = etcd_endpoint(),
                prefix = t.prefix,
                lb = self.lb_file().display(),
            ),
        );
        write(
            &dir.join("templates/nginx.conf.j2"),
            &format!(
                "{{% for app in apps %}}\nupstream {{{{ app.name }}}} {{\n{{% for i in app.instances %}}  server {{{{ i.address }}}}:{{{{ i.port }}}};\n{{% else %}}  server 127.0.0.1:1 down;\n{{% endfor %}}}}\nserver {{\n  listen 127.0.0.1:{LB_PORT};\n  server_name {{{{ app.lb.host }}}};\n  location {{{{ app.lb.path }}}} {{ proxy_pass http://{{{{ app.name }}}}; proxy_next_upstream off; }}\n}}\n{{% endfor %}}\n"
            ),
        );
        write(
            &dir.join("templates/index.html.j2"),
            "env={{ env.name }} instance={{ instance.name }} host={{ instance.host }}\n",
        );
        write(&dir.join("templates/healthz.j2"), "ok\n");
        let image = var("RECONCILE_TEST_IMAGE");
        write(
            &dir.join("apps/api.yaml"),
            &format!(
                "apiVersion: reconcile/v1\nkind: App\nname: api\nimage: {image}\n\
                 command: [/bin/busybox, httpd, -f, -p, '{{{{ instance.address }}}}:{{{{ instance.port }}}}', -h, /www]\n\
                 health: {{http: /healthz, interval: 200ms, timeout: 1s, retries: 25}}\n\
                 files: [{{template: templates/index.html.j2, path: /www/index.html}}, {{template: templates/healthz.j2, path: /www/healthz}}]\n\
                 placement: {{spread: false}}\nstop_timeout: 1s\n"
            ),
        );
        write(
            &dir.join("apps/worker.yaml"),
            &format!(
                "apiVersion: reconcile/v1\nkind: App\nname: worker\nimage: {image}\ncommand: [/bin/busybox, sleep, '3600']\nstop_timeout: 1s\n"
            ),
        );
    }

    fn run(&self, args: &[&str]) -> Output {
        reconcile_cmd_in(&root(), args).env("DB_PASSWORD", DB_PASSWORD).output().unwrap()
    }

    fn apply(&self, t: &TestEnv, extra: &[&str]) -> Output {
        let repo = self.repo().display().to_string();
        let mut args = vec!["apply", "--env", &t.env, "--repo", &repo, "--yes", "--timeout", "10s"];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

/// One `GET /` with `Host: api.shop.test` through the LB: the body on a 200.
fn through_lb() -> Result<String, String> {
    let req = format!("GET / HTTP/1.1\r\nHost: {HOST_HEADER}\r\nConnection: close\r\n\r\n");
    let (response, error) =
        http_exchange("127.0.0.1", LB_PORT, &req, Some(Duration::from_secs(1)), Duration::from_secs(3));
    if let Some(e) = error {
        return Err(e);
    }
    let (status, body) = split_response(&response);
    if status.contains(" 200 ") { Ok(body) } else { Err(status) }
}

/// The instances answering through the LB once every answer comes from `env` and
/// `want` distinct instances answered (nginx round-robins); panics after 10 s.
fn serving_instances(env: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = std::collections::BTreeSet::new();
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = through_lb();
        match &last {
            Ok(body) if body.starts_with(&format!("env={env} ")) => {
                seen.insert(body.trim().to_string());
                if seen.len() == want {
                    return seen.into_iter().collect();
                }
            }
            _ => seen.clear(),
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("the LB never served {want} instances of {env}; seen {seen:?}, last answer {last:?}");
}

#[test]
fn production_is_rebuilt_on_the_spare_hosts_and_the_report_shows_the_rto() {
    let d = Drill::new();
    let [d1, d2] = daemons();

    // 1. Production runs on daemon 1 and serves through the LB.
    let o = d.apply(&d.prod, &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let answers = serving_instances(&d.prod.env, 3);
    assert!(answers.iter().all(|a| a.contains(" host=prod-a1")), "{answers:?}");
    assert!(managed_env(&d.prod.env).iter().all(|c| c.daemon == 0));

    // 2. The site is lost: containers, etcd keys (registry included), the LB file, and
    //    the hosts no longer answer.
    d.prod.wipe();
    assert!(managed_env(&d.prod.env).is_empty());
    assert!(registry_under(&d.prod.prefix).is_empty());
    std::fs::remove_file(d.lb_file()).unwrap();
    let env_file = d.environments().join(&d.prod.env).join("environment.yaml");
    let text = std::fs::read_to_string(&env_file).unwrap();
    std::fs::write(&env_file, text.replace(&format!("docker: '{d1}'"), "docker: 'tcp://127.0.0.1:9'")).unwrap();
    d.commit("production's site is gone");
    let repo = d.repo().display().to_string();
    let o = d.run(&["plan", "--env", &d.prod.env, "--repo", &repo, "--timeout", "3s"]);
    assert_eq!(o.status.code(), Some(1), "production is unreachable: {}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("prod-a1"), "the error names the host: {}", stderr(&o));
    assert!(through_lb().is_err(), "nothing serves before the recovery");

    // 3. The drill: production-dr from the repo alone onto daemon 2, timed.
    let report_path = d.dr.root().join("report.json");
    let o = d.apply(&d.dr, &["--report", &report_path.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("(RTO "), "{}", stderr(&o));
    let answers = serving_instances(&d.dr.env, 3);
    assert!(answers.iter().all(|a| a.contains(" host=dr-1")), "{answers:?}");
    let containers = managed_env(&d.dr.env);
    assert_eq!(containers.len(), 4, "3 api + 1 worker: {containers:?}");
    assert!(containers.iter().all(|c| c.daemon == 1 && c.state == "running"), "{containers:?} (daemon 2 is {d2})");
    let registry = registry_under(&d.dr.prefix);
    assert_eq!(registry.len(), 3, "{registry:?}");
    assert!(registry.values().all(|v| v.starts_with("127.0.0.2:")), "{registry:?}");

    // 4. The report: valid, complete, every app timed in order, an RTO.
    let text = std::fs::read_to_string(&report_path).unwrap();
    assert!(!text.contains(DB_PASSWORD), "the secret leaked into the report:\n{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_valid(&validator("report.schema.json"), &r, "apply --report");
    assert_eq!(r["environment"], d.dr.env.as_str());
    assert_eq!(r["outcome"], "complete");
    assert_eq!(r["commit"].as_str().map(str::len), Some(40), "{r:#}");
    let hosts: Vec<&str> = r["hosts"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["dr-1"]);
    let ms = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a time: {v} in {r:#}"));
    let api = &r["apps"]["api"];
    assert_eq!((api["status"].as_str(), api["lb"].as_bool()), (Some("serving"), Some(true)), "{r:#}");
    let instances = api["instances"].as_object().unwrap();
    assert_eq!(instances.len(), 3, "{r:#}");
    for (name, i) in instances {
        let t = [&i["created_ms"], &i["healthy_ms"], &i["registered_ms"], &i["serving_ms"]].map(ms);
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "{name}: created ≤ healthy ≤ registered ≤ serving: {t:?}");
        assert_eq!(i["host"], "dr-1", "{name}: {i}");
    }
    let worker = &r["apps"]["worker"];
    assert_eq!(worker["status"], "serving", "{r:#}");
    // worker depends on api: created only once api served.
    let worker_created = ms(&worker["instances"]["worker-0"]["created_ms"]);
    assert!(ms(&api["serving_ms"]) <= worker_created, "{r:#}");
    let rto = ms(&r["rto_ms"]);
    assert_eq!(rto, ms(&api["serving_ms"]).max(ms(&worker["serving_ms"])), "the RTO is when the last app served");
    let execution = ms(&r["execution_started_ms"]);
    assert_eq!(ms(&r["time_to_serving_ms"]), rto - execution);
    assert!(0 < execution && rto <= ms(&r["finished_ms"]), "{r:#}");

    // 5. Re-running the drill's apply changes nothing; its Markdown report says so.
    let md_path = d.dr.root().join("report.md");
    let o = d.apply(&d.dr, &["--report", &md_path.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(md.starts_with(&format!("# Recovery report: `{}`", d.dr.env)), "{md}");
    assert!(md.contains("| outcome | no changes |") && md.contains("| api | unchanged |"), "{md}");
}

#[test]
fn a_report_that_cannot_be_written_is_refused_before_anything_is_read() {
    // Refused before the repo is even loaded: the example's hosts do not exist here.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/report.json");
    for (path, message) in [
        (missing.display().to_string(), "does not exist; create it first"),
        (dir.path().display().to_string(), "is a directory; give a file name"),
    ] {
        let o = super::reconcile(&[
            "apply",
            "--repo",
            "examples/multi-env",
            "--env",
            "production-dr",
            "--yes",
            "--report",
            &path,
        ]);
        assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains(message), "{}", stderr(&o));
        assert!(!stderr(&o).contains("10.30.0."), "no host was contacted: {}", stderr(&o));
    }
}
