//! The malformed-repo corpus (tests/corpus, made by generate.py): every case
//! exits 1 without panicking and names the file and line of its problem; the
//! rendered diagnostics are pinned with insta. The valid base and its valid
//! variants (`valid-*`) pass.

use std::fs;

use super::{reconcile, stderr, stdout};

/// The case directories: the malformed ones, or (`valid`) the base and its valid variants.
fn dirs(valid: bool) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(super::root().join("tests/corpus"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n == "valid" || n.starts_with("valid-")) == valid)
        .collect();
    v.sort();
    v
}

fn cases() -> Vec<String> {
    dirs(false)
}

/// The report without its last line, which names the commit (it changes with every commit).
fn diagnostics_only(out: &str) -> String {
    out.lines()
        .filter(|l| !l.starts_with("validation failed at") && !l.starts_with("ok: "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn corpus_has_at_least_thirty_cases() {
    assert!(cases().len() >= 30, "only {} cases", cases().len());
}

#[test]
fn valid_base_and_its_valid_variants_pass() {
    let valid = dirs(true);
    assert!(valid.len() >= 3 && valid.contains(&"valid".to_string()), "{valid:?}");
    for case in valid {
        let o = reconcile(&["validate", "--repo", &format!("tests/corpus/{case}")]);
        assert_eq!(o.status.code(), Some(0), "{case}: {}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("0 errors, 0 warnings"), "{case}: {}", stdout(&o));
    }
}

#[test]
fn every_malformed_repo_is_a_clear_error() {
    let mut failures = Vec::new();
    for case in cases() {
        let dir = format!("tests/corpus/{case}");
        let expect = fs::read_to_string(super::root().join(&dir).join("EXPECT")).unwrap();
        let mut lines = expect.lines();
        let location = format!("{dir}/{}", lines.next().unwrap());
        let o = reconcile(&["validate", "--repo", &dir]);
        let (out, err) = (stdout(&o), stderr(&o));
        let mut problems = Vec::new();
        if o.status.code() != Some(1) {
            problems.push(format!("exit code {:?}", o.status.code()));
        }
        if err.contains("panicked") {
            problems.push("panicked".into());
        }
        if !out.contains(&location) {
            problems.push(format!("no {location}"));
        }
        for m in lines {
            if !out.contains(m) {
                problems.push(format!("no message {m:?}"));
            }
        }
        // The JSON form carries the same file and a line for each diagnostic.
        let j = reconcile(&["validate", "--repo", &dir, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
        if v["errors"].as_u64().unwrap_or(0) == 0 || j.status.code() != Some(1) {
            problems.push("json: no errors".into());
        }
        if !v["diagnostics"].as_array().unwrap().iter().all(|d| d["file"].is_string() && d["line"].is_u64()) {
            problems.push("json: a diagnostic without file:line".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{case}: {}\n{out}", problems.join(", ")));
        }
        insta::assert_snapshot!(format!("corpus__{case}"), diagnostics_only(&out));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
