//! Why one step of an apply failed: one enum for the executor's steps, each variant
//! with what it was doing and where (app, instance, host).

use crate::backend::{docker, etcd, lb};

/// A step of the rollout failed. The app's outcome carries its message.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
    /// The host's Docker daemon could not be reached when the apply began.
    #[error("{cause}")]
    Connect { host: String, cause: String },
    #[error("host `{host}` is not part of the environment")]
    UnknownHost { host: String },
    /// An etcd write (`what`: registry, reload-pending mark, config keys) failed.
    #[error("{what}: {source}")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd::EtcdError,
    },
    #[error(transparent)]
    Lb(#[from] lb::LbError),
    /// The intermediate LB config could not be rendered.
    #[error("{0}")]
    LbRender(#[from] crate::plan::PlanError),
    /// A blocking LB task panicked or was cancelled.
    #[error("the LB update task failed: {0}")]
    Task(String),
    /// The health check of `container` on `host` did not pass.
    #[error("{cause}")]
    Unhealthy { host: String, container: String, cause: Box<crate::backend::probe::HealthError> },
    /// The health spec cannot be turned into a probe (validate reports this earlier).
    #[error("{0}")]
    BadHealth(#[from] crate::backend::probe::ProbeError),
    /// A new container failed to start or become healthy; it was removed. `logs` is the
    /// tail of its output (bounded, secrets masked): the evidence the removal destroys.
    #[error("{instance} on {host}: {cause}; the new container was removed{}", evidence(logs))]
    NewFailed { instance: String, host: String, cause: Box<StepError>, logs: Option<String> },
    /// A stopped instance was started but did not become healthy; it was taken out of
    /// the registry and the LB and removed (`logs`: its last output, as for `NewFailed`).
    #[error(
        "{instance} on {host}: {cause}; the restarted container was taken out of traffic and removed (the next \
         apply creates it again){}",
        evidence(logs)
    )]
    StartedUnhealthy { instance: String, host: String, cause: Box<StepError>, logs: Option<String> },
    #[error("{instance}: the plan's spec is missing (plan again)")]
    MissingSpec { instance: String },
    /// A plan action names an instance that is not `<app>-<ordinal>`.
    #[error("app `{app}`: {source}")]
    BadInstance {
        app: String,
        #[source]
        source: crate::model::InstanceIdError,
    },
    /// The LB refused the config with the new instances of a rollout step.
    #[error("{cause}; the new instances were removed, the old ones keep serving")]
    LbRefused { cause: Box<StepError> },
    #[error(
        "the apply lock {key} was lost (its lease expired: etcd unreachable or this process stalled); \
         stopped writing so that another apply can take over; run apply again"
    )]
    LockLost { key: String },
}

fn evidence(logs: &Option<String>) -> String {
    match logs.as_deref().map(str::trim_end) {
        Some(l) if !l.is_empty() => {
            format!("; its last output:\n    {}", l.lines().collect::<Vec<_>>().join("\n    "))
        }
        _ => String::new(),
    }
}
