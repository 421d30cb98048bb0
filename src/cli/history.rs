//! `reconcile history` (the etcd audit log) and `reconcile rollback` (apply an
//! earlier revision, recorded as a rollback).

use std::io::Write as _;

use anyhow::bail;
use clap::ValueEnum;

use super::common::{ObserveArgs, load_env, parse_duration, runtime};
use super::{ExitCode, RepoArgs};
use crate::backend::etcd;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment whose history to show.
    #[arg(long)]
    pub env: String,
    /// At most this many entries, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// etcd timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// # Errors
/// Bad input, no etcd in the environment, etcd unreachable.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let l = load_env(&args.repo, &args.env, None)?;
    let env = l.env();
    let Some(spec) = &env.spec.etcd else { bail!("environment `{}` has no etcd, so it keeps no history", env.name) };
    let entries = runtime()?.block_on(async {
        let mut c = etcd::connect(spec, args.timeout).await?;
        etcd::history(&mut c, &spec.prefix, &env.name, args.limit).await
    })?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"format_version": 1, "env": env.name, "entries": entries})
            )?
        )?,
        Format::Table => {
            if entries.is_empty() {
                writeln!(out, "no applies recorded for `{}`", env.name)?;
            }
            for e in &entries {
                let f = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
                let commit: String = f("commit").chars().take(12).collect();
                // Entries of older versions have no kind (applies); a newer version's kind is shown as is.
                let kind = match crate::apply::HistoryKind::of_entry(e) {
                    Some(k) => k.as_str(),
                    None => e.get("kind").and_then(|v| v.as_str()).unwrap_or("?"),
                };
                writeln!(
                    out,
                    "{}  {kind:<8}  {commit:<12}  {:<12}  {}  → {}",
                    f("time"),
                    f("who"),
                    f("summary"),
                    f("result")
                )?;
            }
        }
    }
    Ok(ExitCode::Ok)
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment to roll back.
    #[arg(long)]
    pub env: String,
    /// The earlier revision (commit, tag or branch) to apply. The environment is then
    /// pinned to it: `watch` keeps it there and `apply` of another commit is refused
    /// until `--release`.
    #[arg(long, required_unless_present = "release", conflicts_with = "release")]
    pub to: Option<String>,
    /// End a rollback's pin: `watch` follows the repo again and `apply` is allowed.
    /// Applies nothing by itself.
    #[arg(long)]
    pub release: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for another apply's lock.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub lock_timeout: std::time::Duration,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// Plan and apply `--to`, recorded as a rollback.
///
/// # Errors
/// As `apply`.
pub fn rollback(args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let Some(to) = &args.to else { return release(args) };
    let mut repo = args.repo.clone();
    repo.reference = Some(to.clone());
    let a = super::apply::Args {
        repo,
        env: Some(args.env.clone()),
        plan: None,
        yes: args.yes,
        lock_timeout: args.lock_timeout,
        report: None,
        observe: args.observe.clone(),
    };
    super::apply::run(&a, crate::apply::HistoryKind::Rollback)
}

/// `rollback --release`: delete the pin under the apply lock, recorded in the history.
fn release(args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let l = load_env(&args.repo, &args.env, None)?;
    let env = l.env();
    if env.spec.etcd.is_none() {
        bail!("environment `{}` has no etcd, so it has no rollback pin to release", args.env);
    }
    let rt = runtime()?;
    let opts = crate::apply::Options {
        parallelism: 1,
        timeout: args.observe.timeout,
        lock_timeout: args.lock_timeout,
        kind: crate::apply::HistoryKind::Release,
    };
    let progress: crate::apply::Progress = std::sync::Arc::new(|line: String| eprintln!("{line}"));
    let Some(guard) = rt.block_on(crate::apply::lock(env, opts, progress))? else {
        bail!("environment `{}` has no etcd lock", args.env);
    };
    let released = rt.block_on(crate::apply::pin::release(env, &guard));
    if let Err(e) = rt.block_on(guard.release()) {
        eprintln!("warning: releasing the apply lock: {e} (it expires with its lease)");
    }
    let released = released?;
    if let Some(pin) = &released
        && !env.spec.notifications.is_empty()
    {
        match super::common::resolve_secrets(env) {
            Ok(secrets) => super::notify::after_release(&rt, env, &secrets, pin),
            Err(e) => eprintln!("warning: notifications not sent: {e:#}"),
        }
    }
    match released {
        Some(pin) => println!(
            "released the pin of `{}` to {} ({}, set by {} at {}); watch follows the repo again and apply is allowed",
            args.env,
            crate::apply::pin::short(&pin.commit),
            pin.reference,
            pin.who,
            pin.time
        ),
        None => println!("environment `{}` is not pinned; nothing to release", args.env),
    }
    Ok(ExitCode::Ok)
}
