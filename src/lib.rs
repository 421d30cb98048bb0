//! `reconcile`: a declarative GitOps reconciler for fleets of plain Docker hosts.
//!
//! The pure core (`spec`, `plan`, `placement`, `model`, `diag`, `secret`, `notify`, `page`) does no I/O
//! and reads no clock: it is given snapshots and observations as values. The effectful
//! modules are `backend` (the edges: Git, secrets, Docker, etcd, the LB file, probes),
//! `observe` (backends → `ObservedState`), `apply` (walks a plan through the backends),
//! `watch` (the controller loop) and the thin `cli`. clippy.toml and tests/it/tidy.rs
//! check the boundary; the `#[allow]`s below mark the modules that may cross it.
//! See ARCHITECTURE.md for the map.

#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod apply;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod backend;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod cli;
pub mod diag;
pub mod import;
pub mod model;
pub mod notify;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod observe;
pub mod page;
pub mod placement;
pub mod plan;
pub mod secret;
pub mod spec;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // an effectful edge (clippy.toml)
pub mod watch;
