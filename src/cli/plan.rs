//! `reconcile plan`: observe, diff, print the plan; optionally save it.

use std::io::Write as _;

use anyhow::Context as _;
use clap::ValueEnum;

use super::common::{ObserveArgs, load_env, resolve_secrets, runtime};
use super::{ExitCode, RepoArgs};
use crate::plan::{self, Desired, Plan, render};

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
    /// `pull: always` apps: skip the registry digest check (a warning), e.g. when the
    /// registry is down.
    #[arg(long)]
    pub offline_images: bool,
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
    let l = load_env(&args.repo, &args.env, None)?;
    let env = l.env();
    let secrets = resolve_secrets(env)?;
    let rt = runtime()?;
    let mut observed = rt.block_on(crate::observe::observe(env, args.observe.options()))?;
    let digests = super::common::image_digests(&rt, env, &mut observed, args.offline_images, args.observe.options())?;
    let pin = rt.block_on(crate::apply::pin::read(env, None, args.observe.timeout))?;
    let d = Desired { env, files: l.files(), origin: &l.snap.origin, secrets: &secrets, digests };
    let p = plan::plan(&d, &observed)?;
    print_plan(&p, args.format, render::Source::Plan)?;
    // A plan that apply would refuse says so where CI logs show it.
    if let Err(e) = crate::apply::pin::check(&args.env, pin.as_ref(), &l.snap.origin) {
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
