//! The command line end to end on the repo's own environments and examples.

use super::{reconcile, stderr, stdout};

#[test]
fn embedded_environment_and_examples_are_valid() {
    for repo in [".", "examples/two-tier", "examples/multi-env"] {
        let o = reconcile(&["validate", "--repo", repo]);
        assert_eq!(o.status.code(), Some(0), "{repo}: {}{}", stdout(&o), stderr(&o));
    }
}

#[test]
fn validate_one_environment_of_a_chain() {
    let o = reconcile(&["validate", "--repo", "examples/multi-env", "--env", "production-dr"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("ok: production-dr valid"), "{}", stdout(&o));
    let o = reconcile(&["validate", "--repo", "examples/multi-env", "--env", "prod"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no environment `prod`"), "{}", stderr(&o));
}

#[test]
fn schema_command_prints_both_schemas() {
    let o = reconcile(&["schema", "app"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(v["title"], "reconcile App");
    let o = reconcile(&["schema"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["environment"]["properties"]["hosts"].is_object());
}

#[test]
fn examples_carry_schema_modelines() {
    let mut missing = Vec::new();
    for dir in ["environments", "examples"] {
        for entry in walk(&super::root().join(dir)) {
            let name = entry.to_string_lossy().into_owned();
            if name.ends_with(".yaml") {
                let text = std::fs::read_to_string(&entry).unwrap();
                let Some(line) = text.lines().find(|l| l.starts_with("# yaml-language-server: $schema=")) else {
                    missing.push(name);
                    continue;
                };
                let rel = line.trim_start_matches("# yaml-language-server: $schema=");
                assert!(entry.parent().unwrap().join(rel).exists(), "{name}: {rel} does not exist");
            }
        }
    }
    assert!(missing.is_empty(), "{missing:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn check_secrets_names_the_missing_secret_and_never_a_value() {
    let o = super::reconcile_in(&super::root(), &["validate", "--repo", "examples/two-tier", "--check-secrets"]);
    // DB_PASSWORD is not set in the test process.
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("secret `db_password`: environment variable DB_PASSWORD is not set"), "{}", stdout(&o));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_reconcile"))
        .args(["validate", "--repo", "examples/two-tier", "--check-secrets", "--format", "json"])
        .current_dir(super::root())
        .env("DB_PASSWORD", "hunter2-very-secret")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(!stdout(&o).contains("hunter2") && !stderr(&o).contains("hunter2"));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for f in walk(from) {
        let rel = f.strip_prefix(from).unwrap();
        std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&f, to.join(rel)).unwrap();
    }
}

#[test]
fn diff_between_two_refs_contacts_no_host() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&super::root().join("examples/two-tier"), dir.path());
    let env_file = dir.path().join("environments/prod/environment.yaml");
    // Hosts that do not exist: diff must not need them.
    let text = std::fs::read_to_string(&env_file)
        .unwrap()
        .replace("unix:///var/run/docker.sock", "unix:///nonexistent/a.sock")
        .replace("unix:///run/reconcile-test/docker2.sock", "unix:///nonexistent/b.sock");
    std::fs::write(&env_file, text).unwrap();
    super::git(dir.path(), &["init", "-q"]);
    super::git(dir.path(), &["add", "-A"]);
    super::git(dir.path(), &["commit", "-qm", "base"]);
    let repo = dir.path().to_string_lossy().into_owned();
    let o = super::reconcile(&["diff", "--env", "prod", "--repo", &repo, "--base", "HEAD", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));

    let web = dir.path().join("environments/prod/apps/web.yaml");
    std::fs::write(&web, std::fs::read_to_string(&web).unwrap().replace("replicas: 3", "replicas: 4")).unwrap();
    super::git(dir.path(), &["commit", "-qam", "scale web"]);
    let o = super::reconcile(&["diff", "--env", "prod", "--repo", &repo, "--base", "HEAD~1", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("+ web-3 on node-1") && out.contains("1 to add, 0 to replace, 0 to remove"), "{out}");
    let o = super::reconcile(&["diff", "--env", "prod", "--repo", &repo, "--base", "HEAD~1", "--format", "markdown"]);
    assert!(stdout(&o).contains("| `web` | 1 | 0 | 0 | 0 |"), "{}", stdout(&o));
}

/// A reader that went away (`reconcile validate | head`) ends a report command quietly:
/// exit 0, no panic, no "Broken pipe" error. The pipe's read end is closed before the
/// process starts, so its first write fails for sure.
#[test]
fn report_commands_end_quietly_on_a_closed_stdout() {
    for args in [
        &["validate", "--repo", "examples/multi-env"][..],
        &["validate", "--repo", "examples/multi-env", "--format", "json"],
        &["validate", "--repo", "examples/multi-env", "--format", "github"],
        &["schema"],
        &["completions", "bash"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = super::support::reconcile_cmd(args).stdout(writer).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked") && !stderr(&o).contains("Broken pipe"), "{args:?}: {}", stderr(&o));
    }
    // The same commands with a reader do print (the loop above tested real writes).
    assert!(stdout(&reconcile(&["validate", "--repo", "examples/multi-env"])).contains("ok: "));
}
