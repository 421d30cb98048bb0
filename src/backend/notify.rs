//! Delivering notifications over HTTP(S): concurrently, each bounded by its
//! target's timeout (retries with back-off inside it), never failing the caller.
//! Failed deliveries are logged (without URL or token) and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::notify::Request;

/// Deliveries that failed (every attempt), since the process started (for /metrics).
pub static FAILED: AtomicU64 = AtomicU64::new(0);
/// Deliveries that succeeded.
pub static SENT: AtomicU64 = AtomicU64::new(0);

/// One delivery's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Sent { target: String, status: u16 },
    Failed { target: String, error: String },
}

/// Send every `(target name, request, timeout)` at once; returns when all are done
/// or timed out. A 2xx answer is success; anything else is retried (0.2 s, 0.4 s,
/// … doubling) until the timeout.
pub async fn deliver_all(requests: Vec<(String, Request, Duration)>) -> Vec<Delivery> {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            return requests
                .into_iter()
                .map(|(target, ..)| {
                    FAILED.fetch_add(1, Ordering::Relaxed);
                    Delivery::Failed { target, error: e.clone() }
                })
                .collect();
        }
    };
    let sends = requests.into_iter().map(|(target, req, timeout)| {
        let client = client.clone();
        async move {
            let outcome = match tokio::time::timeout(timeout, retrying(&client, &req)).await {
                Ok(Ok(status)) => Delivery::Sent { target, status },
                Ok(Err(error)) => Delivery::Failed { target, error },
                Err(_) => Delivery::Failed { target, error: format!("no answer within {timeout:?}") },
            };
            match &outcome {
                Delivery::Sent { .. } => {
                    SENT.fetch_add(1, Ordering::Relaxed);
                }
                Delivery::Failed { target, error } => {
                    FAILED.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target = %target, error = %error, "notification not delivered");
                }
            }
            outcome
        }
    });
    futures::future::join_all(sends).await
}

type HttpClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

fn client() -> Result<HttpClient, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("loading the system's CA certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Attempts until one succeeds; the caller's timeout ends it. The last error is
/// returned only for a request that cannot be made at all.
async fn retrying(client: &HttpClient, req: &Request) -> Result<u16, String> {
    let mut delay = Duration::from_millis(200);
    loop {
        match once(client, req).await {
            Ok(status) => return Ok(status),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => tracing::debug!(error = %e, "notification attempt failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

enum Attempt {
    Retry(String),
    Fatal(String),
}

async fn once(client: &HttpClient, req: &Request) -> Result<u16, Attempt> {
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
    let resp = client.request(request).await.map_err(|e| Attempt::Retry(format!("request failed: {e}")))?;
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

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Send `events` to every target that wants them (de-duplicated per target);
    /// `quiet_ok` as in [`crate::notify::Dedup::admit`]. Returns when every delivery
    /// is done or timed out; never fails.
    pub async fn send(&mut self, events: &[crate::notify::Event], quiet_ok: bool) -> Vec<Delivery> {
        let now = self.started.elapsed();
        let mut requests = Vec::new();
        for (t, dedup) in self.targets.iter().zip(self.dedup.iter_mut()) {
            let duration = |d: &Option<String>, default| {
                d.as_deref().and_then(|x| crate::spec::units::duration(x).ok()).unwrap_or(default)
            };
            let (repeat, timeout) = (crate::notify::REPEAT, duration(&t.spec.timeout, crate::notify::TIMEOUT));
            for e in events.iter().filter(|e| t.wants(e.kind)) {
                let Some(out) = dedup.admit(e.clone(), now, repeat, quiet_ok) else { continue };
                match crate::notify::request(t, &out, &self.secrets) {
                    Ok(r) => requests.push((t.name.clone(), r, timeout)),
                    Err(err) => {
                        FAILED.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %err, "notification not sent");
                    }
                }
            }
        }
        if requests.is_empty() {
            return vec![];
        }
        deliver_all(requests).await
    }
}
