//! Talks to the Docker daemons of an environment's hosts: connects (unix, tcp with or
//! without TLS, ssh), negotiates the API version, observes the containers an
//! environment owns as [`HostObservation`]s, and carries out the apply side: pulls
//! before a rollout with registry credentials ([`pull_for_plan`], [`pull_all`]; digests
//! for `pull: always`: [`resolve_digests`], [`fill_repo_digests`]), a last-moment pull
//! ([`ensure_image`]), create with files ([`create_instance`]), [`start`],
//! [`stop_and_remove`], [`exec`] / [`exec_ok`], and the Docker halves of health
//! checks ([`cmd_runner`], [`still_running`]; the probes are in `backend::probe`).
//!
//! This is the only module that imports `bollard`; others name a daemon connection as
//! [`Client`].
//!
//! **Invariants.**
//! - *Secrets reach Docker only.* [`create_instance`] sends the real values of env,
//!   command and files (`Rendered::expose`) to the daemon; logs name env keys and file
//!   paths, never values, and error messages carry the daemon's reason, never the spec.
//! - *Idempotent where it can be.* [`stop_and_remove`] of a gone container is `Ok`;
//!   [`start`] of a running one is `Ok`; [`ensure_image`] pulls only a missing image; a
//!   [`create_instance`] whose file upload fails removes the container again. Creating a
//!   name that exists is an error ([`DockerError::NameConflict`]), not a reuse: names
//!   are unique per spec hash, so an existing one is a leftover to look at.
//! - *Every apply error names* the host, the container (or image) and the daemon's
//!   reason.
//! - *One list call per host.* An observation ([`observe_all`]) is exactly one
//!   `GET /containers/json?all=true&filters={"label":["reconcile.env=<env>"]}` and
//!   nothing else (no `GET /version`: see `observe_one`), whatever the number of
//!   containers. There is no per-container inspect: everything the
//!   planner needs (app, instance, spec hash, commit, port, the masked spec) is in the
//!   labels, which the list call returns.
//! - *Only our containers.* The daemon filters on `reconcile.env=<env>` and every returned
//!   container is checked again for that exact label, so a container without it can never
//!   reach an observation, hence a plan (other tools' containers share these hosts).
//! - *A container with the env label but without `reconcile.app` / `reconcile.instance`*
//!   (a half-written or hand-made one) is still returned, with empty `app` / `instance`
//!   and no ordinal: it belongs to the environment, matches no desired instance, and the
//!   planner removes it.
//! - *All or nothing.* [`observe_all`] returns every host's observation or one error per
//!   failing host, never a partial map: a missing host would read as "runs nothing" and
//!   the planner would recreate its instances elsewhere.
//!
//! **Decisions.**
//! - [`connect`] negotiates the API version: Docker 20.10 speaks 1.41, newer engines
//!   newer; bollard's default (1.53) is only ever lowered. Models follow 1.53, so fields a
//!   1.41 daemon does not know come back as `None`; nothing here relies on them. An
//!   observation does not negotiate: bollard 0.21's request paths carry no version, so
//!   the daemon answers every request at its own.
//! - TLS file paths (`tls: {ca, cert, key}`) are used as written, so relative paths are
//!   relative to reconcile's working directory. The CA is added to the system roots.
//!   `tcp://` without `tls` speaks plain HTTP (validate warns about it).
//! - `ssh://[user@]host` uses bollard's ssh transport: the system `ssh` client (OpenSSH,
//!   with the user's ~/.ssh/config, agent and keys) opens a master connection and runs
//!   `docker system dial-stdio` on the host, so the remote user needs the `docker` CLI
//!   and access to the daemon, as with `docker -H ssh://…`. Unknown host keys are
//!   accepted and remembered (`StrictHostKeyChecking=accept-new`, the library's default);
//!   changed ones are refused. bollard 0.21.1 hands ssh `HOST:PORT` as a host name, so
//!   an explicit port other than 22 is refused with a hint to put it in ~/.ssh/config
//!   (`Host ALIAS` / `Port N`), which this transport reads.
//! - Each returned client keeps bollard's per-request timeout ([`REQUEST_TIMEOUT`]);
//!   the `timeout` arguments bound connecting and observing as a whole.
//! - *Files* go in as one tar archive uploaded through the API into the created,
//!   not yet started container (`PUT /containers/{id}/archive?path=/`): nothing to
//!   clean up on the host, no bind mount of a host directory that would have to exist on
//!   every (possibly remote, ssh/tcp) host, and the files are there before the process
//!   starts. Regular files only, 0644, owner root; missing parent directories are made by
//!   the daemon (0755) and existing ones keep their mode (no directory entries).
//! - *Restart policy* `unless-stopped`: instances come back after a crash or a daemon
//!   restart; a container stopped on purpose stays stopped.
//! - *Bridge networking* publishes `container_port/tcp` on the pool port on all of the
//!   host's addresses (`HostIp ""`): the host's reachable address is not known here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerSummary, CreateImageInfo, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, Docker, body_full};
use futures::stream::{self, StreamExt};

use super::probe::CmdRunner;
use crate::model::{ContainerState, HostObservation, ObservedInstance, labels};
use crate::plan::instance::{InstanceSpec, Rendered};
use crate::spec::types::{HostSpec, Network, TlsSpec};
use crate::spec::units::{Endpoint, docker_endpoint};

/// A connection to one daemon, for callers outside this module (which do not import
/// bollard). Cheap to clone.
pub type Client = Docker;

/// Per-request timeout of the clients [`connect`] returns (bollard's default). Long
/// operations (pulls, stops with a grace period) stay under it or set their own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What went wrong talking to one host's daemon. Every message names the host, and
/// the endpoint where it is known.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The `docker:` endpoint does not parse (validate reports this earlier).
    #[error("host `{host}` ({endpoint}): invalid endpoint: {message}")]
    Endpoint { host: String, endpoint: String, message: String },
    /// The daemon could not be reached, or did not answer the version negotiation.
    #[error("host `{host}` ({endpoint}): cannot connect: {cause}")]
    Connect { host: String, endpoint: String, cause: String },
    /// Connecting (and listing, in [`observe_all`]) took longer than allowed.
    #[error("host `{host}` ({endpoint}): no answer within {after:?}")]
    Timeout { host: String, endpoint: String, after: Duration },
    /// The list call failed. `endpoint` is `None` from [`observe_host`], which only
    /// has the client; [`observe_all`] fills it in.
    #[error("host `{host}`{}: cannot list containers: {cause}", at(endpoint.as_deref()))]
    List { host: String, endpoint: Option<String>, cause: String },
    /// [`ensure_image`]: the image is missing and could not be pulled.
    #[error("host `{host}`: cannot pull image `{image}`: {cause}")]
    Pull { host: String, image: String, cause: String },
    /// [`create_instance`]: another container already has the name.
    #[error(
        "host `{host}`: cannot create container `{name}`: the name is taken by another container \
         (a leftover without this environment's labels, or a concurrent apply); check what it is, \
         remove it (`docker rm -f {name}`) and run again: {cause}"
    )]
    NameConflict { host: String, name: String, cause: String },
    /// [`create_instance`]: the daemon refused the container.
    #[error("host `{host}`: cannot create container `{name}` from image `{image}`: {cause}")]
    Create { host: String, name: String, image: String, cause: String },
    /// [`create_instance`]: the files could not be archived or uploaded.
    #[error("host `{host}`: cannot put files into container `{container}`: {cause}")]
    Files { host: String, container: String, cause: String },
    /// [`start`] failed.
    #[error("host `{host}`: cannot start container `{container}`: {cause}")]
    Start { host: String, container: String, cause: String },
    /// [`stop_and_remove`]: the stop failed.
    #[error("host `{host}`: cannot stop container `{container}`: {cause}")]
    Stop { host: String, container: String, cause: String },
    /// [`stop_and_remove`]: the removal failed.
    #[error("host `{host}`: cannot remove container `{container}`: {cause}")]
    Remove { host: String, container: String, cause: String },
    /// [`exec`] could not run the command.
    #[error("host `{host}`: cannot exec in container `{container}`: {cause}")]
    Exec { host: String, container: String, cause: String },
    /// [`logs_tail`] could not read the container's output.
    #[error("host `{host}`: cannot read the logs of container `{container}`: {cause}")]
    Logs { host: String, container: String, cause: String },
    /// [`check_running`]: the inspect failed.
    #[error("host `{host}`: cannot inspect container `{container}`: {cause}")]
    Inspect { host: String, container: String, cause: String },
    /// [`container_events`]: the event stream failed or ended.
    #[error("host `{host}`: docker event stream: {cause}")]
    Events { host: String, cause: String },
    /// [`check_running`]: the container is not (or no longer) running as started.
    #[error("host `{host}`: container `{container}` is not running: {state}")]
    NotRunning { host: String, container: String, state: String },
}

fn at(endpoint: Option<&str>) -> String {
    endpoint.map(|e| format!(" ({e})")).unwrap_or_default()
}

impl DockerError {
    /// The host the error is about.
    pub fn host(&self) -> &str {
        match self {
            Self::Endpoint { host, .. }
            | Self::Connect { host, .. }
            | Self::Timeout { host, .. }
            | Self::List { host, .. }
            | Self::Pull { host, .. }
            | Self::NameConflict { host, .. }
            | Self::Create { host, .. }
            | Self::Files { host, .. }
            | Self::Start { host, .. }
            | Self::Stop { host, .. }
            | Self::Remove { host, .. }
            | Self::Exec { host, .. }
            | Self::Logs { host, .. }
            | Self::Inspect { host, .. }
            | Self::Events { host, .. }
            | Self::NotRunning { host, .. } => host,
        }
    }

    fn with_endpoint(self, endpoint: &str) -> Self {
        match self {
            Self::List { host, endpoint: None, cause } => Self::List { host, endpoint: Some(endpoint.into()), cause },
            other => other,
        }
    }
}

/// Connect to one host's daemon and negotiate the API version (20.10 speaks 1.41;
/// newer engines newer). The whole of it (including the `GET /version` round trip) is
/// bounded by `timeout`.
///
/// # Errors
/// [`DockerError::Endpoint`] if `host.docker` does not parse; [`DockerError::Connect`]
/// if the socket is missing, the TLS files are unreadable, the connection is refused or
/// the daemon's answer is not a version; [`DockerError::Timeout`] after `timeout`.
pub async fn connect(host: &HostSpec, timeout: Duration) -> Result<Docker, DockerError> {
    tokio::time::timeout(timeout, connect_unbounded(host)).await.unwrap_or_else(|_| Err(timed_out(host, timeout)))
}

async fn connect_unbounded(host: &HostSpec) -> Result<Docker, DockerError> {
    let docker = client_for(host)?;
    negotiate(host, docker).await
}

/// `GET /version`: lower the client's API version to the daemon's.
async fn negotiate(host: &HostSpec, docker: Docker) -> Result<Docker, DockerError> {
    docker.negotiate_version().await.map_err(|e| match e {
        BollardError::RequestTimeoutError => timed_out(host, REQUEST_TIMEOUT),
        e => DockerError::Connect { host: host.name.clone(), endpoint: host.docker.clone(), cause: cause(&e) },
    })
}

/// A client for `host`, without asking the daemon anything yet.
fn client_for(host: &HostSpec) -> Result<Docker, DockerError> {
    let endpoint = docker_endpoint(&host.docker).map_err(|e| DockerError::Endpoint {
        host: host.name.clone(),
        endpoint: host.docker.clone(),
        message: e.message,
    })?;
    let connect_error =
        |cause: String| DockerError::Connect { host: host.name.clone(), endpoint: host.docker.clone(), cause };
    let secs = REQUEST_TIMEOUT.as_secs();
    match endpoint {
        Endpoint::Unix(path) => {
            // bollard only says "socket not found"; the OS says why (missing, permission).
            std::fs::metadata(&path).map_err(|e| connect_error(io_cause(&e)))?;
            Docker::connect_with_unix(&path, secs, API_DEFAULT_VERSION)
        }
        Endpoint::Tcp { host: addr, port } => match &host.tls {
            Some(tls) => {
                check_tls_files(tls).map_err(connect_error)?;
                Docker::connect_with_ssl(
                    &format!("tcp://{addr}:{port}"),
                    Path::new(&tls.key),
                    Path::new(&tls.cert),
                    Path::new(&tls.ca),
                    secs,
                    API_DEFAULT_VERSION,
                )
            }
            None => Docker::connect_with_http(&format!("tcp://{addr}:{port}"), secs, API_DEFAULT_VERSION),
        },
        Endpoint::Ssh { port: Some(port), .. } if port != 22 => return Err(connect_error(format!(
            "ssh on port {port}: the Docker client library passes `HOST:{port}` to ssh as a host name; \
             give the port in ~/.ssh/config instead (Host ALIAS / HostName … / Port {port}) and write ssh://[USER@]ALIAS"
        ))),
        Endpoint::Ssh { user, host: addr, .. } => {
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            Docker::connect_with_ssh(&format!("ssh://{user}{addr}"), secs, API_DEFAULT_VERSION, None)
        }
    }
    .map_err(|e| connect_error(cause(&e)))
}

fn timed_out(host: &HostSpec, after: Duration) -> DockerError {
    DockerError::Timeout { host: host.name.clone(), endpoint: host.docker.clone(), after }
}

/// bollard reads the CA when the client is built and the key pair at the handshake,
/// where a missing file would surface as a TLS error; name the file instead.
fn check_tls_files(tls: &TlsSpec) -> Result<(), String> {
    for (what, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        std::fs::File::open(path).map_err(|e| format!("tls {what} file `{path}`: {}", io_cause(&e)))?;
    }
    Ok(())
}

/// The most specific message of an error chain: for a refused connection that is the
/// OS error, not hyper's "client error (Connect)".
/// A daemon's error answer is its message ("No such container: …"), without bollard's
/// "Docker responded with status code 404: " prefix.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(BollardError::DockerResponseServerError { status_code, message }) = e.downcast_ref::<BollardError>() {
        return if message.trim().is_empty() { format!("HTTP {status_code}") } else { message.trim().to_string() };
    }
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    match last.downcast_ref::<std::io::Error>() {
        Some(io) => io_cause(io),
        None => last.to_string(),
    }
}

/// `No such file or directory`, without the ` (os error 2)` suffix.
fn io_cause(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// Observe what `docker` runs for environment `env`, with ONE `list_containers` call
/// (`all=true`, filter `label=reconcile.env=<env>`); `name` is the host's name, copied
/// into each instance. Instances are sorted by (app, instance, created, container id).
///
/// Labels parsed: `reconcile.app`, `reconcile.instance` (→ `ordinal` when it reads
/// `<app>-<n>`), `reconcile.spec-hash`, `reconcile.commit`, `reconcile.port` (`None` if
/// absent or not a port) and `reconcile.spec` (`None` if absent or not JSON). A container
/// that has the env label but lacks the app or instance label is still returned, with
/// empty strings, so the planner can remove it. Containers without the env label are
/// never returned.
///
/// # Errors
/// [`DockerError::List`] (without the endpoint, which the client does not expose) if the
/// call fails.
pub async fn observe_host(name: &str, docker: &Docker, env: &str) -> Result<HostObservation, DockerError> {
    let started = Instant::now();
    let containers = list_env(docker, env).await.map_err(|e| list_error(name, &e))?;
    Ok(observation(name, env, containers, started))
}

/// The one list call of an observation.
async fn list_env(docker: &Docker, env: &str) -> Result<Vec<ContainerSummary>, BollardError> {
    let label = format!("{}={env}", labels::ENV);
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    docker.list_containers(Some(options)).await
}

fn list_error(name: &str, e: &BollardError) -> DockerError {
    DockerError::List { host: name.to_string(), endpoint: None, cause: cause(e) }
}

/// The listed containers of `env` as an observation (sorted; others' containers dropped).
fn observation(name: &str, env: &str, containers: Vec<ContainerSummary>, started: Instant) -> HostObservation {
    let listed = containers.len();
    let mut instances: Vec<ObservedInstance> =
        containers.into_iter().filter_map(|c| observed_instance(name, env, c)).collect();
    instances.sort_by(|a, b| {
        (&a.app, &a.instance, a.created, &a.container_id).cmp(&(&b.app, &b.instance, b.created, &b.container_id))
    });
    if instances.len() != listed {
        tracing::warn!(
            host = name,
            env,
            dropped = listed - instances.len(),
            "ignored listed containers without `reconcile.env=<env>` or an id"
        );
    }
    tracing::debug!(host = name, env, containers = instances.len(), elapsed = ?started.elapsed(), "observed");
    HostObservation { instances }
}

/// One container → one instance; `None` unless it carries `reconcile.env=<env>` and an id.
fn observed_instance(host: &str, env: &str, c: ContainerSummary) -> Option<ObservedInstance> {
    let container_labels = c.labels.unwrap_or_default();
    // The daemon already filtered on it; checked again because acting on a container
    // that is not ours is the one mistake this tool must never make.
    if container_labels.get(labels::ENV).map(String::as_str) != Some(env) {
        return None;
    }
    let container_id = c.id.filter(|id| !id.is_empty())?;
    let label = |key: &str| container_labels.get(key).cloned().unwrap_or_default();
    let app = label(labels::APP);
    let instance = label(labels::INSTANCE);
    let ordinal = if app.is_empty() { None } else { ObservedInstance::ordinal_of(&app, &instance) };
    let name = c.names.unwrap_or_default().into_iter().next().unwrap_or_default();
    Some(ObservedInstance {
        name: name.strip_prefix('/').map(str::to_string).unwrap_or(name),
        host: host.to_string(),
        ordinal,
        spec_hash: label(labels::SPEC_HASH),
        commit: label(labels::COMMIT),
        image: c.image.unwrap_or_default(),
        state: c.state.map_or(ContainerState::Unknown, |s| ContainerState::parse(s.as_ref())),
        status: c.status.unwrap_or_default(),
        created: c.created.unwrap_or_default(),
        port: container_labels.get(labels::PORT).and_then(|p| p.parse().ok()),
        spec: container_labels.get(labels::SPEC).and_then(|s| serde_json::from_str(s).ok()),
        image_id: c.image_id.unwrap_or_default(),
        repo_digests: Vec::new(),
        container_id,
        app,
        instance,
    })
}

/// Observe every host of an environment: connect and list, all hosts concurrently, at
/// most `parallelism` (at least 1) at a time, each host's connect + list bounded by
/// `timeout`.
///
/// # Errors
/// If any host fails, ALL the errors (one per failing host, in `hosts` order) and no
/// observation at all: a partial map would make an unreachable host look empty.
pub async fn observe_all(
    hosts: &[HostSpec],
    env: &str,
    parallelism: usize,
    timeout: Duration,
) -> Result<BTreeMap<String, HostObservation>, Vec<DockerError>> {
    let results: Vec<(&str, Result<HostObservation, DockerError>)> = stream::iter(hosts)
        .map(|host| async move { (host.name.as_str(), observe_one(host, env, timeout).await) })
        .buffered(parallelism.max(1))
        .collect()
        .await;
    let mut observed = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, result) in results {
        match result {
            Ok(observation) => {
                observed.insert(name.to_string(), observation);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(observed) } else { Err(errors) }
}

/// One host of [`observe_all`]: the list call is the first and only request, without
/// the version negotiation [`connect`] makes. bollard 0.21 sends every request without
/// a `/vX.Y` path prefix (its URL join drops it), so the daemon answers at its own API
/// version and the negotiated number would change nothing in the request — while
/// `GET /version` is the dearest call a daemon answers (dockerd 20.10 runs `runc
/// --version` and `docker-init --version` for it: about 15 ms, where the list takes
/// 1.5 ms). `tests/it/docker.rs` checks both: one request per host, unversioned.
async fn observe_one(host: &HostSpec, env: &str, timeout: Duration) -> Result<HostObservation, DockerError> {
    let work = async {
        let started = Instant::now();
        let docker = client_for(host)?;
        let containers = list_env(&docker, env).await.map_err(|e| first_call_error(host, &e))?;
        Ok(observation(&host.name, env, containers, started))
    };
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(timed_out(host, timeout)))
}

/// The first request to a daemon failed: as the negotiation's failure used to be
/// reported (no connection, TLS refused, timeout: [`DockerError::Connect`] /
/// [`DockerError::Timeout`]), unless the daemon answered ([`DockerError::List`]).
fn first_call_error(host: &HostSpec, e: &BollardError) -> DockerError {
    match e {
        BollardError::RequestTimeoutError => timed_out(host, REQUEST_TIMEOUT),
        BollardError::DockerResponseServerError { .. }
        | BollardError::JsonDataError { .. }
        | BollardError::JsonSerdeError { .. } => list_error(&host.name, e).with_endpoint(&host.docker),
        _ => DockerError::Connect { host: host.name.clone(), endpoint: host.docker.clone(), cause: cause(e) },
    }
}

// --- runtime facts for `status` -------------------------------------------------
// Restart count, start time and health exist only in a container's inspect data,
// so `status` (never `plan`) inspects each managed container once.

/// What `status` shows beyond the list call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub restart_count: i64,
    /// Seconds since the epoch of the last start.
    pub started_at: Option<i64>,
    /// Docker's health status, when the image or container defines a health check.
    pub health: Option<String>,
}

/// Inspect the given containers (by host), at most 8 at a time per host.
///
/// # Errors
/// A host cannot be reached. A container that vanished meanwhile is skipped.
pub async fn runtime_info(
    hosts: &[HostSpec],
    ids: &BTreeMap<String, Vec<String>>,
    timeout: Duration,
) -> Result<BTreeMap<String, RuntimeInfo>, DockerError> {
    let mut out = BTreeMap::new();
    for h in hosts {
        let Some(list) = ids.get(&h.name).filter(|l| !l.is_empty()) else { continue };
        let client = connect(h, timeout).await?;
        let results: Vec<(String, Option<RuntimeInfo>)> = stream::iter(list.iter().cloned())
            .map(|id| {
                let c = client.clone();
                async move {
                    let info = tokio::time::timeout(timeout, c.inspect_container(&id, None::<InspectContainerOptions>))
                        .await
                        .ok()
                        .and_then(Result::ok);
                    let info = info.map(|i| {
                        let state = i.state.unwrap_or_default();
                        RuntimeInfo {
                            restart_count: i.restart_count.unwrap_or(0),
                            started_at: state.started_at.as_deref().and_then(parse_rfc3339),
                            health: state.health.and_then(|h| h.status).map(|s| s.to_string()),
                        }
                    });
                    (id, info)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (id, info) in results {
            if let Some(i) = info {
                out.insert(id, i);
            }
        }
    }
    Ok(out)
}

/// `2026-11-25T12:00:00.123456789Z` → seconds since the epoch ([`crate::model::unix_seconds`]);
/// `None` before 1971, which covers Docker's zero time `0001-01-01T00:00:00Z` (never started).
fn parse_rfc3339(s: &str) -> Option<i64> {
    const YEAR_1971: i64 = 365 * 86_400;
    crate::model::unix_seconds(s).filter(|&t| t >= YEAR_1971)
}

// --- apply: images, containers, exec -------------------------------------------

/// Pull `image` if the daemon lacks it, reporting progress through `progress`, one line
/// at a time, e.g. `node-1: pulling reconcile-test/busybox:1: 3f4d90098f5b: Downloading
/// 3.2MB/5.0MB`. Byte-count updates of a layer are reported at most once a second;
/// every change of a layer's status is reported. Returns `true` when it pulled,
/// `false` when the image was already there (one inspect, no pull).
///
/// A reference without a tag or digest pulls `:latest` (the API would otherwise pull
/// every tag). No credentials (the daemon's anonymous pull): apply pulls with the
/// environment's credentials before the rollout ([`pull_for_plan`]), so here the image
/// is normally present already.
/// Only the connection of each request is bounded (the client's timeout); bound the
/// whole pull with `tokio::time::timeout` if needed.
///
/// # Errors
/// [`DockerError::Pull`] naming the host, the image and the daemon's reason (unknown
/// image or tag, registry unreachable, invalid reference, …).
pub async fn ensure_image(
    docker: &Docker,
    host: &str,
    image: &str,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<bool, DockerError> {
    let progress = std::sync::Mutex::new(progress);
    let lines = |line: String| {
        if let Ok(mut p) = progress.lock() {
            p(line);
        }
    };
    let job = PullJob { host: host.to_string(), image: image.to_string(), always: false };
    pull_one(docker, &job, &RegistryAuth::default(), None, &lines).await.map_err(|e| {
        let cause = match e {
            RegistryError::Inspect { cause, .. } => format!("cannot inspect the image: {cause}"),
            RegistryError::Pull { cause, .. }
            | RegistryError::Digest { cause, .. }
            | RegistryError::Credentials { cause, .. } => cause,
        };
        DockerError::Pull { host: host.to_string(), image: image.to_string(), cause }
    })
}

/// `name:tag`, `name@sha256:…`: the last path component has a `:` or there is an `@`
/// (a registry port `host:5000/name` is not a tag).
fn has_tag_or_digest(image: &str) -> bool {
    image.contains('@') || image.rsplit('/').next().is_some_and(|last| last.contains(':'))
}

/// One progress line, or `None` for a byte-count update of a layer reported less than
/// a second ago under the same status.
fn progress_line(info: &CreateImageInfo, last: &mut HashMap<String, (String, Instant)>) -> Option<String> {
    let status = info.status.as_deref().unwrap_or("").trim();
    if status.is_empty() {
        return None;
    }
    let sizes = info.progress_detail.as_ref().and_then(|d| match (d.current, d.total) {
        (Some(c), Some(t)) if t > 0 => Some(format!(" {}/{}", human_bytes(c), human_bytes(t))),
        _ => None,
    });
    let id = info.id.as_deref().unwrap_or("");
    if !id.is_empty() {
        let now = Instant::now();
        match last.get(id) {
            Some((s, at)) if s == status && sizes.is_some() && now.duration_since(*at) < Duration::from_secs(1) => {
                return None;
            }
            _ => {
                last.insert(id.to_string(), (status.to_string(), now));
            }
        }
    }
    // The first line names the tag as its id ("1: Pulling from reconcile-test/busybox").
    let prefix = if id.is_empty() || status.starts_with("Pulling from") { String::new() } else { format!("{id}: ") };
    Some(format!("{prefix}{status}{}", sizes.unwrap_or_default()))
}

/// Decimal units, as the docker CLI shows sizes: `512B`, `3.2MB`.
fn human_bytes(n: i64) -> String {
    #[allow(clippy::cast_precision_loss)] // display only
    let f = n as f64;
    if n < 1_000 {
        format!("{n}B")
    } else if n < 1_000_000 {
        format!("{:.1}kB", f / 1e3)
    } else if n < 1_000_000_000 {
        format!("{:.1}MB", f / 1e6)
    } else {
        format!("{:.1}GB", f / 1e9)
    }
}

/// The HTTP status of a daemon's error answer.
fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Create (not start) container `name` from `spec`, with `labels`, and put the spec's
/// files into it. Returns the container id.
///
/// - `Env` = `K=V` from `spec.env`, `Cmd` = `spec.command` (the image's when `None`),
///   both with real values: secrets reach Docker, never a log line.
/// - `HostConfig`: `NetworkMode` host or bridge; `Init`; `NanoCpus`; `Memory`; `Binds` =
///   `spec.volumes` as written (`SRC:DST[:ro|rw]`, named volumes too); `RestartPolicy`
///   `unless-stopped` (survives daemon restarts and crashes; a `stop` by reconcile or
///   an operator stays stopped). `StopTimeout` = `spec.stop_timeout_secs`.
/// - Bridge: `container_port/tcp` is exposed and published on `HostPort = port` with
///   `HostIp ""` (every address of the host: this layer does not know which address the
///   host is reached at). Nothing is published unless both ports are set.
/// - Files: one tar archive uploaded (`PUT /containers/{id}/archive?path=/`) before
///   the container starts: regular files, mode 0644, owner 0:0. No directory entries:
///   the daemon creates missing parents (0755, root), and existing directories keep
///   their mode and owner (an entry for `/tmp` would reset its 1777).
///
/// If the upload fails the container is removed again, so a failed create leaves
/// nothing behind.
///
/// # Errors
/// [`DockerError::NameConflict`] when a container named `name` exists (the planner's
/// names are unique per spec hash, so it is a leftover to remove);
/// [`DockerError::Create`] (e.g. the image is missing: [`ensure_image`] first);
/// [`DockerError::Files`] (a path that is not absolute or contains `..`, or the upload).
pub async fn create_instance(
    docker: &Docker,
    host: &str,
    name: &str,
    spec: &InstanceSpec,
    labels: &BTreeMap<String, String>,
) -> Result<String, DockerError> {
    let files_error = |cause: String| DockerError::Files { host: host.to_string(), container: name.to_string(), cause };
    // Build the archive first: a bad path must not leave a container behind.
    let archive = if spec.files.is_empty() { None } else { Some(files_archive(&spec.files).map_err(files_error)?) };
    let body = create_body(spec, labels);
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let created = docker.create_container(Some(options), body).await.map_err(|e| match status_of(&e) {
        Some(409) => DockerError::NameConflict { host: host.to_string(), name: name.to_string(), cause: cause(&e) },
        _ => DockerError::Create {
            host: host.to_string(),
            name: name.to_string(),
            image: spec.image.clone(),
            cause: cause(&e),
        },
    })?;
    let id = created.id;
    for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
        tracing::warn!(host, container = name, %warning, "docker warned on create");
    }
    if let Some(archive) = archive {
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        if let Err(e) = docker.upload_to_container(&id, Some(options), body_full(archive.into())).await {
            let err = files_error(format!("upload: {}", cause(&e)));
            let _ = docker
                .remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).v(true).build()))
                .await;
            return Err(err);
        }
    }
    tracing::info!(
        host,
        container = name,
        id = short(&id),
        image = %spec.image,
        env = ?spec.env.keys().collect::<Vec<_>>(),
        files = ?spec.files.keys().collect::<Vec<_>>(),
        "created container"
    );
    Ok(id)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn create_body(spec: &InstanceSpec, labels: &BTreeMap<String, String>) -> ContainerCreateBody {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut host_config = HostConfig {
        network_mode: Some(
            match spec.network {
                Network::Host => "host",
                Network::Bridge => "bridge",
            }
            .into(),
        ),
        init: Some(spec.init),
        nano_cpus: spec.nano_cpus.map(clamp),
        memory: spec.memory.map(clamp),
        binds: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    let mut exposed_ports = None;
    if let (Network::Bridge, Some(port), Some(container_port)) = (spec.network, spec.port, spec.container_port) {
        let key = format!("{container_port}/tcp");
        exposed_ports = Some(vec![key.clone()]);
        let binding = PortBinding { host_ip: Some(String::new()), host_port: Some(port.to_string()) };
        host_config.port_bindings = Some(HashMap::from([(key, Some(vec![binding]))]));
    }
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.as_ref().map(|c| c.iter().map(|a| a.expose().to_string()).collect()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={}", v.expose())).collect()),
        // The app's labels, then reconcile's own (validate refuses `reconcile.` keys in an app).
        labels: Some(spec.labels.iter().chain(labels).map(|(k, v)| (k.clone(), v.clone())).collect()),
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        stop_timeout: Some(clamp(spec.stop_timeout_secs)),
        exposed_ports,
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// A tar archive (to extract at `/`) with one regular file per entry: mode 0644, owner
/// 0:0, no directory entries.
fn files_archive(files: &BTreeMap<String, Rendered>) -> Result<Vec<u8>, String> {
    archive_of(files.iter().map(|(path, content)| (path.as_str(), content.expose().as_bytes())))
}

/// [`files_archive`] over `(path, bytes)` pairs.
fn archive_of<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Vec<u8>, String> {
    let mtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let relative = archive_path(path)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, &relative, data).map_err(|e| format!("file `{path}`: {}", io_cause(&e)))?;
    }
    tar.into_inner().map_err(|e| format!("archive: {}", io_cause(&e)))
}

/// `/etc/app/x.conf` → `etc/app/x.conf`; refuses relative paths, `..`, and directories.
fn archive_path(path: &str) -> Result<std::path::PathBuf, String> {
    use std::path::Component;
    let p = Path::new(path);
    if !p.is_absolute() || path.ends_with('/') {
        return Err(format!("file `{path}`: not an absolute file path"));
    }
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("file `{path}`: `..` is not allowed in a container path"));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("file `{path}`: not an absolute file path"));
    }
    Ok(out)
}

/// Write one file into container `id` (running or not) at the absolute `path`, as
/// [`create_instance`] writes `files:` (one tar upload, mode 0644, owner 0:0). A container
/// LB's config goes in this way (`backend::lb::write_checked_in`).
///
/// # Errors
/// [`DockerError::Files`]: a bad path, or the upload failed (no such container, …).
pub async fn put_file(docker: &Docker, host: &str, id: &str, path: &str, content: &[u8]) -> Result<(), DockerError> {
    let files_error = |cause: String| DockerError::Files { host: host.to_string(), container: id.to_string(), cause };
    let archive = archive_of([(path, content)]).map_err(files_error)?;
    let options = UploadToContainerOptionsBuilder::default().path("/").build();
    docker
        .upload_to_container(id, Some(options), body_full(archive.into()))
        .await
        .map_err(|e| files_error(format!("upload of {path}: {}", cause(&e))))
}

/// The content of the regular file `path` in container `id` (Docker's archive
/// download); `None` when it does not exist.
///
/// # Errors
/// [`DockerError::Files`]: the download failed, the archive is unreadable, or `path` is
/// not a regular file.
pub async fn read_file(docker: &Docker, host: &str, id: &str, path: &str) -> Result<Option<Vec<u8>>, DockerError> {
    use std::io::Read as _;
    let files_error = |cause: String| DockerError::Files { host: host.to_string(), container: id.to_string(), cause };
    let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default().path(path).build();
    let mut stream = docker.download_from_container(id, Some(options));
    let mut archive = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => archive.extend_from_slice(&bytes),
            Err(e) if status_of(&e) == Some(404) && archive.is_empty() => {
                // 404 is both "no such file" and "no such container": tell them apart.
                return match docker.inspect_container(id, None::<InspectContainerOptions>).await {
                    Ok(_) => Ok(None),
                    Err(e) => Err(files_error(format!("download of {path}: {}", cause(&e)))),
                };
            }
            Err(e) => return Err(files_error(format!("download of {path}: {}", cause(&e)))),
        }
    }
    let mut tar = tar::Archive::new(archive.as_slice());
    let mut entries = tar.entries().map_err(|e| files_error(format!("archive of {path}: {}", io_cause(&e))))?;
    let Some(entry) = entries.next() else { return Ok(None) };
    let mut entry = entry.map_err(|e| files_error(format!("archive of {path}: {}", io_cause(&e))))?;
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(files_error(format!("{path} is not a regular file")));
    }
    let mut out = Vec::new();
    entry.read_to_end(&mut out).map_err(|e| files_error(format!("archive of {path}: {}", io_cause(&e))))?;
    Ok(Some(out))
}

/// [`exec`], also returning what the command printed (stdout and stderr interleaved,
/// the first `max` bytes): a container LB's check and reload output goes into errors.
///
/// # Errors
/// As [`exec`].
pub async fn exec_output(
    docker: &Docker,
    host: &str,
    id: &str,
    cmd: &[String],
    timeout: Duration,
    max: usize,
) -> Result<(ExecOutcome, String), DockerError> {
    if cmd.is_empty() {
        return Err(DockerError::Exec {
            host: host.to_string(),
            container: id.to_string(),
            cause: "empty command".into(),
        });
    }
    let mut out = Vec::new();
    let work = exec_streaming(docker, host, id, cmd, |chunk| match chunk {
        Ok(c) => {
            let bytes = c.into_bytes();
            out.extend_from_slice(&bytes[..bytes.len().min(max.saturating_sub(out.len()))]);
            Ok(true)
        }
        Err(_) => Ok(false),
    });
    let outcome = match tokio::time::timeout(timeout, work).await {
        Ok(result) => ExecOutcome::Exited(result?),
        Err(_) => ExecOutcome::TimedOut,
    };
    Ok((outcome, String::from_utf8_lossy(&out).into_owned()))
}

/// Start a created container. Starting a running one is `Ok` (the daemon answers 304).
///
/// # Errors
/// [`DockerError::Start`] naming host, container and the daemon's reason (no such
/// container, the command does not exist in the image, the port is taken, …).
pub async fn start(docker: &Docker, host: &str, id: &str) -> Result<(), DockerError> {
    docker.start_container(id, None::<StartContainerOptions>).await.map_err(|e| DockerError::Start {
        host: host.to_string(),
        container: id.to_string(),
        cause: cause(&e),
    })?;
    tracing::info!(host, container = short(id), "started container");
    Ok(())
}

/// Stop `id` (SIGTERM, then SIGKILL after `grace`, rounded up to whole seconds), then
/// remove it with its anonymous volumes (`force`, so a container that would not stop
/// goes too). A container that is already gone — before the stop, or removed by
/// someone else meanwhile — is `Ok`: safe to re-run after a crash.
///
/// The stop request waits for the daemon, so this client's timeout is raised to
/// `grace` + [`REQUEST_TIMEOUT`] for it.
///
/// # Errors
/// [`DockerError::Stop`] / [`DockerError::Remove`] naming host, container and cause.
pub async fn stop_and_remove(docker: &Docker, host: &str, id: &str, grace: Duration) -> Result<(), DockerError> {
    let secs = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i32::MAX);
    let slow = docker.clone().with_timeout(grace.saturating_add(REQUEST_TIMEOUT));
    let started = Instant::now();
    match slow.stop_container(id, Some(StopContainerOptionsBuilder::default().t(secs).build())).await {
        Ok(()) => {}
        Err(e) if status_of(&e) == Some(404) => {
            tracing::debug!(host, container = short(id), "already gone");
            return Ok(());
        }
        Err(e) => {
            return Err(DockerError::Stop { host: host.to_string(), container: id.to_string(), cause: cause(&e) });
        }
    }
    let stopped = started.elapsed();
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => {}
        Err(e) if status_of(&e) == Some(404) => {}
        // Someone else's removal of it is under way: it is going, which is what we want.
        Err(e) if status_of(&e) == Some(409) && cause(&e).contains("already in progress") => {}
        Err(e) => {
            return Err(DockerError::Remove { host: host.to_string(), container: id.to_string(), cause: cause(&e) });
        }
    }
    tracing::info!(host, container = short(id), ?stopped, "stopped and removed container");
    Ok(())
}

/// How a `docker exec` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The command exited with this code.
    Exited(i64),
    /// It did not finish in time. Docker cannot kill an exec: the process may still run.
    TimedOut,
}

/// Run `cmd` in running container `id` (`docker exec`, output read and discarded, not
/// logged), waiting up to `timeout`.
///
/// # Errors
/// [`DockerError::Exec`]: empty `cmd`, no such container, container not running, or the
/// command cannot be started (a missing binary is exit code 126/127, not an error).
pub async fn exec(
    docker: &Docker,
    host: &str,
    id: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<ExecOutcome, DockerError> {
    let exec_error = |cause: String| DockerError::Exec { host: host.to_string(), container: id.to_string(), cause };
    if cmd.is_empty() {
        return Err(exec_error("empty command".into()));
    }
    // Drain until the command closes its output; a read error ends it too.
    let work = exec_streaming(docker, host, id, cmd, |chunk| Ok(chunk.is_ok()));
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result.map(ExecOutcome::Exited),
        Err(_) => Ok(ExecOutcome::TimedOut),
    }
}

/// Create and start an exec of `cmd` in container `id`, hand every output chunk to
/// `chunk` (which says whether to go on reading), then wait for the exit code — the
/// stream ends when the process exits, but its exit code may lag a moment.
async fn exec_streaming(
    docker: &Docker,
    host: &str,
    id: &str,
    cmd: &[String],
    mut chunk: impl FnMut(Result<bollard::container::LogOutput, BollardError>) -> Result<bool, DockerError>,
) -> Result<i64, DockerError> {
    let exec_error = |cause: String| DockerError::Exec { host: host.to_string(), container: id.to_string(), cause };
    let options = CreateExecOptions::<String> {
        cmd: Some(cmd.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = docker.create_exec(id, options).await.map_err(|e| exec_error(cause(&e)))?;
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None::<StartExecOptions>).await.map_err(|e| exec_error(cause(&e)))?
    {
        while let Some(c) = output.next().await {
            if !chunk(c)? {
                break;
            }
        }
    }
    loop {
        let info = docker.inspect_exec(&created.id).await.map_err(|e| exec_error(cause(&e)))?;
        match (info.running, info.exit_code) {
            (Some(false), Some(code)) => return Ok(code),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// [`exec`], `Ok(true)` when it exited 0 within `timeout`.
///
/// # Errors
/// As [`exec`].
pub async fn exec_ok(
    docker: &Docker,
    host: &str,
    id: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<bool, DockerError> {
    Ok(exec(docker, host, id, cmd, timeout).await? == ExecOutcome::Exited(0))
}

/// The runner of a `cmd` health check in container `id`, for
/// [`Probe::Cmd`](super::probe::Probe::Cmd) /
/// [`Probe::from_spec`](super::probe::Probe::from_spec): `exec` of `argv`; exit 0 is
/// healthy, anything else a reason (`exit code 1`, the exec error).
pub fn cmd_runner(docker: Docker, host: String, id: String, argv: Vec<String>) -> CmdRunner {
    let argv = Arc::new(argv);
    Arc::new(move |timeout| {
        let (docker, host, id, argv) = (docker.clone(), host.clone(), id.clone(), argv.clone());
        Box::pin(async move {
            let what = format!("cmd `{}`", argv.join(" "));
            match exec(&docker, &host, &id, &argv, timeout).await {
                Ok(ExecOutcome::Exited(0)) => Ok(()),
                Ok(ExecOutcome::Exited(code)) => Err(format!("{what}: exit code {code}")),
                Ok(ExecOutcome::TimedOut) => Err(format!("{what}: did not finish within {timeout:?}")),
                Err(e) => Err(format!("{what}: {e}")),
            }
        })
    })
}

/// [`check_running`] with the error as text: the `still_running` check of
/// [`wait_healthy`](super::probe::wait_healthy), e.g.
/// `wait_healthy(&probe, &schedule, || still_running(&client, host, id))`.
///
/// # Errors
/// As [`check_running`], as its message.
pub async fn still_running(docker: &Docker, host: &str, id: &str) -> Result<(), String> {
    check_running(docker, host, id).await.map_err(|e| e.to_string())
}

/// `Ok` while container `id` runs as started: running, not restarting, never
/// restarted. For a fresh container (the restart policy brings a crashing one back)
/// a restart means it crashed. Pass it as [`wait_healthy`](super::probe::wait_healthy)'s
/// `still_running` (mapping the error to a string) so a dead instance fails at once.
///
/// # Errors
/// [`DockerError::NotRunning`] describing the state (`exited with code 1`, `restarting
/// (exited with code 1, restarted 2 time(s))`, `restarted 2 time(s), running again (it crashed)`, `gone`); [`DockerError::Inspect`] if the
/// daemon cannot say.
pub async fn check_running(docker: &Docker, host: &str, id: &str) -> Result<(), DockerError> {
    let not_running =
        |state: String| DockerError::NotRunning { host: host.to_string(), container: id.to_string(), state };
    let info = match docker.inspect_container(id, None::<InspectContainerOptions>).await {
        Ok(info) => info,
        Err(e) if status_of(&e) == Some(404) => return Err(not_running("gone".into())),
        Err(e) => {
            return Err(DockerError::Inspect { host: host.to_string(), container: id.to_string(), cause: cause(&e) });
        }
    };
    match describe_state(&info.state.unwrap_or_default(), info.restart_count.unwrap_or(0)) {
        None => Ok(()),
        Some(text) => Err(not_running(text)),
    }
}

/// The last `lines` lines of container `id`'s stdout and stderr (interleaved as the
/// daemon stores them), at most `max_bytes` of them (the end is kept, cut at a line
/// start where possible), lossily decoded: the evidence of why a new container died,
/// read before it is removed. Works on stopped containers too.
///
/// # Errors
/// [`DockerError::Logs`]: no such container, or the daemon cannot read its log (a
/// logging driver without read support, e.g. `none`).
pub async fn logs_tail(
    docker: &Docker,
    host: &str,
    id: &str,
    lines: usize,
    max_bytes: usize,
) -> Result<String, DockerError> {
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&lines.to_string()).build();
    let mut stream = docker.logs(id, Some(options));
    let mut out: Vec<u8> = Vec::new();
    while let Some(item) = stream.next().await {
        let chunk = item.map_err(|e| DockerError::Logs {
            host: host.to_string(),
            container: id.to_string(),
            cause: cause(&e),
        })?;
        out.extend_from_slice(&chunk.into_bytes());
        if out.len() > max_bytes.saturating_mul(2) {
            out.drain(..out.len() - max_bytes);
        }
    }
    Ok(tail_text(&out, max_bytes))
}

/// The end of `bytes`, at most `max_bytes`, starting after a line break when the cut
/// falls inside a line (unless that would drop everything).
fn tail_text(bytes: &[u8], max_bytes: usize) -> String {
    let start = bytes.len().saturating_sub(max_bytes);
    let mut kept = bytes.get(start..).unwrap_or_default();
    if start > 0
        && let Some(nl) = kept.iter().position(|b| *b == b'\n')
        && nl + 1 < kept.len()
    {
        kept = kept.get(nl + 1..).unwrap_or_default();
    }
    String::from_utf8_lossy(kept).into_owned()
}

/// What is wrong with a container in `state` that was restarted `restarts` times, or
/// `None` when it runs as started. Docker resets the exit code and error when a
/// restart policy starts the container again, so a container that is running after a
/// restart is described by its restart count alone: its last exit code is gone.
fn describe_state(state: &bollard::models::ContainerState, restarts: i64) -> Option<String> {
    let restarting = state.restarting == Some(true);
    let running = state.running == Some(true) && !restarting;
    if running {
        return (restarts > 0).then(|| format!("restarted {restarts} time(s), running again (it crashed)"));
    }
    let mut exit = match state.exit_code {
        Some(code) => format!("exited with code {code}"),
        None => "exited".to_string(),
    };
    if state.oom_killed == Some(true) {
        exit.push_str(", out of memory");
    }
    if let Some(error) = state.error.as_ref().filter(|e| !e.is_empty()) {
        exit.push_str(&format!(": {error}"));
    }
    Some(if restarting { format!("restarting ({exit}, restarted {restarts} time(s))") } else { exit })
}

#[cfg(test)]
mod tests {
    use bollard::models::ContainerSummaryStateEnum;

    use super::*;

    #[test]
    fn a_log_tail_keeps_the_end_from_a_line_start() {
        assert_eq!(tail_text(b"one\ntwo\n", 100), "one\ntwo\n");
        assert_eq!(tail_text(b"first line\nsecond\n", 10), "second\n");
        // One long line is cut rather than dropped.
        assert_eq!(tail_text(b"abcdefghij", 4), "ghij");
        assert_eq!(tail_text(b"", 4), "");
    }

    fn summary(id: &str, label_pairs: &[(&str, &str)]) -> ContainerSummary {
        ContainerSummary {
            id: Some(id.into()),
            names: Some(vec![format!("/{id}-name")]),
            image: Some("busybox:1".into()),
            created: Some(100),
            state: Some(ContainerSummaryStateEnum::RUNNING),
            status: Some("Up 2 seconds".into()),
            labels: Some(label_pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn container_states_are_described_without_stale_exit_codes() {
        use bollard::models::ContainerState as S;
        let running = S { running: Some(true), exit_code: Some(0), ..Default::default() };
        assert_eq!(describe_state(&running, 0), None);
        // Running again after a crash: Docker reset the exit code to 0, so none is claimed.
        assert_eq!(describe_state(&running, 2).as_deref(), Some("restarted 2 time(s), running again (it crashed)"));
        let restarting = S { running: Some(true), restarting: Some(true), exit_code: Some(3), ..Default::default() };
        assert_eq!(
            describe_state(&restarting, 1).as_deref(),
            Some("restarting (exited with code 3, restarted 1 time(s))")
        );
        let oom = S {
            running: Some(false),
            exit_code: Some(137),
            oom_killed: Some(true),
            error: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(describe_state(&oom, 0).as_deref(), Some("exited with code 137, out of memory"));
        let failed = S { running: Some(false), error: Some("exec: not found".into()), ..Default::default() };
        assert_eq!(describe_state(&failed, 0).as_deref(), Some("exited: exec: not found"));
    }

    #[test]
    fn labels_become_fields() {
        let c = summary(
            "abc",
            &[
                (labels::ENV, "staging"),
                (labels::APP, "api"),
                (labels::INSTANCE, "api-2"),
                (labels::SPEC_HASH, "h1"),
                (labels::COMMIT, "c0ffee"),
                (labels::PORT, "20001"),
                (labels::SPEC, r#"{"image":"busybox:1"}"#),
            ],
        );
        let i = observed_instance("node-1", "staging", c).unwrap();
        assert_eq!(i.name, "abc-name");
        assert_eq!(i.host, "node-1");
        assert_eq!((i.app.as_str(), i.instance.as_str(), i.ordinal), ("api", "api-2", Some(2)));
        assert_eq!((i.spec_hash.as_str(), i.commit.as_str(), i.port), ("h1", "c0ffee", Some(20001)));
        assert_eq!(i.state, ContainerState::Running);
        assert_eq!(i.spec, Some(serde_json::json!({"image": "busybox:1"})));
    }

    #[test]
    fn bad_labels_degrade_and_unlabelled_is_kept() {
        let c = summary("x", &[(labels::ENV, "staging"), (labels::PORT, "99999"), (labels::SPEC, "{not json")]);
        let i = observed_instance("n", "staging", c).unwrap();
        assert_eq!((i.app.as_str(), i.instance.as_str(), i.ordinal, i.port, i.spec), ("", "", None, None, None));
    }

    #[test]
    fn other_envs_and_unmanaged_are_dropped() {
        assert!(observed_instance("n", "staging", summary("a", &[(labels::ENV, "prod")])).is_none());
        assert!(observed_instance("n", "staging", summary("b", &[])).is_none());
        let mut c = summary("c", &[(labels::ENV, "staging")]);
        c.labels = None;
        assert!(observed_instance("n", "staging", c).is_none());
    }

    #[tokio::test]
    async fn ssh_with_a_port_is_refused_with_a_hint() {
        let host = HostSpec {
            name: "node-9".into(),
            docker: "ssh://deploy@10.0.0.9:2222".into(),
            tls: None,
            address: "10.0.0.9".into(),
            labels: BTreeMap::new(),
            ports: "20000-20100".into(),
        };
        let e = connect(&host, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(e, DockerError::Connect { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("host `node-9` (ssh://deploy@10.0.0.9:2222): cannot connect: ssh on port 2222")
        );
        assert!(e.to_string().contains("~/.ssh/config"), "{e}");
    }

    #[test]
    fn messages_name_host_endpoint_and_cause() {
        let e = DockerError::Connect {
            host: "node-2".into(),
            endpoint: "unix:///run/x.sock".into(),
            cause: io_cause(&std::io::Error::from_raw_os_error(2)),
        };
        assert_eq!(e.to_string(), "host `node-2` (unix:///run/x.sock): cannot connect: No such file or directory");
        let e = DockerError::List { host: "n".into(), endpoint: None, cause: "boom".into() };
        assert_eq!(e.to_string(), "host `n`: cannot list containers: boom");
        assert_eq!(e.with_endpoint("tcp://h:1").to_string(), "host `n` (tcp://h:1): cannot list containers: boom");
        let e = DockerError::Timeout { host: "n".into(), endpoint: "e".into(), after: Duration::from_millis(500) };
        assert_eq!(e.to_string(), "host `n` (e): no answer within 500ms");
    }
}

#[cfg(test)]
mod apply_tests {
    use super::*;

    #[test]
    fn references_with_and_without_tags() {
        assert!(has_tag_or_digest("busybox:1"));
        assert!(has_tag_or_digest("127.0.0.1:5000/x/busybox:1"));
        assert!(has_tag_or_digest("busybox@sha256:0123"));
        assert!(!has_tag_or_digest("busybox"));
        assert!(!has_tag_or_digest("127.0.0.1:5000/x/busybox"));
    }

    #[test]
    fn archive_paths() {
        assert_eq!(archive_path("/etc/app/x.conf").unwrap(), Path::new("etc/app/x.conf"));
        assert_eq!(archive_path("/etc//./x").unwrap(), Path::new("etc/x"));
        for bad in ["etc/x", "/", "/etc/", "/etc/../x", ""] {
            assert!(archive_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn archive_has_regular_files_only() {
        let files = BTreeMap::from([
            ("/www/index.html".to_string(), Rendered::plain("hi\n")),
            (format!("/deep/{}/f", "d".repeat(150)), Rendered::plain("long")),
        ]);
        let bytes = files_archive(&files).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.entry_type(), tar::EntryType::Regular);
            assert_eq!((h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()), (0o644, 0, 0));
            let path = entry.path().unwrap().display().to_string();
            let mut content = String::new();
            std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
            seen.push((path, content));
        }
        assert_eq!(
            seen,
            vec![
                (format!("deep/{}/f", "d".repeat(150)), "long".to_string()),
                ("www/index.html".to_string(), "hi\n".to_string())
            ]
        );
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            image: "busybox:1".into(),
            command: None,
            env: BTreeMap::from([("A".to_string(), Rendered::plain("1"))]),
            network: Network::Bridge,
            port: Some(20001),
            container_port: Some(8080),
            init: true,
            nano_cpus: Some(500_000_000),
            memory: Some(1 << 26),
            volumes: vec!["/srv:/data:ro".into()],
            files: BTreeMap::new(),
            health: None,
            stop_timeout_secs: 5,
            user: None,
            working_dir: None,
            labels: BTreeMap::new(),
            sensitive: BTreeMap::new(),
        }
    }

    #[test]
    fn create_body_maps_the_spec() {
        let b = create_body(&spec(), &BTreeMap::from([("k".to_string(), "v".to_string())]));
        let hc = b.host_config.clone().unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
        assert_eq!((hc.init, hc.nano_cpus, hc.memory), (Some(true), Some(500_000_000), Some(1 << 26)));
        assert_eq!(hc.binds, Some(vec!["/srv:/data:ro".to_string()]));
        assert_eq!(hc.restart_policy.and_then(|r| r.name), Some(RestartPolicyNameEnum::UNLESS_STOPPED));
        let bindings = hc.port_bindings.unwrap();
        let b8080 = bindings["8080/tcp"].clone().unwrap();
        assert_eq!((b8080[0].host_ip.as_deref(), b8080[0].host_port.as_deref()), (Some(""), Some("20001")));
        assert_eq!(b.exposed_ports, Some(vec!["8080/tcp".to_string()]));
        assert_eq!((b.cmd, b.env, b.stop_timeout), (None, Some(vec!["A=1".to_string()]), Some(5)));
        // Host networking publishes nothing.
        let host = create_body(&InstanceSpec { network: Network::Host, ..spec() }, &BTreeMap::new());
        assert_eq!(host.host_config.unwrap().port_bindings, None);
        assert_eq!(host.exposed_ports, None);
        assert_eq!((host.user, host.working_dir), (None, None));
        // The app's user, working directory and labels; reconcile's labels win a clash.
        let own = InstanceSpec {
            user: Some("1000:1000".into()),
            working_dir: Some("/srv/app".into()),
            labels: BTreeMap::from([("team".to_string(), "shop".to_string()), ("k".to_string(), "app's".to_string())]),
            ..spec()
        };
        let b = create_body(&own, &BTreeMap::from([("k".to_string(), "v".to_string())]));
        assert_eq!((b.user.as_deref(), b.working_dir.as_deref()), (Some("1000:1000"), Some("/srv/app")));
        let labels = b.labels.unwrap();
        assert_eq!((labels["team"].as_str(), labels["k"].as_str(), labels.len()), ("shop", "v", 2));
    }

    #[test]
    fn progress_lines_are_throttled_per_layer() {
        let info = |id: &str, status: &str, current: Option<i64>| CreateImageInfo {
            id: Some(id.into()),
            status: Some(status.into()),
            progress_detail: current
                .map(|c| bollard::models::ProgressDetail { current: Some(c), total: Some(5_000_000) }),
            ..Default::default()
        };
        let mut last = HashMap::new();
        assert_eq!(
            progress_line(&info("1", "Pulling from x/busybox", None), &mut last).as_deref(),
            Some("Pulling from x/busybox")
        );
        assert_eq!(
            progress_line(&info("abc", "Downloading", Some(3_200_000)), &mut last).as_deref(),
            Some("abc: Downloading 3.2MB/5.0MB")
        );
        assert_eq!(progress_line(&info("abc", "Downloading", Some(3_300_000)), &mut last), None);
        assert_eq!(
            progress_line(&info("def", "Downloading", Some(10)), &mut last).as_deref(),
            Some("def: Downloading 10B/5.0MB")
        );
        assert_eq!(
            progress_line(&info("abc", "Download complete", None), &mut last).as_deref(),
            Some("abc: Download complete")
        );
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1_500), "1.5kB");
        assert_eq!(human_bytes(2_500_000_000), "2.5GB");
    }

    #[test]
    fn apply_errors_name_host_and_object() {
        let e = DockerError::Pull { host: "node-1".into(), image: "x:1".into(), cause: "manifest unknown".into() };
        assert_eq!(e.to_string(), "host `node-1`: cannot pull image `x:1`: manifest unknown");
        assert_eq!(e.host(), "node-1");
        let e = DockerError::NotRunning { host: "n".into(), container: "c".into(), state: "exited with code 1".into() };
        assert_eq!(e.to_string(), "host `n`: container `c` is not running: exited with code 1");
    }
}

#[cfg(test)]
mod runtime_tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::parse_rfc3339("1970-01-02T00:00:00Z"), None);
        assert_eq!(super::parse_rfc3339("2026-11-25T12:00:00.5Z"), Some(1_795_608_000));
        assert_eq!(super::parse_rfc3339("0001-01-01T00:00:00Z"), None);
    }
}

/// A managed container's lifecycle event, as `watch` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub host: String,
    pub container_id: String,
    /// The container's name (without `/`), when the event carries it.
    pub name: String,
    /// `reconcile.instance` of the container.
    pub instance: String,
    /// `die`, `destroy`, `oom`, `stop`, `kill`, `start`.
    pub action: String,
}

/// Docker's event stream for `env`'s managed containers on one host: container events
/// `die`, `destroy`, `oom`, `stop` and `start`, filtered by the daemon on the environment
/// label (one long-lived request per host). The stream ends with an error when the
/// connection breaks; the caller reconnects.
pub fn container_events(
    docker: &Docker,
    host: &str,
    env: &str,
) -> impl futures::Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static {
    let label = format!("{}={env}", labels::ENV);
    let filters = HashMap::from([
        ("type", vec!["container"]),
        ("label", vec![label.as_str()]),
        ("event", vec!["die", "destroy", "oom", "stop", "start"]),
    ]);
    let options = EventsOptionsBuilder::default().filters(&filters).build();
    let host = host.to_string();
    docker.events(Some(options)).map(move |r| match r {
        Ok(m) => {
            let actor = m.actor.unwrap_or_default();
            let attributes = actor.attributes.unwrap_or_default();
            Ok(ContainerEvent {
                host: host.clone(),
                container_id: actor.id.unwrap_or_default(),
                name: attributes.get("name").cloned().unwrap_or_default(),
                instance: attributes.get(labels::INSTANCE).cloned().unwrap_or_default(),
                action: m.action.unwrap_or_default(),
            })
        }
        Err(e) => Err(DockerError::Events { host: host.clone(), cause: e.to_string() }),
    })
}

// --- logs and exec for operators (`reconcile logs`, `reconcile exec`) ------------

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of a container's log, with Docker's timestamp (RFC 3339, nanoseconds:
/// sorts as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: LogStream,
    pub text: String,
}

/// What `logs` asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogQuery {
    /// Seconds since the epoch; lines before it are left out.
    pub since: Option<i64>,
    /// The last N lines only.
    pub tail: Option<usize>,
    pub follow: bool,
}

/// A container's log lines (stdout and stderr, timestamped), as a stream; with
/// `follow` it lasts until the container stops.
pub fn logs(
    docker: &Docker,
    host: &str,
    id: &str,
    q: LogQuery,
) -> impl futures::Stream<Item = Result<LogLine, DockerError>> + Send + 'static {
    let mut b = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .follow(q.follow)
        .tail(&q.tail.map_or_else(|| "all".to_string(), |n| n.to_string()));
    if let Some(s) = q.since {
        b = b.since(i32::try_from(s).unwrap_or(i32::MAX));
    }
    let (host, id) = (host.to_string(), id.to_string());
    docker
        .logs(&id, Some(b.build()))
        .map(move |r| match r {
            Ok(out) => {
                let (stream, bytes) = match out {
                    bollard::container::LogOutput::StdErr { message } => (LogStream::Stderr, message),
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message }
                    | bollard::container::LogOutput::StdIn { message } => (LogStream::Stdout, message),
                };
                Ok(log_lines(stream, &String::from_utf8_lossy(&bytes)))
            }
            Err(e) => Err(DockerError::Inspect { host: host.clone(), container: id.clone(), cause: cause(&e) }),
        })
        .flat_map(|r| {
            stream::iter(match r {
                Ok(lines) => lines.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        })
}

/// Split one log frame into lines (`<timestamp> <text>`); a line without its own
/// timestamp (a frame holding several lines) gets the frame's.
fn log_lines(stream: LogStream, frame: &str) -> Vec<LogLine> {
    let mut out: Vec<LogLine> = Vec::new();
    for raw in frame.lines() {
        let (time, text) = match raw.split_once(' ') {
            Some((t, rest)) if t.len() >= 20 && t.as_bytes().get(4) == Some(&b'-') && t.ends_with('Z') => {
                (t.to_string(), rest.to_string())
            }
            _ => (out.last().map(|l| l.time.clone()).unwrap_or_default(), raw.to_string()),
        };
        out.push(LogLine { time, stream, text });
    }
    out
}

/// Run `cmd` in container `id` with its output copied to ours as it comes;
/// returns its exit code.
///
/// # Errors
/// The exec cannot be created or started, or our output cannot be written.
pub async fn exec_attached(docker: &Docker, host: &str, id: &str, cmd: &[String]) -> Result<i64, DockerError> {
    use std::io::Write as _;
    let exec_error = |cause: String| DockerError::Exec { host: host.to_string(), container: id.to_string(), cause };
    let code = exec_streaming(docker, host, id, cmd, |c| {
        let written = match c.map_err(|e| exec_error(cause(&e)))? {
            bollard::container::LogOutput::StdErr { message } => std::io::stderr().write_all(&message),
            other => std::io::stdout().write_all(&other.into_bytes()),
        };
        written.map_err(|e| exec_error(format!("writing its output: {e}")))?;
        Ok(true)
    })
    .await?;
    let _ = std::io::stdout().flush();
    Ok(code)
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn frames_split_into_timestamped_lines() {
        let lines = log_lines(
            LogStream::Stderr,
            "2026-12-01T10:00:00.000000001Z first\n2026-12-01T10:00:00.5Z second\ncontinued\n",
        );
        let got: Vec<(&str, &str)> = lines.iter().map(|l| (l.time.as_str(), l.text.as_str())).collect();
        assert_eq!(
            got,
            [
                ("2026-12-01T10:00:00.000000001Z", "first"),
                ("2026-12-01T10:00:00.5Z", "second"),
                ("2026-12-01T10:00:00.5Z", "continued")
            ]
        );
        assert!(lines.iter().all(|l| l.stream == LogStream::Stderr));
    }
}

// --- private registries, pulls before a rollout, digests (issue 9) ---------------

/// What a pull may be told about registry access (re-exported for callers).
pub use super::registry_auth::{Auth as RegistryAuth, registry_of};

/// What went wrong pulling images or asking a registry, naming the image and the
/// registry (and which credentials were used; never their values).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image could not be pulled on a host (wrong credentials, unknown image or
    /// tag, registry unreachable).
    #[error(
        "host `{host}`: cannot pull image `{image}` from registry `{registry}` ({auth}): {cause}; {}",
        registry_hint(cause)
    )]
    Pull { host: String, image: String, registry: String, auth: String, cause: String },
    /// `pull: always`: the tag's digest could not be resolved.
    #[error(
        "cannot resolve the digest of image `{image}` in registry `{registry}` ({auth}, asked through host `{host}`): \
         {cause}; {}",
        registry_hint(cause)
    )]
    Digest { host: String, image: String, registry: String, auth: String, cause: String },
    /// The credentials could not be looked up (a credential helper failed, a bad
    /// docker config).
    #[error("image `{image}`: {cause}")]
    Credentials { image: String, cause: String },
    /// The image's inspect failed (repo digests for `pull: always`).
    #[error("host `{host}`: cannot inspect image `{image}`: {cause}")]
    Inspect { host: String, image: String, cause: String },
}

impl RegistryError {
    /// The image the error is about.
    pub fn image(&self) -> &str {
        match self {
            Self::Pull { image, .. }
            | Self::Digest { image, .. }
            | Self::Credentials { image, .. }
            | Self::Inspect { image, .. } => image,
        }
    }
}

fn bollard_credentials(c: &super::registry_auth::Credentials) -> DockerCredentials {
    DockerCredentials {
        username: c.username.clone(),
        password: c.password.as_ref().map(|p| p.expose().to_string()),
        identitytoken: c.identity_token.as_ref().map(|t| t.expose().to_string()),
        serveraddress: Some(c.registry.clone()),
        ..Default::default()
    }
}

/// The credentials for `image` and a description of them for messages.
fn credentials_for(auth: &RegistryAuth, image: &str) -> Result<(Option<DockerCredentials>, String), RegistryError> {
    let registry = registry_of(image);
    match auth.lookup(registry) {
        Ok(Some(c)) => Ok((Some(bollard_credentials(&c)), format!("credentials from {}", c.source))),
        Ok(None) => Ok((None, "anonymous: no credentials in `registries:` or the docker config".into())),
        Err(e) => Err(RegistryError::Credentials { image: image.to_string(), cause: e.to_string() }),
    }
}

/// How to fix a failed pull or lookup, from the daemon's reason.
fn registry_hint(cause: &str) -> String {
    let c = cause.to_ascii_lowercase();
    if c.contains("unauthorized") || c.contains("authentication required") || c.contains("denied") {
        "check the username and the password secret of the registry's `registries:` entry (or `docker login` for \
         the user running reconcile)"
            .into()
    } else if c.contains("manifest unknown") || c.contains("not found") || c.contains("does not exist") {
        "check the image name and tag: the registry does not have it".into()
    } else {
        "check that the registry is reachable from the host and trusted (/etc/docker/certs.d/HOST:PORT/ca.crt)".into()
    }
}

/// One image wanted on one host before a rollout.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PullJob {
    pub host: String,
    pub image: String,
    /// `pull: always`: pull even if the host has the image (the tag may have moved).
    pub always: bool,
}

/// Pull every image of `jobs` that its host lacks (or every one with `always`), all
/// concurrently, with credentials from `auth`; progress as a bar per image on a
/// terminal (stderr), else as plain lines through `lines`. Returns the failures (an
/// empty list when every image is there); a failed pull changes nothing on the host.
///
/// Jobs for hosts missing from `clients` are skipped: the rollout reports the
/// unreachable host itself.
pub async fn pull_all(
    clients: &BTreeMap<String, Docker>,
    jobs: &[PullJob],
    auth: &RegistryAuth,
    lines: &(dyn Fn(String) + Send + Sync),
) -> Vec<RegistryError> {
    use std::io::IsTerminal as _;
    let bars = std::io::stderr().is_terminal().then(indicatif::MultiProgress::new);
    let work = jobs.iter().filter_map(|job| {
        let docker = clients.get(&job.host)?;
        let bars = bars.as_ref();
        Some(async move {
            let bar = bars.map(|m| {
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:24}] {binary_bytes:>9}/{binary_total_bytes:9} {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                let b = m.add(indicatif::ProgressBar::new(0).with_style(style));
                b.set_prefix(format!("{}: {}", job.host, job.image));
                b
            });
            let started = Instant::now();
            let result = pull_one(docker, job, auth, bar.as_ref(), lines).await;
            if bar.is_none() && matches!(result, Ok(true)) {
                lines(format!("{}: pulled {} in {:.1}s", job.host, job.image, started.elapsed().as_secs_f64()));
            }
            if let Some(b) = bar {
                b.finish_with_message(match &result {
                    Ok(true) => "pulled",
                    Ok(false) => "present",
                    Err(_) => "FAILED",
                });
            }
            result.err()
        })
    });
    stream::iter(work).buffer_unordered(16).filter_map(|e| async move { e }).collect().await
}

/// One job: `Ok(true)` pulled, `Ok(false)` already there.
async fn pull_one(
    docker: &Docker,
    job: &PullJob,
    auth: &RegistryAuth,
    bar: Option<&indicatif::ProgressBar>,
    lines: &(dyn Fn(String) + Send + Sync),
) -> Result<bool, RegistryError> {
    let (host, image) = (job.host.as_str(), job.image.as_str());
    if !job.always {
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(false),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => {
                return Err(RegistryError::Inspect { host: host.into(), image: image.into(), cause: cause(&e) });
            }
        }
    }
    let (credentials, described) = credentials_for(auth, image)?;
    let fail = |c: String| RegistryError::Pull {
        host: host.into(),
        image: image.into(),
        registry: registry_of(image).into(),
        auth: described.clone(),
        cause: c,
    };
    let started = Instant::now();
    tracing::info!(host, image, auth = %described, "pulling image");
    if bar.is_none() {
        lines(format!("{host}: pulling {image}"));
    }
    let mut options = CreateImageOptionsBuilder::default().from_image(image);
    if !has_tag_or_digest(image) {
        options = options.tag("latest");
    }
    let mut pulled = docker.create_image(Some(options.build()), None, credentials);
    let mut last: HashMap<String, (String, Instant)> = HashMap::new();
    let mut layers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    while let Some(item) = pulled.next().await {
        let info = item.map_err(|e| fail(cause(&e)))?;
        match bar {
            Some(b) => {
                if let (Some(id), Some(d)) = (info.id.as_ref(), info.progress_detail.as_ref())
                    && let (Some(c), Some(t)) = (d.current, d.total)
                {
                    let clamp = |n: i64| u64::try_from(n).unwrap_or(0);
                    layers.insert(id.clone(), (clamp(c), clamp(t)));
                    b.set_length(layers.values().map(|l| l.1).sum());
                    b.set_position(layers.values().map(|l| l.0).sum());
                }
                if let Some(s) = info.status.as_deref() {
                    b.set_message(s.trim().to_string());
                }
            }
            None => {
                if let Some(line) = progress_line(&info, &mut last) {
                    lines(format!("{host}: pulling {image}: {line}"));
                }
            }
        }
    }
    // The stream reports failures as error items; check anyway rather than trust it.
    docker.inspect_image(image).await.map_err(|e| fail(format!("pulled, but not there: {}", cause(&e))))?;
    tracing::info!(host, image, elapsed = ?started.elapsed(), "pulled image");
    Ok(true)
}

/// `pull: always`: the digest each image's tag points to now, asked through
/// `docker`'s distribution endpoint (`GET /distribution/{image}/json`, the daemon
/// talks to the registry with the credentials from `auth`); one request per image,
/// all concurrently.
///
/// # Errors
/// One [`RegistryError::Digest`] (or `Credentials`) per image that could not be resolved.
pub async fn resolve_digests(
    docker: &Docker,
    host: &str,
    images: &BTreeSet<String>,
    auth: &RegistryAuth,
) -> Result<BTreeMap<String, String>, Vec<RegistryError>> {
    let results: Vec<Result<(String, String), RegistryError>> = stream::iter(images)
        .map(|image| async move {
            let (credentials, described) = credentials_for(auth, image)?;
            let fail = |c: String| RegistryError::Digest {
                host: host.into(),
                image: image.clone(),
                registry: registry_of(image).into(),
                auth: described.clone(),
                cause: c,
            };
            let found = docker.inspect_registry_image(image, credentials).await.map_err(|e| fail(cause(&e)))?;
            let digest = found.descriptor.digest.filter(|d| !d.is_empty()).ok_or_else(|| fail("no digest".into()))?;
            Ok((image.clone(), digest))
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok((image, digest)) => {
                out.insert(image, digest);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Fill in `repo_digests` of the `observation`'s instances whose app is in `apps`:
/// one image inspect per distinct image ID. An image that is gone leaves them empty.
///
/// # Errors
/// [`RegistryError::Inspect`] when the daemon cannot say.
pub async fn fill_repo_digests(
    docker: &Docker,
    host: &str,
    observation: &mut HostObservation,
    apps: &BTreeSet<String>,
) -> Result<(), RegistryError> {
    let ids: BTreeSet<String> = observation
        .instances
        .iter()
        .filter(|i| apps.contains(&i.app) && !i.image_id.is_empty())
        .map(|i| i.image_id.clone())
        .collect();
    let mut digests: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in ids {
        match docker.inspect_image(&id).await {
            Ok(info) => {
                digests.insert(id, info.repo_digests.unwrap_or_default());
            }
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(RegistryError::Inspect { host: host.into(), image: id, cause: cause(&e) }),
        }
    }
    for i in &mut observation.instances {
        if let Some(d) = digests.get(&i.image_id) {
            i.repo_digests.clone_from(d);
        }
    }
    Ok(())
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn hints_follow_the_daemons_reason() {
        assert!(
            registry_hint("Head https://r/v2/x/manifests/1: unauthorized: authentication required")
                .contains("password")
        );
        assert!(registry_hint("manifest for r/x:9 not found: manifest unknown").contains("image name and tag"));
        assert!(registry_hint("dial tcp 127.0.0.1:1: connect: connection refused").contains("reachable"));
    }

    #[test]
    fn credentials_are_never_in_messages() {
        let creds = super::super::registry_auth::Credentials {
            registry: "r.example".into(),
            username: Some("u".into()),
            password: Some(crate::secret::Secret::new("hunter2".into())),
            identity_token: None,
            source: "registries[0]".into(),
        };
        let b = bollard_credentials(&creds);
        assert_eq!((b.username.as_deref(), b.password.as_deref()), (Some("u"), Some("hunter2")));
        assert!(!format!("{creds:?}").contains("hunter2"));
        let e = RegistryError::Pull {
            host: "n".into(),
            image: "r.example/x:1".into(),
            registry: "r.example".into(),
            auth: "credentials from registries[0]".into(),
            cause: "unauthorized".into(),
        };
        assert!(e.to_string().starts_with(
            "host `n`: cannot pull image `r.example/x:1` from registry `r.example` (credentials from registries[0]): \
             unauthorized; check the username"
        ));
    }
}

/// The pulls a plan needs before its rollout: for each create/replace, its image on
/// its host (`always` for apps with `pull: always`). Every failure is reported under
/// each app that needs the image on that host, so the executor can skip exactly those
/// apps: nothing on any host changes for them.
///
/// `clients` are the executor's connections (a host that could not be reached is
/// skipped here; the rollout reports it).
pub async fn pull_for_plan(
    env: &crate::spec::Env,
    plan: &crate::plan::Plan,
    specs: &BTreeMap<String, InstanceSpec>,
    clients: &BTreeMap<String, Result<Docker, String>>,
    lines: &(dyn Fn(String) + Send + Sync),
) -> BTreeMap<String, String> {
    use crate::plan::Action;
    use crate::spec::types::PullPolicy;
    let mut wanted: BTreeMap<PullJob, BTreeSet<String>> = BTreeMap::new();
    for action in &plan.actions {
        let (app, new) = match action {
            Action::Create { app, new, .. } | Action::Replace { app, new, .. } => (app, new),
            _ => continue,
        };
        let Some(spec) = specs.get(&new.spec_hash) else { continue };
        let always = env.apps.get(app).is_some_and(|a| a.spec.pull == PullPolicy::Always);
        let job = PullJob { host: new.host.clone(), image: spec.image.clone(), always };
        wanted.entry(job).or_default().insert(app.clone());
    }
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    let auth = match RegistryAuth::resolve(&env.spec.registries, &env.secret_refs) {
        Ok(a) => a,
        Err(e) => return wanted.into_values().flatten().map(|app| (app, e.to_string())).collect(),
    };
    let ok: BTreeMap<String, Docker> =
        clients.iter().filter_map(|(h, c)| c.as_ref().ok().map(|c| (h.clone(), c.clone()))).collect();
    let jobs: Vec<PullJob> = wanted.keys().cloned().collect();
    let mut failed = BTreeMap::new();
    for e in pull_all(&ok, &jobs, &auth, lines).await {
        let host = match &e {
            RegistryError::Pull { host, .. } | RegistryError::Inspect { host, .. } => Some(host.as_str()),
            RegistryError::Digest { .. } | RegistryError::Credentials { .. } => None,
        };
        for (job, apps) in &wanted {
            if job.image == e.image() && host.is_none_or(|h| h == job.host) {
                for app in apps {
                    failed.entry(app.clone()).or_insert_with(|| format!("{e}; nothing was changed for this app"));
                }
            }
        }
    }
    failed
}
