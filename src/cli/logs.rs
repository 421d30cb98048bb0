//! `reconcile logs` and `reconcile exec`: an operator's access to an environment's
//! containers on every host, over whatever endpoint each host has (unix, tcp+TLS,
//! ssh), without logging in to the hosts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;

use super::common::{ObserveArgs, load_env, parse_duration, runtime};
use super::{ExitCode, RepoArgs};
use crate::backend::docker::{self, LogLine, LogQuery, LogStream};
use crate::backend::probe;
use crate::model::ObservedInstance;
use crate::spec::Env;

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long)]
    pub env: String,
    /// Only this app's containers.
    #[arg(long)]
    pub app: Option<String>,
    /// Only this instance (`<app>-<ordinal>`).
    #[arg(long)]
    pub instance: Option<String>,
    /// Only lines of the last DURATION (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// The last N lines of each container.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Keep printing new lines until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long)]
    pub env: String,
    #[arg(long)]
    pub app: String,
    /// The instance (`<app>-<ordinal>`); default: the first healthy one.
    #[arg(long)]
    pub instance: Option<String>,
    #[command(flatten)]
    pub observe: ObserveArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// The environment's managed containers, by host, filtered to `app` / `instance`.
///
/// # Errors
/// A host cannot be listed, or the app or instance names nothing.
async fn containers(
    env: &Env,
    observe: &ObserveArgs,
    app: Option<&str>,
    instance: Option<&str>,
) -> anyhow::Result<Vec<ObservedInstance>> {
    if let Some(a) = app
        && !env.apps.contains_key(a)
    {
        let known: Vec<&str> = env.apps.keys().map(String::as_str).collect();
        bail!("environment `{}` has no app `{a}` (apps: {})", env.name, known.join(", "));
    }
    let hosts = docker::observe_all(&env.spec.hosts, &env.name, observe.parallelism, observe.timeout)
        .await
        .map_err(|errors| anyhow!("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
    let mut all: Vec<ObservedInstance> = hosts
        .into_values()
        .flat_map(|h| h.instances)
        .filter(|c| app.is_none_or(|a| c.app == a) && instance.is_none_or(|i| c.instance == i))
        .collect();
    all.sort_by(|a, b| (&a.app, a.ordinal, &a.host, a.created).cmp(&(&b.app, b.ordinal, &b.host, b.created)));
    if let (Some(i), true) = (instance, all.is_empty()) {
        bail!(
            "no container of instance `{i}` runs in environment `{}` (see `reconcile status --env {}`)",
            env.name,
            env.name
        );
    }
    Ok(all)
}

async fn clients(
    env: &Env,
    of: &[ObservedInstance],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, docker::Client>> {
    let mut out = BTreeMap::new();
    for h in env.spec.hosts.iter().filter(|h| of.iter().any(|c| c.host == h.name)) {
        out.insert(h.name.clone(), docker::connect(h, timeout).await?);
    }
    Ok(out)
}

/// # Errors
/// Bad input, an unreachable host, or a log stream that fails.
pub fn logs(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let l = load_env(&args.repo, &args.env, None)?;
    let env = l.env();
    let rt = runtime()?;
    rt.block_on(async {
        let targets = containers(env, &args.observe, args.app.as_deref(), args.instance.as_deref()).await?;
        let clients = clients(env, &targets, args.observe.timeout).await?;
        let colour = super::stdout_is_tty();
        let width = targets.iter().map(|c| c.instance.len()).max().unwrap_or(0);
        let since = args.since.map(|d| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |n| n.as_secs());
            i64::try_from(now.saturating_sub(d.as_secs())).unwrap_or(0)
        });
        let query = LogQuery { since, tail: args.tail, follow: false };
        // The backlog of every container, merged in time order.
        let mut streams = Vec::new();
        for (i, c) in targets.iter().enumerate() {
            let client = clients.get(&c.host).context("no client for the container's host")?;
            streams.push(docker::logs(client, &c.host, &c.container_id, query).map(move |r| (i, r)));
        }
        let mut lines: Vec<(usize, LogLine)> = Vec::new();
        let mut all = futures::stream::select_all(streams);
        while let Some((i, r)) = all.next().await {
            lines.push((i, r?));
        }
        lines.sort_by(|a, b| (&a.1.time, a.0).cmp(&(&b.1.time, b.0)));
        let mut last: BTreeMap<usize, String> = BTreeMap::new();
        let mut out = std::io::stdout().lock();
        for (i, line) in &lines {
            print_line(&mut out, &targets[*i], *i, line, width, colour)?;
            last.insert(*i, line.time.clone());
        }
        drop(out);
        if !args.follow {
            return Ok(ExitCode::Ok);
        }
        // Then new lines as they come (Docker's `since` has whole seconds: lines of the
        // second already shown are skipped by their timestamp).
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |n| n.as_secs());
        let follow = LogQuery { since: Some(i64::try_from(now).unwrap_or(0)), tail: None, follow: true };
        let mut streams = Vec::new();
        for (i, c) in targets.iter().enumerate() {
            let client = clients.get(&c.host).context("no client for the container's host")?;
            streams.push(docker::logs(client, &c.host, &c.container_id, follow).map(move |r| (i, r)));
        }
        let mut all = futures::stream::select_all(streams);
        while let Some((i, r)) = all.next().await {
            let line = r?;
            if last.get(&i).is_some_and(|t| line.time <= *t) {
                continue;
            }
            let mut out = std::io::stdout().lock();
            print_line(&mut out, &targets[i], i, &line, width, colour)?;
            out.flush()?;
        }
        Ok(ExitCode::Ok)
    })
}

fn print_line(
    out: &mut impl std::io::Write,
    c: &ObservedInstance,
    index: usize,
    line: &LogLine,
    width: usize,
    colour: bool,
) -> std::io::Result<()> {
    const COLOURS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];
    let name = format!("{:width$}", c.instance);
    let err = if line.stream == LogStream::Stderr && colour { "\x1b[2m" } else { "" };
    if colour {
        let code = COLOURS[index % COLOURS.len()];
        writeln!(out, "\x1b[{code}m{name}\x1b[0m | {err}{}\x1b[0m", line.text)
    } else {
        writeln!(out, "{name} | {}", line.text)
    }
}

/// # Errors
/// Bad input, no such (healthy) instance, an unreachable host, or an exec failure.
pub fn exec(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let l = load_env(&args.repo, &args.env, None)?;
    let env = l.env();
    let rt = runtime()?;
    rt.block_on(async {
        let running: Vec<ObservedInstance> = containers(env, &args.observe, Some(&args.app), args.instance.as_deref())
            .await?
            .into_iter()
            .filter(|c| c.state.is_running())
            .collect();
        let clients = clients(env, &running, args.observe.timeout).await?;
        let chosen = match &args.instance {
            Some(i) => running.first().ok_or_else(|| anyhow!("instance `{i}` is not running"))?,
            None => first_healthy(env, &args.app, &running, &clients).await?,
        };
        let client = clients.get(&chosen.host).context("no client for the container's host")?;
        eprintln!(
            "exec in {} on {} ({})",
            chosen.instance,
            chosen.host,
            &chosen.container_id[..12.min(chosen.container_id.len())]
        );
        let code = docker::exec_attached(client, &chosen.host, &chosen.container_id, &args.cmd).await?;
        Ok(ExitCode::Passed(u8::try_from(code.clamp(0, 255)).unwrap_or(1)))
    })
}

/// The first running instance (by ordinal) that passes the app's health check, or
/// the first running one when the app has none.
async fn first_healthy<'a>(
    env: &Env,
    app: &str,
    running: &'a [ObservedInstance],
    clients: &BTreeMap<String, docker::Client>,
) -> anyhow::Result<&'a ObservedInstance> {
    let health = env.apps.get(app).and_then(|a| a.spec.health.as_ref());
    let Some(h) = health else {
        return running.first().ok_or_else(|| anyhow!("no instance of app `{app}` is running"));
    };
    let mut reasons = Vec::new();
    for c in running {
        let (Some(client), Some(host)) = (clients.get(&c.host), env.spec.hosts.iter().find(|x| x.name == c.host))
        else {
            continue;
        };
        let p = probe::Probe::from_spec(h, &host.address, c.port, |argv| {
            docker::cmd_runner(client.clone(), c.host.clone(), c.container_id.clone(), argv)
        })
        .map_err(|e| anyhow!("app `{app}`: {e}"))?;
        let timeout = probe::Schedule::from_spec(h).map_err(|e| anyhow!("app `{app}`: {e}"))?.timeout;
        match probe::probe_once(&p, timeout).await {
            Ok(()) => return Ok(c),
            Err(e) => reasons.push(format!("{}: {e}", c.instance)),
        }
    }
    if reasons.is_empty() {
        bail!("no instance of app `{app}` is running");
    }
    bail!("no instance of app `{app}` passes its health check ({}); pick one with --instance", reasons.join("; "))
}
