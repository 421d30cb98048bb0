//! What several commands share: reading the repo, picking the environment,
//! refusing bad input before anything is contacted, resolving secrets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::RepoArgs;
use crate::apply::Target;
use crate::backend::{git, secrets};
use crate::diag::{self, Diagnostic};
use crate::model::{ObservedState, Pin};
use crate::plan::Plan;
use crate::secret::Secret;
use crate::spec::{self, Env, Loaded, RepoSnapshot};

/// Observation flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ObserveArgs {
    /// Hosts observed (and later changed) at once.
    #[arg(long, default_value_t = 16)]
    pub parallelism: usize,
    /// Per-host and etcd timeout, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// `pull: always` apps: skip the registry digest check (a warning), e.g. when the
    /// registry is down.
    #[arg(long)]
    pub offline_images: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    spec::units::duration(s).map_err(|e| format!("{}; {}", e.message, e.hint))
}

impl ObserveArgs {
    pub fn options(&self) -> crate::observe::Options {
        crate::observe::Options {
            parallelism: self.parallelism.max(1),
            timeout: self.timeout,
            offline_images: self.offline_images,
        }
    }
}

/// A repo read and validated, with one deployable environment chosen.
pub struct Loaded1 {
    pub snap: RepoSnapshot,
    pub loaded: Loaded,
    pub env: String,
}

impl Loaded1 {
    pub fn env(&self) -> &Env {
        // `load_env` only returns environments present in `loaded.envs`.
        #[allow(clippy::indexing_slicing)]
        &self.loaded.envs[&self.env]
    }
    pub fn files(&self) -> Arc<BTreeMap<String, Vec<u8>>> {
        Arc::new(self.snap.files.clone())
    }

    /// The environment with its secrets, as apply, plan and status work on it.
    pub fn into_target(mut self, secrets: BTreeMap<String, Secret>) -> Option<Target> {
        let env = self.loaded.envs.remove(&self.env)?;
        Some(Target { env, files: Arc::new(self.snap.files), origin: self.snap.origin, secrets })
    }
}

/// [`load_env`] and [`resolve_secrets`]: the desired state of `env`, before anything is
/// contacted.
///
/// # Errors
/// As [`load_env`] and [`resolve_secrets`].
pub fn load_target(repo: &RepoArgs, env: &str, reference: Option<&str>) -> anyhow::Result<Target> {
    let l = load_env(repo, env, reference)?;
    let secrets = resolve_secrets(l.env())?;
    l.into_target(secrets).with_context(|| format!("environment `{env}` could not be loaded"))
}

/// The world and the plan for it, as `plan` and `status` show them (the same path
/// `apply` takes under its lock).
pub struct Planned {
    pub observed: ObservedState,
    pub plan: Plan,
    /// A rollback's pin, if the environment has one.
    pub pin: Option<Pin>,
}

/// Observe `target`'s environment, read its pin and plan, without the lock.
///
/// # Errors
/// A host, etcd or the LB file cannot be observed, or the plan cannot be made.
pub fn observe_and_plan(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    observe: &ObserveArgs,
) -> anyhow::Result<Planned> {
    let started = Instant::now();
    let (observed, plan, pin) = rt.block_on(crate::apply::observe_and_plan(target, observe.options()))?;
    tracing::debug!(env = %target.env.name, elapsed = ?started.elapsed(), "observed and planned");
    Ok(Planned { observed, plan, pin })
}

/// Read the repo and validate `env`. Errors are printed to stderr with their
/// positions and end the command with exit 1 before anything is contacted.
///
/// # Errors
/// Unreadable repo, unknown or abstract environment, or validation errors.
pub fn load_env(repo: &RepoArgs, env: &str, reference: Option<&str>) -> anyhow::Result<Loaded1> {
    let cache = repo.cache_dir.clone().unwrap_or_else(git::default_cache_dir);
    let reference = reference.or(repo.reference.as_deref());
    let started = Instant::now();
    let snap = git::snapshot(&repo.repo, reference, &cache)
        .with_context(|| format!("cannot read config repo {}", repo.repo))?;
    tracing::debug!(files = snap.files.len(), elapsed = ?started.elapsed(), "read the config repo");
    let started = Instant::now();
    let (loaded, diags) = spec::validate(&snap, Some(env))?;
    tracing::debug!(env, elapsed = ?started.elapsed(), "loaded and validated");
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    if !errors.is_empty() {
        let sources = spec::sources(&snap);
        eprint!("{}", diag::render_text(&diags, &sources, super::stderr_is_tty()));
        let diagnostics = diag::render_text(&diags, &sources, false);
        return Err(Invalid { env: env.to_string(), count: errors.len(), diagnostics }.into());
    }
    match loaded.envs.get(env) {
        Some(e) if e.spec.is_abstract => {
            bail!("environment `{env}` is abstract: it can only be extended, not deployed")
        }
        Some(_) => Ok(Loaded1 { snap, loaded, env: env.to_string() }),
        None => bail!("environment `{env}` could not be loaded"),
    }
}

/// An environment that does not validate. Shown as its summary line (the CLI has
/// printed the diagnostics on stderr already); `diagnostics` holds all of them as
/// plain text, for `watch`'s status page.
#[derive(Debug, thiserror::Error)]
#[error("environment `{env}` has {count} error(s); nothing was contacted or changed")]
pub struct Invalid {
    pub env: String,
    pub count: usize,
    pub diagnostics: String,
}

/// Resolve every secret of the environment.
///
/// # Errors
/// Lists every missing secret by name and source (never a value).
pub fn resolve_secrets(env: &Env) -> anyhow::Result<BTreeMap<String, Secret>> {
    let started = Instant::now();
    let (ok, errs) = secrets::resolve_all(&env.secret_refs);
    tracing::debug!(secrets = ok.len(), elapsed = ?started.elapsed(), "resolved the secrets");
    if errs.is_empty() {
        return Ok(ok);
    }
    let lines: Vec<String> = errs.iter().map(|e| format!("  - {e}\n    hint: {}", e.hint())).collect();
    bail!("missing secrets for environment `{}`:\n{}", env.name, lines.join("\n"))
}

/// A tokio runtime for one command.
///
/// # Errors
/// The runtime cannot start (out of threads or file descriptors).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
