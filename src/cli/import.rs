//! `reconcile import compose FILE… --env E [--out DIR]`: the edge around the pure
//! `import::compose`. Reads the compose files, the project's `.env` and the process
//! environment (for `${VAR}`), and any `env_file`s; prints every diagnostic on stderr;
//! writes the environment only when there is no error, into a temporary directory
//! renamed into place, so a failed import changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::ExitCode;
use crate::diag;
use crate::import::compose::{self, ComposeFile, Request};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Import docker compose files (merged in order, as `docker compose -f A -f B`) as one environment.
    Compose(ComposeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ComposeArgs {
    /// Compose files; later files override earlier ones as compose merges them.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Name of the environment to write (environments/E/).
    #[arg(long)]
    pub env: String,
    /// Config repo to write into.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Docker endpoint of the environment's host.
    #[arg(long, default_value = "unix:///var/run/docker.sock")]
    pub docker: String,
    /// Port pool of that host (bridge-mode apps are published on it).
    #[arg(long, default_value = "20000-20999")]
    pub host_ports: String,
    /// Also write an LB (`lb:` + templates/nginx.conf.j2) listening on the ports compose
    /// published, and an `lb:` entry for each app with a published port.
    #[arg(long, value_enum)]
    pub lb: Option<Lb>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lb {
    Nginx,
}

/// # Errors
/// A compose file cannot be read, the environment already exists, or writing fails.
pub fn exec(cmd: &Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Compose(args) => compose(args),
    }
}

fn compose(args: &ComposeArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for f in &args.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read compose file {}", f.display()))?;
        files.push(ComposeFile { name: f.display().to_string(), text });
    }
    let first = args.files.first().context("no compose file given")?;
    // `docker-compose.yml` alone has the empty path as its parent: the working directory
    let parent = first.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let project_dir =
        std::path::absolute(parent).with_context(|| format!("cannot resolve the directory of {}", first.display()))?;
    // compose: the process environment wins over the project's .env file
    let mut vars = BTreeMap::new();
    let dotenv = project_dir.join(".env");
    if let Ok(text) = std::fs::read_to_string(&dotenv) {
        let pairs = compose::parse_env_file(&text, &BTreeMap::new())
            .map_err(|(line, msg)| anyhow::anyhow!("{}:{line}: {msg}", dotenv.display()))?;
        vars.extend(pairs);
    }
    vars.extend(std::env::vars());
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| e.to_string());
    let req = Request {
        files: files.clone(),
        env: args.env.clone(),
        project_dir: project_dir.display().to_string(),
        vars: &vars,
        read_file: &read,
        docker: args.docker.clone(),
        host_ports: args.host_ports.clone(),
        lb: args.lb == Some(Lb::Nginx),
    };
    let imported = compose::import(&req);
    let sources: BTreeMap<String, String> = files.into_iter().map(|f| (f.name, f.text)).collect();
    eprint!("{}", diag::render_text(&imported.diagnostics, &sources, super::stderr_is_tty()));
    if imported.diagnostics.iter().any(diag::Diagnostic::is_error) {
        eprintln!("import failed: nothing written");
        return Ok(ExitCode::Error);
    }
    let env_dir = args.out.join("environments").join(&args.env);
    anyhow::ensure!(
        !env_dir.exists(),
        "{} already exists: choose another --env, or remove it to import again",
        env_dir.display()
    );
    let prefix = format!("environments/{}/", args.env);
    let tmp = args.out.join("environments").join(format!(".{}.import-tmp", args.env));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove leftover {}", tmp.display()))?;
    }
    for (path, text) in &imported.files {
        let rel = path.strip_prefix(&prefix).with_context(|| format!("unexpected output path {path}"))?;
        let dest = tmp.join(rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&dest, text).with_context(|| format!("cannot write {}", dest.display()))?;
    }
    std::fs::rename(&tmp, &env_dir)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), env_dir.display()))?;
    let unmapped = imported.diagnostics.iter().filter(|d| d.code == "compose-unmapped").count();
    let apps: Vec<&str> = imported.apps.values().map(String::as_str).collect();
    println!(
        "imported {} service(s) into {}: {}{}",
        apps.len(),
        env_dir.display(),
        apps.join(", "),
        if unmapped == 0 { String::new() } else { format!(" ({unmapped} key(s) not imported, listed above)") }
    );
    println!("next: reconcile validate --repo {} --env {}", args.out.display(), args.env);
    Ok(ExitCode::Ok)
}
