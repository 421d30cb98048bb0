//! Delivering notifications over HTTP(S): concurrently, each bounded by its
//! target's timeout (retries with back-off inside it), never failing the caller.
//! Failed deliveries are logged (without URL or token) and counted.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::notify::{Outgoing, Request};
use crate::spec::types::NotifyKind;

/// The target kinds, in the order of [`SENT`] and [`FAILED`].
pub const KINDS: [NotifyKind; 4] =
    [NotifyKind::Webhook, NotifyKind::Slack, NotifyKind::GithubStatus, NotifyKind::GitlabStatus];

/// Deliveries that succeeded since the process started, by target kind ([`KINDS`]).
pub static SENT: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Deliveries that failed (every attempt, or the request could not be built), by kind.
pub static FAILED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn slot(kind: NotifyKind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

/// The name of a target kind, as in the schema and the metrics' `kind` label.
pub fn kind_name(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Webhook => "webhook",
        NotifyKind::Slack => "slack",
        NotifyKind::GithubStatus => "github_status",
        NotifyKind::GitlabStatus => "gitlab_status",
    }
}

/// `(kind, sent, failed)` per target kind, for /metrics.
pub fn counts() -> Vec<(&'static str, u64, u64)> {
    KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| (kind_name(*k), SENT[i].load(Ordering::Relaxed), FAILED[i].load(Ordering::Relaxed)))
        .collect()
}

/// One delivery's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Sent { target: String, status: u16 },
    Failed { target: String, error: String },
}

/// One request to deliver: to which target, of what kind, within how long.
#[derive(Debug, Clone)]
pub struct Job {
    pub target: String,
    pub kind: NotifyKind,
    pub request: Request,
    pub timeout: Duration,
}

/// Send every job at once; returns when all are done or timed out: one deadline per
/// timeout, all counted from the call, so the whole batch never takes longer than the
/// longest timeout. A 2xx answer is success; anything else is retried (0.2 s, 0.4 s, …
/// doubling, at most 5 s apart) until the timeout.
pub async fn deliver_all(jobs: Vec<Job>) -> Vec<Delivery> {
    deliver_keeping_failed(jobs).await.0
}

/// [`deliver_all`], also handing back the jobs that failed and may succeed later
/// (not those whose request cannot be made at all), each with its index in `jobs`,
/// for a sender that retries them.
pub async fn deliver_keeping_failed(jobs: Vec<Job>) -> (Vec<Delivery>, Vec<(usize, Job)>) {
    let start = tokio::time::Instant::now();
    let clients = Clients::default();
    let sends = jobs.into_iter().enumerate().map(|(i, job)| {
        let clients = &clients;
        async move {
            let (target, timeout) = (job.target.clone(), job.timeout);
            let last = std::sync::Mutex::new(None);
            let (outcome, again) =
                match tokio::time::timeout_at(start + timeout, retrying(clients, &job.request, &last)).await {
                    Ok(Ok(status)) => (Delivery::Sent { target, status }, false),
                    Ok(Err(error)) => (Delivery::Failed { target, error }, false),
                    Err(_) => {
                        let last = last.lock().ok().and_then(|mut l| l.take());
                        let why = last.map(|e| format!(" (last attempt: {e})")).unwrap_or_default();
                        (Delivery::Failed { target, error: format!("no answer within {timeout:?}{why}") }, true)
                    }
                };
            match &outcome {
                Delivery::Sent { .. } => {
                    SENT[slot(job.kind)].fetch_add(1, Ordering::Relaxed);
                }
                Delivery::Failed { target, error } => {
                    FAILED[slot(job.kind)].fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target = %target, error = %error, "notification not delivered");
                }
            }
            (outcome, again.then_some((i, job)))
        }
    });
    let done = futures::future::join_all(sends).await;
    let mut deliveries = Vec::with_capacity(done.len());
    let mut failed = Vec::new();
    for (d, job) in done {
        deliveries.push(d);
        failed.extend(job);
    }
    (deliveries, failed)
}

type Body = Full<Bytes>;
type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The HTTPS connector (its TLS configuration holds the system's CA certificates),
/// built once per process: loading and parsing the CA bundle is the expensive part of
/// a client, so no delivery after the first pays for it. `Err` (no CA store) is kept
/// too: it will not appear later in the same process.
static HTTPS: OnceLock<Result<Https, String>> = OnceLock::new();

fn https_connector() -> Result<&'static Https, String> {
    HTTPS
        .get_or_init(|| {
            Ok(hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| format!("loading the system's CA certificates: {e}"))?
                .https_only()
                .enable_http1()
                .build())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Load the CA certificates in the background, so that a later HTTPS delivery finds
/// them ready (apply calls it when it starts, for an environment with an `https://`
/// target): the load then overlaps the apply instead of following it.
pub fn warm_up() {
    if HTTPS.get().is_none() {
        std::thread::spawn(|| {
            let _ = https_connector();
        });
    }
}

/// The clients of one batch of deliveries (their connection pools live on the
/// caller's runtime): plain HTTP needs no CA store, so it is never loaded for an
/// `http://` URL; the HTTPS client is made on first use from [`HTTPS`].
#[derive(Default)]
struct Clients {
    http: OnceLock<Client<HttpConnector, Body>>,
    https: OnceLock<Result<Client<Https, Body>, String>>,
}

impl Clients {
    async fn request(&self, request: hyper::Request<Body>) -> Result<hyper::Response<Incoming>, Attempt> {
        let failed = |e: hyper_util::client::legacy::Error| Attempt::Retry(format!("request failed: {e}"));
        if request.uri().scheme_str() == Some("https") {
            let client = self
                .https
                .get_or_init(|| https_connector().map(|c| Client::builder(TokioExecutor::new()).build(c.clone())))
                .as_ref()
                .map_err(|e| Attempt::Fatal(e.clone()))?;
            client.request(request).await.map_err(failed)
        } else {
            let client = self.http.get_or_init(|| Client::builder(TokioExecutor::new()).build_http());
            client.request(request).await.map_err(failed)
        }
    }
}

/// Attempts until one succeeds; the caller's timeout ends it. An error is returned
/// only for a request that cannot be made at all; the latest failed attempt's is kept
/// in `last` for the caller's timeout message.
async fn retrying(clients: &Clients, req: &Request, last: &std::sync::Mutex<Option<String>>) -> Result<u16, String> {
    let mut delay = Duration::from_millis(200);
    loop {
        match once(clients, req).await {
            Ok(status) => return Ok(status),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                tracing::debug!(error = %e, "notification attempt failed; retrying");
                if let Ok(mut l) = last.lock() {
                    *l = Some(e);
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

enum Attempt {
    Retry(String),
    Fatal(String),
}

async fn once(clients: &Clients, req: &Request) -> Result<u16, Attempt> {
    let uri: hyper::Uri =
        req.url.expose().parse().map_err(|_| Attempt::Fatal("the URL (from its secret) is not a valid URL".into()))?;
    let mut b = hyper::Request::builder().method(req.method).uri(uri);
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.expose());
    }
    let request = b
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|_| Attempt::Fatal("a header is not valid in HTTP".into()))?;
    // Errors name neither the URL nor the token; hyper's own messages do not carry them.
    let resp = clients.request(request).await?;
    let status = resp.status().as_u16();
    // Read the answer so the connection can be reused; its content is not needed.
    let _ = resp.into_body().collect().await;
    if (200..300).contains(&status) { Ok(status) } else { Err(Attempt::Retry(format!("answered HTTP {status}"))) }
}

/// The targets of one environment and what has been sent (de-duplication lasts as
/// long as the notifier: a `watch` process, or one apply).
pub struct Notifier {
    targets: Vec<crate::notify::Target>,
    secrets: Vec<crate::secret::Secret>,
    dedup: Vec<crate::notify::Dedup>,
    started: std::time::Instant,
}

impl Notifier {
    pub fn new(
        spec: &[crate::spec::types::NotificationSpec],
        secrets: &std::collections::BTreeMap<String, crate::secret::Secret>,
    ) -> Self {
        let targets = crate::notify::targets(spec, secrets);
        let dedup = targets.iter().map(|_| crate::notify::Dedup::default()).collect();
        Self { targets, secrets: secrets.values().cloned().collect(), dedup, started: std::time::Instant::now() }
    }

    /// Take the targets of a newer load of the environment; a target whose spec did
    /// not change keeps what it has sent (its open problems).
    pub fn update(
        &mut self,
        spec: &[crate::spec::types::NotificationSpec],
        secrets: &std::collections::BTreeMap<String, crate::secret::Secret>,
    ) {
        let mut fresh = Self::new(spec, secrets);
        for (i, t) in fresh.targets.iter().enumerate() {
            if let Some(j) = self.targets.iter().position(|o| o.spec == t.spec)
                && let Some(d) = self.dedup.get_mut(j)
            {
                fresh.dedup[i] = std::mem::take(d);
            }
        }
        fresh.started = self.started;
        *self = fresh;
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn durations(t: &crate::notify::Target) -> (Duration, Duration) {
        let duration = |d: &Option<String>, default| {
            d.as_deref().and_then(|x| crate::spec::units::duration(x).ok()).unwrap_or(default)
        };
        (duration(&t.spec.repeat, crate::notify::REPEAT), duration(&t.spec.timeout, crate::notify::TIMEOUT))
    }

    /// The jobs `events` make: each target's de-duplication admits them (all of
    /// them, so that a resolution is known even to a target whose `on:` filter
    /// drops it), then the target's filter keeps what it wants. `quiet_ok` as in
    /// [`crate::notify::Dedup::admit`].
    pub fn prepare(&mut self, events: &[crate::notify::Event], quiet_ok: bool) -> Vec<Job> {
        let now = self.started.elapsed();
        let mut out = Vec::new();
        for (t, dedup) in self.targets.iter().zip(self.dedup.iter_mut()) {
            let (repeat, _) = Self::durations(t);
            let admitted: Vec<Outgoing> =
                events.iter().flat_map(|e| dedup.admit(e.clone(), now, repeat, quiet_ok)).collect();
            out.extend(Self::jobs(t, admitted, &self.secrets));
        }
        out
    }

    /// Reminders of the problems still open after each target's `repeat`.
    pub fn reminders(&mut self) -> Vec<Job> {
        let now = self.started.elapsed();
        let mut out = Vec::new();
        for (t, dedup) in self.targets.iter().zip(self.dedup.iter_mut()) {
            let (repeat, _) = Self::durations(t);
            out.extend(Self::jobs(t, dedup.due(now, repeat), &self.secrets));
        }
        out
    }

    fn jobs(t: &crate::notify::Target, outgoing: Vec<Outgoing>, secrets: &[crate::secret::Secret]) -> Vec<Job> {
        let (_, timeout) = Self::durations(t);
        let mut out = Vec::new();
        for o in outgoing.iter().filter(|o| t.receives(o)) {
            match crate::notify::request(t, o, secrets) {
                Ok(request) => out.push(Job { target: t.name.clone(), kind: t.spec.kind, request, timeout }),
                Err(err) => {
                    FAILED[slot(t.spec.kind)].fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %err, "notification not sent");
                }
            }
        }
        out
    }

    /// Send `events` to every target that wants them (de-duplicated per target).
    /// Returns when every delivery is done or timed out; never fails.
    pub async fn send(&mut self, events: &[crate::notify::Event], quiet_ok: bool) -> Vec<Delivery> {
        let jobs = self.prepare(events, quiet_ok);
        if jobs.is_empty() {
            return vec![];
        }
        deliver_all(jobs).await
    }
}
