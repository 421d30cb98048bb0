//! The command line: parse flags, call one function per command, report.
//! Commands return an [`ExitCode`]; only `main` turns errors into exit code 1.

pub mod apply;
pub mod canary;
pub mod common;
pub mod completions;
pub mod diff;
pub mod history;
pub mod import;
pub mod logs;
pub mod notify;
pub mod out;
pub mod plan;
pub mod schema;
pub mod secret;
pub mod status;
pub mod validate;
pub mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// A declarative GitOps reconciler for fleets of plain Docker hosts.
#[derive(Debug, Parser)]
#[command(name = "reconcile", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// age identity file (as age-keygen writes it) for `from_age` secrets; also
    /// RECONCILE_AGE_IDENTITY_FILE, or RECONCILE_AGE_IDENTITY holding the key itself.
    #[arg(long, value_name = "FILE", global = true)]
    pub age_identity: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the config repo is read from (common to every command that reads it).
#[derive(Debug, Clone, clap::Args)]
pub struct RepoArgs {
    /// Config repo: a local directory, or a Git URL (file://, https://, ssh://, user@host:path).
    #[arg(long, default_value = ".", env = "RECONCILE_REPO")]
    pub repo: String,
    /// Branch, tag or commit to read. Default: the working tree of a local checkout (flagged
    /// dirty when it has uncommitted changes), or the remote's default branch.
    #[arg(long = "ref", env = "RECONCILE_REF")]
    pub reference: Option<String>,
    /// Where remote repos are cached. Default: $XDG_CACHE_HOME/reconcile/repos.
    #[arg(long, env = "RECONCILE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the config repo: schemas, references, placement, templates. All errors at once, each with file:line.
    Validate(validate::Args),
    /// Observe the environment and show what apply would change.
    Plan(plan::Args),
    /// Apply the changes (asks unless --yes), or a saved plan as it is.
    Apply(apply::Args),
    /// Desired-state difference between two revisions, without contacting any host.
    Diff(diff::Args),
    /// What runs where: instances, hosts, ports, state, uptime, restarts, drift.
    Status(status::Args),
    /// Keep converging: repo changes, Docker events (self-heal), health, periodic resync; /metrics.
    Watch(watch::Args),
    /// The audit log of applies (from etcd): time, kind, commit, who, summary, result.
    History(history::Args),
    /// Apply an earlier revision (`--to REF`) and pin the environment to it; `--release` ends the pin.
    Rollback(history::RollbackArgs),
    /// Finish a canary rollout: the canaries become the first new instances, the rest rolls out.
    Promote(canary::Args),
    /// End a canary: the canaries leave the LB and are removed, the old instances stay.
    Abort(canary::Args),
    /// Print the JSON Schemas of the spec files (for editors and CI).
    Schema(schema::Args),
    /// Encrypted secrets in the repo: `set` (encrypt stdin with age), `list` (names and sources).
    #[command(subcommand)]
    Secret(secret::Command),
    /// The environment's container logs from every host, merged in time order.
    Logs(logs::LogsArgs),
    /// Run a command in one instance of an app (the first healthy one by default).
    Exec(logs::ExecArgs),
    /// Write a config repo from other tools' files: `import compose FILE… --env E`.
    #[command(subcommand)]
    Import(import::Command),
    /// Print a shell completion script (bash, zsh, fish), generated from these definitions.
    Completions(completions::Args),
    /// Print the man page reconcile(1) (roff), generated from these definitions.
    Man(completions::ManArgs),
}

/// Exit codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok,
    Error,
    Changes,
    /// `exec`: the exit code of the command run in the container.
    Passed(u8),
}

impl ExitCode {
    /// The process exit code: 0, 1, 2, or the passed-through one.
    pub fn code(self) -> u8 {
        match self {
            ExitCode::Ok => 0,
            ExitCode::Error => 1,
            ExitCode::Changes => 2,
            ExitCode::Passed(c) => c,
        }
    }
}

/// Run the parsed command.
///
/// # Errors
/// Anything that stops the command from producing its report (unreadable repo,
/// unknown environment); reported by `main` with exit code 1.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(path) = &cli.age_identity {
        crate::backend::secrets::set_identity_file(path.clone());
    }
    // Report commands end quietly when their reader goes away (`| head`): see `out`.
    let report = out::quiet_if_closed;
    match cli.command {
        Command::Validate(args) => report(validate::exec(&args)),
        Command::Plan(args) => report(plan::exec(&args)),
        Command::Apply(args) => apply::exec(&args),
        Command::Diff(args) => report(diff::exec(&args)),
        Command::Status(args) => report(status::exec(&args)),
        Command::Watch(args) => watch::exec(&args),
        Command::History(args) => report(history::exec(&args)),
        Command::Rollback(args) => history::rollback(&args),
        Command::Promote(args) => canary::exec(&args, canary::What::Promote),
        Command::Abort(args) => canary::exec(&args, canary::What::Abort),
        Command::Schema(args) => report(schema::exec(&args)),
        Command::Secret(cmd) => secret::exec(&cmd),
        Command::Logs(args) => report(logs::logs(&args)),
        Command::Exec(args) => logs::exec(&args),
        Command::Import(cmd) => import::exec(&cmd),
        Command::Completions(args) => report(completions::exec(&args)),
        Command::Man(args) => report(completions::man(&args)),
    }
}

/// True when stdout is a terminal (colour and progress only then).
pub fn stdout_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// True when stderr is a terminal.
pub fn stderr_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
