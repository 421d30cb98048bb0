//! A new container that dies or fails its health check is removed by apply — and its
//! last output is kept in the error (secrets masked), against the real Docker daemon.

use std::path::Path;
use std::process::{Command, Output};

use super::apply::var;
use super::{stderr, stdout};

/// A repo with one environment on Docker daemon 1 (no etcd, no LB); removes the
/// environment's containers when dropped.
struct Env {
    dir: tempfile::TempDir,
    name: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        let d = var("RECONCILE_TEST_DOCKER1");
        let filter = format!("label=reconcile.env={}", self.name);
        if let Ok(o) = Command::new("docker").args(["-H", &d, "ps", "-aq", "--filter", &filter]).output() {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["-H", &d, "rm", "-f", id]).output();
            }
        }
    }
}

const TOKEN: &str = "tok-5f1d9c2e-never-shown";

fn app(name: &str, script: &str, extra: &str) -> String {
    format!(
        "apiVersion: reconcile/v1\nkind: App\nname: {name}\nimage: {img}\n\
         command: [/bin/busybox, sh, -c, '{script}']\nenv: {{TOKEN: '{{{{ secrets.token }}}}'}}\n\
         replicas: 1\nstop_timeout: 1s\n{extra}",
        img = var("RECONCILE_TEST_IMAGE"),
    )
}

fn setup() -> Env {
    let env = Env { dir: tempfile::tempdir().unwrap(), name: format!("it-evidence-{}", std::process::id()) };
    let e = env.dir.path().join("environments").join(&env.name);
    std::fs::create_dir_all(e.join("apps")).unwrap();
    std::fs::write(
        e.join("environment.yaml"),
        format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: {}\nsecrets: {{token: {{from_env: EVIDENCE_TOKEN}}}}\n\
             hosts:\n  - {{name: node-1, docker: '{}', address: 127.0.0.1, ports: 24400-24409}}\n",
            env.name,
            var("RECONCILE_TEST_DOCKER1")
        ),
    )
    .unwrap();
    // Dies at once, saying why on stderr (with the secret in the message).
    let crash =
        app("crash", "echo starting >&2; echo \"listen tcp :80: bind: address in use (token $TOKEN)\" >&2; exit 1", "");
    std::fs::write(e.join("apps/crash.yaml"), crash).unwrap();
    // Runs, but never answers its health check.
    let sick = app(
        "sick",
        "echo \"config error: no upstream for $TOKEN\"; sleep 60",
        "port: 8080\nhealth: {http: /healthz, interval: 200ms, timeout: 200ms, retries: 3}\n",
    );
    std::fs::write(e.join("apps/sick.yaml"), sick).unwrap();
    env
}

fn apply(repo: &Path, env: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reconcile"))
        .args(["apply", "--repo", &repo.to_string_lossy(), "--env", env, "--yes"])
        .env("NO_COLOR", "1")
        .env("EVIDENCE_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn a_failed_new_container_leaves_its_last_output_in_the_error_with_secrets_masked() {
    let env = setup();
    let o = apply(env.dir.path(), &env.name);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let crash = err.lines().skip_while(|l| !l.contains("app crash:")).take(8).collect::<Vec<_>>().join("\n");
    assert!(crash.contains("the new container was removed"), "{err}");
    assert!(crash.contains("listen tcp :80: bind: address in use (token (sensitive))"), "{err}");
    let sick = err.lines().skip_while(|l| !l.contains("app sick:")).take(8).collect::<Vec<_>>().join("\n");
    assert!(sick.contains("unhealthy after 3 probes"), "{err}");
    assert!(sick.contains("config error: no upstream for (sensitive)"), "{err}");
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN), "the secret leaked:\n{out}{err}");
    // Both failed containers are gone.
    let d = var("RECONCILE_TEST_DOCKER1");
    let filter = format!("label=reconcile.env={}", env.name);
    let ps = Command::new("docker").args(["-H", &d, "ps", "-aq", "--filter", &filter]).output().unwrap();
    assert_eq!(stdout(&ps).trim(), "", "left behind");
}
