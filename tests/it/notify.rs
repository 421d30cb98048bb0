//! Notifications end to end: `reconcile apply` against the real Docker daemon,
//! telling a local HTTP receiver (webhook with HMAC signature, Slack payload,
//! GitHub and GitLab commit statuses); a receiver that hangs does not stall apply.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::support::{Got, Receiver, git, git_rev, reconcile_cmd_in, remove_env_containers, stderr, stdout, var};

const SIGNING_KEY: &str = "whsec-test-signing-key";
const TOKEN: &str = "tok-very-secret-123";

/// A Git repo with one environment on Docker daemon 1 (no etcd, no LB), one app
/// (`command`), and the given notification targets.
fn repo(dir: &Path, env: &str, command: &str, notifications: &str) {
    let e = dir.join("environments").join(env);
    std::fs::create_dir_all(e.join("apps")).unwrap();
    std::fs::write(
        e.join("environment.yaml"),
        format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\nsecrets:\n  hook_url: {{from_env: IT_HOOK_URL}}\n  slack_url: {{from_env: IT_SLACK_URL}}\n  signing: {{from_env: IT_SIGNING}}\n  token: {{from_env: IT_TOKEN}}\nhosts:\n  - {{name: node-1, docker: '{}', address: 127.0.0.1, ports: 26900-26949}}\nnotifications:\n{notifications}",
            var("RECONCILE_TEST_DOCKER1")
        ),
    )
    .unwrap();
    std::fs::write(
        e.join("apps/job.yaml"),
        format!(
            "apiVersion: reconcile/v1\nkind: App\nname: job\nimage: {}\ncommand: {command}\nhealth: {{cmd: [/bin/busybox, 'true'], interval: 200ms, timeout: 1s, retries: 3}}\nstop_timeout: 1s\n",
            var("RECONCILE_TEST_IMAGE")
        ),
    )
    .unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "notify test"]);
}

fn apply(dir: &Path, env: &str, rx: &Receiver) -> Output {
    run_notifying(dir, &["apply", "--env", env, "--yes", "--repo", &dir.to_string_lossy()], rx)
}

/// `reconcile ARGS` in `dir` with the targets' secrets (`IT_*`) pointing at `rx`.
fn run_notifying(dir: &Path, args: &[&str], rx: &Receiver) -> Output {
    reconcile_cmd_in(dir, args)
        .env("IT_HOOK_URL", rx.url("/hook"))
        .env("IT_SLACK_URL", rx.url("/slack"))
        .env("IT_SIGNING", SIGNING_KEY)
        .env("IT_TOKEN", TOKEN)
        .output()
        .unwrap()
}

/// The HMAC-SHA256 of `body` under `key`, hex, computed with openssl (independent
/// of the implementation under test).
fn openssl_hmac(key: &str, body: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn targets(rx: &Receiver) -> String {
    format!(
        "  - {{kind: webhook, url: hook_url, signing_secret: signing}}\n  - {{kind: slack, url: slack_url}}\n  - {{kind: github_status, token: token, repository: acme/config, api_url: '{}'}}\n  - {{kind: gitlab_status, token: token, project: ops/config, api_url: '{}', context: deploy/it}}\n",
        rx.url("/gh"),
        rx.url("/gl/api/v4")
    )
}

#[test]
fn every_target_kind_hears_of_an_apply_with_signature_and_commit() {
    let rx = Receiver::start(false);
    let dir = tempfile::tempdir().unwrap();
    let env = format!("it-notify-ok-{}", std::process::id());
    repo(dir.path(), &env, "[/bin/busybox, sleep, '3600']", &targets(&rx));
    let o = apply(dir.path(), &env, &rx);
    remove_env_containers(&env);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let commit = git_rev(dir.path(), "HEAD");
    let got = rx.requests();
    let all = format!("{got:#?}");
    for secret in [SIGNING_KEY, TOKEN] {
        assert!(!got.iter().any(|g| g.body.contains(secret)), "secret in a payload: {all}");
    }

    // Webhook: one event for the app and one for the environment, each signed.
    let hooks: Vec<&Got> = got.iter().filter(|g| g.path == "/hook").collect();
    assert_eq!(hooks.len(), 2, "{all}");
    for h in &hooks {
        assert_eq!(h.method, "POST");
        let sig = h.header("x-reconcile-signature").unwrap_or_else(|| panic!("unsigned: {h:?}"));
        assert_eq!(sig, format!("sha256={}", openssl_hmac(SIGNING_KEY, &h.body)), "{h:?}");
        let v: serde_json::Value = serde_json::from_str(&h.body).unwrap();
        assert_eq!(v["event"], "apply_succeeded", "{v}");
        assert_eq!(v["env"], env.as_str());
        assert_eq!(v["commit"], commit.as_str());
        assert_eq!(v["status"], "new");
        assert_eq!(
            v["summary"],
            "1 to add, 0 to replace, 0 to remove, 0 to start; etcd: 0 to put, 0 to delete; lb: unchanged."
        );
    }
    assert!(hooks.iter().any(|h| h.body.contains("\"app\":\"job\"")), "{all}");

    // Slack: text payloads.
    let slack: Vec<&Got> = got.iter().filter(|g| g.path == "/slack").collect();
    assert_eq!(slack.len(), 2, "{all}");
    let text: serde_json::Value = serde_json::from_str(&slack[0].body).unwrap();
    assert!(text["text"].as_str().unwrap().starts_with(&format!("[{env}] apply_succeeded")), "{text}");

    // Commit statuses on the applied commit, with the token in the header only.
    let gh: Vec<&Got> = got.iter().filter(|g| g.path.starts_with("/gh/")).collect();
    assert!(!gh.is_empty(), "{all}");
    for g in &gh {
        assert_eq!(g.path, format!("/gh/repos/acme/config/statuses/{commit}"));
        assert_eq!(g.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
        let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!(
            (v["state"].as_str(), v["context"].as_str()),
            (Some("success"), Some(format!("reconcile/{env}").as_str()))
        );
    }
    let gl: Vec<&Got> = got.iter().filter(|g| g.path.starts_with("/gl/")).collect();
    assert!(!gl.is_empty(), "{all}");
    for g in &gl {
        assert_eq!(g.path, format!("/gl/api/v4/projects/ops%2Fconfig/statuses/{commit}"));
        assert_eq!(g.header("private-token"), Some(TOKEN));
        let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!((v["state"].as_str(), v["name"].as_str()), (Some("success"), Some("deploy/it")));
    }
}

#[test]
fn a_failed_apply_is_told_as_a_failure_and_the_on_filter_holds() {
    let rx = Receiver::start(false);
    let dir = tempfile::tempdir().unwrap();
    let env = format!("it-notify-fail-{}", std::process::id());
    let notifications = format!(
        "  - {{kind: webhook, url: hook_url, on: [apply_failed]}}\n  - {{kind: github_status, token: token, repository: acme/config, api_url: '{}'}}\n",
        rx.url("/gh")
    );
    // The container exits at once: its health check cannot pass.
    repo(dir.path(), &env, "[/bin/busybox, 'false']", &notifications);
    let o = apply(dir.path(), &env, &rx);
    remove_env_containers(&env);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let got = rx.requests();
    let all = format!("{got:#?}");
    let hooks: Vec<serde_json::Value> =
        got.iter().filter(|g| g.path == "/hook").map(|g| serde_json::from_str(&g.body).unwrap()).collect();
    assert!(!hooks.is_empty(), "{all}");
    assert!(hooks.iter().all(|v| v["event"] == "apply_failed"), "only failures pass the filter: {all}");
    assert!(hooks.iter().any(|v| v["app"] == "job" && v["message"].as_str().unwrap().contains("job-0")), "{all}");
    assert!(got.iter().all(|g| g.header("x-reconcile-signature").is_none()), "no signing secret, no signature");
    let gh: Vec<serde_json::Value> =
        got.iter().filter(|g| g.path.starts_with("/gh/")).map(|g| serde_json::from_str(&g.body).unwrap()).collect();
    assert!(gh.iter().any(|v| v["state"] == "failure"), "{all}");
}

#[test]
fn a_hanging_receiver_costs_apply_at_most_its_timeout() {
    let rx = Receiver::start(true);
    let dir = tempfile::tempdir().unwrap();
    let env = format!("it-notify-hang-{}", std::process::id());
    repo(dir.path(), &env, "[/bin/busybox, sleep, '3600']", "  - {kind: webhook, url: hook_url, timeout: 1s}\n");
    let t0 = Instant::now();
    let o = apply(dir.path(), &env, &rx);
    let took = t0.elapsed();
    remove_env_containers(&env);
    assert_eq!(o.status.code(), Some(0), "a failed delivery never fails the apply: {}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("not delivered: no answer within 1s"), "{}", stderr(&o));
    // A hang would never end; the bound leaves room for a loaded CI machine.
    assert!(took < Duration::from_secs(60), "apply took {took:?}");
}

#[test]
fn a_rollback_tells_its_pin_and_the_release_tells_pin_released() {
    let rx = Receiver::start(false);
    let dir = tempfile::tempdir().unwrap();
    let env = format!("it-notify-pin-{}", std::process::id());
    let prefix = format!("/it-notify-pin-{}", std::process::id());
    let _cleanup = super::support::EtcdCleanup::new(&[&prefix, &format!("{prefix}-reg")]);
    repo(
        dir.path(),
        &env,
        "[/bin/busybox, sleep, '3600']",
        "  - {kind: webhook, url: hook_url, on: [pin, pin_released]}\n",
    );
    let file = dir.path().join("environments").join(&env).join("environment.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "notifications:",
        &format!(
            "etcd: {{endpoints: ['{}'], prefix: '{prefix}', registry_prefix: '{prefix}-reg'}}\nnotifications:",
            super::support::etcd_endpoint()
        ),
    );
    std::fs::write(&file, text).unwrap();
    git(dir.path(), &["commit", "-qam", "v1 with etcd"]);
    let v1 = git_rev(dir.path(), "HEAD");
    let app = dir.path().join("environments").join(&env).join("apps/job.yaml");
    let text = std::fs::read_to_string(&app).unwrap().replace("'3600'", "'3601'");
    std::fs::write(&app, text).unwrap();
    git(dir.path(), &["commit", "-qam", "v2"]);
    let o = apply(dir.path(), &env, &rx);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(rx.requests().is_empty(), "the filter keeps only pins: {:#?}", rx.requests());

    let run = |args: &[&str]| {
        let repo = dir.path().to_string_lossy().into_owned();
        let mut all = vec!["rollback", "--env", env.as_str(), "--repo", repo.as_str()];
        all.extend_from_slice(args);
        run_notifying(dir.path(), &all, &rx)
    };
    let o = run(&["--to", "HEAD~1", "--yes"]);
    remove_env_containers(&env);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["--release"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let got: Vec<serde_json::Value> = rx.requests().iter().map(|g| serde_json::from_str(&g.body).unwrap()).collect();
    let kinds: Vec<&str> = got.iter().filter_map(|v| v["event"].as_str()).collect();
    assert_eq!(kinds, ["pin", "pin_released"], "{got:#?}");
    for v in &got {
        assert_eq!((v["commit"].as_str(), v["env"].as_str()), (Some(v1.as_str()), Some(env.as_str())), "{v}");
    }
    assert!(got[0]["message"].as_str().unwrap().contains("rollback --release"), "{got:#?}");
}
