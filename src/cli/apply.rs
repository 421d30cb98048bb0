//! `reconcile apply`: plan and apply (asking unless `--yes`), or apply a saved
//! plan as it is — refused when the world or the repo moved since it was made.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::common::{ObserveArgs, load_target, parse_duration, runtime};
use super::{ExitCode, RepoArgs};
use crate::apply::report::{self as recovery, Timeline};
use crate::apply::{self, Options};
use crate::model::ObservedState;
use crate::notify::EventKind;
use crate::plan::{self, Plan, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment (optional with a saved plan, which names it).
    #[arg(long)]
    pub env: Option<String>,
    /// A plan saved with `plan --out`: applied as it is, or refused when stale.
    pub plan: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for another apply's lock before giving up.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// Write a recovery report here once the apply ends: per app, when its instances
    /// were created, healthy, registered and serving, and the RTO. JSON, or Markdown
    /// when FILE ends in `.md`.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// # Errors
/// Bad input, stale saved plan, unreachable backends, refused confirmation.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    run(args, apply::HistoryKind::Apply)
}

/// Apply, recorded in the history as `kind` (an apply or a rollback).
///
/// # Errors
/// As [`exec`].
pub fn run(args: &Args, kind: apply::HistoryKind) -> anyhow::Result<ExitCode> {
    // The RTO counts from here: the start of the apply command.
    let t0 = Instant::now();
    let started = crate::backend::etcd::now_rfc3339();
    if let Some(path) = &args.report {
        check_report_path(path)?;
    }
    let timeline = args.report.as_ref().map(|_| Arc::new(Timeline::new(Arc::new(move || t0.elapsed()))));
    let saved: Option<Plan> = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read plan {}", path.display()))?;
            let p: Plan = serde_json::from_str(&text).with_context(|| {
                format!("{} is not a reconcile plan (JSON, format_version {})", path.display(), plan::FORMAT_VERSION)
            })?;
            if p.format_version != plan::FORMAT_VERSION {
                bail!(
                    "{} has format_version {}; this reconcile reads {}",
                    path.display(),
                    p.format_version,
                    plan::FORMAT_VERSION
                );
            }
            Some(p)
        }
        None => None,
    };
    let env_name = match (&args.env, &saved) {
        (Some(e), Some(p)) if *e != p.env => bail!("the saved plan is for environment `{}`, not `{e}`", p.env),
        (Some(e), _) => e.clone(),
        (None, Some(p)) => p.env.clone(),
        (None, None) => bail!("--env is required (or give a saved plan)"),
    };
    // A saved plan is re-derived from its own commit.
    let reference = saved.as_ref().and_then(|p| p.origin.commit.clone().filter(|_| !p.origin.dirty));
    let target = load_target(&args.repo, &env_name, reference.as_deref())?;
    super::notify::warm_up(&target.env, &target.secrets);
    let rt = runtime()?;
    let pinning = if kind == apply::HistoryKind::Rollback { apply::Pinning::Set } else { apply::Pinning::Refuse };
    let req = request(&args.observe, args.lock_timeout, kind, pinning);
    let mut hooks = Confirm { args, saved: saved.as_ref(), timeline: timeline.clone() };
    let outcome = rt.block_on(apply::run(target, req, &mut hooks, progress_sink()))?;
    if let (Some(path), Some(t)) = (&args.report, &timeline) {
        write_report(path, &outcome, t, started)?;
    }
    let ok_kind = if kind == apply::HistoryKind::Rollback { EventKind::Rollback } else { EventKind::ApplySucceeded };
    finish(&rt, &outcome, ok_kind)
}

/// An apply under the lock with the command line's observe options, recorded as `kind`.
pub fn request(
    observe: &ObserveArgs,
    lock_timeout: Duration,
    kind: apply::HistoryKind,
    pinning: apply::Pinning,
) -> apply::Request {
    apply::Request {
        opts: Options { parallelism: observe.parallelism.max(1), timeout: observe.timeout, lock_timeout, kind },
        observe: observe.options(),
        pinning,
        lock: true,
    }
}

/// Report an apply's outcome (stdout, and stderr when it failed), notify, and give the
/// exit code: 0 when everything was done, else 1.
///
/// # Errors
/// stdout cannot be written.
pub fn finish(rt: &tokio::runtime::Runtime, outcome: &apply::Outcome, ok_kind: EventKind) -> anyhow::Result<ExitCode> {
    let (p, Some(report)) = (&outcome.plan, &outcome.report) else {
        eprintln!("nothing to do");
        for step in &outcome.plan.canaries {
            println!("{}", apply::canary::outcome_line(step, &outcome.plan.env));
        }
        return Ok(ExitCode::Ok);
    };
    let mut out = std::io::stdout().lock();
    for (app, o) in &report.apps {
        match &o.error {
            None => writeln!(out, "app {app}: ok ({} steps)", o.done.len())?,
            Some(e) => writeln!(out, "app {app}: FAILED: {e}")?,
        }
    }
    for e in &report.errors {
        writeln!(out, "error: {e}")?;
    }
    writeln!(out, "apply {}: {}", if report.ok() { "complete" } else { "incomplete" }, p.summary)?;
    for step in p.canaries.iter().filter(|s| report.apps.get(&s.app).is_none_or(|o| o.error.is_none())) {
        writeln!(out, "{}", apply::canary::outcome_line(step, &p.env))?;
    }
    drop(out);
    let apps: Vec<(String, Option<String>)> =
        report.apps.iter().map(|(a, o)| (a.clone(), o.error.as_ref().map(ToString::to_string))).collect();
    let t = &outcome.target;
    super::notify::after_apply(rt, &t.env, &t.secrets, p, &apps, &report.errors, ok_kind, outcome.pinned.as_ref());
    if !report.ok() {
        // The report (stdout) has the details; CI logs that only keep stderr still see why.
        let failed: Vec<String> = report
            .apps
            .iter()
            .filter_map(|(app, o)| o.error.as_ref().map(|e| format!("app {app}: {e}")))
            .chain(report.errors.iter().cloned())
            .collect();
        eprintln!("error: apply incomplete:\n  {}", failed.join("\n  "));
    }
    Ok(if report.ok() { ExitCode::Ok } else { ExitCode::Error })
}

/// The CLI's part of an apply: refuse a stale saved plan; show the plan and ask when
/// there is no saved plan (unless `--yes`).
struct Confirm<'a> {
    args: &'a Args,
    saved: Option<&'a Plan>,
    timeline: Option<Arc<Timeline>>,
}

impl apply::Hooks for Confirm<'_> {
    fn timeline(&self) -> Option<Arc<Timeline>> {
        self.timeline.clone()
    }

    // Reads the answer from stdin on the runtime's own thread: the lock's keep-alive runs
    // on the worker threads meanwhile.
    async fn confirm(&mut self, target: &apply::Target, plan: &Plan, _: &ObservedState) -> Result<bool, String> {
        check_and_confirm(self.args, self.saved, plan, &target.env.name).map_err(|e| format!("{e:#}"))
    }
}

/// [`Confirm`]: `Ok(true)` to apply (an empty plan is not asked about).
fn check_and_confirm(args: &Args, saved: Option<&Plan>, p: &Plan, env_name: &str) -> anyhow::Result<bool> {
    if let Some(s) = saved {
        if s.against != p.against {
            bail!(
                "stale plan: the environment changed since the plan was made (hosts, etcd or the LB file); run `reconcile plan` again"
            );
        }
        if s.actions != p.actions {
            bail!("stale plan: the repo or the secrets no longer give the same plan; run `reconcile plan` again");
        }
    } else {
        eprint!("{}", render::text(p, super::stderr_is_tty()));
    }
    if p.summary.is_empty() {
        return Ok(true);
    }
    if saved.is_none() && !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "stdin is not a terminal, so there is nobody to confirm: pass --yes, or apply a saved plan (plan --out FILE, then apply FILE)"
            );
        }
        eprint!("Apply these changes to `{env_name}`? Only 'yes' is accepted: ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!("apply cancelled");
        }
    }
    Ok(true)
}

/// Where progress lines go: on a terminal, an indicatif spinner showing the latest
/// step (pull progress included) with finished steps printed above it; otherwise
/// (CI, pipes) plain lines on stderr.
pub fn progress_sink() -> apply::Progress {
    if !super::stderr_is_tty() {
        return Arc::new(|line: String| eprintln!("{line}"));
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    Arc::new(move |line: String| {
        // Pull progress updates in place; every other step stays on screen.
        if line.contains(": pulling ") {
            bar.set_message(line);
        } else {
            bar.println(line);
        }
    })
}

/// `--report FILE` must be writable where it points before anything is changed: its
/// directory exists and it is not a directory itself.
fn check_report_path(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("--report {}: is a directory; give a file name (e.g. {}/report.json)", path.display(), path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("--report {}: directory {} does not exist; create it first", path.display(), dir.display());
    }
    Ok(())
}

/// Write the recovery report of `outcome` (JSON, or Markdown for `.md`), secret values
/// masked once more.
fn write_report(path: &Path, outcome: &apply::Outcome, t: &Timeline, started: String) -> anyhow::Result<()> {
    let target = &outcome.target;
    let events = t.events();
    let r = recovery::build(&recovery::Facts {
        env: &target.env,
        origin: &target.origin,
        started,
        outcome: outcome.report.as_ref(),
        events: &events,
        execution_started: t.execution_started_at(),
        finished: t.now(),
    });
    let markdown = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("md"));
    let text = if markdown { recovery::markdown(&r) } else { recovery::json(&r) };
    let secrets: Vec<String> = target.secrets.values().map(|s| s.expose().to_string()).collect();
    std::fs::write(path, apply::rollout::mask(&text, &secrets))
        .with_context(|| format!("cannot write the report to {}", path.display()))?;
    eprintln!(
        "report written to {}{}",
        path.display(),
        r.rto_ms.map(|m| format!(" (RTO {}.{:03} s)", m / 1000, m % 1000)).unwrap_or_default()
    );
    Ok(())
}
