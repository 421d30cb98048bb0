//! `reconcile apply`: plan and apply (asking unless `--yes`), or apply a saved
//! plan as it is — refused when the world or the repo moved since it was made.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::common::{ObserveArgs, load_env, parse_duration, resolve_secrets, runtime};
use super::{ExitCode, RepoArgs};
use crate::apply::{self, Options};
use crate::plan::{self, Desired, Plan, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment (optional with a saved plan, which names it).
    #[arg(long)]
    pub env: Option<String>,
    /// A plan saved with `plan --out`: applied as it is, or refused when stale.
    pub plan: Option<std::path::PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for another apply's lock before giving up.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub lock_timeout: Duration,
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
    let l = load_env(&args.repo, &env_name, reference.as_deref())?;
    let env = l.env();
    let secrets = resolve_secrets(env)?;
    let rt = runtime()?;
    let opts = Options {
        parallelism: args.observe.parallelism.max(1),
        timeout: args.observe.timeout,
        lock_timeout: args.lock_timeout,
        kind,
    };
    let progress = progress_sink();
    // Lock first: whatever is observed and planned below cannot change under us.
    let guard = rt.block_on(apply::lock(env, opts, Arc::clone(&progress)))?;
    // Every way out before apply releases the lock at once (else the next apply waits for its lease).
    let release = |guard: Option<crate::backend::etcd::LockGuard>| {
        if let Some(g) = guard
            && let Err(e) = rt.block_on(g.release())
        {
            eprintln!("warning: releasing the apply lock: {e} (it expires with its lease)");
        }
    };
    let prepared = (|| -> anyhow::Result<_> {
        // Under the lock: a rollback's pin holds the environment at its commit.
        let pinned = rt.block_on(apply::pin::read(env, guard.as_ref(), args.observe.timeout))?;
        if kind != apply::HistoryKind::Rollback {
            apply::pin::check(&env_name, pinned.as_ref(), &l.snap.origin)?;
        }
        let observed = rt.block_on(crate::observe::observe(env, args.observe.options()))?;
        let d = Desired { env, files: l.files(), origin: &l.snap.origin, secrets: &secrets };
        let (p, specs) = plan::plan_with_specs(&d, &observed)?;
        let confirmed = check_and_confirm(args, saved.as_ref(), &p, &env_name)?;
        if kind == apply::HistoryKind::Rollback
            && let Some(g) = &guard
            && let Some(pin) = rt.block_on(apply::pin::set(env, g, &l.snap.origin))?
        {
            eprintln!(
                "pinned environment `{env_name}` to {} ({}): watch keeps it there and apply of another commit is \
                 refused until `reconcile rollback --env {env_name} --release`",
                apply::pin::short(&pin.commit),
                pin.reference
            );
        }
        Ok(confirmed.map(|()| (observed, p, specs)))
    })();
    let (observed, p, specs) = match prepared {
        Ok(Some(x)) => x,
        Ok(None) => {
            release(guard);
            eprintln!("nothing to do");
            return Ok(ExitCode::Ok);
        }
        Err(e) => {
            release(guard);
            return Err(e);
        }
    };

    let report = rt.block_on(apply::apply(
        guard,
        apply::Job { env, files: l.files(), plan: &p, specs: &specs, observed: &observed, secrets: &secrets },
        opts,
        progress,
    ))?;
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

/// Refuse a stale saved plan; show the plan and ask when there is no saved plan.
/// `Ok(None)`: nothing to do.
fn check_and_confirm(args: &Args, saved: Option<&Plan>, p: &Plan, env_name: &str) -> anyhow::Result<Option<()>> {
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
        return Ok(None);
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
    Ok(Some(()))
}

/// Where progress lines go: on a terminal, an indicatif spinner showing the latest
/// step (pull progress included) with finished steps printed above it; otherwise
/// (CI, pipes) plain lines on stderr.
fn progress_sink() -> apply::Progress {
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
