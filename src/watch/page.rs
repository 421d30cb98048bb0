//! The status page `watch` serves: `/` (HTML, reloading every
//! [`page::REFRESH_SECS`]) and `/status.json` (the same [`page::StatusPage`]).
//!
//! The watcher records what each run saw ([`observed`], [`run_done`], [`failed`]) in
//! [`Recent`], kept inside the shared metrics; a request turns that into a page by
//! asking the world for what changes between runs: each container's uptime and
//! restarts (one inspect each), its health now (the apps' checks, run once, as
//! `reconcile status` does), the audit log and the canary keys in etcd. A request never
//! writes anything. What cannot be read is shown as an error on the page, never as a
//! failed request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::RunResult;
use super::metrics::Shared;
use crate::apply::rollout::mask;
use crate::backend::etcd;
use crate::model::{ObservedState, Pin};
use crate::page::{self, StatusPage};
use crate::plan::Plan;
use crate::secret::Secret;
use crate::spec::{Env, Origin};

/// What the last runs left for the page.
#[derive(Clone, Default)]
pub struct Recent {
    env: Option<Arc<Env>>,
    origin: Option<Origin>,
    observed: Option<Arc<ObservedState>>,
    plan: Option<Arc<Plan>>,
    pin: Option<Pin>,
    timeout: Duration,
    last_run: Option<page::LastRun>,
    last_sync: Option<String>,
    /// Newest first, at most [`page::ERRORS_LIMIT`]; secret values masked.
    errors: VecDeque<page::RunError>,
    /// The secret values of the latest load, masked out of every error kept.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("observed", &self.observed.is_some())
            .field("last_run", &self.last_run)
            .field("errors", &self.errors.len())
            .finish_non_exhaustive()
    }
}

/// A run observed the environment and planned (called from the run's `confirm` hook).
pub fn observed(
    m: &Shared,
    env: &Env,
    origin: &Origin,
    plan: &Plan,
    observed: &ObservedState,
    pin: Option<&Pin>,
    timeout: Duration,
) {
    if let Ok(mut m) = m.lock() {
        let r = &mut m.page;
        r.env = Some(Arc::new(env.clone()));
        r.origin = Some(origin.clone());
        r.observed = Some(Arc::new(observed.clone()));
        r.plan = Some(Arc::new(plan.clone()));
        r.pin = pin.cloned();
        r.timeout = timeout;
    }
}

/// A run ended with `result`.
pub fn run_done(m: &Shared, result: RunResult) {
    let now = etcd::now_rfc3339();
    if let Ok(mut m) = m.lock() {
        if result == RunResult::Ok {
            m.page.last_sync = Some(now.clone());
        }
        m.page.last_run = Some(page::LastRun { time: now, result: result.as_str().into() });
    }
}

/// The secrets of a fresh load: what errors must not show (a load that fails later
/// is masked with the values of the last one that worked).
pub fn secrets(m: &Shared, secrets: &BTreeMap<String, Secret>) {
    if let Ok(mut m) = m.lock() {
        m.page.secrets = secrets.values().map(|s| s.expose().to_string()).collect();
    }
}

/// A run failed at `stage`; `error` is kept whole (every line), secret values masked.
pub fn failed(m: &Shared, stage: &str, error: &str) {
    if let Ok(mut m) = m.lock() {
        let message = mask(error, &m.page.secrets);
        let errors = &mut m.page.errors;
        errors.push_front(page::RunError { time: etcd::now_rfc3339(), stage: stage.into(), message });
        errors.truncate(page::ERRORS_LIMIT);
    }
}

/// `/` and `/status.json`.
pub fn routes(m: Shared) -> axum::Router {
    use axum::routing::get;
    let json = Arc::clone(&m);
    axum::Router::new()
        .route(
            "/",
            get(move || {
                let m = Arc::clone(&m);
                async move {
                    let html = page::html(&gather(&m).await, Some(page::REFRESH_SECS));
                    ([("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")], html)
                }
            }),
        )
        .route(
            "/status.json",
            get(move || {
                let m = Arc::clone(&json);
                async move {
                    let text = serde_json::to_string_pretty(&gather(&m).await).unwrap_or_default();
                    ([("content-type", "application/json"), ("cache-control", "no-store")], text)
                }
            }),
        )
}

/// The page now, from the last run's observation and fresh runtime data.
async fn gather(m: &Shared) -> StatusPage {
    let (recent, env_name, leader, commit) = match m.lock() {
        Ok(m) => (m.page.clone(), m.env.clone(), m.leader, m.last_sync_commit.clone()),
        Err(_) => (Recent::default(), String::new(), false, None),
    };
    let mut errors: Vec<page::RunError> = Vec::new();
    let mut note = |stage: &str, e: String| {
        errors.push(page::RunError {
            time: etcd::now_rfc3339(),
            stage: stage.into(),
            message: mask(&e, &recent.secrets),
        });
    };
    let mut apps = Vec::new();
    let (mut history, mut canaries) = (Vec::new(), Vec::new());
    if let (Some(env), Some(observed), Some(plan)) = (&recent.env, &recent.observed, &recent.plan) {
        // The probes' futures borrow in ways axum's handlers (which must be `Send` for every
        // lifetime) cannot take: run them on a blocking thread of the same runtime.
        let (env, observed, plan, timeout) = (Arc::clone(env), Arc::clone(observed), Arc::clone(plan), recent.timeout);
        let handle = tokio::runtime::Handle::current();
        let work = tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                let rows = crate::cli::status::instance_rows(&env, &observed, &plan, timeout).await;
                let apps = rows.map(|rows| crate::cli::status::page_apps(&env, &rows));
                (apps, etcd_extras(&env, timeout).await)
            })
        });
        match work.await {
            Ok((rows, extras)) => {
                match rows {
                    Ok(a) => apps = a,
                    Err(e) => note("page", format!("reading the instances' runtime data: {e}")),
                }
                match extras {
                    Ok((h, c)) => (history, canaries) = (h, c),
                    Err(e) => note("page", format!("reading history and canaries: {e}")),
                }
            }
            Err(e) => note("page", format!("gathering the page: {e}")),
        }
    }
    errors.extend(recent.errors.iter().cloned());
    let summary = match (&recent.plan, leader) {
        (Some(p), _) => p.summary.to_string(),
        (None, true) => "not observed yet".into(),
        (None, false) => "standing by: another watcher leads this environment".into(),
    };
    StatusPage {
        format_version: page::FORMAT_VERSION,
        env: env_name,
        source: page::Source::Watch,
        generated_at: etcd::now_rfc3339(),
        commit: recent.origin.as_ref().and_then(|o| o.commit.clone()),
        reference: recent.origin.as_ref().and_then(|o| o.reference.clone()),
        dirty: recent.origin.as_ref().is_some_and(|o| o.dirty),
        in_sync: recent.plan.as_ref().is_some_and(|p| p.summary.is_empty()),
        summary,
        last_run: recent.last_run,
        last_sync: recent.last_sync.map(|time| page::LastSync { time, commit }),
        pin: recent.pin,
        canaries,
        apps,
        history,
        errors,
    }
}

/// The latest [`page::HISTORY_LIMIT`] history entries and the canaries in progress, from
/// etcd (none without etcd).
///
/// # Errors
/// etcd cannot be reached or read.
pub async fn etcd_extras(
    env: &Env,
    timeout: Duration,
) -> Result<(Vec<page::HistoryEntry>, Vec<page::Canary>), etcd::EtcdError> {
    let Some(spec) = &env.spec.etcd else { return Ok((Vec::new(), Vec::new())) };
    let mut client = etcd::connect(spec, timeout).await?;
    let entries = etcd::history(&mut client, &spec.prefix, &env.name, page::HISTORY_LIMIT).await?;
    let history = entries.iter().map(page::HistoryEntry::from_json).collect();
    let canaries =
        canaries(&etcd::read_prefix(&mut client, &canary_dir(&spec.prefix, &env.name)).await?, &spec.prefix, &env.name);
    Ok((history, canaries))
}

// --- canaries -----------------------------------------------------------------------
// The `canary` branch writes `<prefix>/<env>/canary/<app>` while a canary rollout is in
// progress. The page shows each such key's value as it is (JSON when it parses); until
// that branch lands the list is empty.

/// `<prefix>/<env>/canary/`.
pub fn canary_dir(prefix: &str, env: &str) -> String {
    format!("{}/{env}/canary/", prefix.trim_end_matches('/'))
}

/// The canaries among `keys` (full key → value): one per `<canary_dir><app>` key.
pub fn canaries(keys: &BTreeMap<String, String>, prefix: &str, env: &str) -> Vec<page::Canary> {
    let dir = canary_dir(prefix, env);
    keys.iter()
        .filter_map(|(k, v)| {
            let app = k.strip_prefix(dir.as_str()).filter(|a| !a.is_empty() && !a.contains('/'))?;
            let state = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.clone()));
            Some(page::Canary { app: app.into(), state })
        })
        .collect()
}
// --- end of canaries ----------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_keys_become_canaries() {
        let keys: BTreeMap<String, String> = [
            ("/r/prod/canary/api", r#"{"step": 1, "of": 3}"#),
            ("/r/prod/canary/web", "promoting"),
            ("/r/prod/canary/web/extra", "nested: not an app"),
            ("/r/prod/canary/", "no app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = canaries(&keys, "/r/", "prod");
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!((c[0].app.as_str(), &c[0].state), ("api", &serde_json::json!({"step": 1, "of": 3})));
        assert_eq!((c[1].app.as_str(), &c[1].state), ("web", &serde_json::json!("promoting")));
    }

    #[test]
    fn an_error_is_kept_whole_with_the_last_load_s_secrets_masked() {
        let m: Shared = Arc::new(std::sync::Mutex::new(super::super::metrics::Metrics::default()));
        let values: BTreeMap<String, Secret> = [("db".to_string(), Secret::new("hunter22".into()))].into();
        secrets(&m, &values);
        failed(&m, "load", "environment `x` has 2 error(s):\n  a.yaml:3: bad\n  b.yaml:9: token hunter22 rejected");
        let kept = m.lock().unwrap().page.errors[0].message.clone();
        assert_eq!(kept, "environment `x` has 2 error(s):\n  a.yaml:3: bad\n  b.yaml:9: token (sensitive) rejected");
    }

    #[test]
    fn errors_are_kept_newest_first_and_bounded() {
        let m: Shared = Arc::new(std::sync::Mutex::new(super::super::metrics::Metrics::default()));
        for i in 0..page::ERRORS_LIMIT + 3 {
            failed(&m, "apply", &format!("e{i}"));
        }
        run_done(&m, RunResult::Failed);
        let r = m.lock().unwrap().page.clone();
        assert_eq!(r.errors.len(), page::ERRORS_LIMIT);
        assert_eq!(r.errors[0].message, format!("e{}", page::ERRORS_LIMIT + 2));
        assert_eq!(r.last_run.map(|l| l.result), Some("failed".into()));
        assert_eq!(r.last_sync, None);
        run_done(&m, RunResult::Ok);
        assert!(m.lock().unwrap().page.last_sync.is_some());
    }
}
