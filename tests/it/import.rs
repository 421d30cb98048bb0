//! `reconcile import compose`: golden tests over realistic compose projects
//! (tests/fixtures/compose/<case>/, insta snapshots of every written file and of the
//! report), each checked with `reconcile validate`; and a live comparison: the same
//! compose project started by Debian's `docker-compose` and by `reconcile apply` of
//! the imported repo, inspected side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{root, stderr, stdout};

fn fixture(case: &str) -> PathBuf {
    root().join("tests/fixtures/compose").join(case)
}

/// `reconcile import compose` with `files` of `case`, extra process variables `vars`.
fn import(case: &str, files: &[&str], env: &str, out: &Path, vars: &[(&str, &str)]) -> Output {
    import_with(case, files, env, out, vars, &[])
}

fn import_with(case: &str, files: &[&str], env: &str, out: &Path, vars: &[(&str, &str)], flags: &[&str]) -> Output {
    let dir = fixture(case);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reconcile"));
    cmd.args(["import", "compose"]);
    // as a user types it in the project directory: bare file names
    cmd.args(files);
    cmd.args(flags);
    cmd.args(["--env", env, "--out"]).arg(out).env("NO_COLOR", "1").env_remove("RUST_LOG").current_dir(&dir);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Every file under `dir`, as `--- path` + contents, with machine paths replaced.
fn listing(dir: &Path, redact: &[(&Path, &str)]) -> String {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                files.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = String::new();
    for (k, v) in files {
        out.push_str(&format!("--- {k}\n{v}\n"));
    }
    redacted(&out, redact)
}

fn redacted(s: &str, redact: &[(&Path, &str)]) -> String {
    let mut s = s.to_string();
    for (p, with) in redact {
        s = s.replace(&*p.to_string_lossy(), with);
    }
    s
}

fn validate(out: &Path, env: &str) {
    let o = super::reconcile(&["validate", "--repo", &out.to_string_lossy(), "--env", env]);
    assert!(o.status.success(), "validate failed on the imported repo:\n{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(&format!("ok: {env} valid")), "{}", stdout(&o));
}

#[track_caller]
fn golden(case: &str, files: &[&str], vars: &[(&str, &str)], flags: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let o = import_with(case, files, "imported", out.path(), vars, flags);
    assert!(o.status.success(), "import failed:\n{}", stderr(&o));
    let fix = fixture(case);
    let redact = [(out.path(), "<out>"), (fix.as_path(), "<project>")];
    validate(out.path(), "imported");
    insta::assert_snapshot!(format!("{case}-files"), listing(out.path(), &redact));
    insta::assert_snapshot!(format!("{case}-report"), redacted(&format!("{}{}", stderr(&o), stdout(&o)), &redact));
}

#[test]
fn golden_web_app_with_database_proxy_secrets_and_env_files() {
    golden("webapp", &["docker-compose.yml"], &[], &["--lb", "nginx"]);
}

#[test]
fn golden_several_files_merged_with_required_variable() {
    golden(
        "overrides",
        &["docker-compose.yml", "docker-compose.prod.yml"],
        &[("SENTRY_DSN", "https://k@sentry.example.test/1")],
        &[],
    );
}

#[test]
fn what_compose_rejects_is_reported_at_its_line_and_nothing_is_written() {
    let out = tempfile::tempdir().unwrap();
    let o = import("overrides", &["docker-compose.yml", "docker-compose.prod.yml"], "imported", out.path(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("required variable SENTRY_DSN is missing a value: set SENTRY_DSN for production"), "{err}");
    assert!(err.contains("docker-compose.prod.yml:6:"), "the error points at the override file's line:\n{err}");
    assert!(err.contains("import failed: nothing written"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing written");
    // docker-compose refuses the same files for the same reason
    let o = compose_config("overrides", &["docker-compose.yml", "docker-compose.prod.yml"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("set SENTRY_DSN for production"), "{}", stderr(&o));
}

/// `docker-compose config` (Debian's docker-compose, the reference implementation of
/// interpolation, env_file and -f merging) run on `case`'s `files` with `vars`.
fn compose_config(case: &str, files: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("docker-compose");
    for f in files {
        cmd.arg("-f").arg(fixture(case).join(f));
    }
    cmd.arg("config").current_dir(fixture(case));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("docker-compose is missing: run scripts/test-env.sh up")
}

/// The import agrees with `docker-compose config` on every service's image, command,
/// environment (env_file merged in) and replicas.
#[track_caller]
fn agrees_with_compose_config(case: &str, files: &[&str], vars: &[(&str, &str)]) {
    let o = compose_config(case, files, vars);
    assert!(o.status.success(), "docker-compose config: {}", stderr(&o));
    let config = reconcile::spec::yaml::parse_str(&stdout(&o)).unwrap().value;
    let out = tempfile::tempdir().unwrap();
    let imp = import(case, files, "cmp", out.path(), vars);
    assert!(imp.status.success(), "{}", stderr(&imp));
    let services = config["services"].as_object().unwrap();
    assert!(!services.is_empty());
    for (name, svc) in services {
        let path = out.path().join(format!("environments/cmp/apps/{name}.yaml"));
        let app = reconcile::spec::yaml::parse_str(&std::fs::read_to_string(&path).unwrap()).unwrap().value;
        let image = svc["image"].as_str().unwrap();
        assert!(
            app["image"] == image || app["image"] == format!("{image}:latest"),
            "{name}: {} vs {image}",
            app["image"]
        );
        // compose prints a literal `$` as `$$`
        let env: serde_json::Map<String, serde_json::Value> = svc["environment"]
            .as_object()
            .map(|m| {
                // `KEY` without a value and unset: null here, not set in the container
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), serde_json::json!(v.as_str().unwrap().replace("$$", "$"))))
                    .collect()
            })
            .unwrap_or_default();
        let ours = app.get("env").and_then(|e| e.as_object()).cloned().unwrap_or_default();
        assert_eq!(ours, env, "{name}: environment");
        let argv = |v: &serde_json::Value| -> Vec<String> {
            match v {
                serde_json::Value::String(s) => reconcile::import::compose::shell_split(s).unwrap(),
                serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
                _ => Vec::new(),
            }
        };
        let mut command = argv(&svc["entrypoint"]);
        command.extend(argv(&svc["command"]));
        assert_eq!(argv(&app["command"]), command, "{name}: command");
        assert_eq!(
            app.get("replicas").and_then(|r| r.as_u64()),
            svc["deploy"]["replicas"].as_u64(),
            "{name}: replicas"
        );
    }
}

#[test]
fn import_agrees_with_docker_compose_config() {
    agrees_with_compose_config("webapp", &["docker-compose.yml"], &[("WEB_TAG", "2.5.0")]);
    agrees_with_compose_config(
        "overrides",
        &["docker-compose.yml", "docker-compose.prod.yml"],
        &[("SENTRY_DSN", "https://k@sentry.example.test/1")],
    );
    agrees_with_compose_config("live", &["docker-compose.yml"], &[("WEB_PORT", "26150")]);
}

#[test]
fn an_existing_environment_is_not_overwritten() {
    let out = tempfile::tempdir().unwrap();
    let first = import("live", &["docker-compose.yml"], "again", out.path(), &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let before = listing(out.path(), &[]);
    let second = import("live", &["docker-compose.yml"], "again", out.path(), &[]);
    assert_eq!(second.status.code(), Some(1));
    assert!(stderr(&second).contains("already exists"), "{}", stderr(&second));
    assert_eq!(listing(out.path(), &[]), before, "nothing changed");
}

// ---------------------------------------------------------------------------
// live: docker-compose up vs reconcile apply of the import

const PROJECT: &str = "rcimportlive";
const ENV: &str = "compose-live";

/// Docker daemon 1 of the test environment (checked loudly at the start of the live test).
fn docker_host() -> String {
    std::env::var("RECONCILE_TEST_DOCKER1").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").arg("-H").arg(docker_host()).args(args).output().unwrap()
}

fn compose(args: &[&str]) -> Output {
    Command::new("docker-compose")
        .args(["-p", PROJECT, "-f"])
        .arg(fixture("live").join("docker-compose.yml"))
        .args(args)
        .env("DOCKER_HOST", docker_host())
        .output()
        .expect("docker-compose is missing: run scripts/test-env.sh up")
}

/// Removes what both sides created, also when the test fails.
struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = compose(&["down", "--timeout", "1"]);
        for label in [format!("reconcile.env={ENV}"), format!("com.docker.compose.project={PROJECT}")] {
            let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}")]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
    }
}

/// What both tools must agree on, per service/app: image, effective argv (entrypoint +
/// command, as the container runs it), env, memory and CPU limits.
fn inspect(label: &str, name_label: &str) -> BTreeMap<String, serde_json::Value> {
    let ids = docker(&["ps", "-q", "--filter", &format!("label={label}")]);
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_string).collect();
    assert!(!ids.is_empty(), "no running container with {label}");
    let mut args = vec!["-H".to_string(), docker_host(), "inspect".to_string()];
    args.extend(ids);
    let o = Command::new("docker").args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    all.into_iter()
        .map(|c| {
            let name = c["Config"]["Labels"][name_label].as_str().unwrap().to_string();
            // reconcile adds RECONCILE_ENV/APP/INSTANCE (documented); everything else must match
            let mut env: Vec<String> = c["Config"]["Env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
                .filter(|e| !e.starts_with("RECONCILE_"))
                .collect();
            env.sort();
            let mut argv = vec![c["Path"].clone()];
            argv.extend(c["Args"].as_array().unwrap().iter().cloned());
            let facts = serde_json::json!({
                "image": c["Config"]["Image"],
                "argv": argv,
                "env": env,
                "memory": c["HostConfig"]["Memory"],
                "nano_cpus": c["HostConfig"]["NanoCpus"],
                "network": c["HostConfig"]["NetworkMode"],
                "init": c["HostConfig"]["Init"],
                "user": c["Config"]["User"],
                "working_dir": c["Config"]["WorkingDir"],
                // the service's own labels: both tools add theirs (com.docker.compose.*, reconcile.*)
                "labels": c["Config"]["Labels"].as_object().map(|l| {
                    l.iter()
                        .filter(|(k, _)| !k.starts_with("com.docker.compose.") && !k.starts_with("reconcile."))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<serde_json::Map<_, _>>()
                }),
            });
            (name, facts)
        })
        .collect()
}

fn wait_running(label: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = docker(&["ps", "-q", "--filter", &format!("label={label}"), "--filter", "status=running"]);
        if String::from_utf8_lossy(&ids.stdout).split_whitespace().count() == count {
            return;
        }
        assert!(Instant::now() < deadline, "{count} containers with {label} did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn live_reconcile_creates_what_docker_compose_creates() {
    super::apply::var("RECONCILE_TEST_DOCKER1");
    let _cleanup = Cleanup;
    drop(Cleanup); // leftovers of an earlier, interrupted run

    let up = compose(&["up", "-d", "--no-build"]);
    assert!(up.status.success(), "docker-compose up: {}", stderr(&up));
    let compose_label = format!("com.docker.compose.project={PROJECT}");
    wait_running(&compose_label, 2);
    let by_compose = inspect(&compose_label, "com.docker.compose.service");
    // both run on the host network and the same loopback port: one side at a time
    let down = compose(&["down", "--timeout", "1"]);
    assert!(down.status.success(), "docker-compose down: {}", stderr(&down));

    let out = tempfile::tempdir().unwrap();
    let imp = import("live", &["docker-compose.yml"], ENV, out.path(), &[]);
    assert!(imp.status.success(), "import: {}", stderr(&imp));
    let repo = out.path().to_string_lossy().into_owned();
    validate(out.path(), ENV);
    let apply = super::reconcile(&["apply", "--env", ENV, "--repo", &repo, "--yes", "--timeout", "60s"]);
    assert!(apply.status.success(), "apply: {}{}", stdout(&apply), stderr(&apply));
    let reconcile_label = format!("reconcile.env={ENV}");
    wait_running(&reconcile_label, 2);
    let by_reconcile = inspect(&reconcile_label, "reconcile.app");

    assert_eq!(by_compose.keys().collect::<Vec<_>>(), ["web", "worker"]);
    for (service, c) in &by_compose {
        let r = &by_reconcile[service];
        for fact in ["image", "argv", "env", "memory", "nano_cpus", "network", "user", "working_dir", "labels"] {
            assert_eq!(c[fact], r[fact], "{service}: {fact} differs\ncompose:   {c}\nreconcile: {r}");
        }
    }
    // the values are the ones in the compose file, not just equal by accident
    let web = &by_reconcile["web"];
    assert_eq!(web["memory"], 64 * 1024 * 1024);
    assert_eq!(web["nano_cpus"], 500_000_000);
    assert!(web["env"].as_array().unwrap().contains(&serde_json::json!("OVERRIDDEN=from-environment")), "{web}");
    assert!(web["env"].as_array().unwrap().contains(&serde_json::json!("PRICE=$5")), "{web}");
    assert_eq!(by_reconcile["worker"]["argv"], serde_json::json!(["/bin/sh", "-c", "echo started; exec sleep 3600"]));
    assert_eq!(by_reconcile["worker"]["init"], true);
    let worker = &by_reconcile["worker"];
    assert_eq!(
        (&worker["user"], &worker["working_dir"]),
        (&serde_json::json!("65534:65534"), &serde_json::json!("/tmp"))
    );
    // The container's labels are the image's (the test image carries org.reconcile.test.*)
    // plus the service's; the side-by-side comparison above covers all of them.
    let mut own = worker["labels"].as_object().unwrap().clone();
    own.retain(|k, _| !k.starts_with("org.reconcile.test."));
    assert_eq!(
        serde_json::Value::Object(own),
        serde_json::json!({"com.example.team": "shop", "com.example.tier": "background"})
    );
}
