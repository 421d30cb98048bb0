//! `reconcile`: a declarative GitOps reconciler for fleets of plain Docker hosts.
//!
//! The pure core (`spec`, `placement`, `diag`) never does I/O; `backend` holds
//! the edges (Git, secrets, and later Docker, etcd, the LB); `cli` is thin.
//! See ARCHITECTURE.md for the map.

pub mod apply;
pub mod backend;
pub mod cli;
pub mod diag;
pub mod import;
pub mod model;
pub mod observe;
pub mod placement;
pub mod plan;
pub mod secret;
pub mod spec;
pub mod watch;
