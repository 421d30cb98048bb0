//! Entry point: parse flags, set up logging to stderr, run, map the outcome to
//! the contract's exit codes (0 ok, 1 error, 2 changes present).

use clap::Parser;
use reconcile::cli::{self, Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse(); // `--help` and `--version` exit here, before libgit2 starts
    // SAFETY: no other thread runs yet (parsing the flags starts none).
    unsafe { reconcile::backend::git::init_without_ca_bundle() };
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    match cli::run(cli) {
        Ok(code) => std::process::ExitCode::from(code.code()),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(cli::ExitCode::Error.code())
        }
    }
}
