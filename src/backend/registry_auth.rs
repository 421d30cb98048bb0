//! Registry credentials for pulls and digest lookups: the environment's
//! `registries:` entries first, else the Docker client config of the user running
//! reconcile, looked up as the docker CLI does.
//!
//! Lookup for an image's registry host (see [`registry_of`]):
//! 1. an entry of `registries:` with that host (its `password` names a secret);
//! 2. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`:
//!    `credHelpers[host]`, else `credsStore` — the program `docker-credential-<name>`
//!    run with `get`, the server on stdin, JSON `{Username, Secret}` on stdout (the
//!    docker-credential-helpers protocol; `Username: "<token>"` means an identity
//!    token); a helper that has nothing for the server falls back to `auths`;
//! 3. `auths[host]` (keys may carry a scheme, `https://host/`, as old CLIs wrote
//!    them): base64 `auth` (`user:password`), or `username` / `password`, or an
//!    `identitytoken`;
//! 4. nothing: an anonymous pull.
//!
//! Docker Hub is `docker.io` in image references and `https://index.docker.io/v1/`
//! in config files and helpers, as in the CLI.
//!
//! **Invariants.** Passwords live in [`Secret`]s: `Debug` prints `(sensitive)`, and no
//! error message carries a value (a helper's stdout is never quoted, its stderr is).
//! A missing config file is no credentials, not an error; an unreadable or invalid
//! one is an error naming the file.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::secret::Secret;
use crate::spec::types::RegistrySpec;

/// Docker Hub's key in config files and credential helpers.
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
/// How long a credential helper may take.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(20);

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The registry as in image references (`registry.example:5000`, `docker.io`).
    pub registry: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// An OAuth identity token (helpers' `<token>` user, config `identitytoken`).
    pub identity_token: Option<Secret>,
    /// Where they came from, for messages: `registries[0]`, `~/.docker/config.json`,
    /// `docker-credential-pass`.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A `registries:` entry names a secret that is not resolved.
    #[error("registry `{registry}`: password secret `{secret}` is not available: {cause}")]
    Secret { registry: String, secret: String, cause: String },
    /// The Docker client config cannot be read or parsed.
    #[error("docker client config {path}: {cause}")]
    Config { path: String, cause: String },
    /// A credential helper failed.
    #[error("registry `{registry}`: credential helper `{helper}` failed: {cause}")]
    Helper { registry: String, helper: String, cause: String },
}

/// The registry host of an image reference, as the docker CLI reads it: the first
/// path component when it has a `.` or `:` or is `localhost`, else `docker.io`.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// The server name config files and helpers use for `registry`.
fn server_key(registry: &str) -> &str {
    if matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        DOCKER_HUB_SERVER
    } else {
        registry
    }
}

/// All credential sources of one run: the environment's entries (secrets resolved)
/// and the Docker client config (read once).
#[derive(Debug, Clone, Default)]
pub struct Auth {
    explicit: BTreeMap<String, Credentials>,
    config: Option<DockerConfig>,
    /// Where `docker-credential-*` programs are looked up (`None`: `PATH`).
    helper_dir: Option<PathBuf>,
}

impl Auth {
    /// From the environment's `registries` (with `secrets` resolved by the caller) and
    /// the Docker client config found through [`default_config_dir`].
    ///
    /// # Errors
    /// [`AuthError::Secret`] when an entry's password secret is missing from `secrets`;
    /// [`AuthError::Config`] when the config file exists but cannot be read or parsed.
    pub fn new(registries: &[RegistrySpec], secrets: &BTreeMap<String, Secret>) -> Result<Self, AuthError> {
        let config = match default_config_dir() {
            Some(dir) => DockerConfig::load(&dir)?,
            None => None,
        };
        Self::with_config(registries, secrets, config)
    }

    /// As [`Auth::new`], resolving only the password secrets the entries name, from the
    /// environment's linked secrets (`Env::secret_refs`: a `from_age` file is found along
    /// the extends chain, as for every other secret consumer).
    ///
    /// # Errors
    /// As [`Auth::new`]; a secret that cannot be resolved names the registry and why.
    pub fn resolve(
        registries: &[RegistrySpec],
        refs: &BTreeMap<String, crate::spec::types::SecretRef>,
    ) -> Result<Self, AuthError> {
        let mut secrets = BTreeMap::new();
        for r in registries {
            let secret = refs.get(&r.password).ok_or_else(|| AuthError::Secret {
                registry: r.host.clone(),
                secret: r.password.clone(),
                cause: "it is not declared in `secrets`".into(),
            })?;
            let value = super::secrets::resolve_ref(secret).map_err(|e| AuthError::Secret {
                registry: r.host.clone(),
                secret: r.password.clone(),
                cause: format!("{e}; {}", e.hint()),
            })?;
            secrets.insert(r.password.clone(), value);
        }
        Self::new(registries, &secrets)
    }

    /// As [`Auth::new`], with an already loaded Docker config (or none).
    ///
    /// # Errors
    /// As [`Auth::new`].
    pub fn with_config(
        registries: &[RegistrySpec],
        secrets: &BTreeMap<String, Secret>,
        config: Option<DockerConfig>,
    ) -> Result<Self, AuthError> {
        let mut explicit = BTreeMap::new();
        for (i, r) in registries.iter().enumerate() {
            let password = secrets.get(&r.password).cloned().ok_or_else(|| AuthError::Secret {
                registry: r.host.clone(),
                secret: r.password.clone(),
                cause: "it is not declared or could not be resolved".into(),
            })?;
            explicit.insert(
                r.host.clone(),
                Credentials {
                    registry: r.host.clone(),
                    username: Some(r.username.clone()),
                    password: Some(password),
                    identity_token: None,
                    source: format!("registries[{i}]"),
                },
            );
        }
        Ok(Self { explicit, config, helper_dir: None })
    }

    /// Look credential helpers up in `dir` instead of `PATH` (tests).
    #[must_use]
    pub fn helpers_in(mut self, dir: &Path) -> Self {
        self.helper_dir = Some(dir.to_path_buf());
        self
    }

    /// Credentials for `registry` (a host as in [`registry_of`]), `None` for an
    /// anonymous pull.
    ///
    /// # Errors
    /// [`AuthError::Helper`] when a configured credential helper cannot run or
    /// answers garbage; [`AuthError::Config`] for an `auths` entry that does not decode.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>, AuthError> {
        if let Some(c) = self.explicit.get(registry) {
            return Ok(Some(c.clone()));
        }
        match &self.config {
            Some(config) => config.lookup(registry, self.helper_dir.as_deref()),
            None => Ok(None),
        }
    }
}

/// `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".docker"))
}

/// The parts of a Docker client `config.json` that hold credentials.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(skip)]
    path: String,
}

#[derive(Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::secret::MASK)
    }
}

impl DockerConfig {
    /// `dir/config.json`; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// [`AuthError::Config`] when it exists but cannot be read or is not JSON of the
    /// expected shape.
    pub fn load(dir: &Path) -> Result<Option<Self>, AuthError> {
        let path = dir.join("config.json");
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AuthError::Config { path: shown, cause: e.kind().to_string() }),
        };
        Self::parse(&text, &shown).map(Some)
    }

    /// Parse a config file's text; `path` is only for messages.
    ///
    /// # Errors
    /// [`AuthError::Config`]: not JSON, or a field of the wrong type (the message
    /// gives serde's position, never the content).
    pub fn parse(text: &str, path: &str) -> Result<Self, AuthError> {
        let mut c: Self = serde_json::from_str(text).map_err(|e| AuthError::Config {
            path: path.to_string(),
            cause: format!("not a valid config file (line {}, column {})", e.line(), e.column()),
        })?;
        c.path = path.to_string();
        Ok(c)
    }

    fn lookup(&self, registry: &str, helper_dir: Option<&Path>) -> Result<Option<Credentials>, AuthError> {
        let server = server_key(registry);
        let helper =
            self.cred_helpers.get(registry).or_else(|| self.cred_helpers.get(server)).or(self.creds_store.as_ref());
        if let Some(name) = helper.filter(|n| !n.is_empty())
            && let Some(c) = run_helper(name, registry, server, helper_dir)?
        {
            return Ok(Some(c));
        }
        let Some(entry) = self.auth_entry(registry, server) else { return Ok(None) };
        let bad =
            |cause: &str| AuthError::Config { path: self.path.clone(), cause: format!("auths `{server}`: {cause}") };
        let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64_decode(auth).ok_or_else(|| bad("`auth` is not base64"))?;
            let text = String::from_utf8(decoded).map_err(|_| bad("`auth` is not UTF-8"))?;
            let (u, p) = text.split_once(':').ok_or_else(|| bad("`auth` is not base64 of USER:PASSWORD"))?;
            (username, password) = (Some(u.to_string()), Some(p.to_string()));
        }
        let identity_token = entry.identitytoken.clone().filter(|t| !t.is_empty()).map(Secret::new);
        if username.is_none() && identity_token.is_none() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            registry: registry.to_string(),
            username,
            password: password.map(Secret::new),
            identity_token,
            source: self.path.clone(),
        }))
    }

    /// `auths[server]`, or a key that names the same host with a scheme or a path.
    fn auth_entry(&self, registry: &str, server: &str) -> Option<&AuthEntry> {
        self.auths.get(server).or_else(|| self.auths.get(registry)).or_else(|| {
            self.auths.iter().find_map(|(k, v)| {
                let bare = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
                let host = bare.split('/').next().unwrap_or(bare);
                (host == registry || (server == DOCKER_HUB_SERVER && host == "index.docker.io")).then_some(v)
            })
        })
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// `docker-credential-<name> get` with `server` on stdin. `Ok(None)` when the helper
/// has no credentials for it (it says `credentials not found`).
fn run_helper(name: &str, registry: &str, server: &str, dir: Option<&Path>) -> Result<Option<Credentials>, AuthError> {
    let program = format!("docker-credential-{name}");
    let fail = |cause: String| AuthError::Helper { registry: registry.to_string(), helper: program.clone(), cause };
    let path = dir.map_or_else(|| PathBuf::from(&program), |d| d.join(&program));
    let mut child = Command::new(&path)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                format!("`{program}` is not installed (not on PATH); install it or remove it from the docker config")
            } else {
                e.to_string()
            })
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its exit status.
        let _ = stdin.write_all(server.as_bytes());
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(s) => break s,
            None if started.elapsed() > HELPER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {HELPER_TIMEOUT:?}")));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if !status.success() {
        // The protocol's "nothing stored" answer is on stdout; it holds no secret.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = stderr.trim();
        return Err(fail(format!("{status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })));
    }
    let answer: HelperAnswer =
        serde_json::from_str(&stdout).map_err(|_| fail("its answer is not the JSON {Username, Secret}".into()))?;
    let (username, password, identity_token) = if answer.username == "<token>" {
        (None, None, Some(Secret::new(answer.secret)))
    } else {
        (Some(answer.username), Some(Secret::new(answer.secret)), None)
    };
    Ok(Some(Credentials { registry: registry.to_string(), username, password, identity_token, source: program }))
}

/// Standard base64 (with or without padding); `None` on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let trimmed = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in trimmed.bytes() {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            #[allow(clippy::cast_possible_truncation)] // the low 8 bits, on purpose
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn registries() -> Vec<RegistrySpec> {
        vec![RegistrySpec { host: "registry.example:5000".into(), username: "ci-bot".into(), password: "reg".into() }]
    }

    fn secrets() -> BTreeMap<String, Secret> {
        BTreeMap::from([("reg".to_string(), Secret::new("s3cret".into()))])
    }

    #[test]
    fn registry_hosts_of_images() {
        assert_eq!(registry_of("busybox:1"), "docker.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("registry.example:5000/team/api:1"), "registry.example:5000");
        assert_eq!(registry_of("127.0.0.1:25000/x/y@sha256:00"), "127.0.0.1:25000");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("ghcr.io/o/r:1"), "ghcr.io");
    }

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("dXNlcjpwYXNzMQ==").unwrap(), b"user:pass1");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("not base64!").is_none());
    }

    #[test]
    fn the_environment_entry_wins_and_is_masked() {
        let config = DockerConfig::parse(
            r#"{"auths": {"registry.example:5000": {"auth": "b3RoZXI6b3RoZXI="}}}"#,
            "/home/u/.docker/config.json",
        )
        .unwrap();
        let auth = Auth::with_config(&registries(), &secrets(), Some(config)).unwrap();
        let c = auth.lookup("registry.example:5000").unwrap().unwrap();
        assert_eq!((c.username.as_deref(), c.password.as_ref().map(Secret::expose)), (Some("ci-bot"), Some("s3cret")));
        assert_eq!(c.source, "registries[0]");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert_eq!(auth.lookup("other.example").unwrap(), None);
    }

    #[test]
    fn a_missing_password_secret_names_registry_and_secret() {
        let e = Auth::with_config(&registries(), &BTreeMap::new(), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "registry `registry.example:5000`: password secret `reg` is not available: it is not declared or could \
             not be resolved"
        );
    }

    #[test]
    fn auths_entries_in_every_spelling() {
        let config = DockerConfig::parse(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
                "https://old.example/v1/": {"auth": "b2xkOm9sZHBhc3M="},
                "plain.example": {"username": "u", "password": "p"},
                "token.example": {"identitytoken": "tok"},
                "empty.example": {}
            }}"#,
            "cfg",
        )
        .unwrap();
        let auth = Auth::with_config(&[], &BTreeMap::new(), Some(config)).unwrap();
        let get = |r: &str| auth.lookup(r).unwrap();
        let hub = get("docker.io").unwrap();
        assert_eq!((hub.username.as_deref(), hub.password.unwrap().expose()), (Some("hub"), "hubpass"));
        let old = get("old.example").unwrap();
        assert_eq!((old.username.as_deref(), old.password.unwrap().expose()), (Some("old"), "oldpass"));
        let plain = get("plain.example").unwrap();
        assert_eq!((plain.username.as_deref(), plain.password.unwrap().expose()), (Some("u"), "p"));
        let token = get("token.example").unwrap();
        assert_eq!((token.username, token.identity_token.unwrap().expose()), (None, "tok"));
        assert_eq!(get("empty.example"), None);
        assert_eq!(get("unknown.example"), None);
    }

    #[test]
    fn bad_config_files_name_the_file_not_the_content() {
        let e = DockerConfig::parse(r#"{"auths": {"x": {"auth": 5}}}"#, "/c/config.json").unwrap_err();
        assert!(e.to_string().starts_with("docker client config /c/config.json: not a valid config file"), "{e}");
        let config =
            DockerConfig::parse(r#"{"auths": {"x.example": {"auth": "!!secret!!"}}}"#, "/c/config.json").unwrap();
        let e = Auth::with_config(&[], &BTreeMap::new(), Some(config)).unwrap().lookup("x.example").unwrap_err();
        assert_eq!(e.to_string(), "docker client config /c/config.json: auths `x.example`: `auth` is not base64");
        assert!(!e.to_string().contains("secret!!"));
        let dir = tempfile::tempdir().unwrap();
        assert!(DockerConfig::load(dir.path()).unwrap().is_none(), "a missing file is no credentials");
    }

    /// A credential helper speaking the real protocol: reads the server from stdin,
    /// answers for one server, says "credentials not found" for others.
    fn helper(dir: &Path, name: &str, body: &str) {
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn credential_helpers_and_stores() {
        let dir = tempfile::tempdir().unwrap();
        helper(
            dir.path(),
            "fake",
            r#"case "$server" in
  helped.example) echo '{"ServerURL":"helped.example","Username":"helper-user","Secret":"helper-pass"}' ;;
  https://index.docker.io/v1/) echo '{"ServerURL":"x","Username":"<token>","Secret":"hub-token"}' ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac"#,
        );
        helper(dir.path(), "broken", "echo 'the keychain is locked' >&2; echo 'leaked-stdout'; exit 3");
        let config = DockerConfig::parse(
            r#"{"credsStore": "fake", "credHelpers": {"broken.example": "broken", "absent.example": "nope"},
                "auths": {"fallback.example": {"auth": "ZmI6ZmJwYXNz"}}}"#,
            "cfg",
        )
        .unwrap();
        let auth = Auth::with_config(&[], &BTreeMap::new(), Some(config)).unwrap().helpers_in(dir.path());
        let c = auth.lookup("helped.example").unwrap().unwrap();
        assert_eq!((c.username.as_deref(), c.password.unwrap().expose()), (Some("helper-user"), "helper-pass"));
        assert_eq!(c.source, "docker-credential-fake");
        let hub = auth.lookup("docker.io").unwrap().unwrap();
        assert_eq!((hub.username, hub.identity_token.unwrap().expose()), (None, "hub-token"));
        // The store has nothing for it: the auths entry is used.
        let fb = auth.lookup("fallback.example").unwrap().unwrap();
        assert_eq!((fb.username.as_deref(), fb.password.unwrap().expose()), (Some("fb"), "fbpass"));
        assert_eq!(auth.lookup("nothing.example").unwrap(), None);
        // A failing helper: its stderr is quoted, its stdout never.
        let e = auth.lookup("broken.example").unwrap_err().to_string();
        assert!(e.starts_with("registry `broken.example`: credential helper `docker-credential-broken` failed"), "{e}");
        assert!(e.contains("the keychain is locked") && !e.contains("leaked-stdout"), "{e}");
        let e = auth.lookup("absent.example").unwrap_err().to_string();
        assert!(e.contains("`docker-credential-nope` is not installed"), "{e}");
    }
}
