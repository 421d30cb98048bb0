//! `reconcile status`: what runs where — app, instance, host, image, port,
//! state, health, uptime, restarts, and drift from the repo.
//!
//! Restart count, start time and health exist only in a container's inspect
//! data, so status (unlike plan) inspects each managed container once.
//!
//! Health is the app's own check run now ([`probe_health`]: http/tcp/cmd through
//! `backend::probe`, the probes `watch` builds, every running instance at once, one
//! attempt each within [`PROBE_TIMEOUT`] at most, [`PROBE_CONCURRENCY`] at a time), combined with `watch`'s health
//! mark in etcd for "since" ([`health`]). Docker's own health status, when an image
//! defines a HEALTHCHECK, is shown beside it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use clap::ValueEnum;
use futures::StreamExt as _;
use serde::Serialize;

use super::common::{ObserveArgs, Planned, load_target, observe_and_plan, runtime};
use super::{ExitCode, RepoArgs};
use crate::page;
use crate::plan::{self, Action, render::reason_text};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment to show.
    #[arg(long)]
    pub env: String,
    /// Output format: a table, JSON, or the status page as one self-contained HTML file
    /// (what `watch` serves on `/`, without the reload; for a CI artifact).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Html,
}

/// The longest a status probe waits for one instance (the app's `timeout` when shorter):
/// status is read by people waiting at a prompt.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes in flight at once (sockets and `docker exec`s): every instance of a normal
/// environment at the same time, without running out of file descriptors on a large one.
pub const PROBE_CONCURRENCY: usize = 256;

/// One row of the status table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub app: String,
    pub instance: String,
    pub host: String,
    pub image: String,
    pub port: Option<u16>,
    pub state: String,
    /// The HEALTH cell: `healthy`, `unhealthy since … (…)`, `no check`; `None` when the
    /// instance is not running (or missing).
    pub health: Option<String>,
    /// `health` as a value, for scripts.
    pub health_status: Option<HealthStatus>,
    /// When `watch` first saw the instance fail (its health mark), RFC 3339.
    pub health_since: Option<String>,
    /// The probe's error now, else the mark's.
    pub health_error: Option<String>,
    /// The check that was run, e.g. `GET http://127.0.0.1:20001/healthz`.
    pub health_check: Option<String>,
    /// Docker's own health status (`healthy`, `unhealthy`, `starting`), when the
    /// container has a HEALTHCHECK.
    pub docker_health: Option<String>,
    /// `watch` has marked the instance unhealthy: it is out of the registry and the LB.
    pub out_of_traffic: bool,
    /// Seconds since the container (re)started, when running.
    pub uptime_secs: Option<i64>,
    pub restarts: Option<i64>,
    pub container_id: Option<String>,
    /// `in sync`, or what plan would do and why.
    pub drift: String,
}

/// # Errors
/// Bad input, missing secrets, or an unreachable host/etcd.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let target = load_target(&args.repo, &args.env, None)?;
    let env = &target.env;
    let rt = runtime()?;
    let Planned { observed, plan: p, pin } = observe_and_plan(&rt, &target, &args.observe)?;
    let rows = rt.block_on(instance_rows(env, &observed, &p, args.observe.timeout))?;
    let mut out = String::new();
    match args.format {
        Format::Json => {
            let mut v = serde_json::json!({"format_version": 1, "env": env.name, "origin": target.origin, "pin": pin, "instances": rows, "summary": p.summary});
            if !p.canaries.is_empty() {
                v["canaries"] = serde_json::to_value(&p.canaries)?;
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Format::Html => {
            let (history, canaries) = rt.block_on(crate::watch::page::etcd_extras(env, args.observe.timeout))?;
            let (last_run, last_sync) = page::runs_from_history(&history);
            let status = page::StatusPage {
                format_version: page::FORMAT_VERSION,
                env: env.name.clone(),
                source: page::Source::Status,
                generated_at: crate::backend::etcd::now_rfc3339(),
                commit: target.origin.commit.clone(),
                reference: target.origin.reference.clone(),
                dirty: target.origin.dirty,
                in_sync: p.summary.is_empty(),
                summary: p.summary.to_string(),
                last_run,
                last_sync,
                pin,
                canaries,
                apps: page_apps(env, &rows),
                history,
                errors: Vec::new(),
            };
            out.push_str(&page::html(&status, None));
        }
        Format::Table => {
            write!(out, "{}", table(&rows, &p.summary.to_string()))?;
            for step in &p.canaries {
                writeln!(out, "{}", step.line(&env.name))?;
            }
            if let Some(pin) = &pin {
                writeln!(
                    out,
                    "pinned by a rollback to {} ({}) by {} at {}: drift above is against the repo's head; watch keeps the \
                     pinned commit. `reconcile rollback --env {} --release` to follow the repo again.",
                    crate::apply::pin::short(&pin.commit),
                    pin.reference,
                    pin.who,
                    pin.time,
                    env.name
                )?;
            }
        }
    }
    match &args.out {
        Some(path) => std::fs::write(path, out).map_err(|e| {
            anyhow::anyhow!("writing {}: {e} (check that its directory exists and is writable)", path.display())
        })?,
        None => std::io::stdout().lock().write_all(out.as_bytes())?,
    }
    Ok(ExitCode::Ok)
}

/// One row per managed container (plus one per instance the plan would create), sorted
/// by app, instance, host: what `status` prints and what the status page shows. Inspects
/// every container once and runs every running instance's check once ([`probe_health`]).
///
/// # Errors
/// A host cannot be reached for the inspect.
pub async fn instance_rows(
    env: &crate::spec::Env,
    observed: &crate::model::ObservedState,
    p: &plan::Plan,
    timeout: Duration,
) -> Result<Vec<Row>, crate::backend::docker::DockerError> {
    let ids: BTreeMap<String, Vec<String>> = observed
        .hosts
        .iter()
        .map(|(h, o)| (h.clone(), o.instances.iter().map(|i| i.container_id.clone()).collect()))
        .collect();
    let runtime_info = crate::backend::docker::runtime_info(&env.spec.hosts, &ids, timeout).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);

    // Canary containers (`<prefix>/<env>/canary/<app>`): serving beside the old instances.
    let canaries: BTreeMap<String, String> = match (&env.spec.etcd, &observed.etcd) {
        (Some(spec), Some(obs)) => plan::canary::records(&obs.keys, &spec.prefix, &env.name)
            .into_values()
            .flat_map(|r| r.instances.into_iter().map(move |i| (i.container, r.since.clone())))
            .collect(),
        _ => BTreeMap::new(),
    };
    let drift_of = |id: &str, name: &str| -> String {
        if let Some(since) = canaries.get(name) {
            return format!("canary (serving since {since})");
        }
        for a in &p.actions {
            match a {
                Action::Replace { old, reason, changes, .. } if old.container_id == id => {
                    let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
                    return format!("replace ({}: {})", reason_text(reason), fields.join(", "));
                }
                Action::Remove { old, reason, .. } if old.container_id == id => {
                    return format!("remove ({})", reason_text(reason));
                }
                Action::Start { old, .. } if old.container_id == id => return "start (not running)".into(),
                _ => {}
            }
        }
        "in sync".into()
    };
    // Health marks `watch` wrote: those instances are out of traffic.
    let marks: BTreeMap<String, crate::model::HealthMark> = match (&env.spec.etcd, &observed.etcd) {
        (Some(spec), Some(obs)) => plan::health_marks(&obs.keys, &spec.prefix, &env.name)
            .into_iter()
            .filter_map(|(c, k)| Some((c, serde_json::from_str(obs.keys.get(&k)?).ok()?)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let probes = probe_health(env, observed, timeout).await;
    let mut rows = Vec::new();
    for (host, obs) in &observed.hosts {
        for i in &obs.instances {
            let info = runtime_info.get(&i.container_id);
            let docker_health = info.and_then(|r| r.health.clone());
            let has_check = env.apps.get(&i.app).is_some_and(|a| a.spec.health.is_some());
            let h = i
                .state
                .is_running()
                .then(|| health(has_check, probes.get(&i.container_id), marks.get(&i.name), docker_health.as_deref()));
            rows.push(Row {
                app: i.app.clone(),
                instance: i.instance.clone(),
                host: host.clone(),
                image: i.image.clone(),
                port: i.port,
                state: format!("{:?}", i.state).to_lowercase(),
                health: h.as_ref().map(|h| h.text.clone()),
                health_status: h.as_ref().map(|h| h.status),
                health_since: h.as_ref().and_then(|h| h.since.clone()),
                health_error: h.as_ref().and_then(|h| h.error.clone()),
                health_check: probes.get(&i.container_id).map(|(check, _)| check.clone()),
                docker_health,
                out_of_traffic: marks.contains_key(&i.name),
                uptime_secs: info.and_then(|r| r.started_at).filter(|_| i.state.is_running()).map(|s| (now - s).max(0)),
                restarts: info.map(|r| r.restart_count),
                container_id: Some(i.container_id.clone()),
                drift: drift_of(&i.container_id, &i.name),
            });
        }
    }
    for a in &p.actions {
        if let Action::Create { app, instance, new, reason } = a {
            rows.push(Row {
                app: app.clone(),
                instance: instance.clone(),
                host: new.host.clone(),
                image: new.spec.get("image").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
                port: new.port,
                state: "missing".into(),
                health: None,
                health_status: None,
                health_since: None,
                health_error: None,
                health_check: None,
                docker_health: None,
                out_of_traffic: false,
                uptime_secs: None,
                restarts: None,
                container_id: None,
                drift: format!("create ({})", reason_text(reason)),
            });
        }
    }
    rows.sort_by(|a, b| (&a.app, &a.instance, &a.host).cmp(&(&b.app, &b.instance, &b.host)));
    Ok(rows)
}

/// The page's apps (every app of the environment, also those with no instance), from
/// [`instance_rows`].
pub fn page_apps(env: &crate::spec::Env, rows: &[Row]) -> Vec<page::App> {
    let mut apps: BTreeMap<&str, Vec<page::Instance>> = env.apps.keys().map(|a| (a.as_str(), Vec::new())).collect();
    for r in rows {
        apps.entry(r.app.as_str()).or_default().push(page::Instance {
            instance: r.instance.clone(),
            host: r.host.clone(),
            image: r.image.clone(),
            port: r.port,
            state: r.state.clone(),
            health: page_health(r),
            health_text: r.health.clone(),
            uptime_secs: r.uptime_secs,
            restarts: r.restarts,
            drift: r.drift.clone(),
        });
    }
    apps.into_iter().map(|(name, instances)| page::App { name: name.to_string(), instances }).collect()
}

/// The page's colour for a row: our probe decides; Docker's own check only for apps
/// without one; a restarting container is starting; one not running is down.
fn page_health(r: &Row) -> page::Health {
    if r.state == "restarting" {
        return page::Health::Starting;
    }
    match r.health_status {
        None => page::Health::Down,
        Some(HealthStatus::Healthy) => page::Health::Healthy,
        Some(HealthStatus::Unhealthy) => page::Health::Unhealthy,
        Some(HealthStatus::Unknown) => page::Health::Unknown,
        Some(HealthStatus::NoCheck) => match r.docker_health.as_deref() {
            Some("healthy") => page::Health::Healthy,
            Some("unhealthy") => page::Health::Unhealthy,
            Some("starting") => page::Health::Starting,
            _ => page::Health::NoCheck,
        },
    }
}

/// The results of running every running instance's health check once, at the same
/// time, by container id: `(the check, its result)`. The probes are `watch`'s
/// ([`crate::watch::health::targets`]); `cmd` checks run through `docker exec` on a
/// client connected here (a host that cannot be reached gets an error result).
/// Instances of apps without a check are absent.
pub async fn probe_health(
    env: &crate::spec::Env,
    observed: &crate::model::ObservedState,
    timeout: Duration,
) -> BTreeMap<String, (String, Result<(), String>)> {
    let has_cmd = |host: &str| {
        observed.hosts.get(host).is_some_and(|o| {
            o.instances.iter().any(|i| {
                i.state.is_running()
                    && env.apps.get(&i.app).and_then(|a| a.spec.health.as_ref()).is_some_and(|h| h.cmd.is_some())
            })
        })
    };
    let connects =
        env.spec.hosts.iter().filter(|h| has_cmd(&h.name)).map(|h| async move {
            crate::backend::docker::connect(h, timeout).await.ok().map(|c| (h.name.clone(), c))
        });
    let clients: BTreeMap<_, _> = futures::future::join_all(connects).await.into_iter().flatten().collect();
    let targets = crate::watch::health::targets(env, observed, &clients);
    let runs = targets.iter().map(|t| async move {
        let result = crate::backend::probe::probe_once(&t.probe, t.schedule.timeout.min(PROBE_TIMEOUT))
            .await
            .map_err(|e| e.to_string());
        (t.container_id.clone(), (t.probe.to_string(), result))
    });
    futures::stream::iter(runs).buffer_unordered(PROBE_CONCURRENCY).collect().await
}

/// [`Row::health_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    /// The app has no health check.
    NoCheck,
    /// The app has a check but it could not be run on this instance.
    Unknown,
}

/// The health of one running instance, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub status: HealthStatus,
    pub text: String,
    pub since: Option<String>,
    pub error: Option<String>,
}

/// Combine what is known about a running instance: whether its app has a check, the
/// probe's result now (`probe`: the check and its result), `watch`'s mark, and
/// Docker's own status. The probe decides healthy/unhealthy; the mark gives "since"
/// (status alone cannot know when a failure began, so without a mark there is none)
/// and says the instance is out of traffic.
pub fn health(
    has_check: bool,
    probe: Option<&(String, Result<(), String>)>,
    mark: Option<&crate::model::HealthMark>,
    docker: Option<&str>,
) -> Health {
    let out = mark.map(|m| format!("out of traffic since {} (watch: {})", m.since, m.error));
    let (status, mut text, since, error) = match (has_check, probe) {
        (false, _) => (HealthStatus::NoCheck, "no check".to_string(), None, None),
        (true, Some((_, Ok(())))) => {
            let text = match &out {
                Some(o) => format!("healthy, {o}"),
                None => "healthy".into(),
            };
            (HealthStatus::Healthy, text, mark.map(|m| m.since.clone()), None)
        }
        (true, Some((_, Err(e)))) => {
            let text = match mark {
                Some(m) => format!("unhealthy since {}, out of traffic ({e})", m.since),
                None => format!("unhealthy ({e})"),
            };
            (HealthStatus::Unhealthy, text, mark.map(|m| m.since.clone()), Some(e.clone()))
        }
        (true, None) => {
            let text = match &out {
                Some(o) => format!("unknown (the check cannot run here), {o}"),
                None => "unknown (the check cannot run here)".into(),
            };
            (HealthStatus::Unknown, text, mark.map(|m| m.since.clone()), mark.map(|m| m.error.clone()))
        }
    };
    if let Some(d) = docker {
        text.push_str(&format!(", docker: {d}"));
    }
    Health { status, text, since, error }
}

/// A plain aligned table (no colour: it is read in logs too).
pub fn table(rows: &[Row], summary: &str) -> String {
    let head = ["APP", "INSTANCE", "HOST", "IMAGE", "PORT", "STATE", "HEALTH", "UPTIME", "RESTARTS", "DRIFT"];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.app.clone(),
                r.instance.clone(),
                r.host.clone(),
                r.image.clone(),
                r.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                r.state.clone(),
                r.health.clone().unwrap_or_else(|| "-".into()),
                r.uptime_secs.map(page::human_duration).unwrap_or_else(|| "-".into()),
                r.restarts.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                r.drift.clone(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |vals: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, v) in vals.iter().enumerate() {
            if i + 1 == vals.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for c in &cells {
        out.push_str(&line(c.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(no instances)\n");
    }
    out.push_str(summary);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HealthMark;

    fn mark() -> HealthMark {
        HealthMark {
            app: "web".into(),
            instance: "web-1".into(),
            container_id: "c1".into(),
            since: "2026-12-01T20:00:00Z".into(),
            error: "GET / on 127.0.0.1:1: 503".into(),
        }
    }

    fn probe(r: Result<(), &str>) -> (String, Result<(), String>) {
        ("GET http://127.0.0.1:1/".into(), r.map_err(str::to_string))
    }

    #[test]
    fn the_probe_decides_and_the_mark_gives_since() {
        let h = health(true, Some(&probe(Ok(()))), None, None);
        assert_eq!((h.status, h.text.as_str(), h.since, h.error), (HealthStatus::Healthy, "healthy", None, None));

        let h = health(true, Some(&probe(Err("connect 127.0.0.1:1: Connection refused"))), None, None);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(h.text, "unhealthy (connect 127.0.0.1:1: Connection refused)");
        assert_eq!(h.since, None);

        let h = health(true, Some(&probe(Err("GET / on 127.0.0.1:1: 404 Not Found"))), Some(&mark()), None);
        assert_eq!(
            h.text,
            "unhealthy since 2026-12-01T20:00:00Z, out of traffic (GET / on 127.0.0.1:1: 404 Not Found)"
        );
        assert_eq!(h.since.as_deref(), Some("2026-12-01T20:00:00Z"));
        assert_eq!(h.error.as_deref(), Some("GET / on 127.0.0.1:1: 404 Not Found"));

        // Passing again, but watch has not taken it back into traffic yet.
        let h = health(true, Some(&probe(Ok(()))), Some(&mark()), None);
        assert_eq!(h.status, HealthStatus::Healthy);
        assert_eq!(h.text, "healthy, out of traffic since 2026-12-01T20:00:00Z (watch: GET / on 127.0.0.1:1: 503)");
    }

    #[test]
    fn no_check_unknown_and_docker_status() {
        let h = health(false, None, None, Some("healthy"));
        assert_eq!((h.status, h.text.as_str()), (HealthStatus::NoCheck, "no check, docker: healthy"));
        let h = health(true, None, None, None);
        assert_eq!((h.status, h.text.as_str()), (HealthStatus::Unknown, "unknown (the check cannot run here)"));
        let h = health(true, Some(&probe(Ok(()))), None, Some("starting"));
        assert_eq!(h.text, "healthy, docker: starting");
    }
}
