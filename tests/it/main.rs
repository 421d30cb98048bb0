//! One integration-test binary (each file in tests/ would link separately and
//! cost build time). Modules are tiered: `corpus` and `cli` need no daemons;
//! `environment` checks the real test environment (Docker ×2, etcd, nginx,
//! haproxy) that `scripts/test-env.sh` starts, and fails loudly when it is absent.
//! Helpers used by more than one module are defined once, in `support`; the most
//! common ones are re-exported here (`super::reconcile`, `super::stderr`, …).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests drive the real world (clippy.toml)

mod apply;
mod apply_chaos;
mod apply_evidence;
mod apply_haproxy;
mod canary;
mod ci_examples;
mod cli;
mod completions;
mod corpus;
mod docker;
mod docker_exec;
mod docker_tls;
mod dr;
mod environment;
mod etcd;
mod etcd_cluster;
mod etcd_lock;
mod etcd_secure;
mod git_https;
mod history;
mod import;
mod lb;
mod lb_multi;
mod leak;
mod logs;
mod maintenance;
mod markdown;
mod notify;
mod notify_watch;
mod plan;
mod plan_live;
mod registry;
mod schemas;
mod secrets;
mod ssh;
mod status;
mod status_page;
mod support;
mod tidy;
mod watch;

pub use support::{git, reconcile, reconcile_in, root, stderr, stdout};
