//! Observation: ask every backend of an environment, concurrently, and build the
//! `ObservedState`. An unreachable host or etcd is an error naming it and the
//! cause — never a state that silently lacks its instances.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::backend::{docker, etcd, lb};
use crate::model::{HostObservation, ObservedState, Pin};
use crate::spec::Env;
use crate::spec::types::LbTarget;

/// Limits for observation.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Hosts observed at once.
    pub parallelism: usize,
    /// Per host (connect + list) and for etcd.
    pub timeout: Duration,
    /// `pull: always` apps: no registry digest check (`--offline-images`).
    pub offline_images: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { parallelism: 16, timeout: Duration::from_secs(10), offline_images: false }
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
    observe_reading(env, opts, false).await.map(|(observed, _)| observed)
}

/// What [`observe_with_pin`] read of the rollback pin: `Ok(None)` without etcd or pin.
pub type PinRead = Result<Option<Pin>, etcd::EtcdError>;

/// [`observe`], and the environment's rollback pin (`apply::pin`) read over the same
/// etcd connection at the same time as the ranges: `plan` and `status`, which show the
/// pin without holding the lock, pay no second connection for it.
///
/// # Errors
/// As [`observe`]. A pin that cannot be read is the second value's error, so the caller
/// reports it as before: after a failed observation, not instead of it.
pub async fn observe_with_pin(env: &Env, opts: Options) -> Result<(ObservedState, PinRead), ObserveError> {
    observe_reading(env, opts, true).await
}

async fn observe_reading(env: &Env, opts: Options, pin: bool) -> Result<(ObservedState, PinRead), ObserveError> {
    let started = std::time::Instant::now();
    let name = env.name.clone();
    let apps: BTreeSet<String> = env.apps.keys().cloned().collect();
    let docker_f = docker::observe_all(&env.spec.hosts, &name, opts.parallelism, opts.timeout);
    let etcd_f = async {
        let Some(spec) = &env.spec.etcd else { return Ok((None, Ok(None))) };
        let mut client = etcd::connect(spec, opts.timeout).await?;
        let mut pin_client = client.clone();
        let pin_f = async { if pin { etcd::pin(&mut pin_client, &spec.prefix, &name).await } else { Ok(None) } };
        let reads = async { tokio::join!(etcd::observe(&mut client, spec, &name, &apps), pin_f) };
        let (observed, pin) = tokio::time::timeout(opts.timeout, reads)
            .await
            .map_err(|_| etcd::EtcdError::Timeout { endpoints: spec.endpoints.clone(), after: opts.timeout })?;
        Ok::<_, etcd::EtcdError>((Some(observed?), pin))
    };
    let (hosts, etcd) = tokio::join!(docker_f, etcd_f);
    let mut problems = Vec::new();
    let hosts = hosts.unwrap_or_else(|errs| {
        problems.extend(errs.iter().map(|e| e.to_string()));
        Default::default()
    });
    let (etcd, pin) = etcd.unwrap_or_else(|e| {
        problems.push(e.to_string());
        (None, Ok(None))
    });
    let mut lbs = BTreeMap::new();
    for (lb_name, spec) in env.spec.load_balancers() {
        let read = match spec.target() {
            Some(LbTarget::File(path)) => lb::read(path),
            Some(LbTarget::Container { app, path }) => container_lb(env, &hosts, app, path, opts.timeout).await,
            None => continue,
        };
        match read {
            Ok(c) => {
                lbs.insert(lb_name.to_string(), c);
            }
            Err(e) => problems.push(format!("lb `{lb_name}`: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(ObserveError { env: name, problems });
    }
    tracing::debug!(env = %name, hosts = hosts.len(), elapsed = ?started.elapsed(), "observed the environment");
    Ok((ObservedState { env: name, hosts, etcd, lbs }, pin))
}

/// The config of an LB in containers as its running instances hold it
/// (`backend::lb::read_in`): only the hosts that run an instance of `app` are asked.
async fn container_lb(
    env: &Env,
    hosts: &BTreeMap<String, HostObservation>,
    app: &str,
    path: &str,
    timeout: Duration,
) -> Result<Option<String>, lb::LbError> {
    let mut clients = Vec::new();
    for h in &env.spec.hosts {
        let runs = hosts.get(&h.name).is_some_and(|o| o.instances.iter().any(|i| i.app == app && i.state.is_running()));
        if runs {
            let client = docker::connect(h, timeout)
                .await
                .map_err(|e| lb::LbError::Instances { app: app.to_string(), cause: e.to_string() })?;
            clients.push((h.name.clone(), client));
        }
    }
    let instances = lb::running_instances(&clients, &env.name, app).await?;
    lb::read_in(&instances, path).await
}

// --- pull: always (issue 9) ---------------------------------------------------------

/// For apps with `pull: always`: fill in the repo digests of their running containers'
/// images (one inspect per distinct image per host) and resolve each image's current
/// digest through the first host's daemon (one request per distinct image,
/// concurrently, with the registry credentials). Empty, and nothing asked, when no
/// app pulls always.
///
/// # Errors
/// A registry that cannot be reached or refuses the credentials, a credential helper
/// that fails, or a host that cannot be asked: every problem, each naming the image
/// and the registry (or the host).
pub async fn image_digests(
    env: &Env,
    observed: &mut ObservedState,
    opts: Options,
) -> Result<std::collections::BTreeMap<String, String>, ObserveError> {
    use crate::spec::types::PullPolicy;
    let always: Vec<&crate::spec::load::App> =
        env.apps.values().filter(|a| a.spec.pull == PullPolicy::Always).collect();
    if always.is_empty() {
        return Ok(Default::default());
    }
    let fail = |problems: Vec<String>| ObserveError { env: env.name.clone(), problems };
    let apps: BTreeSet<String> = always.iter().map(|a| a.spec.name.clone()).collect();
    let images: BTreeSet<String> = always.iter().map(|a| a.spec.image.clone()).collect();
    let auth =
        docker::RegistryAuth::resolve(&env.spec.registries, &env.secret_refs).map_err(|e| fail(vec![e.to_string()]))?;
    let mut problems = Vec::new();
    let mut first = None;
    for host in &env.spec.hosts {
        let runs = observed.hosts.get(&host.name).is_some_and(|h| h.instances.iter().any(|i| apps.contains(&i.app)));
        if !runs && first.is_some() {
            continue;
        }
        let client = match docker::connect(host, opts.timeout).await {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        if runs
            && let Some(obs) = observed.hosts.get_mut(&host.name)
            && let Err(e) = docker::fill_repo_digests(&client, &host.name, obs, &apps).await
        {
            problems.push(e.to_string());
        }
        first.get_or_insert((host.name.clone(), client));
    }
    let Some((host, client)) = first else {
        return Err(fail(vec!["`pull: always` needs a host to ask the registry through, and none answers".into()]));
    };
    match docker::resolve_digests(&client, &host, &images, &auth).await {
        Ok(d) if problems.is_empty() => Ok(d),
        Ok(_) => Err(fail(problems)),
        Err(errs) => {
            problems.extend(errs.iter().map(|e| e.to_string()));
            Err(fail(problems))
        }
    }
}
