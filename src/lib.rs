//! `reconcile`: a declarative GitOps reconciler for fleets of plain Docker hosts.
//!
//! The pure core (`spec`, `placement`, `diag`) never does I/O; `backend` holds
//! the edges (Git, secrets, and later Docker, etcd, the LB); `cli` is thin.
//! See ARCHITECTURE.md for the map.

#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod apply;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod backend;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod cli;
pub mod diag;
pub mod model;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod observe;
pub mod placement;
pub mod plan;
pub mod secret;
pub mod spec;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod watch;
