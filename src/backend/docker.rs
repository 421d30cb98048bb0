//! Talks to the Docker daemons of an environment's hosts: connects (unix, tcp with or
//! without TLS, ssh), negotiates the API version, and observes the containers an
//! environment owns as [`HostObservation`]s.
//!
//! This is the only module that imports `bollard`.
//!
//! **Invariants.**
//! - *One list call per host.* An observation is `GET /version` (negotiation, once per
//!   connection) plus exactly one `GET /containers/json?all=true&filters={"label":["reconcile.env=<env>"]}`,
//!   whatever the number of containers. There is no per-container inspect: everything the
//!   planner needs (app, instance, spec hash, commit, port, the masked spec) is in the
//!   labels, which the list call returns.
//! - *Only our containers.* The daemon filters on `reconcile.env=<env>` and every returned
//!   container is checked again for that exact label, so a container without it can never
//!   reach an observation, hence a plan (see DEPENDENCIES.md §4: other tools' containers
//!   share these hosts).
//! - *A container with the env label but without `reconcile.app` / `reconcile.instance`*
//!   (a half-written or hand-made one) is still returned, with empty `app` / `instance`
//!   and no ordinal: it belongs to the environment, matches no desired instance, and the
//!   planner removes it.
//! - *All or nothing.* [`observe_all`] returns every host's observation or one error per
//!   failing host, never a partial map: a missing host would read as "runs nothing" and
//!   the planner would recreate its instances elsewhere.
//!
//! **Decisions.**
//! - The API version is always negotiated: Docker 20.10 speaks 1.41, newer engines newer;
//!   bollard's default (1.53) is only ever lowered. Models follow 1.53, so fields a 1.41
//!   daemon does not know come back as `None`; nothing here relies on them.
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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures::stream::{self, StreamExt};

use crate::model::{ContainerState, HostObservation, ObservedInstance, labels};
use crate::spec::model::{HostSpec, TlsSpec};
use crate::spec::units::{Endpoint, docker_endpoint};

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
            | Self::List { host, .. } => host,
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
    let endpoint = docker_endpoint(&host.docker).map_err(|e| DockerError::Endpoint {
        host: host.name.clone(),
        endpoint: host.docker.clone(),
        message: e.message,
    })?;
    let connect_error =
        |cause: String| DockerError::Connect { host: host.name.clone(), endpoint: host.docker.clone(), cause };
    let secs = REQUEST_TIMEOUT.as_secs();
    let docker = match endpoint {
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
    .map_err(|e| connect_error(cause(&e)))?;
    docker.negotiate_version().await.map_err(|e| match e {
        BollardError::RequestTimeoutError => timed_out(host, REQUEST_TIMEOUT),
        e => connect_error(cause(&e)),
    })
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
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
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
    let label = format!("{}={env}", labels::ENV);
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let started = Instant::now();
    let containers = docker.list_containers(Some(options)).await.map_err(|e| DockerError::List {
        host: name.to_string(),
        endpoint: None,
        cause: cause(&e),
    })?;
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
    Ok(HostObservation { instances })
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

async fn observe_one(host: &HostSpec, env: &str, timeout: Duration) -> Result<HostObservation, DockerError> {
    let work = async {
        let docker = connect_unbounded(host).await?;
        observe_host(&host.name, &docker, env).await.map_err(|e| e.with_endpoint(&host.docker))
    };
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(timed_out(host, timeout)))
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

/// `2026-11-25T12:00:00.123456789Z` → seconds since the epoch (UTC only, as Docker writes it).
fn parse_rfc3339(s: &str) -> Option<i64> {
    let date = s.get(0..10)?;
    let time = s.get(11..19)?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if y < 1971 {
        return None; // Docker's zero time "0001-01-01T00:00:00Z": never started
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use bollard::models::ContainerSummaryStateEnum;

    use super::*;

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
mod runtime_tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::parse_rfc3339("1970-01-02T00:00:00Z"), None);
        assert_eq!(super::parse_rfc3339("2026-11-25T12:00:00.5Z"), Some(1_795_608_000));
        assert_eq!(super::parse_rfc3339("0001-01-01T00:00:00Z"), None);
    }
}
