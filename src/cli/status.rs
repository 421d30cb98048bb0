//! `reconcile status`: what runs where — app, instance, host, image, port,
//! state, health, uptime, restarts, and drift from the repo.
//!
//! Restart count, start time and health exist only in a container's inspect
//! data, so status (unlike plan) inspects each managed container once.

use std::collections::BTreeMap;
use std::io::Write as _;

use clap::ValueEnum;
use serde::Serialize;

use super::common::{ObserveArgs, Planned, load_target, observe_and_plan, runtime};
use super::{ExitCode, RepoArgs};
use crate::plan::{self, Action, render::reason_text};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment to show.
    #[arg(long)]
    pub env: String,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// One row of the status table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub app: String,
    pub instance: String,
    pub host: String,
    pub image: String,
    pub port: Option<u16>,
    pub state: String,
    pub health: Option<String>,
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
    let ids: BTreeMap<String, Vec<String>> = observed
        .hosts
        .iter()
        .map(|(h, o)| (h.clone(), o.instances.iter().map(|i| i.container_id.clone()).collect()))
        .collect();
    let runtime_info =
        rt.block_on(crate::backend::docker::runtime_info(&env.spec.hosts, &ids, args.observe.timeout))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);

    let drift_of = |id: &str| -> String {
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
    let health_of = |name: &str, docker_health: Option<String>| match marks.get(name) {
        Some(m) => Some(format!("unhealthy since {}, out of traffic (watch: {})", m.since, m.error)),
        None => docker_health,
    };
    let mut rows = Vec::new();
    for (host, obs) in &observed.hosts {
        for i in &obs.instances {
            let rt = runtime_info.get(&i.container_id);
            rows.push(Row {
                app: i.app.clone(),
                instance: i.instance.clone(),
                host: host.clone(),
                image: i.image.clone(),
                port: i.port,
                state: format!("{:?}", i.state).to_lowercase(),
                health: health_of(&i.name, rt.and_then(|r| r.health.clone())),
                uptime_secs: rt.and_then(|r| r.started_at).filter(|_| i.state.is_running()).map(|s| (now - s).max(0)),
                restarts: rt.map(|r| r.restart_count),
                container_id: Some(i.container_id.clone()),
                drift: drift_of(&i.container_id),
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
                uptime_secs: None,
                restarts: None,
                container_id: None,
                drift: format!("create ({})", reason_text(reason)),
            });
        }
    }
    rows.sort_by(|a, b| (&a.app, &a.instance, &a.host).cmp(&(&b.app, &b.instance, &b.host)));
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            let v = serde_json::json!({"format_version": 1, "env": env.name, "origin": target.origin, "pin": pin, "instances": rows, "summary": p.summary});
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Format::Table => {
            write!(out, "{}", table(&rows, &p.summary.to_string()))?;
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
    Ok(ExitCode::Ok)
}

fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
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
                r.uptime_secs.map(human).unwrap_or_else(|| "-".into()),
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
