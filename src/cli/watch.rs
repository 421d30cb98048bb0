//! `reconcile watch`: flags, the loader, signals. The loop is `crate::watch`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::common::{Invalid, ObserveArgs, load_env, parse_duration, resolve_secrets, runtime};
use super::{ExitCode, RepoArgs};
use crate::watch::{self, Config, Snapshot};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment to keep converged.
    #[arg(long)]
    pub env: String,
    /// Periodic resync: observe and converge at least this often (a remote repo is
    /// fetched then too).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub interval: Duration,
    /// A burst of triggers ends after this much quiet, then one run starts.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Only report drift: no lock, no changes, no health marks.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to serve /metrics and /healthz (`off` to disable).
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub metrics_addr: String,
    /// How long a run waits for the apply lock held by someone else before it skips.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// Crash-loop back-off: first wait between heals of one instance, doubling up to --backoff-max.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Least time an unhealthy instance stays out of traffic (doubles while it flaps).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub health_hold: Duration,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// # Errors
/// Bad input at start (repo, environment, secrets, flags); later failures are retried.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let metrics_addr: Option<SocketAddr> = match args.metrics_addr.as_str() {
        "off" | "" => None,
        a => Some(a.parse().map_err(|e| anyhow::anyhow!("--metrics-addr {a}: {e} (e.g. 127.0.0.1:9187, or off)"))?),
    };
    // A local directory is watched for file changes; anything else is polled.
    let watch_path = {
        let p = PathBuf::from(&args.repo.repo);
        (args.repo.reference.is_none() && p.is_dir()).then_some(p)
    };
    let repo = args.repo.clone();
    let env = args.env.clone();
    let load: watch::Loader = Arc::new(move |commit: Option<String>| {
        // The whole of a validation failure, not only its summary: the status page shows it.
        let l = load_env(&repo, &env, commit.as_deref()).map_err(|e| match e.downcast_ref::<Invalid>() {
            Some(i) => anyhow::anyhow!("{i}:\n{}", i.diagnostics.trim_end()),
            None => e,
        })?;
        let secrets = resolve_secrets(l.env())?;
        Ok(Snapshot { env: l.env().clone(), files: l.files(), origin: l.snap.origin.clone(), secrets })
    });
    let cfg = Config {
        interval: args.interval,
        debounce: args.debounce,
        max_delay: (args.debounce * 8).max(Duration::from_secs(2)),
        dry_run: args.dry_run,
        metrics_addr,
        watch_path,
        apply: crate::apply::Options {
            parallelism: args.observe.parallelism.max(1),
            timeout: args.observe.timeout,
            lock_timeout: args.lock_timeout,
            kind: crate::apply::HistoryKind::Watch,
        },
        observe: args.observe.options(),
        backoff_base: args.backoff_base,
        backoff_max: args.backoff_max.max(args.backoff_base),
        health_rise: 2,
        health_hold: args.health_hold,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = async {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = term => tracing::info!("SIGTERM: finishing the current run"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing the current run"),
            }
        };
        watch::run(cfg, load, shutdown).await
    })?;
    Ok(ExitCode::Ok)
}
