//! One integration-test binary (each file in tests/ would link separately and
//! cost build time). Modules are tiered: `corpus` and `cli` need no daemons;
//! `environment` checks the real test environment (Docker ×2, etcd, nginx,
//! haproxy) that `scripts/test-env.sh` starts, and fails loudly when it is absent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

mod apply;
mod apply_chaos;
mod apply_haproxy;
mod cli;
mod corpus;
mod docker;
mod docker_exec;
mod environment;
mod etcd;
mod etcd_lock;
mod history;
mod lb;
mod plan;
mod plan_live;
mod ssh;
mod status;
mod tidy;
mod watch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The project root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run the `reconcile` binary with `args` from the project root.
pub fn reconcile(args: &[&str]) -> Output {
    reconcile_in(&root(), args)
}

pub fn reconcile_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reconcile"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run git in `dir` with a throwaway identity; panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}
