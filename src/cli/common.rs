//! What several commands share: reading the repo, picking the environment,
//! refusing bad input before anything is contacted, resolving secrets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::RepoArgs;
use crate::backend::{git, secrets};
use crate::diag::{self, Diagnostic};
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
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    spec::units::duration(s).map_err(|e| format!("{}; {}", e.message, e.hint))
}

impl ObserveArgs {
    pub fn options(&self) -> crate::observe::Options {
        crate::observe::Options { parallelism: self.parallelism.max(1), timeout: self.timeout }
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
}

/// Read the repo and validate `env`. Errors are printed to stderr with their
/// positions and end the command with exit 1 before anything is contacted.
///
/// # Errors
/// Unreadable repo, unknown or abstract environment, or validation errors.
pub fn load_env(repo: &RepoArgs, env: &str, reference: Option<&str>) -> anyhow::Result<Loaded1> {
    let cache = repo.cache_dir.clone().unwrap_or_else(git::default_cache_dir);
    let reference = reference.or(repo.reference.as_deref());
    let snap = git::snapshot(&repo.repo, reference, &cache)
        .with_context(|| format!("cannot read config repo {}", repo.repo))?;
    let (loaded, diags) = spec::validate(&snap, Some(env))?;
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    if !errors.is_empty() {
        eprint!("{}", diag::render_text(&diags, &spec::sources(&snap), super::stderr_is_tty()));
        bail!("environment `{env}` has {} error(s); nothing was contacted or changed", errors.len());
    }
    match loaded.envs.get(env) {
        Some(e) if e.spec.is_abstract => {
            bail!("environment `{env}` is abstract: it can only be extended, not deployed")
        }
        Some(_) => Ok(Loaded1 { snap, loaded, env: env.to_string() }),
        None => bail!("environment `{env}` could not be loaded"),
    }
}

/// Resolve every secret of the environment.
///
/// # Errors
/// Lists every missing secret by name and source (never a value).
pub fn resolve_secrets(env: &Env) -> anyhow::Result<BTreeMap<String, Secret>> {
    let (ok, errs) = secrets::resolve_all(&env.spec.secrets);
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

/// `pull: always`: the images' current digests (see `observe::image_digests`), or
/// none with `--offline-images` (a warning naming the apps left unchecked).
///
/// # Errors
/// A registry or host that cannot be asked, naming it.
pub fn image_digests(
    rt: &tokio::runtime::Runtime,
    env: &Env,
    observed: &mut crate::model::ObservedState,
    offline: bool,
    opts: crate::observe::Options,
) -> anyhow::Result<BTreeMap<String, String>> {
    if offline {
        let apps: Vec<&str> = env
            .apps
            .values()
            .filter(|a| a.spec.pull == spec::model::PullPolicy::Always)
            .map(|a| a.spec.name.as_str())
            .collect();
        if !apps.is_empty() {
            eprintln!(
                "warning: --offline-images: no registry digest check for `pull: always` app(s) {}",
                apps.join(", ")
            );
        }
        return Ok(BTreeMap::new());
    }
    Ok(rt.block_on(crate::observe::image_digests(env, observed, opts))?)
}
