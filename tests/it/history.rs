//! `history` and `rollback` end to end: two versions committed to a Git config
//! repo, applied in turn, then rolled back; the rollback pins the environment (apply of
//! the head is refused) until `rollback --release`; the audit log records it all.

use super::apply::Stack;
use super::apply_chaos::{etcd_get, managed};
use super::support::git_rev;
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

    // The rollback pinned the environment to v1's commit.
    let v1 = git_rev(std::path::Path::new(&repo), "HEAD~1");
    let pin_key = format!("{}/{}/pin", s.prefix, s.env);
    let pin: serde_json::Value = serde_json::from_str(&etcd_get(&pin_key)).expect("a pin in etcd");
    assert_eq!((pin["reference"].as_str(), pin["commit"].as_str()), (Some("HEAD~1"), Some(v1.as_str())), "{pin}");
    assert!(stderr(&o).contains("pinned environment"), "{}", stderr(&o));
    let status = super::reconcile(&["status", "--env", &s.env, "--repo", &repo]);
    assert!(
        stdout(&status).contains(&format!("pinned by a rollback to {} (HEAD~1)", &v1[..12])),
        "{}",
        stdout(&status)
    );

    // While pinned, plan of the head warns that apply would be refused...
    let o = super::reconcile(&["plan", "--env", &s.env, "--repo", &repo]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: environment") && stderr(&o).contains("is pinned"), "{}", stderr(&o));
    // ... and apply of the head is refused and changes nothing.
    let before: Vec<String> = managed(&s).into_iter().map(|m| m.id).collect();
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains(&format!("environment `{}` is pinned to {} (HEAD~1) by a rollback", s.env, &v1[..12])),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains(&format!("reconcile rollback --env {} --release", s.env)), "{}", stderr(&o));
    assert_eq!(managed(&s).into_iter().map(|m| m.id).collect::<Vec<_>>(), before, "containers changed");
    assert!(s.get().unwrap().starts_with("version=1"));
    assert_eq!(etcd_get(&format!("{}/{}/lock", s.prefix, s.env)), "", "the refused apply left its lock");

    // Released: the pin is gone and apply of the head goes through.
    let o = super::reconcile(&["rollback", "--env", &s.env, "--repo", &repo, "--release"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("released the pin"), "{}", stdout(&o));
    assert_eq!(etcd_get(&pin_key), "");
    let o = super::reconcile(&["rollback", "--env", &s.env, "--repo", &repo, "--release"]);
    assert!(stdout(&o).contains("is not pinned"), "{}", stdout(&o));
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(s.get().unwrap().starts_with("version=2"));

    let o = super::reconcile(&["history", "--env", &s.env, "--repo", &repo, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["apply", "release", "rollback", "apply", "apply"], "{v:#}");
    assert_eq!(entries[2]["reference"], "HEAD~1");
    assert_eq!(entries[1]["commit"].as_str(), Some(v1.as_str()));
    assert!(entries.iter().all(|e| e["result"] == "ok" && e["commit"].is_string() && e["who"].is_string()), "{v:#}");
    let table = stdout(&super::reconcile(&["history", "--env", &s.env, "--repo", &repo]));
    assert!(table.lines().count() == 5 && table.contains("rollback") && table.contains("release"), "{table}");
}
