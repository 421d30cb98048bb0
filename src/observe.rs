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
