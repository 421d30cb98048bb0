//! The effectful edges. Only modules under `backend/` touch Git, the
//! filesystem of the machine running reconcile, process environment, and (later)
//! Docker, etcd and the load balancer.

pub mod docker;
pub mod etcd;
pub mod git;
pub mod lb;
pub mod probe;
pub mod registry_auth;
pub mod secrets;
