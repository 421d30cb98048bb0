//! `reconcile plan`: observe, diff, print the plan; optionally save it.

use std::io::Write as _;

use anyhow::Context as _;
use clap::ValueEnum;

use super::common::{ObserveArgs, Planned, load_target, observe_and_plan, runtime};
use super::{ExitCode, RepoArgs};
use crate::plan::{Plan, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment to plan.
    #[arg(long)]
    pub env: String,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Save the plan (JSON, with the commit and the observed fingerprint) for `apply`.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Exit 2 when there are changes, 0 when none, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

/// Separates Markdown parts on stdout (an HTML comment: invisible when rendered).
pub const PART_BREAK: &str = "<!-- reconcile:part-break -->";

/// # Errors
/// Bad input, missing secrets, or an unreachable host/etcd/LB file.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let target = load_target(&args.repo, &args.env, None)?;
    let rt = runtime()?;
    let Planned { plan: p, pin, .. } = observe_and_plan(&rt, &target, &args.observe)?;
    print_plan(&p, args.format, render::Source::Plan)?;
    // A plan that apply would refuse says so where CI logs show it.
    if let Err(e) = crate::apply::pin::check(&args.env, pin.as_ref(), &target.origin) {
        eprintln!("warning: {e}");
    }
    if let Some(path) = &args.out {
        std::fs::write(path, render::json(&p)).with_context(|| format!("cannot write plan to {}", path.display()))?;
        eprintln!("plan saved to {}", path.display());
    }
    Ok(if args.detailed_exitcode && !p.summary.is_empty() { ExitCode::Changes } else { ExitCode::Ok })
}

/// Print a plan in the chosen format.
///
/// # Errors
/// stdout is closed.
pub fn print_plan(p: &Plan, format: Format, source: render::Source) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Text => write!(out, "{}", render::text(p, super::stdout_is_tty()))?,
        Format::Json => write!(out, "{}", render::json(p))?,
        Format::Markdown => {
            let parts = render::markdown_for(p, render::MARKDOWN_LIMIT, source);
            write!(out, "{}", parts.join(&format!("\n{PART_BREAK}\n")))?;
        }
    }
    Ok(())
}
