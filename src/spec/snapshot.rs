//! The files of a config repo at one revision, in memory.
//!
//! The loader is pure: it never reads the filesystem or Git. The git backend
//! (`backend::git`) produces a [`RepoSnapshot`] from a directory, a local Git
//! repo or a remote URL; tests and the fuzzer build one by hand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a snapshot came from; printed in every output so a plan or a report
/// always says which commit (and whether uncommitted changes) it was made from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The repo as the user gave it (`--repo`).
    pub repo: String,
    /// Prefix prepended to repo-relative paths in diagnostics, e.g. `examples/two-tier/`
    /// for a local repo given as `examples/two-tier`; empty for `.` and for remote repos.
    pub display_root: String,
    /// The resolved commit id (40 hex), `None` for a directory that is not in Git.
    pub commit: Option<String>,
    /// The ref that was asked for (`--ref`), if any.
    pub reference: Option<String>,
    /// True when the files were read from a working tree with uncommitted changes.
    pub dirty: bool,
}

impl Origin {
    /// One-line description: `abc1234 (dirty)`, `abc1234`, or `no commit (not a Git repo)`.
    pub fn describe(&self) -> String {
        match (&self.commit, self.dirty) {
            (Some(c), true) => format!("{} + uncommitted changes", short(c)),
            (Some(c), false) => short(c).to_string(),
            (None, _) => "no commit (not a Git repo)".to_string(),
        }
    }
}

fn short(c: &str) -> &str {
    c.get(..12).unwrap_or(c)
}

/// Files under `environments/` of a config repo, keyed by their path relative to
/// the config repo's root with `/` separators (e.g. `environments/staging/apps/api.yaml`).
#[derive(Debug, Clone, Default)]
pub struct RepoSnapshot {
    pub files: BTreeMap<String, Vec<u8>>,
    pub origin: Origin,
}

impl RepoSnapshot {
    /// The path shown to users for a repo-relative path.
    pub fn display(&self, path: &str) -> String {
        format!("{}{}", self.origin.display_root, path)
    }
}
