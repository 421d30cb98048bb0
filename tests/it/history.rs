//! `history` and `rollback` end to end: two versions committed to a Git config
//! repo, applied in turn, then rolled back; the audit log records all three.

use super::apply::Stack;
use super::{stderr, stdout};

#[test]
fn rollback_applies_an_earlier_commit_and_history_records_it() {
    let s = Stack::new("hist", 4);
    let repo = s.repo();
    super::git(std::path::Path::new(&repo), &["init", "-q"]);
    super::git(std::path::Path::new(&repo), &["add", "-A"]);
    super::git(std::path::Path::new(&repo), &["commit", "-qm", "v1"]);
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    s.write_repo("2", "/", 2);
    super::git(std::path::Path::new(&repo), &["commit", "-qam", "v2"]);
    assert_eq!(s.apply(&[]).status.code(), Some(0));
    assert!(s.get().unwrap().starts_with("version=2"));

    let o = super::reconcile(&["rollback", "--env", &s.env, "--repo", &repo, "--to", "HEAD~1", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(s.get().unwrap().starts_with("version=1"), "{:?}", s.get());

    let o = super::reconcile(&["history", "--env", &s.env, "--repo", &repo, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{v:#}");
    assert_eq!(entries[0]["kind"], "rollback");
    assert_eq!(entries[0]["reference"], "HEAD~1");
    assert_eq!((entries[1]["kind"].as_str(), entries[2]["kind"].as_str()), (Some("apply"), Some("apply")));
    assert!(entries.iter().all(|e| e["result"] == "ok" && e["commit"].is_string() && e["who"].is_string()), "{v:#}");
    let table = stdout(&super::reconcile(&["history", "--env", &s.env, "--repo", &repo]));
    assert!(table.lines().count() == 3 && table.contains("rollback"), "{table}");
}
