//! `reconcile diff --env E --base REF`: the desired-state difference between two
//! revisions, contacting no host — the pull-request preview for CI jobs that have
//! no production credentials.
//!
//! How: the base revision is planned against an empty environment and that plan
//! is simulated (`plan::simulate`), giving the state the base would produce; the
//! head revision is then planned against it. Same planner, same output formats.
//! Secrets are not resolved (both sides see `(sensitive)`), so a changed secret
//! value is invisible here; `plan` shows it.

use std::collections::BTreeMap;

use super::common::load_env;
use super::plan::{Format, print_plan};
use super::{ExitCode, RepoArgs};
use crate::model::{EtcdObservation, HostObservation, ObservedState};
use crate::plan::render;
use crate::plan::{self, Desired, simulate::simulate};
use crate::spec::Env;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment to compare.
    #[arg(long)]
    pub env: String,
    /// The base revision (e.g. origin/main); the head is --ref or the working tree.
    #[arg(long)]
    pub base: String,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit 2 when there are changes, 0 when none, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

fn empty(env: &Env) -> ObservedState {
    ObservedState {
        env: env.name.clone(),
        hosts: env.spec.hosts.iter().map(|h| (h.name.clone(), HostObservation::default())).collect(),
        etcd: env.spec.etcd.as_ref().map(|_| EtcdObservation::default()),
        lbs: env.spec.load_balancers().into_keys().map(|k| (k.to_string(), None)).collect(),
    }
}

/// # Errors
/// Either revision cannot be read or has errors.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let head = load_env(&args.repo, &args.env, None)?;
    let no_secrets = BTreeMap::new();
    let henv = head.env();
    let base_state = match load_env(&args.repo, &args.env, Some(&args.base)) {
        Ok(base) => {
            let benv = base.env();
            let d = Desired {
                env: benv,
                files: base.files(),
                origin: &base.snap.origin,
                secrets: &no_secrets,
                digests: Default::default(),
            };
            let p = plan::plan(&d, &empty(benv))?;
            let mut s = simulate(&p, &empty(benv), base.snap.origin.commit.as_deref().unwrap_or(""));
            // The head's hosts decide what exists; keep the base's containers on them.
            for h in &henv.spec.hosts {
                s.hosts.entry(h.name.clone()).or_default();
            }
            if henv.spec.etcd.is_some() && s.etcd.is_none() {
                s.etcd = Some(EtcdObservation::default());
            }
            for lb in henv.spec.load_balancers().into_keys() {
                s.lbs.entry(lb.to_string()).or_default();
            }
            s
        }
        Err(e) if e.to_string().contains("no environment") => empty(henv),
        Err(e) => return Err(e.context(format!("base revision {}", args.base))),
    };
    let d = Desired {
        env: henv,
        files: head.files(),
        origin: &head.snap.origin,
        secrets: &no_secrets,
        digests: Default::default(),
    };
    let p = plan::plan(&d, &base_state)?;
    print_plan(&p, args.format, render::Source::Diff)?;
    Ok(if args.detailed_exitcode && !p.summary.is_empty() { ExitCode::Changes } else { ExitCode::Ok })
}
