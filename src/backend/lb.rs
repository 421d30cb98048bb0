//! The load balancer's config file, on the machine running reconcile: reading it back
//! ([`read`]), replacing it only with a version its checker accepts ([`write_checked`]),
//! and asking the LB to pick it up ([`reload`]).
//!
//! **Invariant: a bad render never reaches a running LB.** `apply` calls
//! [`write_checked`] and, only when it returns `Ok`, [`reload`]. [`write_checked`]
//! returns `Ok` only when the checker accepted the new content; on every error the file
//! the LB would load is the previous one (untouched, or restored before returning).
//!
//! **How a file is replaced.** Next to the file `dir/name` the module uses two scratch
//! names, `dir/.name.reconcile-tmp` (a candidate or a copy being written) and
//! `dir/.name.reconcile-bak` (the previous version while an unchecked candidate is in
//! place), plus an empty marker `dir/.name.reconcile-new` when there was no previous
//! version. They start with a dot and end in neither `.conf` nor `.cfg`, so an LB
//! including `conf.d/*.conf` never loads them.
//! - `check` with `{file}` (confd's `{{.src}}`; haproxy `-c -f {file}`): the candidate is
//!   written to the temp name and checked there; only if the check passes is it renamed
//!   over the file (atomic). The file is never touched by a rejected render.
//! - `check` without `{file}` (nginx `-t`: the main config includes our file, so the
//!   candidate can only be checked in place): the previous file is copied to the backup
//!   name, the candidate renamed into place, the check run, and the backup renamed back
//!   on failure (or the file removed again when there was none before). All of this
//!   happens before [`reload`] is called.
//! - no `check`: the candidate is renamed into place atomically.
//!
//! Every step writes a complete file under a scratch name, `fsync`s it and renames it:
//! readers see either the whole old or the whole new file, never a partial one. The
//! candidate keeps the previous file's permission bits (a new file gets the umask
//! default). A symlink at the path is followed: its target is replaced, the link kept.
//!
//! **Crash safety.** Each call first repairs what a killed earlier call may have left:
//! a leftover temp file is deleted; a leftover backup means an unchecked candidate may
//! be in place, so the backup is renamed back over the file (a leftover marker: the
//! file is removed again). Then the call proceeds as usual, so a crash at any point
//! never breaks the next run, and the next run starts from the last checked version.
//! Two reconcile processes must not write the same file at once; the apply lock in etcd
//! ensures that.
//!
//! **Commands.** `check` and `reload` are argv lists, run without a shell (`PATH`
//! lookup for the program), stdin closed, stdout and stderr captured (the first
//! [`MAX_OUTPUT`] bytes of each), bounded by [`COMMAND_TIMEOUT`] (then killed). A
//! command that daemonises and leaves its output pipes open is not waited for beyond its
//! own exit plus a short grace period. These functions block; async callers use
//! `spawn_blocking`.
//!
//! Observation only reads the file: a missing file is a state, not an error.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::docker;

/// How long a check or reload command may run before it is killed and reported.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How many bytes of a command's stdout, and of its stderr, are kept for error messages.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// After a command exits, how long to wait for its output pipes to close (a daemonised
/// grandchild may hold them open for ever).
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// The placeholder in a `check` argument replaced by the candidate file's path.
pub const FILE_PLACEHOLDER: &str = "{file}";

/// Errors reading, writing, checking or reloading the LB config; each names the path or
/// the command, and a command's failure carries its output.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("cannot read LB config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("LB config {path} is not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("cannot write LB config {path}: {what}: {source}")]
    Write { path: String, what: String, source: std::io::Error },
    #[error(
        "the LB config check `{command}` rejected the new {path}; the previous version is kept \
         and nothing was reloaded:\n{output}"
    )]
    CheckFailed { path: String, command: String, output: String },
    #[error(
        "the LB config check `{command}` rejected the new {path}, and restoring the previous \
         version from {backup} failed: {source}; restore it by hand before reloading the LB. \
         Checker output:\n{output}"
    )]
    RestoreFailed { path: String, backup: String, command: String, output: String, source: std::io::Error },
    #[error("LB reload `{command}` failed:\n{output}")]
    ReloadFailed { command: String, output: String },
    #[error("cannot run `{command}`: {source}; check that the program is installed and on PATH")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` did not finish within {after:?} and was killed; output so far:\n{output}")]
    Timeout { command: String, after: Duration, output: String },
    #[error("the LB {what} command is empty; give it as an argv list, e.g. [nginx, -t]")]
    EmptyCommand { what: &'static str },
    #[error("LB config path {path} does not name a file")]
    NotAFile { path: String },
    /// An LB in containers: a Docker step on one instance failed.
    #[error("LB in container `{container}` on host `{host}`: {cause}")]
    Container { host: String, container: String, cause: String },
    /// An LB in containers: its instances could not be listed.
    #[error("LB in app `{app}`: {cause}")]
    Instances { app: String, cause: String },
    /// An LB in containers: the reload failed in some instances (the others reloaded).
    #[error("LB reload `{command}` failed in {} of {total} instances (retried by the next apply):\n{}", .failed.len(), .failed.join("\n"))]
    ReloadFailedIn { command: String, total: usize, failed: Vec<String> },
}

/// The current content of the LB file, `None` when it does not exist.
///
/// # Errors
/// The file exists but cannot be read or is not UTF-8.
pub fn read(path: &str) -> Result<Option<String>, LbError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| LbError::NotUtf8 { path: path.into() }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LbError::Read { path: path.into(), source: e }),
    }
}

/// Write `content` to `path` safely, so that only a version `check` accepts is ever left
/// in place (see the module docs for the exact steps).
///
/// With `check` containing `{file}`: the candidate is written to `.<file>.reconcile-tmp`
/// in the same directory, checked there, then renamed over `path` atomically. Without
/// `{file}`: the previous file is kept as `.<file>.reconcile-bak`, the candidate renamed
/// into place, `check` run, and the backup restored if it fails. With no `check`: an
/// atomic replace. The parent directory is created when missing. Leftovers of a killed
/// earlier call are repaired first; no temp or backup file is left behind on return
/// (except after [`LbError::RestoreFailed`], where the backup is the only good copy).
///
/// Blocking: runs `check` as a child process (see [`COMMAND_TIMEOUT`]).
///
/// # Errors
/// - [`LbError::CheckFailed`] (path, command, the checker's stderr and stdout): the
///   candidate was rejected; the previous file is untouched or restored.
/// - [`LbError::Spawn`], [`LbError::Timeout`], [`LbError::EmptyCommand`]: the check could
///   not be run to completion; the previous file is untouched or restored.
/// - [`LbError::Write`], [`LbError::NotAFile`]: a filesystem step failed (named in the
///   message); the previous file is untouched or restored.
/// - [`LbError::RestoreFailed`]: the check failed and the backup could not be renamed
///   back; the message names the backup to restore by hand.
pub fn write_checked(path: &str, content: &str, check: Option<&[String]>) -> Result<(), LbError> {
    if check.is_some_and(<[String]>::is_empty) {
        return Err(LbError::EmptyCommand { what: "check" });
    }
    let files = Files::new(path)?;
    if let Some(dir) = files.dir() {
        fs::create_dir_all(dir).map_err(|e| files.err("creating its directory", e))?;
    }
    files.recover()?;
    let previous = match fs::metadata(&files.target) {
        Ok(m) if m.is_file() => Some(m.permissions()),
        Ok(_) => return Err(LbError::NotAFile { path: path.into() }),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(files.err("reading its metadata", e)),
    };
    let result = match check {
        None => files.replace(content.as_bytes(), previous.as_ref()),
        Some(argv) if argv.iter().any(|a| a.contains(FILE_PLACEHOLDER)) => {
            files.check_then_replace(content.as_bytes(), previous.as_ref(), argv)
        }
        Some(argv) => files.replace_then_check(content.as_bytes(), previous.as_ref(), argv),
    };
    match &result {
        Ok(()) => tracing::debug!(path, "LB config written"),
        Err(e) => tracing::debug!(path, error = %e, "LB config not written"),
    }
    result
}

/// Run the LB's reload command (argv, no shell), e.g. `[nginx, -s, reload]` or
/// `[systemctl, reload, haproxy]`.
///
/// Blocking (see [`COMMAND_TIMEOUT`]). Note that most LBs reload asynchronously: success
/// means the reload was requested, not that every worker already runs the new config.
///
/// # Errors
/// [`LbError::ReloadFailed`] with the command's stderr and stdout when it exits non-zero;
/// [`LbError::Spawn`], [`LbError::Timeout`] or [`LbError::EmptyCommand`] when it cannot
/// be run to completion.
pub fn reload(command: &[String]) -> Result<(), LbError> {
    if command.is_empty() {
        return Err(LbError::EmptyCommand { what: "reload" });
    }
    let ran = run(command)?;
    if ran.status.success() {
        tracing::debug!(command = %argv_text(command), "LB reloaded");
        Ok(())
    } else {
        Err(LbError::ReloadFailed { command: argv_text(command), output: ran.describe() })
    }
}

/// The managed file and its scratch names.
struct Files {
    /// As given, for messages.
    path: String,
    /// The file written: `path`, or the target of the symlink at `path`.
    target: PathBuf,
    tmp: PathBuf,
    bak: PathBuf,
    new_marker: PathBuf,
}

impl Files {
    fn new(path: &str) -> Result<Self, LbError> {
        let given = Path::new(path);
        let target = match fs::symlink_metadata(given) {
            Ok(m) if m.file_type().is_symlink() => fs::canonicalize(given).map_err(|e| LbError::Write {
                path: path.into(),
                what: "resolving the symlink".into(),
                source: e,
            })?,
            _ => given.to_path_buf(),
        };
        let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Err(LbError::NotAFile { path: path.into() });
        };
        let scratch = |suffix: &str| target.with_file_name(format!(".{name}.reconcile-{suffix}"));
        Ok(Files { path: path.into(), tmp: scratch("tmp"), bak: scratch("bak"), new_marker: scratch("new"), target })
    }

    /// The parent directory, `None` for a bare file name (the working directory).
    fn dir(&self) -> Option<&Path> {
        self.target.parent().filter(|d| !d.as_os_str().is_empty())
    }

    fn err(&self, what: impl Into<String>, source: std::io::Error) -> LbError {
        LbError::Write { path: self.path.clone(), what: what.into(), source }
    }

    /// Repair what a killed earlier call left behind (see the module docs).
    fn recover(&self) -> Result<(), LbError> {
        remove_if_exists(&self.tmp)
            .map_err(|e| self.err(format!("removing the leftover {}", self.tmp.display()), e))?;
        if self.bak.exists() {
            tracing::warn!(path = %self.path, "a previous run was interrupted while checking the LB config; restoring the previous version");
            fs::rename(&self.bak, &self.target)
                .map_err(|e| self.err(format!("restoring the leftover backup {}", self.bak.display()), e))?;
            self.sync_dir();
        } else if self.new_marker.exists() {
            tracing::warn!(path = %self.path, "a previous run was interrupted while checking the LB config; removing its unchecked file");
            remove_if_exists(&self.target)
                .map_err(|e| self.err("removing an unchecked file left by an interrupted run", e))?;
        }
        remove_if_exists(&self.new_marker)
            .map_err(|e| self.err(format!("removing the leftover {}", self.new_marker.display()), e))?;
        Ok(())
    }

    /// No check: write the candidate under the temp name and rename it into place.
    fn replace(&self, content: &[u8], perms: Option<&fs::Permissions>) -> Result<(), LbError> {
        self.write_tmp(content, perms)?;
        self.tmp_into_place()
    }

    /// `{file}` check: check the candidate under the temp name, then rename it into place.
    fn check_then_replace(
        &self,
        content: &[u8],
        perms: Option<&fs::Permissions>,
        argv: &[String],
    ) -> Result<(), LbError> {
        self.write_tmp(content, perms)?;
        let tmp = self.tmp.to_string_lossy();
        let argv: Vec<String> = argv.iter().map(|a| a.replace(FILE_PLACEHOLDER, &tmp)).collect();
        match self.check(&argv) {
            Ok(()) => self.tmp_into_place(),
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                Err(e)
            }
        }
    }

    /// Check in place: back up, move the candidate in, check, restore on failure.
    fn replace_then_check(
        &self,
        content: &[u8],
        perms: Option<&fs::Permissions>,
        argv: &[String],
    ) -> Result<(), LbError> {
        let had_previous = perms.is_some();
        if had_previous {
            // The backup is written under the temp name and renamed: a backup that exists
            // is always complete, so recovery may trust it.
            let old = fs::read(&self.target).map_err(|e| self.err("reading it for the backup", e))?;
            self.write_tmp(&old, perms)?;
            fs::rename(&self.tmp, &self.bak).map_err(|e| {
                let _ = fs::remove_file(&self.tmp);
                self.err(format!("creating the backup {}", self.bak.display()), e)
            })?;
        } else {
            File::create(&self.new_marker)
                .and_then(|f| f.sync_all())
                .map_err(|e| self.err(format!("creating the marker {}", self.new_marker.display()), e))?;
        }
        self.sync_dir();
        // From here on an unchecked candidate may be in place: every failure undoes it.
        let moved_in = self.write_tmp(content, perms).and_then(|()| self.tmp_into_place());
        let checked = moved_in.and_then(|()| self.check(argv));
        match checked {
            Ok(()) => {
                let scratch = if had_previous { &self.bak } else { &self.new_marker };
                fs::remove_file(scratch).map_err(|e| self.err(format!("removing {}", scratch.display()), e))?;
                self.sync_dir();
                Ok(())
            }
            Err(e) => self.undo(had_previous, argv, e),
        }
    }

    /// Put the previous state back after a failed in-place check; returns `failure`, or
    /// [`LbError::RestoreFailed`] when the previous state cannot be put back.
    fn undo(&self, had_previous: bool, argv: &[String], failure: LbError) -> Result<(), LbError> {
        let _ = fs::remove_file(&self.tmp);
        let restored = if had_previous {
            fs::rename(&self.bak, &self.target)
        } else {
            remove_if_exists(&self.target).and_then(|()| remove_if_exists(&self.new_marker))
        };
        self.sync_dir();
        match restored {
            Ok(()) => Err(failure),
            Err(source) => {
                let output = match failure {
                    LbError::CheckFailed { output, .. } => output,
                    other => other.to_string(),
                };
                let command = argv_text(argv);
                let backup = if had_previous {
                    self.bak.display().to_string()
                } else {
                    "(none: there was no previous file, delete it)".into()
                };
                Err(LbError::RestoreFailed { path: self.path.clone(), backup, command, output, source })
            }
        }
    }

    /// Run `argv` as the check of the candidate.
    fn check(&self, argv: &[String]) -> Result<(), LbError> {
        let ran = run(argv)?;
        if ran.status.success() {
            Ok(())
        } else {
            Err(LbError::CheckFailed { path: self.path.clone(), command: argv_text(argv), output: ran.describe() })
        }
    }

    /// Write `content` to the temp name (fresh file, `fsync`ed) with `perms`.
    fn write_tmp(&self, content: &[u8], perms: Option<&fs::Permissions>) -> Result<(), LbError> {
        write_new(&self.tmp, content, perms).map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            self.err(format!("writing {}", self.tmp.display()), e)
        })
    }

    /// Rename the temp file over the target (atomic), then `fsync` the directory.
    fn tmp_into_place(&self) -> Result<(), LbError> {
        fs::rename(&self.tmp, &self.target).map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            self.err(format!("renaming {} into place", self.tmp.display()), e)
        })?;
        self.sync_dir();
        Ok(())
    }

    /// Make renames durable. Best effort: not every filesystem lets a directory be synced,
    /// and the rename itself already happened.
    fn sync_dir(&self) {
        let dir = self.dir().unwrap_or(Path::new("."));
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot fsync the LB config directory");
        }
    }
}

/// Create `path` (which must not exist), write `content`, set `perms`, `fsync`.
fn write_new(path: &Path, content: &[u8], perms: Option<&fs::Permissions>) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    if let Some(p) = perms {
        f.set_permissions(p.clone())?;
    }
    f.write_all(content)?;
    f.sync_all()
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// An argv list as shown in messages.
fn argv_text(argv: &[String]) -> String {
    argv.join(" ")
}

/// A finished command.
struct Ran {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Ran {
    /// The command's stderr then stdout, or its exit status when it printed nothing.
    fn describe(&self) -> String {
        let text = combine(&self.stdout, &self.stderr);
        if text.is_empty() { format!("({}, no output)", self.status) } else { text }
    }
}

fn combine(stdout: &[u8], stderr: &[u8]) -> String {
    let parts = [stderr, stdout].map(|b| String::from_utf8_lossy(b).trim().to_owned());
    parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n")
}

/// Run `argv` (non-empty) without a shell, capturing its output, bounded by
/// [`COMMAND_TIMEOUT`].
fn run(argv: &[String]) -> Result<Ran, LbError> {
    let command = argv_text(argv);
    let Some((program, args)) = argv.split_first() else {
        return Err(LbError::EmptyCommand { what: "check" });
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LbError::Spawn { command: command.clone(), source })?;
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let output = combine(&stdout.finish(), &stderr.finish());
                return Err(LbError::Timeout { command, after: COMMAND_TIMEOUT, output });
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                let _ = child.kill();
                return Err(LbError::Spawn { command, source });
            }
        }
    };
    Ok(Ran { status, stdout: stdout.finish(), stderr: stderr.finish() })
}

/// One output pipe, drained by a thread so the child never blocks on a full pipe.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Option<mpsc::Receiver<()>>,
}

impl Capture {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let Some(mut pipe) = pipe else { return Capture { buf, done: None } };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut b) = shared.lock() {
                            let room = MAX_OUTPUT.saturating_sub(b.len());
                            b.extend_from_slice(&chunk[..n.min(room)]);
                        }
                    }
                }
            }
            let _ = tx.send(());
        });
        Capture { buf, done: Some(rx) }
    }

    /// What was read once the pipe closed, or after [`PIPE_GRACE`] if it stays open.
    fn finish(self) -> Vec<u8> {
        if let Some(done) = &self.done {
            let _ = done.recv_timeout(PIPE_GRACE);
        }
        self.buf.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

// --- LBs inside managed containers (issue 10, item 2) -------------------------------
//
// `lbs: {NAME: {container: {app, path}}}`: the config lives at `path` in every running
// instance of `app`, written through the Docker API (tar upload, as `files:`), checked and
// reloaded with exec. **Invariant:** a candidate is uploaded to a side path and checked in
// *every* instance before it replaces the config in any: a candidate one instance refuses
// reaches none. An instance that stops running meanwhile (killed, host lost) is skipped
// with a warning: it is no longer part of the pair, and the next apply, which starts it
// again, writes it.

/// One running instance of an LB app.
#[derive(Debug, Clone)]
pub struct Instance {
    pub client: docker::Client,
    pub host: String,
    /// Container id.
    pub id: String,
    /// Container name, for messages.
    pub name: String,
}

/// The side path of a container LB's candidate: `dir/.name.reconcile-tmp`, as for a file
/// LB (never loaded by an LB including `*.conf` or `*.cfg`).
pub fn candidate_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.reconcile-tmp"),
        None => format!(".{path}.reconcile-tmp"),
    }
}

/// The running instances of `app` of environment `env` on `hosts` (name, client), listed now.
///
/// # Errors
/// [`LbError::Instances`]: a host's list call failed.
pub async fn running_instances(
    hosts: &[(String, docker::Client)],
    env: &str,
    app: &str,
) -> Result<Vec<Instance>, LbError> {
    let mut out = Vec::new();
    for (host, client) in hosts {
        let obs = docker::observe_host(host, client, env)
            .await
            .map_err(|e| LbError::Instances { app: app.to_string(), cause: e.to_string() })?;
        out.extend(obs.instances.into_iter().filter(|i| i.app == app && i.state.is_running()).map(|i| Instance {
            client: client.clone(),
            host: host.clone(),
            id: i.container_id,
            name: i.name,
        }));
    }
    Ok(out)
}

fn in_container(i: &Instance, e: impl std::fmt::Display) -> LbError {
    LbError::Container { host: i.host.clone(), container: i.name.clone(), cause: e.to_string() }
}

/// The config at `path` as every instance holds it: `Some` only when all of them (at
/// least one) hold the same readable UTF-8 file; otherwise `None`, which makes the plan
/// write it.
///
/// # Errors
/// [`LbError::Container`]: a download failed for another reason than a missing file.
pub async fn read_in(instances: &[Instance], path: &str) -> Result<Option<String>, LbError> {
    let mut seen: Option<String> = None;
    for i in instances {
        let bytes = docker::read_file(&i.client, &i.host, &i.id, path).await.map_err(|e| in_container(i, e))?;
        let Some(text) = bytes.and_then(|b| String::from_utf8(b).ok()) else { return Ok(None) };
        match &seen {
            Some(s) if *s != text => return Ok(None),
            _ => seen = Some(text),
        }
    }
    Ok(seen)
}

/// Whether a failure on `i` is because it stopped running (then it is skipped).
async fn gone(i: &Instance) -> bool {
    let gone = docker::check_running(&i.client, &i.host, &i.id).await.is_err();
    if gone {
        tracing::warn!(host = i.host, container = i.name, "LB instance no longer running; skipped");
    }
    gone
}

/// Put `content` in place at `path` in every instance, checked first in all of them
/// (`check` with `{file}` replaced by the side path [`candidate_path`]; validate requires
/// `{file}` for container LBs). Returns the instances that hold the new config (those
/// that stopped running meanwhile are skipped). The candidate is removed again from
/// every instance it reached, whether the check passed or not.
///
/// # Errors
/// [`LbError::CheckFailed`] naming the instance that refused it (nothing replaced
/// anywhere); [`LbError::Container`] when an upload or exec failed on a running instance.
pub async fn write_checked_in(
    instances: &[Instance],
    path: &str,
    content: &str,
    check: Option<&[String]>,
) -> Result<Vec<Instance>, LbError> {
    if check.is_some_and(<[String]>::is_empty) {
        return Err(LbError::EmptyCommand { what: "check" });
    }
    let candidate = candidate_path(path);
    let mut uploaded = Vec::new();
    let result = upload_check_write(instances, path, &candidate, content, check, &mut uploaded).await;
    remove_candidate(&uploaded, &candidate).await;
    result
}

/// [`write_checked_in`]'s steps; `uploaded` collects the instances the candidate reached.
async fn upload_check_write(
    instances: &[Instance],
    path: &str,
    candidate: &str,
    content: &str,
    check: Option<&[String]>,
    uploaded: &mut Vec<Instance>,
) -> Result<Vec<Instance>, LbError> {
    // 1. The candidate beside the config, in every instance.
    for i in instances {
        match docker::put_file(&i.client, &i.host, &i.id, candidate, content.as_bytes()).await {
            Ok(()) => uploaded.push(i.clone()),
            Err(_) if gone(i).await => {}
            Err(e) => return Err(in_container(i, e)),
        }
    }
    let mut live = uploaded.clone();
    // 2. Checked in every instance before any is touched.
    if let Some(argv) = check {
        let argv: Vec<String> = argv.iter().map(|a| a.replace(FILE_PLACEHOLDER, candidate)).collect();
        let mut checked = Vec::new();
        for i in live {
            match docker::exec_output(&i.client, &i.host, &i.id, &argv, COMMAND_TIMEOUT, MAX_OUTPUT).await {
                Ok((docker::ExecOutcome::Exited(0), _)) => checked.push(i),
                Ok((docker::ExecOutcome::Exited(code), output)) => {
                    return Err(LbError::CheckFailed {
                        path: format!("{path} (container `{}` on host `{}`)", i.name, i.host),
                        command: argv_text(&argv),
                        output: format!("exit code {code}\n{output}"),
                    });
                }
                Ok((docker::ExecOutcome::TimedOut, output)) => {
                    return Err(LbError::Timeout { command: argv_text(&argv), after: COMMAND_TIMEOUT, output });
                }
                Err(_) if gone(&i).await => {}
                Err(e) => return Err(in_container(&i, e)),
            }
        }
        live = checked;
    }
    // 3. Only now the config itself, everywhere.
    let mut written = Vec::new();
    for i in live {
        match docker::put_file(&i.client, &i.host, &i.id, path, content.as_bytes()).await {
            Ok(()) => written.push(i),
            Err(_) if gone(&i).await => {}
            Err(e) => return Err(in_container(&i, e)),
        }
    }
    Ok(written)
}

/// Remove the candidate from `instances` (`rm -f` by exec: the Docker API has no call
/// that deletes a file). Best effort: a failure is a warning, the config is in place or
/// was refused either way, and the next upload replaces a leftover.
async fn remove_candidate(instances: &[Instance], candidate: &str) {
    let argv = ["rm".to_string(), "-f".into(), "--".into(), candidate.to_string()];
    for i in instances {
        match docker::exec_output(&i.client, &i.host, &i.id, &argv, COMMAND_TIMEOUT, MAX_OUTPUT).await {
            Ok((docker::ExecOutcome::Exited(0), _)) => {}
            Ok((outcome, output)) => tracing::warn!(
                host = i.host,
                container = i.name,
                ?outcome,
                output = output.trim(),
                "could not remove the LB candidate {candidate}"
            ),
            Err(_) if gone(i).await => {}
            Err(e) => {
                tracing::warn!(host = i.host, container = i.name, error = %e, "could not remove the LB candidate {candidate}")
            }
        }
    }
}

/// Run `command` (argv) in every instance; all are tried.
///
/// # Errors
/// [`LbError::ReloadFailedIn`] listing each running instance where it failed;
/// [`LbError::EmptyCommand`].
pub async fn reload_in(instances: &[Instance], command: &[String]) -> Result<(), LbError> {
    if command.is_empty() {
        return Err(LbError::EmptyCommand { what: "reload" });
    }
    let mut failed = Vec::new();
    for i in instances {
        let why = match docker::exec_output(&i.client, &i.host, &i.id, command, COMMAND_TIMEOUT, MAX_OUTPUT).await {
            Ok((docker::ExecOutcome::Exited(0), _)) => continue,
            Ok((docker::ExecOutcome::Exited(code), output)) => format!("exit code {code}: {}", output.trim()),
            Ok((docker::ExecOutcome::TimedOut, _)) => format!("did not finish within {COMMAND_TIMEOUT:?}"),
            Err(_) if gone(i).await => continue,
            Err(e) => e.to_string(),
        };
        failed.push(format!("  - container `{}` on host `{}`: {why}", i.name, i.host));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(LbError::ReloadFailedIn { command: argv_text(command), total: instances.len(), failed })
    }
}

#[cfg(test)]
mod container_tests {
    #[test]
    fn the_candidate_sits_beside_the_config_under_a_name_no_lb_loads() {
        assert_eq!(super::candidate_path("/etc/haproxy/haproxy.cfg"), "/etc/haproxy/.haproxy.cfg.reconcile-tmp");
        assert_eq!(super::candidate_path("x.conf"), ".x.conf.reconcile-tmp");
    }
}
