//! Reads a config repo from disk or Git into a [`RepoSnapshot`]: the files under
//! `environments/` at one revision, plus an [`Origin`] saying where they came from.
//!
//! This is the only module that imports `git2` and the only one that reads the config
//! repo from disk; everything after it works on the in-memory snapshot.
//!
//! **Invariants.** Every key of [`RepoSnapshot::files`] starts with `environments/`,
//! uses `/` separators and is relative to the config repo's root (which may be a
//! subdirectory of a Git work tree). No file is larger than [`MAX_FILE_BYTES`] and there
//! are at most [`MAX_FILES`] files. Nothing is written except the cache of remote repos.
//!
//! **Where the files come from** (`--repo`, `--ref`):
//! - a URL (`file://`, `https://`, `ssh://`, …, or scp-like `user@host:path`): fetched
//!   into a bare cache repo `<cache_dir>/<first 16 hex of sha256(url)>`, created once and
//!   then only fetched (`+refs/heads/*:refs/remotes/origin/*`, `+refs/tags/*:refs/tags/*`,
//!   pruned), never re-cloned. An existing local path wins over the scp-like reading,
//!   as in `git clone`;
//! - a local bare repo: opened in place, read like a URL but without a cache;
//! - a directory in a Git work tree: without `--ref`, the *working tree* as the user sees
//!   it (commit = `HEAD`, `None` when unborn); with `--ref`, the tree of that commit;
//! - a directory outside Git: the filesystem as is (commit `None`, never dirty).
//!
//! **Decisions.**
//! - *Symlinks are never followed*, neither on disk nor in Git trees (mode 120000): they
//!   are skipped with a warning, so a snapshot can never contain a file from outside the
//!   config repo and the working-tree and commit readings agree. Submodules and other
//!   special files are skipped too, and so is any directory named `.git`.
//! - *Dirty* means `git status` shows something under `<config root>/environments/`:
//!   modified, staged, deleted, renamed or untracked (not ignored). Changes elsewhere in
//!   the work tree do not count. Ignored, untracked files are not read; tracked files are
//!   read even when an ignore rule matches them, as Git does. If `environments/` itself
//!   is ignored and nothing in it is tracked, the config root is not part of that Git
//!   repo and is read as a plain directory.
//! - *Default branch* when no `--ref` is given for a URL or a bare repo: the remote's
//!   `HEAD` (asked on every fetch and remembered as `refs/remotes/origin/HEAD` in the
//!   cache), then `main`, then `master`. A `--ref` for a URL is tried as a branch, then a
//!   tag, then any revision (`abc1234`, `origin/main~1`); elsewhere it is a Git revision
//!   (`git rev-parse REF^{commit}`).
//! - `display_root` is the local directory as given, normalised with one trailing `/`
//!   (empty for `.`); it is empty for URLs and bare repos, whose files are not on disk.
//! - Credentials for remote URLs: ssh-agent, then `~/.ssh/id_{ed25519,ecdsa,rsa}` without a
//!   passphrase, then Git's credential helpers; ssh host keys are checked against
//!   `~/.ssh/known_hosts` by libgit2.
//! - *The system CA bundle is loaded only for https.* libgit2 parses the whole bundle
//!   (about 140 certificates, some 25 ms of CPU with OpenSSL 3) when it initialises,
//!   which every command would pay though only an https remote needs it. `main` calls
//!   [`init_without_ca_bundle`] first; the first https fetch then loads the bundle
//!   ([`load_ca_bundle`]: `SSL_CERT_FILE` if set, else the system's, found as
//!   `openssl-probe` finds it). Without that call (library users, tests) libgit2 loads it
//!   at initialisation as usual, and the second load adds nothing.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use git2::{
    AutotagOption, BranchType, Commit, Cred, CredentialType, ErrorCode, FetchOptions, FetchPrune, ObjectType, Odb,
    RemoteCallbacks, Repository, Status, StatusOptions, Tree,
};
use sha2::{Digest, Sha256};

use crate::spec::snapshot::{Origin, RepoSnapshot};

/// Initialises libgit2 without loading the system CA bundle (see the module docs): it
/// points `SSL_CERT_FILE` at `/dev/null` while libgit2 initialises, then restores it.
///
/// # Safety
/// It changes the process environment: call it while no other thread runs (first
/// thing in `main`).
pub unsafe fn init_without_ca_bundle() {
    const VAR: &str = "SSL_CERT_FILE";
    let saved = std::env::var_os(VAR);
    // SAFETY: the caller guarantees that no other thread reads the environment now.
    unsafe { std::env::set_var(VAR, "/dev/null") };
    // git2 has no public `init`; any of its option getters initialises libgit2 (once).
    // SAFETY: no other thread uses libgit2 yet; the value read is not used.
    let _ = unsafe { git2::opts::get_mwindow_size() };
    match saved {
        // SAFETY: as above.
        Some(value) => unsafe { std::env::set_var(VAR, value) },
        // SAFETY: as above.
        None => unsafe { std::env::remove_var(VAR) },
    }
}

/// Loads the CA bundle into libgit2's TLS context once per process, before the first
/// https fetch (see [`init_without_ca_bundle`]). A bundle that cannot be loaded is only
/// logged: the certificate directory still applies, and the fetch then fails with
/// libgit2's certificate error if neither knows the server's CA.
fn load_ca_bundle() {
    static LOADED: std::sync::Once = std::sync::Once::new();
    LOADED.call_once(|| {
        let Some(file) = openssl_probe::probe().cert_file else {
            tracing::debug!("no CA bundle found; https remotes are checked against the certificate directory only");
            return;
        };
        // SAFETY: `Once` runs this before any https fetch of this process starts, and
        // nothing else uses libgit2's TLS context meanwhile.
        match unsafe { git2::opts::set_ssl_cert_file(&file) } {
            Ok(()) => tracing::debug!(file = %file.display(), "loaded the CA bundle for https remotes"),
            Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot load the CA bundle for https remotes"),
        }
    });
}

/// The largest file accepted under `environments/` (specs and templates are small).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The most files accepted under `environments/`.
pub const MAX_FILES: usize = 10_000;

const ENV_DIR: &str = "environments";
/// The cache repo's config key (and file) that records the URL, for humans and checks.
const URL_CONFIG_KEY: &str = "reconcile.url";
const URL_FILE: &str = ".reconcile-url";
/// Where the remote's default branch is remembered in a cache repo.
const ORIGIN_HEAD: &str = "refs/remotes/origin/HEAD";
/// Branch names tried, in order, when the remote's `HEAD` does not name one.
const FALLBACK_BRANCHES: [&str; 2] = ["main", "master"];
/// How many branch names a "ref not found" hint lists.
const HINT_BRANCHES: usize = 5;

/// Errors of reading a config repo; messages lowercase, say what failed, on which repo/ref,
/// and how to fix.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "config repo {repo} not found: no such directory, and it is not a Git URL; \
         pass --repo a local directory or a URL (file://, https://, ssh://, user@host:path)"
    )]
    NotFound { repo: String },

    #[error(
        "config repo {repo} is not a directory; pass --repo the root directory of a config repo \
         (the one that holds environments/) or a Git URL"
    )]
    NotADirectory { repo: String },

    #[error(
        "no environments/ directory in {repo}{}; --repo must point at the root of a config repo, \
         the directory that holds environments/",
        at_rev(.rev.as_deref())
    )]
    NoEnvironments { repo: String, rev: Option<String> },

    #[error(
        "--ref {reference} needs a Git repo, but {repo} is not inside one; \
         drop --ref to read the directory as it is"
    )]
    RefWithoutGit { repo: String, reference: String },

    #[error("ref {reference} not found in {repo}; {hint}")]
    RefNotFound { repo: String, reference: String, hint: String },

    #[error("{repo} has no commits yet; commit (and push) a config repo with environments/ first")]
    EmptyRepo { repo: String },

    #[error(
        "cannot tell the default branch of {repo}: its HEAD names no branch and there is no \
         main or master; pass --ref ({hint})"
    )]
    DefaultBranch { repo: String, hint: String },

    #[error("could not open the Git repository containing {repo}: {source}{hint}")]
    Open { repo: String, hint: String, source: git2::Error },

    #[error("could not read {what} of {repo}: {source}")]
    Git { repo: String, what: String, source: git2::Error },

    #[error(
        "could not fetch {url}: {source}; check the URL, the network and the credentials \
         (a key in ssh-agent or ~/.ssh for ssh, a git credential helper for https)"
    )]
    Fetch { url: String, source: git2::Error },

    #[error(
        "could not use the repo cache {}: {source}; check that it is writable, or remove it \
         to clone afresh",
        path.display()
    )]
    Cache { path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },

    #[error(
        "the repo cache {} holds {found}, not {url}; remove that directory to clone afresh",
        path.display()
    )]
    CacheConflict { path: PathBuf, url: String, found: String },

    #[error("could not read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error(
        "{path} in {repo} is {size} bytes, over the limit of {MAX_FILE_BYTES} bytes for files \
         under environments/; keep large data out of the config repo"
    )]
    FileTooLarge { repo: String, path: String, size: u64 },

    #[error(
        "{repo} has more than {MAX_FILES} files under environments/; \
         is --repo the right directory?"
    )]
    TooManyFiles { repo: String },

    #[error("the name of {path} in {repo} is not valid UTF-8; rename it")]
    BadPath { repo: String, path: String },
}

fn at_rev(rev: Option<&str>) -> String {
    rev.map(|r| format!(" at {r}")).unwrap_or_default()
}

/// Reads the config repo `repo` (a local directory or a Git URL) at `reference` (default:
/// the working tree of a local checkout, or the default branch of a URL or bare repo).
///
/// Remote repos are cached as bare repos under `cache_dir` (see [`default_cache_dir`]);
/// the cache is created on first use and only fetched afterwards.
///
/// # Errors
/// [`GitError`] when the repo or ref does not exist, there is no `environments/`, a file
/// is over the limits, the fetch fails, or reading the disk or Git fails. Nothing but the
/// cache is written, so a failed call is safe to repeat.
pub fn snapshot(repo: &str, reference: Option<&str>, cache_dir: &Path) -> Result<RepoSnapshot, GitError> {
    let mut origin = Origin { repo: repo.to_string(), reference: reference.map(str::to_string), ..Origin::default() };
    let mut files = Files::new(repo);
    if is_url(repo) {
        origin.commit = Some(read_remote(repo, reference, cache_dir, &mut files)?);
    } else {
        read_local(repo, reference, &mut origin, &mut files)?;
    }
    Ok(RepoSnapshot { files: files.map, origin })
}

/// The default cache dir: `$XDG_CACHE_HOME/reconcile/repos` or
/// `$HOME/.cache/reconcile/repos` (the system temp dir when neither is set).
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute()) // the XDG spec says to ignore relative paths
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("reconcile").join("repos")
}

/// True when `repo` names a Git URL rather than a local directory. Follows Git: a
/// `scheme://` is a URL; an existing path is local; otherwise a colon before any slash
/// makes it scp-like ssh (`user@host:path`, `host:path`).
fn is_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    if Path::new(repo).exists() {
        return false;
    }
    match repo.find(':') {
        Some(colon) => colon > 0 && !repo[..colon].contains('/'),
        None => false,
    }
}

/// `examples//two-tier/` → `examples/two-tier/`; `.` and `./` → empty; `/abs` → `/abs/`.
fn display_root(repo: &str) -> String {
    let parts: Vec<&str> = repo.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let lead = if repo.starts_with('/') { "/" } else { "" };
    if parts.is_empty() { lead.to_string() } else { format!("{lead}{}/", parts.join("/")) }
}

/// The snapshot's files being collected, with the limits enforced.
struct Files<'a> {
    repo: &'a str,
    map: BTreeMap<String, Vec<u8>>,
}

impl<'a> Files<'a> {
    fn new(repo: &'a str) -> Self {
        Files { repo, map: BTreeMap::new() }
    }

    /// Checks the limits before a file of `size` bytes is read.
    fn admit(&self, key: &str, size: u64) -> Result<(), GitError> {
        if size > MAX_FILE_BYTES {
            return Err(GitError::FileTooLarge { repo: self.repo.to_string(), path: key.to_string(), size });
        }
        if self.map.len() >= MAX_FILES {
            return Err(GitError::TooManyFiles { repo: self.repo.to_string() });
        }
        Ok(())
    }

    fn bad_path(&self, path: String) -> GitError {
        GitError::BadPath { repo: self.repo.to_string(), path }
    }

    fn git_err(&self, what: &str) -> impl FnOnce(git2::Error) -> GitError + use<> {
        git_err_for(self.repo.to_string(), what)
    }
}

fn git_err_for(repo: String, what: &str) -> impl FnOnce(git2::Error) -> GitError + use<> {
    let what = what.to_string();
    move |source| GitError::Git { repo, what, source }
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> GitError + use<> {
    let path = path.to_path_buf();
    move |source| GitError::Read { path, source }
}

// ---------------------------------------------------------------------------------------
// Local directories
// ---------------------------------------------------------------------------------------

fn read_local(
    repo_arg: &str,
    reference: Option<&str>,
    origin: &mut Origin,
    files: &mut Files<'_>,
) -> Result<(), GitError> {
    let dir = Path::new(repo_arg);
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(GitError::NotADirectory { repo: repo_arg.to_string() });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GitError::NotFound { repo: repo_arg.to_string() });
        }
        Err(e) => return Err(read_err(dir)(e)),
    }
    let canon = fs::canonicalize(dir).map_err(read_err(dir))?;

    let git = match Repository::discover(dir) {
        Ok(git) => Some(git),
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(source) => {
            let hint = if source.code() == ErrorCode::Owner {
                format!("; if you trust it, run: git config --global --add safe.directory {}", canon.display())
            } else {
                String::new()
            };
            return Err(GitError::Open { repo: repo_arg.to_string(), hint, source });
        }
    };

    if let Some(git) = git {
        if git.is_bare() {
            let git_dir = fs::canonicalize(git.path()).map_err(read_err(git.path()))?;
            if git_dir == canon {
                let commit = resolve_commit(&git, repo_arg, reference, Namespace::Local)?;
                read_tree(&git, &commit, "", commit_label(&commit, reference), files)?;
                origin.commit = Some(commit.id().to_string());
                return Ok(()); // display_root stays "": the files are not on disk
            }
            // A directory inside a bare repo's git dir is no config repo: read it plainly.
        } else if let Some(prefix) = work_tree_prefix(&git, &canon, files)? {
            // Without --ref, an ignored environments/ is not part of the enclosing repo.
            if reference.is_some() || !is_ignored_env(&git, &canon, &prefix, files)? {
                origin.display_root = display_root(repo_arg);
                return read_work_tree(&git, dir, &prefix, reference, origin, files);
            }
        }
    }

    if let Some(reference) = reference {
        return Err(GitError::RefWithoutGit { repo: repo_arg.to_string(), reference: reference.to_string() });
    }
    origin.display_root = display_root(repo_arg);
    read_dir_files(dir, &mut |_, _| Ok(true), files)
}

/// The config root's path inside the work tree (`""` at the top, else `a/b` without a
/// trailing slash), or `None` when it is outside the work tree.
fn work_tree_prefix(git: &Repository, canon: &Path, files: &Files<'_>) -> Result<Option<String>, GitError> {
    let Some(workdir) = git.workdir() else {
        return Ok(None);
    };
    let workdir = fs::canonicalize(workdir).map_err(read_err(workdir))?;
    let Ok(rel) = canon.strip_prefix(&workdir) else {
        return Ok(None);
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        if let Component::Normal(part) = c {
            let part = part.to_str().ok_or_else(|| files.bad_path(rel.display().to_string()))?;
            parts.push(part);
        }
    }
    Ok(Some(parts.join("/")))
}

/// True when the config root's `environments/` exists, is ignored by the enclosing Git
/// repo and holds nothing tracked: then it is read as a plain directory.
fn is_ignored_env(git: &Repository, canon: &Path, prefix: &str, files: &Files<'_>) -> Result<bool, GitError> {
    let env_rel = join(prefix, ENV_DIR);
    let ignored = canon.join(ENV_DIR).is_dir()
        && git.is_path_ignored(&env_rel).map_err(files.git_err("the ignore rules"))?
        && !is_tracked_dir(git, &env_rel, files)?;
    if ignored {
        tracing::debug!(path = %env_rel, "environments/ is ignored by the enclosing Git repo: reading it as a plain directory");
    }
    Ok(ignored)
}

fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() { rest.to_string() } else { format!("{prefix}/{rest}") }
}

/// True when the index holds a file under the directory `rel` (work-tree relative).
fn is_tracked_dir(git: &Repository, rel: &str, files: &Files<'_>) -> Result<bool, GitError> {
    let index = git.index().map_err(files.git_err("the index"))?;
    Ok(index.find_prefix(format!("{rel}/")).is_ok())
}

fn read_work_tree(
    git: &Repository,
    dir: &Path,
    prefix: &str,
    reference: Option<&str>,
    origin: &mut Origin,
    files: &mut Files<'_>,
) -> Result<(), GitError> {
    if let Some(reference) = reference {
        let commit = resolve_commit(git, files.repo, Some(reference), Namespace::Local)?;
        read_tree(git, &commit, prefix, reference.to_string(), files)?;
        origin.commit = Some(commit.id().to_string());
        return Ok(());
    }

    origin.commit = match git.head() {
        Ok(head) => Some(head.peel_to_commit().map_err(files.git_err("HEAD"))?.id().to_string()),
        Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => None,
        Err(e) => return Err(files.git_err("HEAD")(e)),
    };

    let index = git.index().map_err(files.git_err("the index"))?;
    let status = work_tree_status(git, &join(prefix, ENV_DIR)).map_err(files.git_err("the status"))?;
    let mut keep = |key: &str, is_dir: bool| -> Result<bool, GitError> {
        let rel = join(prefix, key);
        let ignored = if is_dir { status.ignored.contains(&format!("{rel}/")) } else { status.ignored.contains(&rel) };
        if !ignored {
            return Ok(true);
        }
        // Ignored, but Git still tracks what is in the index.
        Ok(if is_dir {
            index.find_prefix(format!("{rel}/")).is_ok()
        } else {
            index.get_path(Path::new(&rel), 0).is_some()
        })
    };
    read_dir_files(dir, &mut keep, files)?;
    origin.dirty = status.dirty;
    Ok(())
}

/// What one `git status` of the work-tree relative dir `env_rel` says.
struct WorkTreeStatus {
    /// Something is modified, staged, deleted, renamed or untracked (not ignored).
    dirty: bool,
    /// The ignored, untracked files, each by its path (Git is asked to list the files in
    /// ignored directories one by one: libgit2 otherwise leaves out the untracked files of
    /// an ignored directory that also holds a tracked one). A directory listed whole (its
    /// path and a trailing `/`) is not entered.
    ignored: HashSet<String>,
}

/// One status walk answers both questions of [`read_work_tree`]: whether the config is
/// dirty, and which paths are ignored (asking Git path by path re-reads the ignore files
/// of every parent directory for each file: with 300 files, most of the read's time).
fn work_tree_status(git: &Repository, env_rel: &str) -> Result<WorkTreeStatus, git2::Error> {
    let mut opts = StatusOptions::new();
    opts.pathspec(env_rel)
        .disable_pathspec_match(true)
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(true)
        .recurse_ignored_dirs(true)
        .include_unmodified(false)
        .exclude_submodules(true);
    let statuses = git.statuses(Some(&mut opts))?;
    let mut out = WorkTreeStatus { dirty: false, ignored: HashSet::new() };
    for entry in statuses.iter() {
        let st = entry.status();
        if st.contains(Status::IGNORED) {
            if let Ok(path) = entry.path() {
                out.ignored.insert(path.to_string());
            }
        } else if st != Status::CURRENT {
            out.dirty = true;
        }
    }
    Ok(out)
}

/// Reads `<root>/environments/` recursively from disk, without following symlinks,
/// keeping the entries for which `keep(key, is_dir)` is true.
fn read_dir_files(
    root: &Path,
    keep: &mut dyn FnMut(&str, bool) -> Result<bool, GitError>,
    files: &mut Files<'_>,
) -> Result<(), GitError> {
    let env = root.join(ENV_DIR);
    match fs::symlink_metadata(&env) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.file_type().is_symlink() => {
            tracing::warn!(path = %env.display(), "environments/ is a symlink, and symlinks are not followed");
            return Err(no_environments(files.repo, None));
        }
        Ok(_) => return Err(no_environments(files.repo, None)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(no_environments(files.repo, None));
        }
        Err(e) => return Err(read_err(&env)(e)),
    }

    let mut stack = vec![ENV_DIR.to_string()];
    while let Some(dir_key) = stack.pop() {
        let dir_path = root.join(&dir_key);
        for entry in fs::read_dir(&dir_path).map_err(read_err(&dir_path))? {
            let entry = entry.map_err(read_err(&dir_path))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(files.bad_path(entry.path().display().to_string()));
            };
            if name == ".git" {
                continue; // a nested repo's internals are never config
            }
            let key = format!("{dir_key}/{name}");
            let path = entry.path();
            let kind = entry.file_type().map_err(read_err(&path))?; // does not follow symlinks
            if kind.is_symlink() {
                tracing::warn!(path = %path.display(), "skipping a symlink: symlinks under environments/ are not followed");
            } else if kind.is_dir() {
                if keep(&key, true)? {
                    stack.push(key);
                }
            } else if kind.is_file() {
                if keep(&key, false)? {
                    let size = entry.metadata().map_err(read_err(&path))?.len();
                    files.admit(&key, size)?;
                    let bytes = read_limited(&path, &key, size, files)?;
                    files.map.insert(key, bytes);
                }
            } else {
                tracing::debug!(path = %path.display(), "skipping a special file");
            }
        }
    }
    Ok(())
}

/// Reads a file, failing if it grew over the limit since its size was checked. `size`
/// (from its metadata, possibly stale) sizes the buffer, so a small file takes one read
/// and one more to see the end.
fn read_limited(path: &Path, key: &str, size: u64, files: &Files<'_>) -> Result<Vec<u8>, GitError> {
    let file = fs::File::open(path).map_err(read_err(path))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size.min(MAX_FILE_BYTES)).unwrap_or(0) + 1);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err(path))?;
    files.admit(key, bytes.len() as u64)?;
    Ok(bytes)
}

fn no_environments(repo: &str, rev: Option<String>) -> GitError {
    GitError::NoEnvironments { repo: repo.to_string(), rev }
}

// ---------------------------------------------------------------------------------------
// Git trees and refs
// ---------------------------------------------------------------------------------------

/// Where branch names live: `refs/heads/` in a local repo, `refs/remotes/origin/` in the
/// cache of a remote.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Local,
    Cache,
}

impl Namespace {
    fn branch_ref(self, name: &str) -> String {
        match self {
            Namespace::Local => format!("refs/heads/{name}"),
            Namespace::Cache => format!("refs/remotes/origin/{name}"),
        }
    }
}

/// How a resolved commit is named in messages: the ref asked for, or a short id.
fn commit_label(commit: &Commit<'_>, reference: Option<&str>) -> String {
    if let Some(r) = reference {
        return r.to_string();
    }
    let id = commit.id().to_string();
    id.get(..12).unwrap_or(&id).to_string()
}

/// Resolves `reference` (or the default branch when `None`) to a commit.
fn resolve_commit<'r>(
    git: &'r Repository,
    repo: &str,
    reference: Option<&str>,
    ns: Namespace,
) -> Result<Commit<'r>, GitError> {
    let git_err = |what: &str| git_err_for(repo.to_string(), what);
    let Some(r) = reference else {
        return default_branch_commit(git, repo, ns);
    };
    if ns == Namespace::Cache {
        let branch = r.strip_prefix("refs/heads/").unwrap_or(r);
        for name in [ns.branch_ref(branch), format!("refs/tags/{r}")] {
            match git.find_reference(&name) {
                Ok(found) => return found.peel_to_commit().map_err(git_err(&name)),
                Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => {}
                Err(e) => return Err(git_err(&name)(e)),
            }
        }
    }
    match git.revparse_single(&format!("{r}^{{commit}}")) {
        Ok(object) => object.peel_to_commit().map_err(git_err(r)),
        Err(e) if e.code() == ErrorCode::Ambiguous => Err(GitError::RefNotFound {
            repo: repo.to_string(),
            reference: r.to_string(),
            hint: "the abbreviated commit id is ambiguous; give more hex digits".to_string(),
        }),
        Err(e)
            if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec | ErrorCode::UnbornBranch)
                || e.class() == git2::ErrorClass::Reference =>
        {
            Err(GitError::RefNotFound { repo: repo.to_string(), reference: r.to_string(), hint: branch_hint(git, ns) })
        }
        Err(e) => Err(git_err(r)(e)),
    }
}

/// The commit of the default branch: the one `HEAD` names (the remote's, for a cache),
/// then `main`, then `master`.
fn default_branch_commit<'r>(git: &'r Repository, repo: &str, ns: Namespace) -> Result<Commit<'r>, GitError> {
    let head_ref = match ns {
        Namespace::Local => "HEAD",
        Namespace::Cache => ORIGIN_HEAD,
    };
    let mut candidates = Vec::new();
    if let Ok(head) = git.find_reference(head_ref)
        && let Ok(Some(target)) = head.symbolic_target()
    {
        candidates.push(target.to_string());
    }
    candidates.extend(FALLBACK_BRANCHES.iter().map(|b| ns.branch_ref(b)));
    for name in &candidates {
        match git.find_reference(name) {
            Ok(found) => {
                tracing::debug!(repo, branch = %name, "using the default branch");
                return found.peel_to_commit().map_err(git_err_for(repo.to_string(), name));
            }
            Err(e) if e.code() == ErrorCode::NotFound => {}
            Err(e) => return Err(git_err_for(repo.to_string(), name)(e)),
        }
    }
    if branch_names(git, ns).is_empty() {
        Err(GitError::EmptyRepo { repo: repo.to_string() })
    } else {
        Err(GitError::DefaultBranch { repo: repo.to_string(), hint: branch_hint(git, ns) })
    }
}

/// Branch names, sorted: local branches for a local repo, `origin/*` for a cache.
fn branch_names(git: &Repository, ns: Namespace) -> Vec<String> {
    let mut names: Vec<String> = match ns {
        Namespace::Local => git
            .branches(Some(BranchType::Local))
            .into_iter()
            .flatten()
            .filter_map(|b| {
                let (branch, _) = b.ok()?;
                branch.name().ok().flatten().map(str::to_string)
            })
            .collect(),
        Namespace::Cache => git
            .references_glob("refs/remotes/origin/*")
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let r = r.ok()?;
                let name = r.name().ok()?.strip_prefix("refs/remotes/origin/")?;
                (name != "HEAD").then(|| name.to_string())
            })
            .collect(),
    };
    names.sort();
    names
}

fn branch_hint(git: &Repository, ns: Namespace) -> String {
    let names = branch_names(git, ns);
    if names.is_empty() {
        return "the repository has no branches".to_string();
    }
    let shown = names.iter().take(HINT_BRANCHES).map(String::as_str).collect::<Vec<_>>().join(", ");
    let more = names.len().saturating_sub(HINT_BRANCHES);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("give a branch, a tag or a commit id; branches: {shown}{more}")
}

/// Reads `<prefix>/environments/` from the tree of `commit`, keyed from the config root.
fn read_tree(
    git: &Repository,
    commit: &Commit<'_>,
    prefix: &str,
    rev: String,
    files: &mut Files<'_>,
) -> Result<(), GitError> {
    let env_rel = join(prefix, ENV_DIR);
    let root = commit.tree().map_err(files.git_err("the commit's tree"))?;
    let entry = match root.get_path(Path::new(&env_rel)) {
        Ok(entry) => entry,
        Err(e) if e.code() == ErrorCode::NotFound => {
            return Err(no_environments(files.repo, Some(rev)));
        }
        Err(e) => return Err(files.git_err(&env_rel)(e)),
    };
    if entry.kind() != Some(ObjectType::Tree) {
        return Err(no_environments(files.repo, Some(rev)));
    }
    let tree = git.find_tree(entry.id()).map_err(files.git_err(&env_rel))?;
    let odb = git.odb().map_err(files.git_err("the object database"))?;
    walk_tree(git, &odb, &tree, ENV_DIR, files)
}

const FILEMODE_LINK: i32 = 0o120_000;

fn walk_tree(
    git: &Repository,
    odb: &Odb<'_>,
    tree: &Tree<'_>,
    dir_key: &str,
    files: &mut Files<'_>,
) -> Result<(), GitError> {
    for entry in tree {
        let Ok(name) = entry.name() else {
            let lossy = String::from_utf8_lossy(entry.name_bytes());
            return Err(files.bad_path(format!("{dir_key}/{lossy}")));
        };
        let key = format!("{dir_key}/{name}");
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let sub = git.find_tree(entry.id()).map_err(files.git_err(&key))?;
                walk_tree(git, odb, &sub, &key, files)?;
            }
            Some(ObjectType::Blob) if entry.filemode() == FILEMODE_LINK => {
                tracing::warn!(path = %key, "skipping a symlink: symlinks under environments/ are not followed");
            }
            Some(ObjectType::Blob) => {
                // The header gives the size without loading the blob.
                let (size, _) = odb.read_header(entry.id()).map_err(files.git_err(&key))?;
                files.admit(&key, size as u64)?;
                let blob = git.find_blob(entry.id()).map_err(files.git_err(&key))?;
                files.map.insert(key, blob.content().to_vec());
            }
            _ => {
                tracing::warn!(path = %key, "skipping a submodule: submodules under environments/ are not read");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Remote repos and their cache
// ---------------------------------------------------------------------------------------

/// Fetches `url` into its cache repo and reads the files; returns the commit id.
fn read_remote(
    url: &str,
    reference: Option<&str>,
    cache_dir: &Path,
    files: &mut Files<'_>,
) -> Result<String, GitError> {
    let cache = open_or_init_cache(cache_dir, &cache_key(url), url)?;
    fetch(&cache, url)?;
    let commit = resolve_commit(&cache, url, reference, Namespace::Cache)?;
    read_tree(&cache, &commit, "", commit_label(&commit, reference), files)?;
    tracing::debug!(url, commit = %commit.id(), "read the config repo");
    Ok(commit.id().to_string())
}

/// The cache directory name of a URL: the first 16 hex digits of its SHA-256.
fn cache_key(url: &str) -> String {
    use std::fmt::Write;
    Sha256::digest(url.as_bytes()).iter().take(8).fold(String::with_capacity(16), |mut hex, b| {
        let _ = write!(hex, "{b:02x}"); // writing to a String cannot fail
        hex
    })
}

fn cache_err<E>(path: &Path) -> impl FnOnce(E) -> GitError + use<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let path = path.to_path_buf();
    move |e| GitError::Cache { path, source: Box::new(e) }
}

/// Opens the cache repo of `url`, creating it on first use. Creation happens in a
/// temporary sibling that is renamed into place, so a crash never leaves a half-made
/// cache, and a concurrent creator's repo is simply reused.
fn open_or_init_cache(cache_dir: &Path, key: &str, url: &str) -> Result<Repository, GitError> {
    let dir = &cache_dir.join(key);
    if dir.exists() {
        tracing::info!(url, cache = %dir.display(), "fetching the config repo into the cache");
    } else {
        tracing::info!(url, cache = %dir.display(), "cloning the config repo into the cache");
        fs::create_dir_all(cache_dir).map_err(cache_err(cache_dir))?;
        let tmp = cache_dir.join(format!(".{key}.tmp-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(cache_err(&tmp))?; // left by a crash
        }
        {
            let fresh = Repository::init_bare(&tmp).map_err(cache_err(&tmp))?;
            fresh.config().and_then(|mut c| c.set_str(URL_CONFIG_KEY, url)).map_err(cache_err(&tmp))?;
        }
        fs::write(tmp.join(URL_FILE), format!("{url}\n")).map_err(cache_err(&tmp))?;
        if let Err(e) = fs::rename(&tmp, dir) {
            // Another process may have created it meanwhile; use theirs.
            let _ = fs::remove_dir_all(&tmp); // best effort: a leftover temp dir is harmless
            if !dir.exists() {
                return Err(cache_err(dir)(e));
            }
        }
    }

    let cache = Repository::open_bare(dir).map_err(cache_err(dir))?;
    let recorded = cache.config().and_then(|c| c.get_string(URL_CONFIG_KEY)).ok();
    match recorded {
        Some(found) if found != url => Err(GitError::CacheConflict { path: dir.clone(), url: url.to_string(), found }),
        _ => Ok(cache),
    }
}

/// Fetches all branches and tags of `url` into the cache, pruning what is gone, and
/// remembers the remote's default branch as `refs/remotes/origin/HEAD`.
fn fetch(cache: &Repository, url: &str) -> Result<(), GitError> {
    let fetch_err = |source| GitError::Fetch { url: url.to_string(), source };
    if url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://")) {
        load_ca_bundle();
    }
    let mut remote = cache.remote_anonymous(url).map_err(fetch_err)?;
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks()).download_tags(AutotagOption::None).prune(FetchPrune::On);
    remote
        .fetch(
            &["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
            Some(&mut opts),
            Some("reconcile: fetch"),
        )
        .map_err(fetch_err)?;

    // Still available after the fetch disconnected (see `Remote::default_branch`).
    let default = remote.default_branch().ok();
    let branch = default.as_ref().and_then(|b| b.as_str().ok()).and_then(|b| b.strip_prefix("refs/heads/"));
    if let Some(branch) = branch {
        let target = Namespace::Cache.branch_ref(branch);
        if cache.find_reference(&target).is_ok() {
            cache
                .reference_symbolic(ORIGIN_HEAD, &target, true, "reconcile: remote HEAD")
                .map_err(git_err_for(url.to_string(), ORIGIN_HEAD))?;
        }
    }
    Ok(())
}

/// Credentials, each kind tried once so a refusal cannot loop: ssh-agent, the usual key
/// files without a passphrase, then Git's credential helpers (https).
fn callbacks<'a>() -> RemoteCallbacks<'a> {
    let mut tried_agent = false;
    let mut tried_helper = false;
    let mut tried_default = false;
    let mut key_files: Vec<PathBuf> = std::env::var_os("HOME")
        .map(|home| {
            ["id_rsa", "id_ecdsa", "id_ed25519"] // popped from the end
                .iter()
                .map(|k| PathBuf::from(&home).join(".ssh").join(k))
                .collect()
        })
        .unwrap_or_default();
    let mut cbs = RemoteCallbacks::new();
    cbs.credentials(move |url, username_from_url, allowed| {
        let user = username_from_url.unwrap_or("git");
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if !tried_agent {
                tried_agent = true;
                return Cred::ssh_key_from_agent(user);
            }
            while let Some(key) = key_files.pop() {
                if key.is_file() {
                    return Cred::ssh_key(user, None, &key, None);
                }
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) && !tried_helper {
            tried_helper = true;
            if let Ok(config) = git2::Config::open_default() {
                return Cred::credential_helper(&config, url, username_from_url);
            }
        }
        if allowed.contains(CredentialType::DEFAULT) && !tried_default {
            tried_default = true;
            return Cred::default();
        }
        Err(git2::Error::from_str(
            "authentication failed with every credential tried \
             (ssh-agent, ~/.ssh keys, git credential helpers)",
        ))
    });
    cbs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step should panic
mod tests {
    use super::*;
    use std::process::Command;
    use tempfile::TempDir;

    /// Runs the git CLI in `dir`, isolated from the user's and the system's config.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(["-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"])
            .args(["-c", "tag.gpgsign=false"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn commit_all(dir: &Path, msg: &str) -> String {
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", msg]);
        git(dir, &["rev-parse", "HEAD"])
    }

    /// A work tree with one committed app file; returns (tempdir, repo path, commit).
    fn work_repo() -> (TempDir, PathBuf, String) {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("config");
        fs::create_dir(&dir).unwrap();
        git(&dir, &["init", "-q"]);
        write(&dir, "environments/staging/apps/api.yaml", "v1\n");
        write(&dir, "README.md", "readme\n");
        let c1 = commit_all(&dir, "one");
        (tmp, dir, c1)
    }

    fn snap(repo: &Path, reference: Option<&str>) -> Result<RepoSnapshot, GitError> {
        let unused_cache = Path::new("/nonexistent/reconcile-test-cache");
        snapshot(repo.to_str().unwrap(), reference, unused_cache)
    }

    fn text<'s>(s: &'s RepoSnapshot, key: &str) -> &'s str {
        std::str::from_utf8(s.files.get(key).unwrap_or_else(|| panic!("{key} missing"))).unwrap()
    }

    fn keys(s: &RepoSnapshot) -> Vec<&str> {
        s.files.keys().map(String::as_str).collect()
    }

    #[test]
    fn plain_directory_outside_git_is_read_from_disk_without_symlinks() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path();
        write(root, "environments/staging/environment.yaml", "env\n");
        write(root, "environments/staging/apps/api.yaml", "api\n");
        write(root, "other/ignored.yaml", "not read\n");
        write(tmp.path(), "outside.txt", "secret\n");
        std::os::unix::fs::symlink(root.join("outside.txt"), root.join("environments/staging/apps/link.yaml")).unwrap();
        std::os::unix::fs::symlink(root.join("other"), root.join("environments/linkdir")).unwrap();

        let s = snap(root, None).unwrap();
        assert_eq!(keys(&s), ["environments/staging/apps/api.yaml", "environments/staging/environment.yaml"]);
        assert_eq!(text(&s, "environments/staging/apps/api.yaml"), "api\n");
        assert_eq!(s.origin.commit, None);
        assert!(!s.origin.dirty);
        assert_eq!(s.origin.repo, root.to_str().unwrap());
        assert_eq!(s.origin.display_root, format!("{}/", root.display()));
    }

    #[test]
    fn missing_environments_is_an_error_with_a_hint() {
        let tmp = TempDir::new().unwrap();
        let err = snap(tmp.path(), None).unwrap_err();
        assert!(matches!(err, GitError::NoEnvironments { rev: None, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("no environments/ directory in"), "{msg}");
        assert!(msg.contains("--repo must point at the root of a config repo"), "{msg}");
    }

    #[test]
    fn missing_directory_and_ref_outside_git_are_errors() {
        let tmp = TempDir::new().unwrap();
        let err = snap(&tmp.path().join("nope"), None).unwrap_err();
        assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");
        write(tmp.path(), "environments/a.yaml", "a\n");
        let err = snap(tmp.path(), Some("main")).unwrap_err();
        assert!(matches!(err, GitError::RefWithoutGit { .. }), "{err:?}");
    }

    #[test]
    fn clean_work_tree_records_head_and_is_not_dirty() {
        let (_tmp, dir, c1) = work_repo();
        // A change outside environments/ does not make the snapshot dirty.
        write(&dir, "README.md", "changed\n");
        write(&dir, "notes.txt", "untracked\n");
        write(&dir, "environments-old/x.yaml", "untracked\n");
        let s = snap(&dir, None).unwrap();
        assert_eq!(keys(&s), ["environments/staging/apps/api.yaml"]);
        assert_eq!(s.origin.commit.as_deref(), Some(c1.as_str()));
        assert_eq!(s.origin.reference, None);
        assert!(!s.origin.dirty);
    }

    #[test]
    fn modified_file_is_read_from_the_work_tree_and_dirty() {
        let (_tmp, dir, c1) = work_repo();
        write(&dir, "environments/staging/apps/api.yaml", "v2\n");
        let s = snap(&dir, None).unwrap();
        assert_eq!(text(&s, "environments/staging/apps/api.yaml"), "v2\n");
        assert_eq!(s.origin.commit.as_deref(), Some(c1.as_str()));
        assert!(s.origin.dirty);
    }

    #[test]
    fn staged_and_deleted_files_are_dirty() {
        let (_tmp, dir, _) = work_repo();
        write(&dir, "environments/staging/apps/api.yaml", "v2\n");
        git(&dir, &["add", "-A"]);
        assert!(snap(&dir, None).unwrap().origin.dirty);
        git(&dir, &["commit", "-q", "-m", "two"]);
        assert!(!snap(&dir, None).unwrap().origin.dirty);
        fs::remove_file(dir.join("environments/staging/apps/api.yaml")).unwrap();
        let s = snap(&dir, None).unwrap();
        assert!(s.origin.dirty);
        assert!(s.files.is_empty());
    }

    #[test]
    fn untracked_file_is_read_and_dirty() {
        let (_tmp, dir, _) = work_repo();
        write(&dir, "environments/prod/environment.yaml", "new\n");
        let s = snap(&dir, None).unwrap();
        assert_eq!(text(&s, "environments/prod/environment.yaml"), "new\n");
        assert!(s.origin.dirty);
    }

    #[test]
    fn ignored_files_are_not_read_and_not_dirty_but_tracked_ones_are() {
        let (_tmp, dir, _) = work_repo();
        write(&dir, ".gitignore", "*.secret\nscratch/\n");
        write(&dir, "environments/staging/forced.secret", "tracked\n");
        git(&dir, &["add", "-f", "environments/staging/forced.secret"]);
        commit_all(&dir, "ignore rules");
        write(&dir, "environments/staging/db.secret", "hidden\n");
        write(&dir, "environments/staging/scratch/tmp.yaml", "hidden\n");
        write(&dir, "environments/staging/scratch/deeper/tmp.yaml", "hidden\n");
        let s = snap(&dir, None).unwrap();
        assert_eq!(keys(&s), ["environments/staging/apps/api.yaml", "environments/staging/forced.secret"]);
        assert!(!s.origin.dirty);
        // An ignored directory with a tracked file in it: that file is read, the rest not.
        write(&dir, "environments/prod/scratch/kept.yaml", "tracked\n");
        git(&dir, &["add", "-f", "environments/prod/scratch/kept.yaml"]);
        commit_all(&dir, "a tracked file in an ignored dir");
        write(&dir, "environments/prod/scratch/tmp.yaml", "hidden\n");
        write(&dir, "environments/prod/scratch/sub/x.secret", "hidden\n");
        let s = snap(&dir, None).unwrap();
        assert_eq!(
            keys(&s),
            [
                "environments/prod/scratch/kept.yaml",
                "environments/staging/apps/api.yaml",
                "environments/staging/forced.secret"
            ]
        );
        assert!(!s.origin.dirty);
        // Modifying the tracked file in the ignored dir makes the config dirty.
        write(&dir, "environments/prod/scratch/kept.yaml", "changed\n");
        assert!(snap(&dir, None).unwrap().origin.dirty);
    }

    #[test]
    fn ignored_config_dir_is_read_as_a_plain_directory() {
        let (_tmp, dir, _) = work_repo();
        write(&dir, ".gitignore", "/local/\n");
        commit_all(&dir, "ignore local");
        write(&dir, "local/environments/dev/environment.yaml", "dev\n");
        let s = snap(&dir.join("local"), None).unwrap();
        assert_eq!(keys(&s), ["environments/dev/environment.yaml"]);
        assert_eq!(s.origin.commit, None);
        assert!(!s.origin.dirty);
        // With --ref it is read from Git, where it does not exist.
        let err = snap(&dir.join("local"), Some("main")).unwrap_err();
        assert!(matches!(err, GitError::NoEnvironments { .. }), "{err:?}");
    }

    #[test]
    fn unborn_head_has_no_commit_and_is_dirty() {
        let tmp = TempDir::new().unwrap();
        git(tmp.path(), &["init", "-q"]);
        write(tmp.path(), "environments/a.yaml", "a\n");
        let s = snap(tmp.path(), None).unwrap();
        assert_eq!(keys(&s), ["environments/a.yaml"]);
        assert_eq!(s.origin.commit, None);
        assert!(s.origin.dirty);
    }

    #[test]
    fn ref_reads_the_commit_tree_not_the_work_tree() {
        let (_tmp, dir, c1) = work_repo();
        git(&dir, &["tag", "v1"]);
        git(&dir, &["tag", "-a", "-m", "annotated", "v1-annotated"]);
        git(&dir, &["branch", "old"]);
        write(&dir, "environments/staging/apps/api.yaml", "v2\n");
        write(&dir, "environments/staging/apps/web.yaml", "web\n");
        let c2 = commit_all(&dir, "two");
        write(&dir, "environments/staging/apps/api.yaml", "v3 uncommitted\n");

        for r in ["old", "v1", "v1-annotated", &c1[..7], c1.as_str(), "main~1"] {
            let s = snap(&dir, Some(r)).unwrap();
            assert_eq!(keys(&s), ["environments/staging/apps/api.yaml"], "{r}");
            assert_eq!(text(&s, "environments/staging/apps/api.yaml"), "v1\n", "{r}");
            assert_eq!(s.origin.commit.as_deref(), Some(c1.as_str()), "{r}");
            assert_eq!(s.origin.reference.as_deref(), Some(r));
            assert!(!s.origin.dirty, "{r}");
        }
        let s = snap(&dir, Some("main")).unwrap();
        assert_eq!(text(&s, "environments/staging/apps/api.yaml"), "v2\n");
        assert_eq!(s.origin.commit.as_deref(), Some(c2.as_str()));
        let s = snap(&dir, None).unwrap();
        assert_eq!(text(&s, "environments/staging/apps/api.yaml"), "v3 uncommitted\n");
        assert!(s.origin.dirty);
    }

    #[test]
    fn unknown_ref_is_an_error_listing_branches() {
        let (_tmp, dir, _) = work_repo();
        git(&dir, &["branch", "feature"]);
        let err = snap(&dir, Some("nope")).unwrap_err();
        let GitError::RefNotFound { ref hint, .. } = err else { panic!("{err:?}") };
        assert!(hint.contains("feature, main"), "{hint}");
        let msg = err.to_string();
        assert!(msg.starts_with("ref nope not found in "), "{msg}");
    }

    #[test]
    fn config_root_in_a_subdirectory_of_the_git_repo() {
        let (_tmp, dir, _) = work_repo();
        write(&dir, "examples/two-tier/environments/prod/apps/db.yaml", "db1\n");
        let c2 = commit_all(&dir, "example");
        let sub = dir.join("examples/two-tier");
        // Changes in the outer config do not make the example dirty.
        write(&dir, "environments/staging/apps/api.yaml", "changed\n");

        let s = snap(&sub, None).unwrap();
        assert_eq!(keys(&s), ["environments/prod/apps/db.yaml"]);
        assert_eq!(s.origin.commit.as_deref(), Some(c2.as_str()));
        assert!(!s.origin.dirty);

        write(&sub, "environments/prod/apps/db.yaml", "db2\n");
        let s = snap(&sub, None).unwrap();
        assert_eq!(text(&s, "environments/prod/apps/db.yaml"), "db2\n");
        assert!(s.origin.dirty);

        let s = snap(&sub, Some("main")).unwrap();
        assert_eq!(keys(&s), ["environments/prod/apps/db.yaml"]);
        assert_eq!(text(&s, "environments/prod/apps/db.yaml"), "db1\n");
        assert!(!s.origin.dirty);

        let err = snap(&sub, Some("main~1")).unwrap_err();
        assert!(matches!(err, GitError::NoEnvironments { rev: Some(ref r), .. } if r == "main~1"), "{err:?}");
    }

    #[test]
    fn display_root_is_normalised() {
        assert_eq!(display_root("."), "");
        assert_eq!(display_root("./"), "");
        assert_eq!(display_root("examples/two-tier"), "examples/two-tier/");
        assert_eq!(display_root("./examples//two-tier/"), "examples/two-tier/");
        assert_eq!(display_root("../cfg"), "../cfg/");
        assert_eq!(display_root("/srv/cfg/"), "/srv/cfg/");
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        for url in [
            "file:///srv/cfg.git",
            "https://example.com/cfg.git",
            "ssh://git@example.com/cfg.git",
            "git@example.com:team/cfg.git",
            "example.com:cfg",
        ] {
            assert!(is_url(url), "{url}");
        }
        for path in [".", "examples/two-tier", "/srv/cfg", "./a:b", "dir/x:y", ""] {
            assert!(!is_url(path), "{path}");
        }
    }

    /// A bare origin at `<tmp>/origin.git` fed by the work tree `<tmp>/work`.
    fn origin_repo(initial_branch: &str) -> (TempDir, PathBuf, PathBuf) {
        let tmp = TempDir::new().unwrap();
        let origin = tmp.path().join("origin.git");
        let work = tmp.path().join("work");
        fs::create_dir_all(&work).unwrap();
        git(tmp.path(), &["init", "-q", "--bare", "-b", initial_branch, "origin.git"]);
        git(&work, &["init", "-q", "-b", initial_branch]);
        git(&work, &["remote", "add", "origin", origin.to_str().unwrap()]);
        (tmp, origin, work)
    }

    #[test]
    fn bare_repo_path_is_read_in_place() {
        let (_tmp, origin, work) = origin_repo("main");
        write(&work, "environments/a.yaml", "main\n");
        let c1 = commit_all(&work, "one");
        git(&work, &["checkout", "-q", "-b", "feature"]);
        write(&work, "environments/a.yaml", "feature\n");
        let c2 = commit_all(&work, "two");
        git(&work, &["push", "-q", "origin", "main", "feature"]);

        let s = snap(&origin, None).unwrap();
        assert_eq!(text(&s, "environments/a.yaml"), "main\n");
        assert_eq!(s.origin.commit.as_deref(), Some(c1.as_str()));
        assert_eq!(s.origin.display_root, "");
        assert!(!s.origin.dirty);
        let s = snap(&origin, Some("feature")).unwrap();
        assert_eq!(text(&s, "environments/a.yaml"), "feature\n");
        assert_eq!(s.origin.commit.as_deref(), Some(c2.as_str()));
    }

    #[test]
    fn bare_repo_with_dangling_head_falls_back_to_main() {
        let (_tmp, origin, work) = origin_repo("master");
        git(&work, &["checkout", "-q", "-b", "main"]);
        write(&work, "environments/a.yaml", "a\n");
        let c1 = commit_all(&work, "one");
        git(&work, &["push", "-q", "origin", "main"]); // HEAD still names master
        let s = snap(&origin, None).unwrap();
        assert_eq!(s.origin.commit.as_deref(), Some(c1.as_str()));
    }

    #[test]
    fn empty_bare_repo_is_an_error() {
        let (_tmp, origin, _work) = origin_repo("main");
        let err = snap(&origin, None).unwrap_err();
        assert!(matches!(err, GitError::EmptyRepo { .. }), "{err:?}");
    }

    fn file_url(path: &Path) -> String {
        format!("file://{}", path.display())
    }

    #[test]
    fn file_url_is_cloned_once_then_fetched() {
        use std::os::unix::fs::MetadataExt;
        let (tmp, origin, work) = origin_repo("main");
        write(&work, "environments/a.yaml", "one\n");
        let c1 = commit_all(&work, "one");
        git(&work, &["push", "-q", "origin", "main"]);
        let cache = tmp.path().join("cache");
        let url = file_url(&origin);

        let s = snapshot(&url, None, &cache).unwrap();
        assert_eq!(s.origin.commit.as_deref(), Some(c1.as_str()));
        assert_eq!(s.origin.repo, url);
        assert_eq!(s.origin.display_root, "");
        assert!(!s.origin.dirty);
        assert_eq!(text(&s, "environments/a.yaml"), "one\n");

        let entries: Vec<_> = fs::read_dir(&cache).unwrap().collect();
        assert_eq!(entries.len(), 1, "one cache repo, no leftovers");
        let repo_dir = cache.join(cache_key(&url));
        assert_eq!(cache_key(&url).len(), 16);
        assert_eq!(fs::read_to_string(repo_dir.join(URL_FILE)).unwrap(), format!("{url}\n"));
        let inode = fs::metadata(&repo_dir).unwrap().ino();
        fs::write(repo_dir.join("marker"), "survives").unwrap();

        write(&work, "environments/a.yaml", "two\n");
        write(&work, "environments/b.yaml", "b\n");
        let c2 = commit_all(&work, "two");
        git(&work, &["push", "-q", "origin", "main"]);

        let s = snapshot(&url, None, &cache).unwrap();
        assert_eq!(s.origin.commit.as_deref(), Some(c2.as_str()));
        assert_eq!(text(&s, "environments/a.yaml"), "two\n");
        assert_eq!(keys(&s), ["environments/a.yaml", "environments/b.yaml"]);
        assert!(repo_dir.join("marker").exists(), "cache was re-created");
        assert_eq!(fs::metadata(&repo_dir).unwrap().ino(), inode);
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);

        // The old commit is still reachable by id.
        let s = snapshot(&url, Some(&c1[..10]), &cache).unwrap();
        assert_eq!(text(&s, "environments/a.yaml"), "one\n");
    }

    #[test]
    fn remote_default_branch_is_the_remotes_head() {
        let (tmp, origin, work) = origin_repo("trunk");
        write(&work, "environments/a.yaml", "trunk\n");
        let trunk = commit_all(&work, "trunk");
        git(&work, &["checkout", "-q", "-b", "main"]);
        write(&work, "environments/a.yaml", "main\n");
        let main = commit_all(&work, "main");
        git(&work, &["push", "-q", "origin", "trunk", "main"]);
        let cache = tmp.path().join("cache");
        let url = file_url(&origin);

        let s = snapshot(&url, None, &cache).unwrap();
        assert_eq!(s.origin.commit.as_deref(), Some(trunk.as_str()));
        assert_eq!(text(&s, "environments/a.yaml"), "trunk\n");
        let s = snapshot(&url, Some("main"), &cache).unwrap();
        assert_eq!(s.origin.commit.as_deref(), Some(main.as_str()));
        assert_eq!(s.origin.reference.as_deref(), Some("main"));
    }

    #[test]
    fn remote_refs_tags_unknown_and_pruned_branches() {
        let (tmp, origin, work) = origin_repo("main");
        write(&work, "environments/a.yaml", "one\n");
        let c1 = commit_all(&work, "one");
        git(&work, &["tag", "v1"]);
        git(&work, &["branch", "gone"]);
        write(&work, "environments/a.yaml", "two\n");
        commit_all(&work, "two");
        git(&work, &["push", "-q", "--tags", "origin", "main", "gone"]);
        let cache = tmp.path().join("cache");
        let url = file_url(&origin);

        for r in ["v1", "gone"] {
            let s = snapshot(&url, Some(r), &cache).unwrap();
            assert_eq!(s.origin.commit.as_deref(), Some(c1.as_str()), "{r}");
        }
        let err = snapshot(&url, Some("nope"), &cache).unwrap_err();
        let GitError::RefNotFound { ref hint, .. } = err else { panic!("{err:?}") };
        assert!(hint.contains("gone, main"), "{hint}");

        git(&work, &["push", "-q", "origin", "--delete", "gone"]);
        let err = snapshot(&url, Some("gone"), &cache).unwrap_err();
        assert!(matches!(err, GitError::RefNotFound { .. }), "{err:?}");
    }

    #[test]
    fn file_url_to_a_work_tree_and_cache_conflicts() {
        let (tmp, dir, c1) = work_repo();
        write(&dir, "environments/staging/apps/api.yaml", "uncommitted\n");
        let cache = tmp.path().join("cache");
        let url = file_url(&dir);
        let s = snapshot(&url, None, &cache).unwrap();
        assert_eq!(s.origin.commit.as_deref(), Some(c1.as_str()));
        assert_eq!(text(&s, "environments/staging/apps/api.yaml"), "v1\n");
        let repo_dir = cache.join(cache_key(&url));
        assert_eq!(git(&repo_dir, &["symbolic-ref", ORIGIN_HEAD]), "refs/remotes/origin/main");

        git(&repo_dir, &["config", URL_CONFIG_KEY, "file:///elsewhere"]);
        let err = snapshot(&url, None, &cache).unwrap_err();
        assert!(matches!(err, GitError::CacheConflict { .. }), "{err:?}");
    }

    #[test]
    fn unreachable_remote_is_a_fetch_error() {
        let tmp = TempDir::new().unwrap();
        let url = file_url(&tmp.path().join("missing.git"));
        let err = snapshot(&url, None, &tmp.path().join("cache")).unwrap_err();
        assert!(matches!(err, GitError::Fetch { .. }), "{err:?}");
        assert!(err.to_string().starts_with("could not fetch file://"), "{err}");
    }

    #[test]
    fn too_large_file_is_an_error_naming_it() {
        let big = "x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap() + 1);
        let tmp = TempDir::new().unwrap();
        write(tmp.path(), "environments/ok.yaml", "ok\n");
        write(tmp.path(), "environments/data/big.bin", &big);
        let err = snap(tmp.path(), None).unwrap_err();
        assert!(
            matches!(err, GitError::FileTooLarge { ref path, size, .. }
                if path == "environments/data/big.bin" && size == MAX_FILE_BYTES + 1),
            "{err:?}"
        );
        assert!(err.to_string().contains("environments/data/big.bin in "), "{err}");

        // The same limit holds when reading a commit.
        git(tmp.path(), &["init", "-q"]);
        commit_all(tmp.path(), "big");
        let err = snap(tmp.path(), Some("HEAD")).unwrap_err();
        assert!(matches!(err, GitError::FileTooLarge { .. }), "{err:?}");
    }

    #[test]
    fn too_many_files_is_an_error() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("environments/many");
        fs::create_dir_all(&dir).unwrap();
        for i in 0..=MAX_FILES {
            fs::write(dir.join(format!("{i}.yaml")), "").unwrap();
        }
        let err = snap(tmp.path(), None).unwrap_err();
        assert!(matches!(err, GitError::TooManyFiles { .. }), "{err:?}");
    }

    #[test]
    fn default_cache_dir_ends_in_reconcile_repos() {
        assert!(default_cache_dir().ends_with("reconcile/repos"));
    }
}
