//! `reconcile logs` and `reconcile exec` across both daemons, one of them reached
//! over the ssh endpoint.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::support::{TestEnv, app_yaml, reconcile, reconcile_cmd, stderr, stdout, var};

/// Two hosts: node-1 on daemon 2 (unix socket), node-2 on daemon 1 through ssh; one
/// app `talker` with an instance on each, printing a greeting, a stderr line, then a
/// tick every 200 ms.
fn stack(tag: &str) -> TestEnv {
    let t = TestEnv::new("logs", tag);
    t.write(
        "environment.yaml",
        &format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: {}\nhosts:\n  - {{name: node-1, docker: '{}', address: 127.0.0.2, ports: 26950-26959}}\n  - {{name: node-2, docker: '{}', address: 127.0.0.1, ports: 26960-26969}}\n",
            t.env,
            var("RECONCILE_TEST_DOCKER2"),
            var("RECONCILE_TEST_SSH"),
        ),
    );
    let command = "[/bin/busybox, sh, -c, 'echo hello from $RECONCILE_INSTANCE; echo oops on stderr >&2; while true; do echo tick $RECONCILE_INSTANCE; sleep 0.2; done']";
    t.write(
        "apps/talker.yaml",
        &app_yaml(
            "talker",
            &var("RECONCILE_TEST_IMAGE"),
            command,
            "replicas: 2\nplacement: {spread: true}\nstop_timeout: 1s\n",
        ),
    );
    let o = t.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    t
}

fn logs(t: &TestEnv, extra: &[&str]) -> Vec<String> {
    let repo = t.repo();
    let mut args = vec!["logs", "--env", &t.env, "--repo", &repo];
    args.extend_from_slice(extra);
    let o = reconcile(&args);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    stdout(&o).lines().map(str::to_string).collect()
}

#[test]
fn logs_merge_every_hosts_containers_prefixed_by_instance() {
    let t = stack("merge");
    std::thread::sleep(Duration::from_millis(800));
    let lines = logs(&t, &[]);
    let text = lines.join("\n");
    for i in ["talker-0", "talker-1"] {
        assert!(lines.contains(&format!("{i} | hello from {i}")), "{text}");
        assert!(lines.contains(&format!("{i} | oops on stderr")), "stderr is merged too: {text}");
        assert!(lines.iter().any(|l| l == &format!("{i} | tick {i}")), "{text}");
    }
    // Each instance's own lines keep their order: its greeting comes before its ticks.
    for i in ["talker-0", "talker-1"] {
        let hello = lines.iter().position(|l| l.ends_with(&format!("hello from {i}"))).unwrap();
        let tick = lines.iter().position(|l| l.ends_with(&format!("tick {i}"))).unwrap();
        assert!(hello < tick, "{text}");
    }

    // One instance only; the last line only.
    let one = logs(&t, &["--instance", "talker-1"]);
    assert!(!one.is_empty() && one.iter().all(|l| l.starts_with("talker-1 | ")), "{one:?}");
    let tail = logs(&t, &["--app", "talker", "--tail", "1"]);
    assert_eq!(tail.len(), 2, "one line per container: {tail:?}");

    // Unknown names are clear errors.
    let repo = t.repo();
    let o = reconcile(&["logs", "--env", &t.env, "--repo", &repo, "--app", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("has no app `nope` (apps: talker)"), "{}", stderr(&o));
    let o = reconcile(&["logs", "--env", &t.env, "--repo", &repo, "--instance", "talker-7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no container of instance `talker-7`"), "{}", stderr(&o));
}

#[test]
fn logs_follow_prints_new_lines_from_both_hosts() {
    let t = stack("follow");
    let repo = t.repo();
    let mut child = reconcile_cmd(&["logs", "--env", &t.env, "--repo", &repo, "--follow", "--tail", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500))
            && let Some((instance, rest)) = line.split_once(" | ")
            && rest.starts_with("tick ")
        {
            seen.insert(instance.trim().to_string());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["talker-0", "talker-1"], "new ticks of both instances");
}

/// `reconcile exec` of `t`'s app `talker` with `extra` options, running `script` in sh.
fn exec(t: &TestEnv, extra: &[&str], script: &str) -> std::process::Output {
    let repo = t.repo();
    let mut args = vec!["exec", "--env", &t.env, "--repo", &repo, "--app", "talker"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "/bin/busybox", "sh", "-c", script]);
    reconcile(&args)
}

#[test]
fn exec_runs_in_one_instance_and_returns_its_exit_code() {
    let t = stack("exec");
    let o = exec(&t, &[], "echo in $RECONCILE_INSTANCE; echo to-stderr >&2; exit 3");
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "in talker-0\n", "the first healthy (no check: running) instance by ordinal");
    assert!(stderr(&o).contains("to-stderr"), "{}", stderr(&o));
    // --instance picks the other host (through ssh).
    let o = exec(&t, &["--instance", "talker-1"], "echo in $RECONCILE_INSTANCE");
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "in talker-1\n");
}
