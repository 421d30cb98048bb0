//! Resolving secrets: the reconcile process's environment, files, age-encrypted files of
//! the config repo, and the standard output of programs (`from_command`).
//!
//! Resolution happens only when a value is needed (plan/apply/status/watch, the etcd
//! password at connect, or `validate --check-secrets`). Errors name the secret and its
//! source, never a value: a command's stdout is never shown (only its stderr).
//!
//! **Once per process.** `from_age` and `from_command` values are cached in memory for the
//! life of the process, so a program runs at most once per run even when the same secret
//! is needed by the plan and by the etcd connection (and `watch` keeps the value it
//! started with; restart it to pick up a rotated one).
//!
//! **age identities** come from `RECONCILE_AGE_IDENTITY` (the key itself, for a CI secret
//! variable), `--age-identity FILE` and `RECONCILE_AGE_IDENTITY_FILE` (a file as
//! `age-keygen` writes it); every one given is tried. Only X25519 identities are
//! supported.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::secret::{Secret, check_age_header, describe_age, parse_recipient};
use crate::spec::types::{SecretRef, SecretSource};

/// The environment variable holding an age identity itself.
pub const IDENTITY_ENV: &str = "RECONCILE_AGE_IDENTITY";
/// The environment variable naming an age identity file.
pub const IDENTITY_FILE_ENV: &str = "RECONCILE_AGE_IDENTITY_FILE";
/// Overrides the `from_command` timeout (a duration, e.g. `10s`).
pub const COMMAND_TIMEOUT_ENV: &str = "RECONCILE_SECRET_COMMAND_TIMEOUT";
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The most stderr shown for a failing command.
const MAX_STDERR: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}`: environment variable {var} is not set")]
    MissingEnv { name: String, var: String },
    #[error("secret `{name}`: environment variable {var} is empty")]
    EmptyEnv { name: String, var: String },
    #[error("secret `{name}`: cannot read {path}: {reason}")]
    File { name: String, path: String, reason: String },
    #[error("secret `{name}`: age file {path} is not in the config repo (looked along the extends chain)")]
    AgeMissing { name: String, path: String },
    #[error("secret `{name}`: cannot decrypt {file}: no age identity given")]
    AgeNoIdentity { name: String, file: String },
    #[error("secret `{name}`: cannot decrypt {file}: age identity from {source_of}: {reason}")]
    AgeIdentity { name: String, file: String, source_of: String, reason: String },
    #[error("secret `{name}`: cannot decrypt {file}: {reason}")]
    AgeDecrypt { name: String, file: String, reason: String },
    #[error("secret `{name}`: cannot run `{program}`: {reason}")]
    CommandSpawn { name: String, program: String, reason: String },
    #[error("secret `{name}`: `{program}` failed ({status}){}", stderr_suffix(stderr))]
    CommandFailed { name: String, program: String, status: String, stderr: String },
    #[error("secret `{name}`: `{program}` did not finish within {after:?} and was killed{}", stderr_suffix(stderr))]
    CommandTimeout { name: String, program: String, after: Duration, stderr: String },
    #[error("secret `{name}`: the output of `{program}` {reason}")]
    CommandOutput { name: String, program: String, reason: String },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() { "; its stderr was empty".into() } else { format!("; its stderr: {stderr}") }
}

impl SecretError {
    /// The name of the secret the error is about.
    pub fn secret(&self) -> &str {
        match self {
            SecretError::MissingEnv { name, .. }
            | SecretError::EmptyEnv { name, .. }
            | SecretError::File { name, .. }
            | SecretError::AgeMissing { name, .. }
            | SecretError::AgeNoIdentity { name, .. }
            | SecretError::AgeIdentity { name, .. }
            | SecretError::AgeDecrypt { name, .. }
            | SecretError::CommandSpawn { name, .. }
            | SecretError::CommandFailed { name, .. }
            | SecretError::CommandTimeout { name, .. }
            | SecretError::CommandOutput { name, .. } => name,
        }
    }

    pub fn hint(&self) -> String {
        match self {
            SecretError::MissingEnv { var, .. } | SecretError::EmptyEnv { var, .. } => {
                format!("export {var}=... in the environment that runs reconcile (in CI: a masked secret variable)")
            }
            SecretError::File { path, .. } => {
                format!("create {path} readable by the user running reconcile, or change from_file")
            }
            SecretError::AgeMissing { name, .. } => {
                format!("write it with `reconcile secret set --env ENV {name}` and commit it, or fix from_age")
            }
            SecretError::AgeNoIdentity { .. } | SecretError::AgeIdentity { .. } => format!(
                "set {IDENTITY_ENV} to the key (AGE-SECRET-KEY-1…; in CI a masked secret variable), or \
                 {IDENTITY_FILE_ENV} / --age-identity to a key file made by age-keygen"
            ),
            SecretError::AgeDecrypt { .. } => {
                "the file must be encrypted (`age -r RECIPIENT` or `reconcile secret set`) \
                 to a recipient of the identity given; re-encrypt it for the environment's `age.recipients`"
                    .into()
            }
            SecretError::CommandSpawn { .. } => {
                "install the program on the machine running reconcile (on its PATH), or fix from_command".into()
            }
            SecretError::CommandFailed { .. } | SecretError::CommandOutput { .. } => {
                "run the command by hand as the user running reconcile and fix what its stderr says".into()
            }
            SecretError::CommandTimeout { .. } => format!(
                "check that the program does not wait for input (stdin is closed) or the network; \
                 {COMMAND_TIMEOUT_ENV}=60s raises the timeout"
            ),
        }
    }
}

static IDENTITY_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Use `path` as an age identity file (the `--age-identity` flag), for the whole process.
pub fn set_identity_file(path: PathBuf) {
    // A second call (never made by the CLI) keeps the first path.
    let _ = IDENTITY_FILE.set(path);
}

/// Values of `from_age` and `from_command` secrets already resolved by this process.
fn cache() -> &'static Mutex<BTreeMap<String, Secret>> {
    static CACHE: OnceLock<Mutex<BTreeMap<String, Secret>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Resolve one secret, as the environment linked it (`Env::secret_refs`, which carries
/// a `from_age` secret's file found along the extends chain). There is deliberately no
/// resolver taking a bare [`SecretSource`]: it could not find an age file, and a
/// registry password given as `from_age` once failed that way.
///
/// # Errors
/// A [`SecretError`] naming the secret and its source (variable, file, program), never a
/// value.
pub fn resolve_ref(secret: &SecretRef) -> Result<Secret, SecretError> {
    let name = secret.name.as_str();
    match &secret.source {
        SecretSource::FromEnv(var) => match std::env::var(var) {
            Ok(v) if v.is_empty() => Err(SecretError::EmptyEnv { name: name.into(), var: var.clone() }),
            Ok(v) => Ok(Secret::new(v)),
            Err(_) => Err(SecretError::MissingEnv { name: name.into(), var: var.clone() }),
        },
        SecretSource::FromFile(path) => {
            let bytes = std::fs::read(path).map_err(|e| SecretError::File {
                name: name.into(),
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let text = String::from_utf8(bytes).map_err(|_| SecretError::File {
                name: name.into(),
                path: path.clone(),
                reason: "not valid UTF-8".into(),
            })?;
            Ok(Secret::new(strip_newline(text)))
        }
        SecretSource::FromAge(rel) => cached(secret, || decrypt_secret(secret, rel)),
        SecretSource::FromCommand(argv) => cached(secret, || run_command(name, argv, command_timeout())),
    }
}

/// The cached value of `secret`, or `resolve`'s (cached when it succeeds).
fn cached(secret: &SecretRef, resolve: impl FnOnce() -> Result<Secret, SecretError>) -> Result<Secret, SecretError> {
    let key = format!("{}\0{:?}", secret.name, secret.source);
    if let Some(s) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(s);
    }
    let value = resolve()?;
    if let Ok(mut c) = cache().lock() {
        c.insert(key, value.clone());
    }
    Ok(value)
}

/// Resolve all secrets of an environment; every failure is returned, not just the first.
pub fn resolve_all(secrets: &BTreeMap<String, SecretRef>) -> (BTreeMap<String, Secret>, Vec<SecretError>) {
    let mut ok = BTreeMap::new();
    let mut errs = Vec::new();
    for (name, secret) in secrets {
        match resolve_ref(secret) {
            Ok(s) => {
                ok.insert(name.clone(), s);
            }
            Err(e) => errs.push(e),
        }
    }
    (ok, errs)
}

fn strip_newline(text: String) -> String {
    match text.strip_suffix('\n') {
        Some(t) => t.strip_suffix('\r').unwrap_or(t).to_string(),
        None => text,
    }
}

// ---- age ----

/// The X25519 identities given to this process, with where each came from.
///
/// # Errors
/// `(source, reason)` when a source is unreadable or holds no valid identity.
fn identities() -> Result<Vec<age::x25519::Identity>, (String, String)> {
    let mut out = Vec::new();
    if let Ok(text) = std::env::var(IDENTITY_ENV)
        && !text.trim().is_empty()
    {
        out.extend(parse_identities(&text).map_err(|r| (IDENTITY_ENV.to_string(), r))?);
    }
    let files = IDENTITY_FILE
        .get()
        .cloned()
        .into_iter()
        .chain(std::env::var_os(IDENTITY_FILE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
    for path in files {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| (shown.clone(), e.kind().to_string()))?;
        out.extend(parse_identities(&text).map_err(|r| (shown, r))?);
    }
    Ok(out)
}

/// Parse an identity file's text (`age-keygen` format: `#` comments, one key a line).
/// Never echoes a line: it may be a key.
///
/// # Errors
/// A line that is not an X25519 identity, or no identity at all.
pub fn parse_identities(text: &str) -> Result<Vec<age::x25519::Identity>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id = age::x25519::Identity::from_str(line)
            .map_err(|_| format!("line {} is not an age X25519 identity (AGE-SECRET-KEY-1…)", i + 1))?;
        out.push(id);
    }
    if out.is_empty() { Err("no identity in it".into()) } else { Ok(out) }
}

fn decrypt_secret(secret: &SecretRef, rel: &str) -> Result<Secret, SecretError> {
    let name = secret.name.clone();
    let Some(file) = &secret.age_file else {
        return Err(SecretError::AgeMissing { name, path: rel.to_string() });
    };
    let ids = identities().map_err(|(source_of, reason)| SecretError::AgeIdentity {
        name: name.clone(),
        file: file.path.clone(),
        source_of,
        reason,
    })?;
    if ids.is_empty() {
        return Err(SecretError::AgeNoIdentity { name, file: file.path.clone() });
    }
    let plain = decrypt(&file.bytes, &ids).map_err(|reason| SecretError::AgeDecrypt {
        name: name.clone(),
        file: file.path.clone(),
        reason,
    })?;
    let text = String::from_utf8(plain).map_err(|_| SecretError::AgeDecrypt {
        name,
        file: file.path.clone(),
        reason: "the decrypted value is not valid UTF-8".into(),
    })?;
    Ok(Secret::new(strip_newline(text)))
}

/// Decrypt an age file (armored or binary) with any of `ids`.
///
/// # Errors
/// Not an age file, encrypted to none of `ids`, or damaged.
pub fn decrypt(bytes: &[u8], ids: &[age::x25519::Identity]) -> Result<Vec<u8>, String> {
    let decryptor = age::Decryptor::new(age::armor::ArmoredReader::new(bytes)).map_err(describe_age)?;
    check_age_header(bytes)?;
    let mut reader = decryptor.decrypt(ids.iter().map(|i| i as &dyn age::Identity)).map_err(describe_age)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(|e| format!("the file is damaged ({})", e.kind()))?;
    Ok(out)
}

/// Encrypt `plain` to `recipients` (`age1…`), ASCII-armored as `age -a` writes it.
///
/// # Errors
/// A recipient that is not an X25519 `age1…` key, or none at all.
pub fn encrypt_armored(plain: &[u8], recipients: &[String]) -> Result<String, String> {
    let parsed = recipients.iter().map(|r| parse_recipient(r)).collect::<Result<Vec<_>, _>>()?;
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let armor =
        age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor).map_err(|e| e.to_string())?;
    let mut w = encryptor.wrap_output(armor).map_err(|e| e.to_string())?;
    w.write_all(plain).map_err(|e| e.to_string())?;
    w.finish().and_then(|a| a.finish()).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

// ---- from_command ----

fn command_timeout() -> Duration {
    std::env::var(COMMAND_TIMEOUT_ENV)
        .ok()
        .and_then(|v| crate::spec::units::duration(&v).ok())
        .unwrap_or(DEFAULT_COMMAND_TIMEOUT)
}

/// Run `argv` without a shell, stdin closed; its stdout (one trailing newline removed) is
/// the value. Killed after `timeout`.
///
/// # Errors
/// The program cannot start, exits non-zero, runs too long, or prints nothing or non-UTF-8;
/// the error carries its stderr, never its stdout.
pub fn run_command(name: &str, argv: &[String], timeout: Duration) -> Result<Secret, SecretError> {
    let program = argv.first().cloned().unwrap_or_default();
    let spawn_err = |reason: String| SecretError::CommandSpawn { name: name.into(), program: program.clone(), reason };
    if program.is_empty() {
        return Err(spawn_err("from_command is empty".into()));
    }
    let mut child = Command::new(&program)
        .args(argv.iter().skip(1))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_err(e.kind().to_string()))?;
    let out_reader = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let err_reader = child.stderr.take().map(|s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.take(64 * 1024).read_to_end(&mut v);
            v
        })
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(spawn_err(e.kind().to_string())),
        }
    };
    // A grandchild that keeps the pipes open must not hang us: the readers are only
    // joined once the direct child is gone, and are abandoned after a grace period.
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| -> Vec<u8> {
        let Some(h) = h else { return Vec::new() };
        let until = Instant::now() + Duration::from_millis(500);
        while !h.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if h.is_finished() { h.join().unwrap_or_default() } else { Vec::new() }
    };
    let stderr = shown_stderr(&join(err_reader));
    let Some(status) = status else {
        return Err(SecretError::CommandTimeout { name: name.into(), program, after: timeout, stderr });
    };
    let stdout = join(out_reader);
    if !status.success() {
        let status = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        };
        return Err(SecretError::CommandFailed { name: name.into(), program, status, stderr });
    }
    let text = String::from_utf8(stdout).map_err(|_| SecretError::CommandOutput {
        name: name.into(),
        program: program.clone(),
        reason: "is not valid UTF-8".into(),
    })?;
    let value = strip_newline(text);
    if value.is_empty() {
        return Err(SecretError::CommandOutput { name: name.into(), program, reason: "is empty".into() });
    }
    Ok(Secret::new(value))
}

fn shown_stderr(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.chars().count() > MAX_STDERR {
        let cut: String = text.chars().take(MAX_STDERR).collect();
        format!("{cut}…")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, source: SecretSource) -> SecretRef {
        SecretRef { name: name.into(), source, age_file: None }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn file_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let s = resolve_ref(&r("db", SecretSource::FromFile(p.to_string_lossy().into()))).unwrap();
        assert_eq!(s.expose(), "s3cret");
        let e = resolve_ref(&r("db", SecretSource::FromEnv("RECONCILE_TEST_SURELY_UNSET_VAR".into()))).unwrap_err();
        assert_eq!(e.to_string(), "secret `db`: environment variable RECONCILE_TEST_SURELY_UNSET_VAR is not set");
        let e = resolve_ref(&r("db", SecretSource::FromFile("/nonexistent/x".into()))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x") && !e.to_string().contains("s3cret"));
    }

    #[test]
    fn command_stdout_is_the_value() {
        let s = run_command("t", &argv(&["printf", "v4lue\\n"]), Duration::from_secs(5)).unwrap();
        assert_eq!(s.expose(), "v4lue");
    }

    #[test]
    fn failing_command_shows_stderr_never_stdout() {
        let e = run_command(
            "db",
            &argv(&["sh", "-c", "echo TOPSECRET; echo 'vault: permission denied' >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("secret `db`") && text.contains("`sh`") && text.contains("exit status 3"), "{text}");
        assert!(text.contains("vault: permission denied"), "{text}");
        assert!(!text.contains("TOPSECRET"), "{text}");
    }

    #[test]
    fn hanging_command_is_killed() {
        let started = Instant::now();
        let e = run_command("slow", &argv(&["sleep", "30"]), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, SecretError::CommandTimeout { .. }), "{e}");
        assert!(e.to_string().contains("`sleep`"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_and_empty_output() {
        let e = run_command("x", &argv(&["/nonexistent/vault"]), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, SecretError::CommandSpawn { .. }) && e.to_string().contains("/nonexistent/vault"));
        let e = run_command("x", &argv(&["true"]), Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn age_round_trip_and_wrong_key() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let armored = encrypt_armored(b"hunter2\n", &[recipient]).unwrap();
        assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(check_age_header(armored.as_bytes()).is_ok());
        assert_eq!(decrypt(armored.as_bytes(), std::slice::from_ref(&id)).unwrap(), b"hunter2\n");
        let e = decrypt(armored.as_bytes(), &[other]).unwrap_err();
        assert!(e.contains("not encrypted to any"), "{e}");
        let e = check_age_header(b"hunter2").unwrap_err();
        assert!(e.contains("not an age file"), "{e}");
        assert!(encrypt_armored(b"x", &["age1nope".into()]).is_err());
    }

    #[test]
    fn identity_lines_are_never_echoed() {
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let key = id.to_string().expose_secret().to_string();
        let text = format!("# created: now\n# public key: {}\n{key}\n", id.to_public());
        assert_eq!(parse_identities(&text).unwrap().len(), 1);
        let Err(e) = parse_identities("AGE-SECRET-KEY-1NOTAKEY\n") else { panic!("a bad key was accepted") };
        assert!(e.contains("line 1") && !e.contains("NOTAKEY"), "{e}");
        assert!(parse_identities("# only comments\n").is_err_and(|e| e.contains("no identity")));
    }
}
