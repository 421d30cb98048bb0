//! The effectful edges: the only modules that talk to Git (`git`), Docker (`docker`),
//! etcd (`etcd`), the load balancer's file and commands (`lb`), instances' health
//! endpoints (`probe`) and secret sources (`secrets`: process environment, files). The
//! other effectful modules reach the world through these, apart from the clock (waits,
//! timeouts), a few tuning variables read from the process environment by `apply`,
//! the saved plan files `cli` reads and writes, and the /metrics server of `watch`.

pub mod docker;
pub mod etcd;
pub mod git;
pub mod lb;
pub mod notify;
pub mod probe;
pub mod registry_auth;
pub mod secrets;
