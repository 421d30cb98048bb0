//! What `watch` exposes on `/metrics` (Prometheus text format 0.0.4) and `/healthz`
//! (200 `ok`, or 503 once [`UNHEALTHY_AFTER`] runs in a row failed).
//!
//! One small struct behind a mutex, rendered on request: the watcher updates it after
//! each run and each health transition. No label carries a secret (commit ids, app,
//! instance and state names only).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The watcher's counters and gauges.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub env: String,
    /// This watcher acts (holds the leader key).
    pub leader: bool,
    /// What the status page shows (`watch::page`).
    pub page: super::page::Recent,
    /// Runs by result: `ok`, `failed`, `dry_run`, `busy` (lock held by an apply).
    pub runs: BTreeMap<&'static str, u64>,
    pub run_seconds_sum: f64,
    pub run_seconds_last: f64,
    /// Triggers by kind (`repo`, `docker`, `health`, `resync`, `backoff`).
    pub triggers: BTreeMap<&'static str, u64>,
    /// The last commit applied (or found in sync), and when (Unix seconds).
    pub last_sync_commit: Option<String>,
    pub last_sync_time: Option<f64>,
    /// Actions the last run's plan had (0: in sync).
    pub drift_actions: u64,
    /// Managed containers by state, from the last observation.
    pub instances: BTreeMap<String, u64>,
    /// Instances the watcher currently holds unhealthy (out of traffic).
    pub unhealthy: u64,
    /// Instances held back by crash-loop back-off.
    pub backoff: u64,
    /// Instances that died 3 times or more within a minute.
    pub crash_looping: u64,
    /// Instances brought back (created or started) by watch runs.
    pub heals: u64,
    /// Failures by stage: `load`, `observe`, `plan`, `apply`, `lock`, `health_mark`, `events`.
    pub failures: BTreeMap<&'static str, u64>,
    /// Runs that failed in a row (0 after a run that worked).
    pub consecutive_failures: u64,
    /// A rollback pins the environment.
    pub pinned: bool,
    /// Canaries serving, by app.
    pub canaries: BTreeMap<String, u64>,
}

/// `/healthz` answers 503 once this many runs in a row failed.
pub const UNHEALTHY_AFTER: u64 = 3;

/// Shared between the watcher and the HTTP server.
pub type Shared = Arc<Mutex<Metrics>>;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let env = label(&self.env);
        let mut o = String::new();
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(&mut o, "reconcile_watch_leader", "gauge", "1 when this watcher is the one that acts.");
        let _ = writeln!(o, "reconcile_watch_leader{{env=\"{env}\"}} {}", u8::from(self.leader));
        family(&mut o, "reconcile_watch_pinned", "gauge", "1 while a rollback pins the environment to a commit.");
        let _ = writeln!(o, "reconcile_watch_pinned{{env=\"{env}\"}} {}", u8::from(self.pinned));
        family(&mut o, "reconcile_watch_runs_total", "counter", "Watch runs by result.");
        for r in ["ok", "failed", "dry_run", "busy"] {
            let n = self.runs.get(r).copied().unwrap_or(0);
            let _ = writeln!(o, "reconcile_watch_runs_total{{env=\"{env}\",result=\"{r}\"}} {n}");
        }
        family(&mut o, "reconcile_watch_run_duration_seconds", "summary", "Duration of watch runs.");
        let count: u64 = self.runs.values().sum();
        let _ = writeln!(o, "reconcile_watch_run_duration_seconds_sum{{env=\"{env}\"}} {}", self.run_seconds_sum);
        let _ = writeln!(o, "reconcile_watch_run_duration_seconds_count{{env=\"{env}\"}} {count}");
        family(&mut o, "reconcile_watch_last_run_duration_seconds", "gauge", "Duration of the last run.");
        let _ = writeln!(o, "reconcile_watch_last_run_duration_seconds{{env=\"{env}\"}} {}", self.run_seconds_last);
        family(&mut o, "reconcile_watch_triggers_total", "counter", "Triggers received, by kind.");
        for k in ["repo", "docker", "health", "resync", "backoff", "retry"] {
            let n = self.triggers.get(k).copied().unwrap_or(0);
            let _ = writeln!(o, "reconcile_watch_triggers_total{{env=\"{env}\",kind=\"{k}\"}} {n}");
        }
        family(
            &mut o,
            "reconcile_watch_last_sync_timestamp_seconds",
            "gauge",
            "When the environment was last in sync with the repo.",
        );
        if let Some(t) = self.last_sync_time {
            let _ = writeln!(o, "reconcile_watch_last_sync_timestamp_seconds{{env=\"{env}\"}} {t}");
        }
        family(&mut o, "reconcile_watch_last_sync_info", "gauge", "The commit the environment was last synced to.");
        if let Some(c) = &self.last_sync_commit {
            let _ = writeln!(o, "reconcile_watch_last_sync_info{{env=\"{env}\",commit=\"{}\"}} 1", label(c));
        }
        family(&mut o, "reconcile_watch_drift_actions", "gauge", "Actions in the last run's plan (0: in sync).");
        let _ = writeln!(o, "reconcile_watch_drift_actions{{env=\"{env}\"}} {}", self.drift_actions);
        family(&mut o, "reconcile_watch_instances", "gauge", "Managed containers by state at the last observation.");
        for (state, n) in &self.instances {
            let _ = writeln!(o, "reconcile_watch_instances{{env=\"{env}\",state=\"{}\"}} {n}", label(state));
        }
        family(
            &mut o,
            "reconcile_watch_unhealthy_instances",
            "gauge",
            "Instances out of traffic for failing health checks.",
        );
        let _ = writeln!(o, "reconcile_watch_unhealthy_instances{{env=\"{env}\"}} {}", self.unhealthy);
        family(&mut o, "reconcile_watch_backoff_instances", "gauge", "Crash-looping instances held back.");
        let _ = writeln!(o, "reconcile_watch_backoff_instances{{env=\"{env}\"}} {}", self.backoff);
        family(
            &mut o,
            "reconcile_watch_crash_looping_instances",
            "gauge",
            "Instances that died 3+ times in the last minute.",
        );
        let _ = writeln!(o, "reconcile_watch_crash_looping_instances{{env=\"{env}\"}} {}", self.crash_looping);
        family(&mut o, "reconcile_watch_heals_total", "counter", "Instances re-created or restarted by watch.");
        let _ = writeln!(o, "reconcile_watch_heals_total{{env=\"{env}\"}} {}", self.heals);
        family(&mut o, "reconcile_canary_instances", "gauge", "Canary instances serving beside the old ones, by app.");
        for (app, n) in &self.canaries {
            let _ = writeln!(o, "reconcile_canary_instances{{env=\"{env}\",app=\"{}\"}} {n}", label(app));
        }
        family(&mut o, "reconcile_watch_failures_total", "counter", "Failures by stage.");
        for (stage, n) in &self.failures {
            let _ = writeln!(o, "reconcile_watch_failures_total{{env=\"{env}\",stage=\"{stage}\"}} {n}");
        }
        notifications(&mut o, &env, &crate::backend::notify::counts());
        crate::watch::notify::render_retries(&mut o, &env, crate::watch::notify::retry_counts());
        o
    }
}

/// The notification counters, from `(kind, sent, failed)` per target kind.
fn notifications(o: &mut String, env: &str, counts: &[(&str, u64, u64)]) {
    let sent: Vec<(&str, u64)> = counts.iter().map(|c| (c.0, c.1)).collect();
    let failed: Vec<(&str, u64)> = counts.iter().map(|c| (c.0, c.2)).collect();
    for (name, help, values) in [
        ("reconcile_notifications_sent_total", "Notifications delivered, by target kind.", sent),
        (
            "reconcile_notifications_failed_total",
            "Notifications not delivered (every attempt failed), by target kind.",
            failed,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (kind, n) in values {
            let _ = writeln!(o, "{name}{{env=\"{env}\",kind=\"{kind}\"}} {n}");
        }
    }
}

/// Serve `/metrics` and `/healthz` on `addr` until `shutdown` resolves. Returns the
/// bound address (useful with port 0) once listening.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let m = Arc::clone(&metrics);
    let page = super::page::routes(Arc::clone(&metrics));
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = m.lock().map(|m| m.render()).unwrap_or_default();
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let failed = metrics.lock().map(|m| m.consecutive_failures).unwrap_or(u64::MAX);
                async move {
                    if failed >= UNHEALTHY_AFTER {
                        let text = format!("unhealthy: the last {failed} runs failed (see the log)\n");
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, text)
                    } else {
                        (axum::http::StatusCode::OK, "ok\n".to_string())
                    }
                }
            }),
        )
        .merge(page);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let mut m = Metrics { env: "prod".into(), leader: true, ..Metrics::default() };
        m.runs.insert("ok", 3);
        m.runs.insert("failed", 1);
        m.run_seconds_sum = 2.5;
        m.triggers.insert("docker", 4);
        m.last_sync_commit = Some("abc\"1".into());
        m.instances.insert("running".into(), 5);
        m.failures.insert("apply", 1);
        let t = m.render();
        assert!(t.contains("reconcile_watch_leader{env=\"prod\"} 1\n"), "{t}");
        assert!(t.contains("reconcile_watch_runs_total{env=\"prod\",result=\"ok\"} 3\n"));
        assert!(t.contains("reconcile_watch_run_duration_seconds_count{env=\"prod\"} 4\n"));
        assert!(t.contains("reconcile_watch_triggers_total{env=\"prod\",kind=\"docker\"} 4\n"));
        assert!(t.contains("reconcile_watch_last_sync_info{env=\"prod\",commit=\"abc\\\"1\"} 1\n"));
        assert!(t.contains("reconcile_watch_instances{env=\"prod\",state=\"running\"} 5\n"));
        assert!(t.contains("reconcile_watch_failures_total{env=\"prod\",stage=\"apply\"} 1\n"));
        assert!(t.contains("reconcile_notifications_failed_total{env=\"prod\",kind=\"webhook\"} "), "{t}");
        // Every sample line belongs to a family declared with HELP and TYPE.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name.trim_end_matches("_sum").trim_end_matches("_count");
            assert!(t.contains(&format!("# TYPE {family} ")), "{name} has no TYPE");
        }
    }

    #[test]
    fn renders_notification_counters_by_target_kind() {
        let mut o = String::new();
        notifications(&mut o, "prod", &[("webhook", 3, 1), ("slack", 0, 2)]);
        assert!(o.contains("reconcile_notifications_sent_total{env=\"prod\",kind=\"webhook\"} 3\n"), "{o}");
        assert!(o.contains("reconcile_notifications_failed_total{env=\"prod\",kind=\"slack\"} 2\n"), "{o}");
        assert!(o.contains("# TYPE reconcile_notifications_failed_total counter\n"), "{o}");
    }

    #[tokio::test]
    async fn serves_metrics_and_healthz_on_loopback() {
        let m: Shared = Arc::new(Mutex::new(Metrics { env: "e".into(), ..Metrics::default() }));
        let m2 = Arc::clone(&m);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("reconcile_watch_leader{env=\"e\"} 0"));
        assert!(get("/healthz").await.ends_with("ok\n"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        // Runs failing in a row make /healthz fail.
        m2.lock().unwrap().consecutive_failures = UNHEALTHY_AFTER;
        let h = get("/healthz").await;
        assert!(h.starts_with("HTTP/1.1 503") && h.contains("the last 3 runs failed"), "{h}");
        tx.send(()).unwrap();
        task.await.unwrap();
    }
}
