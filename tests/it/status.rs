//! `reconcile status` against the real daemons and etcd of the test environment: every
//! column (instance, host, image, port, state, health, uptime, restarts, drift) and
//! `missing`, in the table and in `--format json`. The health column is the app's own
//! check run by status (busybox httpd serving `/index.html`), `watch`'s mark in etcd
//! gives "since".

use std::process::Command;

use serde_json::Value;

use super::apply::{Stack, var};
use super::apply_chaos::managed;
use super::watch::{docker, managed_name};
use super::{stderr, stdout};

fn status(s: &Stack, format: &str) -> String {
    let o = super::reconcile(&["status", "--env", &s.env, "--repo", &s.repo(), "--format", format]);
    assert_eq!(o.status.code(), Some(0), "status: {}", stderr(&o));
    stdout(&o)
}

/// The status rows by instance name.
fn rows(s: &Stack) -> std::collections::BTreeMap<String, Value> {
    let v: Value = serde_json::from_str(&status(s, "json")).unwrap();
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["env"], s.env.as_str());
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["instance"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn etcdctl(args: &[&str]) {
    let o = Command::new("etcdctl").args(["--endpoints", &var("RECONCILE_TEST_ETCD")]).args(args).output().unwrap();
    assert!(o.status.success(), "etcdctl {args:?}: {}", stderr(&o));
}

/// Poll `status --format json` until `f` holds for the rows (Docker's restart policy and
/// state changes are asynchronous); the last rows on timeout.
fn rows_until(
    s: &Stack,
    what: &str,
    f: impl Fn(&std::collections::BTreeMap<String, Value>) -> bool,
) -> std::collections::BTreeMap<String, Value> {
    let t0 = std::time::Instant::now();
    loop {
        let r = rows(s);
        if f(&r) {
            return r;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "timed out waiting for {what}: {r:#?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn status_shows_every_column_from_the_real_daemons() {
    let s = Stack::new("status", 27);
    s.write_repo("1", "/index.html", 2);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let live = managed(&s);
    assert_eq!(live.len(), 3, "{live:?}");

    // Converged: every column from Docker, web's http check passing, worker without one.
    let r = rows(&s);
    assert_eq!(r.keys().collect::<Vec<_>>(), ["web-0", "web-1", "worker-0"]);
    for m in &live {
        let row = &r[&m.instance];
        assert_eq!(row["app"], m.app.as_str());
        assert_eq!(row["container_id"].as_str().unwrap()[..12], m.id[..12]);
        assert_eq!(row["host"], ["node-1", "node-2"][m.daemon], "{row}");
        let image = if m.app == "web" { var("RECONCILE_TEST_IMAGE") } else { var("RECONCILE_TEST_IMAGE2") };
        assert_eq!(row["image"], image.as_str());
        assert_eq!(row["port"].as_u64().map(|p| p as u16), m.port, "{row}");
        assert_eq!(row["state"], "running");
        let up = row["uptime_secs"].as_i64().unwrap();
        assert!((0..600).contains(&up), "uptime {up}");
        assert_eq!(row["restarts"], 0);
        assert_eq!(row["drift"], "in sync");
        assert_eq!(row["out_of_traffic"], false);
    }
    let web0 = live.iter().find(|m| m.instance == "web-0").unwrap();
    for i in ["web-0", "web-1"] {
        assert_eq!(r[i]["health"], "healthy", "{}", r[i]);
        assert_eq!(r[i]["health_status"], "healthy");
        assert_eq!(r[i]["health_error"], Value::Null);
    }
    assert_eq!(
        r["web-0"]["health_check"],
        format!("GET http://{}:{}/index.html", web0.address(), web0.port.unwrap()).as_str()
    );
    assert_eq!((&r["worker-0"]["health"], &r["worker-0"]["health_status"]), (&"no check".into(), &"no_check".into()));
    let table = status(&s, "table");
    let head = table.lines().next().unwrap();
    assert_eq!(
        head.split_whitespace().collect::<Vec<_>>(),
        ["APP", "INSTANCE", "HOST", "IMAGE", "PORT", "STATE", "HEALTH", "UPTIME", "RESTARTS", "DRIFT"]
    );
    let line = |t: &str, i: &str| t.lines().find(|l| l.split_whitespace().nth(1) == Some(i)).unwrap().to_string();
    let l = line(&table, "web-0");
    assert!(l.contains(&format!(" {} ", web0.port.unwrap())) && l.contains(" healthy "), "{l}");
    assert!(line(&table, "worker-0").contains(" no check "), "{table}");

    // web-0's page goes away (the container keeps running): its check fails now.
    docker(web0.daemon, &["exec", &web0.id, "mv", "/www/index.html", "/www/gone.html"]);
    let r = rows(&s);
    let row = &r["web-0"];
    assert_eq!(row["health_status"], "unhealthy", "{row}");
    let err = row["health_error"].as_str().unwrap();
    assert!(err.starts_with("GET /index.html on ") && err.ends_with(": 404 Not Found"), "{err}");
    assert_eq!(row["health"], format!("unhealthy ({err})").as_str());
    assert_eq!(row["health_since"], Value::Null);
    assert_eq!(r["web-1"]["health_status"], "healthy");

    // With watch's mark, "since" comes from it and the instance is out of traffic.
    let key = format!("{}/{}/health/{}", s.prefix, s.env, managed_name(&s, &web0.id));
    let since = "2026-12-01T20:00:00Z";
    let mark = format!(
        r#"{{"app":"web","instance":"web-0","container_id":"{}","since":"{since}","error":"GET /index.html: 404 Not Found"}}"#,
        web0.id
    );
    etcdctl(&["put", &key, &mark]);
    let r = rows(&s);
    let row = &r["web-0"];
    assert_eq!(row["health"], format!("unhealthy since {since}, out of traffic ({err})").as_str());
    assert_eq!((&row["health_since"], &row["out_of_traffic"]), (&since.into(), &true.into()));
    let l = line(&status(&s, "table"), "web-0");
    assert!(l.contains(&format!("unhealthy since {since}, out of traffic (GET /index.html on ")), "{l}");
    etcdctl(&["del", &key]);
    docker(web0.daemon, &["exec", &web0.id, "mv", "/www/gone.html", "/www/index.html"]);

    // worker-0's process dies: Docker's restart policy brings it back, restarts counts it.
    let worker = live.iter().find(|m| m.instance == "worker-0").unwrap();
    docker(worker.daemon, &["exec", &worker.id, "kill", "1"]);
    let r = rows_until(&s, "worker-0 restarted", |r| {
        r["worker-0"]["restarts"].as_i64() >= Some(1) && r["worker-0"]["state"] == "running"
    });
    assert!(r["worker-0"]["uptime_secs"].as_i64().unwrap() < 20, "{}", r["worker-0"]);
    assert_eq!(r["worker-0"]["drift"], "in sync");

    // Stopped: no health, no uptime, plan would start it. Removed: `missing`.
    docker(worker.daemon, &["stop", "-t", "1", &worker.id]);
    let web1 = live.iter().find(|m| m.instance == "web-1").unwrap();
    docker(web1.daemon, &["rm", "-f", &web1.id]);
    let r = rows(&s);
    let w = &r["worker-0"];
    assert_eq!((&w["state"], &w["health"], &w["uptime_secs"]), (&"exited".into(), &Value::Null, &Value::Null), "{w}");
    assert_eq!(w["drift"], "start (not running)");
    let gone = &r["web-1"];
    assert_eq!(gone["state"], "missing", "{gone}");
    assert_eq!(gone["container_id"], Value::Null);
    assert_eq!(gone["drift"], "create (missing)");
    assert_eq!(gone["image"], var("RECONCILE_TEST_IMAGE").as_str());
    assert!(gone["host"] == "node-1" || gone["host"] == "node-2", "{gone}");
    assert!(gone["port"].as_u64().is_some_and(|p| (s.pool.0..=s.pool.1).contains(&(p as u16))), "{gone}");
    let table = status(&s, "table");
    let l = line(&table, "web-1");
    assert!(l.contains(" missing ") && l.ends_with("create (missing)"), "{l}");
    assert!(line(&table, "worker-0").contains(" exited "), "{table}");

    // A changed spec: web's env and page change, so plan would replace it.
    s.write_repo("2", "/index.html", 2);
    let r = rows(&s);
    let drift = r["web-0"]["drift"].as_str().unwrap();
    assert!(drift.starts_with("replace (spec changed: ") && drift.contains("env"), "{drift}");
    assert_eq!(r["web-0"]["health_status"], "healthy", "the running instance still passes");
}
