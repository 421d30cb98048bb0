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
