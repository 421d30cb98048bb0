//! `reconcile validate`: load the repo, run every check, report all problems (on a
//! locked stdout: a reader that goes away ends it quietly, see `cli::out`).

use std::io::Write as _;

use anyhow::Context as _;
use clap::ValueEnum;

use super::{ExitCode, RepoArgs};
use crate::backend::{git, secrets};
use crate::diag::{self, Diagnostic};
use crate::spec;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Only this environment (and the files of the environments it extends).
    #[arg(long)]
    pub env: Option<String>,
    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also resolve every secret (from_env, from_file, from_command; from_age decrypted) and
    /// report those that fail.
    /// Values are never printed.
    #[arg(long)]
    pub check_secrets: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// GitHub Actions workflow commands (`::error file=…,line=…,col=…::…`): inline annotations on a PR.
    Github,
}

/// # Errors
/// The repo cannot be read, or `--env` names no environment.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let cache = args.repo.cache_dir.clone().unwrap_or_else(git::default_cache_dir);
    let snap = git::snapshot(&args.repo.repo, args.repo.reference.as_deref(), &cache)
        .with_context(|| format!("cannot read config repo {}", args.repo.repo))?;
    let (loaded, mut diags) = spec::validate(&snap, args.env.as_deref())?;
    if args.check_secrets {
        for (name, env) in &loaded.envs {
            if env.spec.is_abstract || args.env.as_deref().is_some_and(|e| e != name) {
                continue;
            }
            let (_, errors) = secrets::resolve_all(&env.secret_refs);
            for e in errors {
                let secret = e.secret().to_string();
                let (file, pos) = env.doc.locate(&format!("/secrets/{}", spec::yaml::escape(&secret)));
                diags.push(
                    Diagnostic::error("secret", format!("environment `{name}`: {e}"))
                        .hint(e.hint())
                        .at(snap.display(&file), pos),
                );
            }
            // etcd.tls files live on the machine running reconcile: checked here, like secrets.
            let tls = env.spec.etcd.as_ref().and_then(|e| e.tls.as_ref());
            for (field, path) in tls.into_iter().flat_map(|t| [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)]) {
                let Some(path) = path else { continue };
                if let Err(err) = std::fs::File::open(path) {
                    let (file, pos) = env.doc.locate(&format!("/etcd/tls/{field}"));
                    diags.push(
                        Diagnostic::error(
                            "etcd",
                            format!("environment `{name}`: etcd tls {field} file `{path}`: {}", err.kind()),
                        )
                        .hint("relative paths are relative to the directory reconcile runs in")
                        .at(snap.display(&file), pos),
                    );
                }
            }
        }
        diag::normalize(&mut diags);
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let checked: Vec<&String> = loaded
        .envs
        .iter()
        .filter(|(n, e)| !e.spec.is_abstract && args.env.as_deref().is_none_or(|o| o == *n))
        .map(|(n, _)| n)
        .collect();
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            let mut v = diag::render_json(&diags);
            v["origin"] = serde_json::to_value(&snap.origin)?;
            v["environments"] = serde_json::to_value(&checked)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Format::Github => {
            write!(out, "{}", diag::render_github(&diags))?;
            let state = snap.origin.describe();
            if errors == 0 {
                writeln!(out, "ok: valid at {state}")?;
            } else {
                writeln!(out, "validation failed at {state}: {errors} error(s)")?;
            }
        }
        Format::Text => {
            let sources = spec::sources(&snap);
            write!(out, "{}", diag::render_text(&diags, &sources, super::stdout_is_tty()))?;
            let state = snap.origin.describe();
            if errors == 0 {
                let names: Vec<&str> = checked.iter().map(|s| s.as_str()).collect();
                writeln!(
                    out,
                    "ok: {} valid at {state}",
                    if names.is_empty() { "no deployable environment".to_string() } else { names.join(", ") }
                )?;
            } else {
                writeln!(out, "validation failed at {state}")?;
            }
        }
    }
    out.flush()?;
    Ok(if errors == 0 { ExitCode::Ok } else { ExitCode::Error })
}
