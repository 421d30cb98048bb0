//! `reconcile secret set|list`: age-encrypted secrets in a local checkout of the config repo.
//!
//! `set` reads the value from stdin (never from an argument, so it stays out of shell
//! history and `ps`), encrypts it to the environment's `age.recipients` and writes an
//! ASCII-armored file, as `age -a -r …` would. It never prints the value.

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, bail};

use super::common::load_env;
use super::{ExitCode, RepoArgs};
use crate::backend::{git, secrets};
use crate::spec::types::SecretSource;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Encrypt stdin for the environment's age recipients into its secrets/NAME.age.
    Set(SetArgs),
    /// The environment's secrets: names and sources, never values.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long)]
    pub env: String,
    /// The secret's name (its key under `secrets:`).
    pub name: String,
    /// Where to write, relative to the environment directory. Default: the path of its
    /// existing `from_age` entry, else secrets/NAME.age.
    #[arg(long)]
    pub file: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long)]
    pub env: String,
}

/// # Errors
/// Unreadable repo, invalid environment, no `age.recipients`, a remote repo, an empty
/// value on stdin, or the file cannot be written.
pub fn exec(cmd: &Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Set(a) => set(a),
        Command::List(a) => list(a),
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn set(a: &SetArgs) -> anyhow::Result<ExitCode> {
    if !valid_name(&a.name) {
        bail!("`{}` is not a valid secret name; use letters, digits and `_`, not starting with a digit", a.name);
    }
    let root = Path::new(&a.repo.repo);
    if !root.join("environments").is_dir() {
        bail!(
            "`reconcile secret set` writes into a local checkout: --repo {} is not a directory with environments/; \
             clone the config repo and pass its directory",
            a.repo.repo
        );
    }
    // Not `load_env`: an environment whose `from_age` file is missing does not validate,
    // and writing that file is what this command is for.
    let cache = a.repo.cache_dir.clone().unwrap_or_else(git::default_cache_dir);
    let snap = git::snapshot(&a.repo.repo, a.repo.reference.as_deref(), &cache)
        .with_context(|| format!("cannot read config repo {}", a.repo.repo))?;
    let loaded = crate::spec::load::load_only(&snap, Some(&a.env));
    let Some(env) = loaded.envs.get(&a.env) else {
        let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
        eprint!("{}", crate::diag::render_text(&errors, &crate::spec::sources(&snap), super::stderr_is_tty()));
        bail!(
            "environment `{}` could not be loaded; fix the errors above (`reconcile validate --env {}`)",
            a.env,
            a.env
        );
    };
    let Some(age) = env.spec.age.as_ref().filter(|g| !g.recipients.is_empty()) else {
        bail!(
            "environment `{}` has no age recipients; add `age: {{recipients: [age1…]}}` to its environment.yaml \
             (`age-keygen -y KEYFILE` prints a key's recipient)",
            a.env
        );
    };
    let existing = env.spec.secrets.get(&a.name);
    let rel = match (&a.file, existing) {
        (Some(f), _) => f.clone(),
        (None, Some(SecretSource::FromAge(p))) => p.clone(),
        (None, _) => format!("secrets/{}.age", a.name),
    };
    let rel = rel.trim_start_matches("./").to_string();
    if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
        bail!("--file {rel} must be relative to the environment directory, without `..`");
    }
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value).context("cannot read the secret's value from stdin")?;
    let value = value.strip_suffix('\n').unwrap_or(&value);
    if value.is_empty() {
        bail!(
            "no value on stdin; pipe it in: `printf %s \"$VALUE\" | reconcile secret set --env {} {}`",
            a.env,
            a.name
        );
    }
    let armored = secrets::encrypt_armored(value.as_bytes(), &age.recipients)
        .map_err(|e| anyhow::anyhow!("cannot encrypt: {e}"))?;
    // An existing file along the chain is overwritten where it is; a new one goes to the
    // environment's own directory.
    let target = crate::spec::types::age_file(&rel, &env.dirs, &snap.files)
        .map(|f| f.path)
        .unwrap_or_else(|| format!("environments/{}/{rel}", a.env));
    let path = root.join(&target);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, armored).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {} (encrypted to {} recipient(s))", path.display(), age.recipients.len());
    match existing {
        Some(SecretSource::FromAge(p)) if p.trim_start_matches("./") == rel => {}
        _ => println!("add to environments/{}/environment.yaml:\nsecrets:\n  {}: {{from_age: {rel}}}", a.env, a.name),
    }
    Ok(ExitCode::Ok)
}

fn list(a: &ListArgs) -> anyhow::Result<ExitCode> {
    let l = load_env(&a.repo, &a.env, None)?;
    let env = l.env();
    if env.secret_refs.is_empty() {
        println!("environment `{}` has no secrets", a.env);
    }
    for (name, r) in &env.secret_refs {
        let source = match &r.source {
            SecretSource::FromEnv(v) => format!("from_env {v}"),
            SecretSource::FromFile(p) => format!("from_file {p}"),
            SecretSource::FromAge(p) => match &r.age_file {
                Some(f) => format!("from_age {p} ({})", l.snap.display(&f.path)),
                None => format!("from_age {p} (missing)"),
            },
            SecretSource::FromCommand(argv) => format!("from_command {}", argv.join(" ")),
        };
        println!("{name}\t{source}");
    }
    Ok(ExitCode::Ok)
}
