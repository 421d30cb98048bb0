//! `reconcile promote` and `reconcile abort`: a canary's end, as one apply (the same
//! session: lock → pin → observe → plan for the mode → execute → record), recorded in
//! the history as `promote` or `abort`. A promote is refused (exit 1, nothing changed)
//! when the canary no longer runs the repo's spec ([`apply::canary::promote_refusal`]).

use std::time::Duration;

use super::common::{ObserveArgs, load_target, parse_duration, runtime};
use super::{ExitCode, RepoArgs};
use crate::apply;
use crate::model::ObservedState;
use crate::notify::EventKind;
use crate::plan::canary::Mode;
use crate::plan::{Plan, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long)]
    pub env: String,
    /// The app whose canary ends.
    #[arg(long)]
    pub app: String,
    /// How long to wait for another apply's lock before giving up.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// Which end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Promote,
    Abort,
}

/// # Errors
/// Bad input, no canary running for the app, unreachable backends, the lock held.
pub fn exec(args: &Args, what: What) -> anyhow::Result<ExitCode> {
    let target = load_target(&args.repo, &args.env, None)?;
    if !target.env.apps.contains_key(&args.app) {
        anyhow::bail!("environment `{}` has no app `{}`", args.env, args.app);
    }
    let (mode, kind) = match what {
        What::Promote => (Mode::Promote(args.app.clone()), apply::HistoryKind::Promote),
        What::Abort => (Mode::Abort(args.app.clone()), apply::HistoryKind::Abort),
    };
    let rt = runtime()?;
    let req = super::apply::request(&args.observe, args.lock_timeout, kind, apply::Pinning::Refuse);
    let mut hooks = Ending { mode };
    let outcome = rt.block_on(apply::run(target, req, &mut hooks, super::apply::progress_sink()))?;
    // The app's event is `canary_promoted` / `canary_aborted` (its canary step); the
    // environment's, an apply that succeeded.
    super::apply::finish(&rt, &outcome, EventKind::ApplySucceeded)
}

/// The command names what to do, so there is nothing to confirm: the plan is shown.
pub struct Ending {
    pub mode: Mode,
}

impl apply::Hooks for Ending {
    fn canary_mode(&mut self) -> Mode {
        self.mode.clone()
    }

    async fn confirm(&mut self, target: &apply::Target, plan: &Plan, observed: &ObservedState) -> Result<bool, String> {
        if let Mode::Promote(app) = &self.mode
            && let Some(why) = apply::canary::promote_refusal(&target.env, plan, observed, app)
        {
            return Err(why);
        }
        eprint!("{}", render::text(plan, super::stderr_is_tty()));
        Ok(true)
    }
}
