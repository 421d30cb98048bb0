//! Observation: ask every backend of an environment, concurrently, and build the
//! `ObservedState`. An unreachable host or etcd is an error naming it and the
//! cause — never a state that silently lacks its instances.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::backend::{docker, etcd, lb};
use crate::model::ObservedState;
use crate::spec::Env;

/// Limits for observation.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Hosts observed at once.
    pub parallelism: usize,
    /// Per host (connect + list) and for etcd.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { parallelism: 16, timeout: Duration::from_secs(10) }
    }
}

/// Everything that failed while observing, each naming what and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot observe environment `{env}`:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ObserveError {
    pub env: String,
    pub problems: Vec<String>,
}

/// Observe Docker hosts, etcd and the LB file of `env`.
///
/// # Errors
/// Any host, etcd or the LB file cannot be read; all problems are reported together.
pub async fn observe(env: &Env, opts: Options) -> Result<ObservedState, ObserveError> {
    let name = env.name.clone();
    let apps: BTreeSet<String> = env.apps.keys().cloned().collect();
    let docker_f = docker::observe_all(&env.spec.hosts, &name, opts.parallelism, opts.timeout);
    let etcd_f = async {
        match &env.spec.etcd {
            None => Ok(None),
            Some(spec) => {
                let mut client = etcd::connect(spec, opts.timeout).await?;
                tokio::time::timeout(opts.timeout, etcd::observe(&mut client, spec, &name, &apps))
                    .await
                    .map_err(|_| etcd::EtcdError::Timeout { endpoints: spec.endpoints.clone(), after: opts.timeout })?
                    .map(Some)
            }
        }
    };
    let (hosts, etcd) = tokio::join!(docker_f, etcd_f);
    let mut problems = Vec::new();
    let hosts = hosts.unwrap_or_else(|errs| {
        problems.extend(errs.iter().map(|e| e.to_string()));
        Default::default()
    });
    let etcd = etcd.unwrap_or_else(|e| {
        problems.push(e.to_string());
        None
    });
    let lb = match &env.spec.lb {
        None => None,
        Some(spec) => match lb::read(&spec.path) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        },
    };
    if !problems.is_empty() {
        return Err(ObserveError { env: name, problems });
    }
    Ok(ObservedState { env: name, hosts, etcd, lb })
}
