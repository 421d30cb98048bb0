//! `reconcile plan` against the real world: two Docker daemons, etcd and an LB
//! file. The tests carry out a plan's creates, etcd writes and LB write themselves
//! (docker CLI with the labels `plan::container_labels` gives, etcdctl, a file write),
//! not through `apply`, so that the plan is checked on its own; then they change things
//! out of band and check that the next plan names exactly those changes.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;

use reconcile::plan::{Action, Plan, container_labels};

use super::support::{TestEnv, app_yaml, daemons, var};
use super::{reconcile, stderr, stdout};

/// A config repo (`TestEnv`) and the containers a test made by hand, removed on drop.
struct World {
    t: TestEnv,
    created: Vec<(String, String)>,
}

impl Deref for World {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.t
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (host, id) in &self.created {
            let _ = Command::new("docker").args(["-H", host, "rm", "-f", id]).output();
        }
    }
}

impl World {
    fn new(tag: &str) -> Self {
        let w = World { t: TestEnv::new("plan", tag), created: Vec::new() };
        w.write_repo(&var("RECONCILE_TEST_DOCKER2"));
        w
    }

    fn lb_path(&self) -> PathBuf {
        self.root().join("lb.conf")
    }

    fn write_repo(&self, docker2: &str) {
        self.write_environment(
            "{level: info}",
            docker2,
            (21000, 21099),
            &format!(" {{template: lb.j2, path: '{lb}', reload: ['true']}}\n", lb = self.lb_path().display()),
        );
        self.write("lb.j2", "{% for app in apps %}upstream {{ app.name }} {\n{% for i in app.instances %}  server {{ i.address }}:{{ i.port }};\n{% endfor %}}\n{% endfor %}");
        let image = var("RECONCILE_TEST_IMAGE");
        self.write(
            "apps/web.yaml",
            &app_yaml(
                "web",
                &image,
                "[/bin/busybox, sleep, '300']",
                "env: {LEVEL: '{{ vars.level }}'}\nreplicas: 2\nplacement: {spread: true}\nport: 8080\nregistry: true\nconfig: {greeting: hi}\nlb: {host: web.test}\n",
            ),
        );
        self.write("apps/worker.yaml", &app_yaml("worker", &image, "[/bin/busybox, sleep, '300']", ""));
    }

    fn plan(&self) -> Plan {
        self.plan_json_with(&["--timeout", "5s"])
    }

    fn endpoint(&self, host: &str) -> String {
        let [d1, d2] = daemons();
        if host == "node-1" { d1 } else { d2 }
    }

    /// Carry out creates, etcd writes and the LB write of a plan.
    fn carry_out(&mut self, p: &Plan) {
        let etcd = super::support::etcd_endpoint();
        for a in &p.actions {
            match a {
                Action::Create { app, instance, new, .. } => {
                    let host = self.endpoint(&new.host);
                    let mut args: Vec<String> = vec![
                        "-H".into(),
                        host.clone(),
                        "run".into(),
                        "-d".into(),
                        "--init".into(),
                        "--network".into(),
                        "host".into(),
                        "--name".into(),
                        new.container_name.clone(),
                    ];
                    for (k, v) in container_labels(&p.env, app, instance, new, p.origin.commit.as_deref()) {
                        args.push("--label".into());
                        args.push(format!("{k}={v}"));
                    }
                    args.extend([
                        new.spec["image"].as_str().unwrap().to_string(),
                        "/bin/busybox".into(),
                        "sleep".into(),
                        "300".into(),
                    ]);
                    let o = Command::new("docker").args(&args).output().unwrap();
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                    self.created.push((host, String::from_utf8_lossy(&o.stdout).trim().to_string()));
                }
                Action::PutKey { key, value, .. } => {
                    assert!(
                        Command::new("etcdctl")
                            .args(["--endpoints", &etcd, "put", key, value])
                            .output()
                            .unwrap()
                            .status
                            .success()
                    );
                }
                Action::WriteLb { path, content, .. } => std::fs::write(path, content).unwrap(),
                Action::ReloadLb { .. } => {}
                other => panic!("unexpected action on a fresh environment: {other:?}"),
            }
        }
    }
}

#[test]
fn plan_against_real_daemons_etcd_and_lb() {
    let mut w = World::new("live");
    // First plan on an empty environment.
    let p = w.plan();
    assert_eq!((p.summary.add, p.summary.replace, p.summary.remove), (3, 0, 0), "{p:#?}");
    assert!(p.summary.lb_write && p.summary.lb_reload);
    let hosts: std::collections::BTreeSet<&str> = p
        .actions
        .iter()
        .filter_map(|a| {
            if let Action::Create { app, new, .. } = a { (app == "web").then_some(new.host.as_str()) } else { None }
        })
        .collect();
    assert_eq!(hosts.len(), 2, "spread puts one web instance on each daemon");
    w.carry_out(&p);

    // Nothing to do now; --detailed-exitcode says so.
    let repo = w.repo();
    let o = reconcile(&["plan", "--env", &w.env, "--repo", &repo, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));

    // status: what runs where, with uptime, restarts and no drift.
    let o = reconcile(&["status", "--env", &w.env, "--repo", &repo, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v:#}");
    for r in rows {
        assert_eq!(
            (r["state"].as_str(), r["drift"].as_str(), r["restarts"].as_i64()),
            (Some("running"), Some("in sync"), Some(0)),
            "{r:#}"
        );
        assert!(r["uptime_secs"].is_i64(), "{r:#}");
    }
    let table = stdout(&reconcile(&["status", "--env", &w.env, "--repo", &repo]));
    assert!(table.starts_with("APP") && table.contains("web-1") && table.contains("in sync"), "{table}");

    // An unmanaged container on daemon 2 is never part of a plan.
    let d2 = var("RECONCILE_TEST_DOCKER2");
    let o = Command::new("docker")
        .args([
            "-H",
            &d2,
            "run",
            "-d",
            "--init",
            "--network",
            "host",
            &var("RECONCILE_TEST_IMAGE"),
            "/bin/busybox",
            "sleep",
            "300",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let unmanaged = String::from_utf8_lossy(&o.stdout).trim().to_string();
    w.created.push((d2.clone(), unmanaged.clone()));

    // Out of band: a managed container removed, an etcd key edited, the LB file edited.
    let (victim_host, victim) = w.created[0].clone();
    assert!(Command::new("docker").args(["-H", &victim_host, "rm", "-f", &victim]).output().unwrap().status.success());
    let key = format!("{}/{}/config/web/greeting", w.prefix, w.env);
    assert!(
        Command::new("etcdctl")
            .args(["--endpoints", &var("RECONCILE_TEST_ETCD"), "put", &key, "edited by hand"])
            .output()
            .unwrap()
            .status
            .success()
    );
    std::fs::write(w.lb_path(), "# edited by hand\n").unwrap();

    let p = w.plan();
    let json = serde_json::to_string(&p).unwrap();
    assert!(!json.contains(&unmanaged), "the unmanaged container appears in the plan");
    assert_eq!(p.summary.add, 1, "{}", reconcile::plan::render::text(&p, false));
    assert_eq!((p.summary.replace, p.summary.remove, p.summary.start), (0, 0, 0));
    let puts: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| if let Action::PutKey { key, .. } = a { Some(key.as_str()) } else { None })
        .collect();
    assert_eq!(puts, vec![key.as_str()], "exactly the edited key");
    assert!(p.summary.lb_write && p.summary.lb_reload, "the edited LB file is rewritten");

    // The text form says the same, readable.
    let o = reconcile(&["plan", "--env", &w.env, "--repo", &repo]);
    let text = stdout(&o);
    assert!(text.contains("(missing)") && text.contains("edited by hand") && text.contains("1 to add"), "{text}");
}

#[test]
fn unreachable_host_is_a_clear_error() {
    let w = World::new("down");
    w.write_repo("unix:///run/reconcile-test/nope.sock");
    let repo = w.repo();
    let o = reconcile(&["plan", "--env", &w.env, "--repo", &repo, "--timeout", "2s"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("host `node-2`") && err.contains("nope.sock"), "{err}");
    assert!(stdout(&o).is_empty(), "no plan is printed when a host cannot be observed: {}", stdout(&o));
}
