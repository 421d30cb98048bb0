//! The etcd backend: connecting, observing the keys reconcile manages for an
//! environment, and writing them.
//!
//! **Invariants.** This is the only module that imports `etcd_client`; the rest of the
//! crate names the client as [`Client`] (re-exported here) and never builds requests.
//! Reads are bounded to reconcile's namespaces: `<prefix>/<env>/config/`,
//! `<prefix>/<env>/apps/` and the registry directories `<registry_prefix>/<app>_<env>/`
//! of the apps that are desired or have a desired copy in etcd. Every range read is a
//! prefix ending in `/`, so the whole keyspace is never read, even with an empty
//! `registry_prefix` (keys at the root outside those directories stay unseen).
//! `applied`, `history/` and `lock` are never part of an observation (they are
//! bookkeeping, not desired state). One observation is one snapshot: every read after the
//! first is pinned to the revision the first one saw.
//!
//! **Round trips.** [`observe`] sends one transaction holding the two namespace ranges and
//! the registry ranges of the desired apps; a second, pinned, concurrent round only when
//! etcd's per-transaction limit ([`MAX_TXN_OPS`]) is exceeded or `apps/` names apps that
//! are no longer desired (their registry entries must be seen to be removed).
//!
//! **Timeouts.** [`connect`] bounds itself by its `timeout`, and the returned client bounds
//! every later request by the same duration (etcd-client's per-request timeout), so no
//! call made through this module can hang on a silent etcd.
//!
//! **The apply lock.** [`acquire_lock`] takes `<prefix>/<env>/lock` with a create-if-absent
//! transaction (`create_revision == 0` → put on our own lease, else read the holder)
//! rather than etcd's lock API: the key's value is the [`Holder`] as JSON, so a waiting
//! apply can say who holds the lock, and there is exactly one key to look at
//! (`etcdctl get <prefix>/<env>/lock`). The lease is ours from the start (never the
//! server's 60 s session lease that `lock()` makes without one), kept alive by a
//! background task every TTL/3 while waiting and while held. [`LockGuard::release`]
//! revokes it, deleting the key at once; dropping the guard, a crash or `kill -9` only
//! stop the keep-alive, so the key disappears when the lease expires (within its TTL).
//! A waiting apply polls every 500 ms (one transaction per attempt, each bounded by the
//! client's request timeout; no request is held open for the whole wait). A poll etcd
//! does not answer (a member down, a leader election) is tried again until the wait
//! ends, and a lease lost while waiting is replaced by a new one (nothing was held on
//! it); a refusal (permission denied) ends the wait at once.
//! [`LockGuard::lost`] turns true, and stays true, once the lease can no longer be
//! proven alive with a TTL/3 margin: the caller must then stop writing.
//!
//! **The audit log.** [`record_apply`] writes `applied` and `history/<unix nanos, 20
//! digits>` with the same JSON in one transaction, so a key-ordered range is
//! chronological (by the wall clock of the writing host); [`history`] reads it newest
//! first.
//!
//! Decisions and pitfalls of etcd-client 0.21 against etcd 3.4 (checked against a real
//! etcd 3.4 when the crate was chosen): `get_stream` needs etcd ≥ 3.7, so ranges use plain `get`
//! (inside transactions); the client is cheap to clone, one clone per concurrent task.
//! The per-request timeout of [`connect`]'s client bounds a call until etcd's response
//! headers arrive, not the life of a stream, so the lease keep-alive stream may share it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use etcd_client::Client;
use etcd_client::{
    Certificate, Compare, CompareOp, ConnectOptions, GetOptions, Identity, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::model::{EtcdObservation, Pin, keys};
use crate::spec::types::{EtcdSpec, EtcdTls};

/// etcd 3.4's default `--max-txn-ops`: the most operations one transaction may hold.
/// Reads are chunked to it; a [`batch`] larger than the server's limit is refused by etcd.
pub const MAX_TXN_OPS: usize = 128;

/// The largest range response accepted (tonic's default of 4 MiB is too small for a big
/// config center read in one range).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Errors talking to etcd; messages lowercase, naming the endpoints or the key and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoints configured; list at least one under `etcd.endpoints` in environment.yaml")]
    NoEndpoints,
    #[error(
        "cannot connect to etcd at {}: {cause}; check that etcd runs there and that \
         `etcd.endpoints` in environment.yaml is right",
        endpoints.join(", ")
    )]
    Connect { endpoints: Vec<String>, cause: String },
    #[error(
        "etcd at {} did not answer within {after:?}; check that etcd runs there, that \
         `etcd.endpoints` in environment.yaml is right and that no firewall drops the traffic",
        endpoints.join(", ")
    )]
    Timeout { endpoints: Vec<String>, after: Duration },
    #[error("cannot read {key} from etcd: {cause}")]
    Read { key: String, cause: String },
    #[error("cannot write {key} to etcd: {cause}")]
    Write { key: String, cause: String },
    #[error(
        "cannot write {count} etcd keys atomically ({first} and the rest): {cause}; \
         nothing of the batch was written"
    )]
    Batch { count: usize, first: String, cause: String },
    #[error("an etcd batch writes {key} more than once; a transaction may touch a key only once")]
    DuplicateKey { key: String },
    #[error(
        "etcd key {key} is not valid UTF-8 (in its name or value); reconcile manages text only: \
         fix or delete the key (`etcdctl del {key}`)"
    )]
    NotUtf8 { key: String },
    #[error(
        "the apply lock {key} is held by {holder}; gave up after waiting {waited:?}. Wait for that \
         apply to finish (or raise --lock-timeout); the lock of an apply that died expires with its \
         lease within seconds"
    )]
    LockTimeout { key: String, holder: Box<Holder>, waited: Duration },
    #[error(
        "etcd tls {field} file `{path}`: {cause}; check `etcd.tls.{field}` in environment.yaml (a relative \
         path is relative to the directory reconcile runs in)"
    )]
    TlsFile { field: &'static str, path: String, cause: String },
    #[error("cannot get the password of etcd user `{user}`: {cause}")]
    Password { user: String, cause: String },
    #[error(
        "etcd at {} refused user `{user}`: {cause}; check `etcd.username` and the secret named by \
         `etcd.password` (`etcdctl user passwd {user}` sets a new one)",
        endpoints.join(", ")
    )]
    Auth { endpoints: Vec<String>, user: String, cause: String },
    /// A fenced write found the lock key no longer on our lease: another apply may hold
    /// it. Nothing was written.
    #[error(
        "the apply lock {lock} is no longer ours (its lease expired or was revoked); nothing was written to {key}; run apply again"
    )]
    Fenced { lock: String, key: String },
}

/// One write of an atomic [`batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put { key: String, value: String },
    Delete { key: String },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }
}

/// Connect to the environment's etcd and prove it answers (one `status` call).
///
/// The returned client bounds every request by `timeout` too.
///
/// # Errors
/// [`EtcdError::NoEndpoints`] when the spec lists none; [`EtcdError::Connect`] when the
/// endpoints are malformed, refuse the connection or answer with an error;
/// [`EtcdError::Timeout`] when nothing answers within `timeout`. All name the endpoints.
pub async fn connect(spec: &EtcdSpec, timeout: Duration) -> Result<Client, EtcdError> {
    let endpoints = spec.endpoints.clone();
    if endpoints.is_empty() {
        return Err(EtcdError::NoEndpoints);
    }
    let mut options = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
    if let Some(tls) = &spec.tls {
        options = options.with_tls(tls_options(tls)?);
    }
    if let Some(user) = &spec.username {
        let password = password(spec, user).await?;
        options = options.with_user(user.clone(), password.expose());
    }
    remember_user(spec);
    let user = spec.username.clone();
    let failed = |e: etcd_client::Error| {
        if is_timeout(&e) {
            EtcdError::Timeout { endpoints: endpoints.clone(), after: timeout }
        } else if let Some(user) = user.as_ref().filter(|_| is_auth_failure(&e)) {
            EtcdError::Auth { endpoints: endpoints.clone(), user: user.clone(), cause: describe(&e) }
        } else {
            EtcdError::Connect { endpoints: endpoints.clone(), cause: describe(&e) }
        }
    };
    let attempt = async {
        let live = live_endpoints(&endpoints, &options).await;
        let mut client = Client::connect(live, Some(options)).await.map_err(failed)?;
        client.status().await.map_err(failed)?;
        Ok(client)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(EtcdError::Timeout { endpoints: endpoints.clone(), after: timeout }),
    }
}

/// The endpoints of a cluster that answer now (all of them when none does, so the error
/// names them). etcd-client balances requests over every endpoint it was given, and one
/// that is down fails each request routed to it ("connection refused") instead of
/// failing over: a member that is down at connect must not be in the client's set.
async fn live_endpoints(endpoints: &[String], options: &ConnectOptions) -> Vec<String> {
    if endpoints.len() < 2 {
        return endpoints.to_vec();
    }
    let probes = endpoints.iter().map(|ep| async move {
        let ok = match Client::connect([ep.as_str()], Some(options.clone())).await {
            Ok(mut c) => c.status().await.is_ok(),
            Err(_) => false,
        };
        ok.then(|| ep.clone())
    });
    let live: Vec<String> = futures::future::join_all(probes).await.into_iter().flatten().collect();
    if live.is_empty() { endpoints.to_vec() } else { live }
}

// -- etcdsec: TLS, auth and permission errors --

/// The TLS options of `etcd.tls`: the files are read here, each error naming its field.
fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, EtcdError> {
    let read = |field: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| EtcdError::TlsFile { field, path: path.into(), cause: e.kind().to_string() })
    };
    let mut options = TlsOptions::new();
    if let Some(ca) = &tls.ca {
        options = options.ca_certificate(Certificate::from_pem(read("ca", ca)?));
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            options = options.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?))
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(EtcdError::TlsFile {
                field: "key",
                path: String::new(),
                cause: "missing (cert needs key)".into(),
            });
        }
        (None, Some(_)) => {
            return Err(EtcdError::TlsFile {
                field: "cert",
                path: String::new(),
                cause: "missing (key needs cert)".into(),
            });
        }
    }
    Ok(options)
}

/// The etcd user's password from its secret (a `from_command` runs off the async threads).
async fn password(spec: &EtcdSpec, user: &str) -> Result<crate::secret::Secret, EtcdError> {
    let Some(secret) = spec.password_secret.clone() else {
        return Err(EtcdError::Password {
            user: user.into(),
            cause: format!(
                "`etcd.password` names no entry in `secrets` ({})",
                spec.password.as_deref().unwrap_or("not set")
            ),
        });
    };
    let resolved = tokio::task::spawn_blocking(move || crate::backend::secrets::resolve_ref(&secret)).await;
    match resolved {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(EtcdError::Password { user: user.into(), cause: format!("{e}; {}", e.hint()) }),
        Err(e) => Err(EtcdError::Password { user: user.into(), cause: e.to_string() }),
    }
}

/// Who this process talks to etcd as, for permission errors (one environment per process).
fn who() -> &'static std::sync::Mutex<Option<String>> {
    static WHO: std::sync::OnceLock<std::sync::Mutex<Option<String>>> = std::sync::OnceLock::new();
    WHO.get_or_init(|| std::sync::Mutex::new(None))
}

fn remember_user(spec: &EtcdSpec) {
    let user = match (&spec.username, spec.tls.as_ref().and_then(|t| t.cert.as_ref())) {
        (Some(u), _) => format!("etcd user `{u}`"),
        (None, Some(cert)) => format!("the etcd user named by the common name of client certificate {cert}"),
        (None, None) => "an unauthenticated client (no etcd.username, no etcd.tls.cert)".into(),
    };
    if let Ok(mut w) = who().lock() {
        *w = Some(user);
    }
}

/// gRPC PERMISSION_DENIED: etcd's RBAC refused the request.
fn is_permission_denied(e: &etcd_client::Error) -> bool {
    const PERMISSION_DENIED: i32 = 7;
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == PERMISSION_DENIED)
}

/// etcd refused the user name or password.
fn is_auth_failure(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("authentication failed"))
}

/// Everything reconcile manages in etcd for `env`: all keys under
/// [`keys::config_dir`], [`keys::apps_dir`], [`keys::health_dir`] (health marks) and [`keys::lb_dir`], and the registry entries under
/// [`keys::registry_dir`] of every app in `apps` (the desired apps) and of every app named
/// by an existing `<prefix>/<env>/apps/<app>` key. Never `applied`, `history/` or `lock`.
///
/// One round trip when the ranges fit one transaction (up to 123 desired apps) and every
/// app copy in etcd is desired; otherwise a second round of concurrent transactions,
/// pinned to the first one's revision so the result is one consistent snapshot.
///
/// # Errors
/// [`EtcdError::Read`] naming the range that failed (unreachable etcd, timeout, a
/// compacted revision); [`EtcdError::NotUtf8`] naming a key whose name or value is not
/// UTF-8.
pub async fn observe(
    client: &mut Client,
    spec: &EtcdSpec,
    env: &str,
    apps: &BTreeSet<String>,
) -> Result<EtcdObservation, EtcdError> {
    let apps_dir = keys::apps_dir(&spec.prefix, env);
    let registry_dir = |app: &str| keys::registry_dir(&spec.registry_prefix, app, env);
    // First round: both namespaces and as many desired registry dirs as fit.
    let mut first = vec![
        keys::config_dir(&spec.prefix, env),
        apps_dir.clone(),
        keys::health_dir(&spec.prefix, env),
        keys::lb_dir(&spec.prefix, env),
        keys::canary_dir(&spec.prefix, env),
    ];
    let mut rest: Vec<String> = Vec::new();
    for app in apps {
        if first.len() < MAX_TXN_OPS { &mut first } else { &mut rest }.push(registry_dir(app));
    }
    let mut observed = BTreeMap::new();
    let revision = read_ranges(client, &first, None, &mut observed).await?;

    // Apps with a copy in etcd but no longer desired: their registry entries are ours to
    // remove, so they must be observed too. Nested keys under apps/ name no app.
    let copies: BTreeSet<&str> = observed
        .keys()
        .filter_map(|k| k.strip_prefix(apps_dir.as_str()))
        .filter(|app| !app.is_empty() && !app.contains('/') && !apps.contains(*app))
        .collect();
    rest.extend(copies.into_iter().map(registry_dir));

    // Second round, only when needed: the remaining dirs, chunked, concurrently, pinned.
    let rounds = if rest.is_empty() { 1 } else { 2 };
    let chunks = rest.chunks(MAX_TXN_OPS).map(|chunk| {
        let client = client.clone();
        async move {
            let mut part = BTreeMap::new();
            read_ranges(&client, chunk, Some(revision), &mut part).await?;
            Ok::<_, EtcdError>(part)
        }
    });
    for part in futures::future::try_join_all(chunks).await? {
        observed.extend(part);
    }
    tracing::debug!(env, keys = observed.len(), revision, rounds, "observed etcd");
    Ok(EtcdObservation { keys: observed })
}

/// Read every key under each of `dirs` in one transaction (at `revision` when given) into
/// `into`; returns the revision the transaction saw.
async fn read_ranges(
    client: &Client,
    dirs: &[String],
    revision: Option<i64>,
    into: &mut BTreeMap<String, String>,
) -> Result<i64, EtcdError> {
    let what = || match dirs {
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (and {} other prefixes)", rest.len()),
        [] => String::new(),
    };
    let ops: Vec<TxnOp> = dirs
        .iter()
        .map(|dir| {
            // An empty or open-ended prefix would range over the whole keyspace (or a
            // sibling's keys): the key layout makes every dir end in '/'.
            debug_assert!(dir.ends_with('/'), "range prefix {dir:?} must end in '/'");
            let mut options = GetOptions::new().with_prefix();
            if let Some(rev) = revision {
                options = options.with_revision(rev);
            }
            TxnOp::get(dir.as_str(), Some(options))
        })
        .collect();
    let txn = Txn::new().and_then(ops);
    let response = fresh_auth(client, Resend::Idempotent, || {
        let mut kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
        let txn = txn.clone();
        async move { kv.txn(txn).await }
    })
    .await
    .map_err(|e| EtcdError::Read { key: what(), cause: describe(&e) })?;
    for (dir, op) in dirs.iter().zip(response.op_responses()) {
        let TxnOpResponse::Get(range) = op else {
            return Err(EtcdError::Read { key: dir.clone(), cause: "etcd answered a range with a write".into() });
        };
        if range.more() {
            // Cannot happen without a limit; refuse a partial observation rather than plan on it.
            return Err(EtcdError::Read { key: dir.clone(), cause: "etcd returned a partial range".into() });
        }
        for kv in range.kvs() {
            let key = std::str::from_utf8(kv.key())
                .map_err(|_| EtcdError::NotUtf8 { key: String::from_utf8_lossy(kv.key()).into_owned() })?;
            let value = std::str::from_utf8(kv.value()).map_err(|_| EtcdError::NotUtf8 { key: key.to_owned() })?;
            into.insert(key.to_owned(), value.to_owned());
        }
    }
    Ok(response.header().map_or(0, |h| h.revision()))
}

/// Set `key` to `value`.
///
/// # Errors
/// [`EtcdError::Write`] naming the key (unreachable etcd, timeout, refused request).
pub async fn put(client: &mut Client, key: &str, value: &str) -> Result<(), EtcdError> {
    fresh_auth(client, Resend::Idempotent, || {
        let mut c = client.clone();
        async move { c.put(key, value, None).await }
    })
    .await
    .map_err(|e| EtcdError::Write { key: key.into(), cause: describe(&e) })?;
    Ok(())
}

/// Delete `key` (exactly that key, never a prefix). Deleting a missing key succeeds.
///
/// # Errors
/// [`EtcdError::Write`] naming the key.
pub async fn delete(client: &mut Client, key: &str) -> Result<(), EtcdError> {
    fresh_auth(client, Resend::Idempotent, || {
        let mut c = client.clone();
        async move { c.delete(key, None).await }
    })
    .await
    .map_err(|e| EtcdError::Write { key: key.into(), cause: describe(&e) })?;
    Ok(())
}

/// Proof of holding a lock, for fenced writes: the lock key and our lease on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub lease: i64,
}

/// [`batch`], fenced when `fence` is given: the transaction also requires the lock key to
/// still be on our lease, so an apply that lost its lock (stalled past the TTL, another
/// apply took over) cannot write, however its own checks raced. An empty batch makes no
/// request.
///
/// # Errors
/// [`EtcdError::Fenced`] when the lock is not ours (nothing written); as [`batch`] otherwise.
pub async fn batch_fenced(client: &mut Client, writes: &[Write], fence: Option<&Fence>) -> Result<(), EtcdError> {
    let Some(first) = writes.first() else { return Ok(()) };
    let mut seen = BTreeSet::new();
    for w in writes {
        if !seen.insert(w.key()) {
            return Err(EtcdError::DuplicateKey { key: w.key().into() });
        }
    }
    let ops: Vec<TxnOp> = writes
        .iter()
        .map(|w| match w {
            Write::Put { key, value } => TxnOp::put(key.as_str(), value.as_str(), None),
            Write::Delete { key } => TxnOp::delete(key.as_str(), None),
        })
        .collect();
    let when: Vec<Compare> = fence.iter().map(|f| Compare::lease(f.key.as_str(), CompareOp::Equal, f.lease)).collect();
    // Puts and deletes, made twice, leave the same keys (the fence compares our lease).
    let response = txn_fresh(client, Resend::Idempotent, Txn::new().when(when).and_then(ops))
        .await
        .map_err(|e| EtcdError::Batch { count: writes.len(), first: first.key().into(), cause: describe(&e) })?;
    match fence {
        Some(f) if !response.succeeded() => Err(EtcdError::Fenced { lock: f.key.clone(), key: first.key().into() }),
        _ => Ok(()),
    }
}

/// Apply `writes` atomically in one transaction: all of them or none. An empty batch
/// makes no request.
///
/// # Errors
/// [`EtcdError::DuplicateKey`] when two writes name the same key (checked before sending);
/// [`EtcdError::Batch`] when etcd refuses or cannot be reached — including a batch larger
/// than the server's `--max-txn-ops` ([`MAX_TXN_OPS`] by default). Then nothing was written.
pub async fn batch(client: &mut Client, writes: &[Write]) -> Result<(), EtcdError> {
    batch_fenced(client, writes, None).await
}

/// A lease for a lock being waited for: a grant that a member down or an election leaves
/// unanswered is asked again until `deadline`, as the lock request itself is. Returns a
/// transient error only once `deadline` has passed.
async fn grant_waiting(
    client: &mut Client,
    key: &str,
    ttl: Duration,
    deadline: Instant,
) -> Result<Lease, etcd_client::Error> {
    loop {
        match Lease::grant(client, ttl).await {
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                tracing::debug!(key, error = %describe(&e), "etcd did not grant the lock's lease; trying again");
                tokio::time::sleep(LOCK_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
            other => return other,
        }
    }
}

/// How often a waiting [`acquire_lock`] tries again.
const LOCK_POLL: Duration = Duration::from_millis(500);

/// How long the lease keep-alive waits before retrying after a failed renewal.
const RENEW_RETRY: Duration = Duration::from_millis(200);

/// The environment variables naming who applies, first set one wins.
const ACTOR_VARS: [&str; 5] =
    ["RECONCILE_ACTOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "USER"];

/// Who holds / wants the lock: shown to a waiting apply. Serialised as the lock key's
/// value (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub who: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339 UTC, to the second. [`acquire_lock`] sets it to the moment it takes the lock.
    pub since: String,
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} (pid {}, `{}`, since {})", self.who, self.host, self.pid, self.command, self.since)
    }
}

impl Holder {
    /// A lock value that is not a [`Holder`] (written by something else): shown as is.
    fn unreadable(raw: &[u8]) -> Holder {
        let unknown = || "unknown".to_owned();
        Holder {
            who: unknown(),
            host: unknown(),
            pid: 0,
            since: unknown(),
            command: format!("unreadable lock value {:?}", String::from_utf8_lossy(raw)),
        }
    }
}

/// Who is applying, from the environment: `$RECONCILE_ACTOR`, else the CI's variables
/// (`$GITHUB_ACTOR`, `$GITLAB_USER_LOGIN`, `$BUILDKITE_BUILD_CREATOR`), else `$USER`,
/// else `unknown`; plus this host's name, this process's id, now, and `command`.
pub fn current_holder(command: &str) -> Holder {
    Holder {
        who: actor(|name| std::env::var(name).ok()),
        host: hostname(),
        pid: std::process::id(),
        since: now_rfc3339(),
        command: command.to_owned(),
    }
}

fn actor(var: impl Fn(&str) -> Option<String>) -> String {
    ACTOR_VARS
        .iter()
        .filter_map(|name| var(name))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The kernel's host name (Linux), else `$HOSTNAME`, else `hostname`'s output, else `unknown`.
fn hostname() -> String {
    let non_empty = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok().and_then(non_empty))
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(non_empty))
        .or_else(|| {
            let out = std::process::Command::new("hostname").output().ok()?;
            non_empty(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Now, as RFC 3339 UTC to the second (`2026-11-25T12:00:00Z`): the form of
/// [`Holder::since`], for the `time` of a [`record_apply`] entry too.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `2026-11-25T12:00:00Z` (UTC, whole seconds).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for days since 1970-01-01 ≥ 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An acquired apply lock.
///
/// Keeps its lease alive in a background task. [`release`](LockGuard::release) revokes
/// the lease, deleting the key at once. Dropping the guard without releasing stops the
/// keep-alive, so the lease (and the key) expires within its TTL; so does process death.
pub struct LockGuard {
    lease: Lease,
    client: Client,
    key: String,
    holder: Holder,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("lease", &self.lease)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// A client on the lock's connection (for reads and fenced writes under the lock).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Release the lock: stop the keep-alive and revoke the lease, which deletes the key.
    /// A lease that already expired is not an error (the lock is free either way).
    ///
    /// # Errors
    /// [`EtcdError::Write`] naming the lock key when etcd cannot be reached or refuses;
    /// the lock then expires with its lease within its TTL.
    pub async fn release(self) -> Result<(), EtcdError> {
        self.lease.task.abort();
        let id = self.lease.id;
        // Revoked twice: the second answer is NOT_FOUND, taken as released below.
        let revoked = fresh_auth(&self.client, Resend::Idempotent, || {
            let mut c = self.client.clone();
            async move { c.lease_revoke(id).await }
        })
        .await;
        match revoked {
            Ok(_) => {
                tracing::debug!(key = self.key, lease = self.lease.id, "released the apply lock");
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                tracing::warn!(key = self.key, "the apply lock's lease had already expired");
                Ok(())
            }
            Err(e) => Err(EtcdError::Write {
                key: self.key.clone(),
                cause: format!("cannot revoke the lock's lease {:x}: {}", self.lease.id, describe(&e)),
            }),
        }
    }

    /// Whether the lease can no longer be proven alive: the keep-alive failed long enough
    /// that the lease has (or is within a third of its TTL of having) expired, or etcd said
    /// it is gone. Once true, always true. The caller must stop writing: another apply may
    /// take the lock.
    pub fn lost(&self) -> bool {
        self.lease.state.lost()
    }

    /// Resolves once [`LockGuard::lost`] is true (checked every 100 ms), for a holder that
    /// must step down as soon as that happens, not only at its next step.
    pub fn when_lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let state = Arc::clone(&self.lease.state);
        async move {
            while !state.lost() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The fence for writes made under this lock ([`batch_fenced`], [`record_apply`]).
    pub fn fence(&self) -> Fence {
        Fence { key: self.key.clone(), lease: self.lease.id }
    }

    /// The lock key, `<prefix>/<env>/lock`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the key is on.
    pub fn lease_id(&self) -> i64 {
        self.lease.id
    }

    /// The TTL etcd granted the lease (at least the one asked for).
    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// What the lock key holds (`since` is when the lock was taken).
    pub fn holder(&self) -> &Holder {
        &self.holder
    }
}

/// Acquire the apply lock `<prefix>/<env>/lock` for `holder` (its `since` is set to the
/// moment the lock is taken).
///
/// Grants a lease of `ttl` (whole seconds, rounded up; etcd may grant more) and keeps it
/// alive every TTL/3 from then on, then tries a create-if-absent transaction putting the
/// [`Holder`] JSON on that lease. If someone else holds the lock, calls `waiting` with
/// their [`Holder`] (once, and again whenever the holder changes) and tries again every
/// 500 ms until the lock is free or `wait` has elapsed (a zero `wait` tries once).
/// Every request is bounded by `client`'s own request timeout. On failure the lease is
/// revoked (best effort); if the returned future is dropped while waiting, the keep-alive
/// stops and the unused lease expires within its TTL.
///
/// # Errors
/// [`EtcdError::LockTimeout`] naming the key, the holder and `wait` when the lock stayed
/// held; [`EtcdError::Write`] naming the key when etcd cannot be reached, refuses, or our
/// lease expired while waiting.
pub async fn acquire_lock(
    client: &Client,
    prefix: &str,
    env: &str,
    holder: &Holder,
    ttl: Duration,
    wait: Duration,
    waiting: &mut (dyn FnMut(&Holder) + Send),
) -> Result<LockGuard, EtcdError> {
    acquire_lock_key(client, keys::lock(prefix, env), holder, ttl, wait, waiting).await
}

/// [`acquire_lock`] on any key (`watch` elects its leader with `<prefix>/<env>/watch-leader`).
///
/// # Errors
/// As [`acquire_lock`].
pub async fn acquire_lock_key(
    client: &Client,
    key: String,
    holder: &Holder,
    ttl: Duration,
    wait: Duration,
    waiting: &mut (dyn FnMut(&Holder) + Send),
) -> Result<LockGuard, EtcdError> {
    let started = Instant::now();
    let deadline = started + wait;
    let mut client = client.clone();
    let write_error = |cause: String| EtcdError::Write { key: key.clone(), cause };
    let mut lease = grant_waiting(&mut client, &key, ttl, deadline)
        .await
        .map_err(|e| write_error(format!("cannot grant the lock's lease: {}", describe(&e))))?;
    let mut shown: Option<Holder> = None;
    let outcome = loop {
        if lease.state.lost() {
            // Nothing is held on a lease that never got the lock: a new one is as good.
            if Instant::now() >= deadline {
                break Err(write_error("the lock's lease expired while waiting (its keep-alive failed)".into()));
            }
            tracing::debug!(key, lease = lease.id, "the waiting lease was lost; granting a new one");
            match grant_waiting(&mut client, &key, ttl, deadline).await {
                Ok(new) => lease = new,
                // Transient failures are asked again until the wait is over: it is over.
                Err(e) if is_transient(&e) => {
                    break Err(write_error("the lock's lease expired while waiting (its keep-alive failed)".into()));
                }
                Err(e) => break Err(write_error(format!("cannot grant the lock's lease: {}", describe(&e)))),
            }
        }
        let mine = Holder { since: now_rfc3339(), ..holder.clone() };
        let value = match serde_json::to_string(&mine) {
            Ok(v) => v,
            Err(e) => break Err(write_error(format!("cannot serialise the holder: {e}"))),
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, Some(PutOptions::new().with_lease(lease.id)))])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = match txn_fresh(&client, Resend::Undelivered, txn).await {
            Ok(r) => r,
            // A member down or a leader election: a waiting apply keeps waiting (the
            // client's next request may go to a member that answers). Refusals end it.
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                tracing::debug!(key, error = %describe(&e), "etcd did not answer the lock request; trying again");
                tokio::time::sleep(LOCK_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
                continue;
            }
            Err(e) => break Err(write_error(describe(&e))),
        };
        if response.succeeded() {
            tracing::debug!(key, lease = lease.id, waited = ?started.elapsed(), "took the apply lock");
            break Ok(mine);
        }
        let current = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(range) => range.kvs().first().map(|kv| {
                serde_json::from_slice::<Holder>(kv.value()).unwrap_or_else(|_| Holder::unreadable(kv.value()))
            }),
            _ => None,
        });
        // No value: the key went away between the compare and the read (cannot happen in
        // one transaction, but costs nothing to handle): try again at once.
        let Some(current) = current else {
            if Instant::now() >= deadline {
                break Err(write_error("etcd refused the lock but did not say who holds it".into()));
            }
            continue;
        };
        if shown.as_ref() != Some(&current) {
            tracing::debug!(key, holder = %current, "the apply lock is held; waiting");
            waiting(&current);
            shown = Some(current.clone());
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(EtcdError::LockTimeout { key: key.clone(), holder: Box::new(current), waited: wait });
        }
        tokio::time::sleep(LOCK_POLL.min(deadline - now)).await;
    };
    match outcome {
        Ok(holder) => Ok(LockGuard { lease, client, key, holder }),
        Err(e) => {
            lease.task.abort();
            if let Err(revoke) = client.lease_revoke(lease.id).await {
                tracing::debug!(lease = lease.id, error = %describe(&revoke), "cannot revoke an unused lock lease");
            }
            Err(e)
        }
    }
}

/// A lease of ours and the task keeping it alive (aborted when dropped).
#[derive(Debug)]
struct Lease {
    id: i64,
    ttl: Duration,
    state: Arc<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the keep-alive task proved about the lease, shared with [`LockGuard::lost`].
#[derive(Debug)]
struct LeaseState {
    /// Sticky: once set, never cleared.
    lost: AtomicBool,
    /// `valid_until_ms` counts from here.
    start: Instant,
    /// The lease is alive at least until `start` + this (the last renewal's send time plus
    /// the TTL etcd answered).
    valid_until_ms: AtomicU64,
    /// Lost this long before `valid_until`, leaving the caller time to stop.
    margin: Duration,
}

impl LeaseState {
    fn lost(&self) -> bool {
        if self.lost.load(Ordering::SeqCst) {
            return true;
        }
        let until = self.start + Duration::from_millis(self.valid_until_ms.load(Ordering::SeqCst));
        if Instant::now() + self.margin >= until {
            self.lost.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// A renewal sent at `sent` was answered with `ttl`; too late counts as lost.
    fn renewed(&self, sent: Instant, ttl: Duration) {
        if !self.lost() {
            let until = (sent + ttl).saturating_duration_since(self.start);
            self.valid_until_ms.store(u64::try_from(until.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
        }
    }
}

impl Lease {
    /// Grant a lease of `ttl` (rounded up to whole seconds, at least one) and start keeping
    /// it alive every TTL/3.
    async fn grant(client: &mut Client, ttl: Duration) -> Result<Lease, etcd_client::Error> {
        let asked = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).unwrap_or(i64::MAX).max(1);
        let sent = Instant::now();
        let granted = fresh_auth(client, Resend::Idempotent, || {
            let mut c = client.clone();
            async move { c.lease_grant(asked, None).await }
        })
        .await?;
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0).max(1));
        let state = Arc::new(LeaseState {
            lost: AtomicBool::new(false),
            start: sent,
            valid_until_ms: AtomicU64::new(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            margin: ttl / 3,
        });
        let task = tokio::spawn(keep_alive(client.clone(), granted.id(), ttl, Arc::clone(&state)));
        tracing::debug!(lease = granted.id(), ?ttl, "granted a lock lease");
        Ok(Lease { id: granted.id(), ttl, state, task })
    }
}

/// Renew lease `id` every `ttl`/3 until it is lost (then stop: a lost lease stays lost).
/// Each renewal is bounded by half that interval; a failed one drops the stream and is
/// retried shortly on a new one.
async fn keep_alive(mut client: Client, id: i64, ttl: Duration, state: Arc<LeaseState>) {
    let interval = ttl / 3;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        let sent = Instant::now();
        let failure = match tokio::time::timeout(interval / 2, renew(&mut client, id, ttl, &mut stream)).await {
            Ok(Ok(Some(answered))) => {
                state.renewed(sent, answered);
                None
            }
            Ok(Ok(None)) => {
                state.lost.store(true, Ordering::SeqCst);
                tracing::warn!(lease = id, "etcd says the lock's lease is gone");
                return;
            }
            Ok(Err(e)) => Some(describe(&e)),
            Err(_) => Some(format!("no answer within {:?}", interval / 2)),
        };
        if state.lost() {
            tracing::warn!(lease = id, failure, "lost the lock's lease: its keep-alive failed");
            return;
        }
        match failure {
            None => tokio::time::sleep_until((sent + interval).into()).await,
            Some(cause) => {
                tracing::debug!(lease = id, cause, "lease keep-alive failed; retrying");
                stream = None;
                tokio::time::sleep(RENEW_RETRY).await;
            }
        }
    }
}

/// One renewal: `Some(ttl)` as etcd answered, `None` when etcd says the lease is gone.
async fn renew(
    client: &mut Client,
    id: i64,
    granted: Duration,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<Option<Duration>, etcd_client::Error> {
    let Some((keeper, responses)) = stream else {
        // A new stream: etcd-client sends the first renewal itself and checks its answer.
        return match client.lease_keep_alive(id).await {
            Ok(pair) => {
                *stream = Some(pair);
                Ok(Some(granted))
            }
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => Ok(None),
            Err(e) => Err(e),
        };
    };
    keeper.keep_alive().await?;
    match responses.message().await? {
        Some(r) if r.ttl() > 0 => Ok(Some(Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0)))),
        Some(_) => Ok(None),
        None => Err(etcd_client::Error::LeaseKeepAliveError("the keep-alive stream closed".into())),
    }
}

/// Record an apply: `applied` = `entry` (JSON) and a new `history/<unix nanos, 20 digits>`
/// = the same, in one transaction (which also refuses to overwrite an existing history
/// entry; on that unlikely clash the next nanosecond is tried).
///
/// # Errors
/// [`EtcdError::Write`] naming the `applied` key when etcd cannot be reached or refuses;
/// then nothing was written.
pub async fn record_apply(
    client: &mut Client,
    prefix: &str,
    env: &str,
    entry: &serde_json::Value,
    fence: Option<&Fence>,
) -> Result<(), EtcdError> {
    append_history(client, prefix, env, entry, fence, true).await
}

/// A history entry alone, `applied` unchanged (an event that applied nothing, such as a
/// released pin). Errors as [`record_apply`], naming the history directory.
///
/// # Errors
/// As [`record_apply`].
pub async fn record_event(
    client: &mut Client,
    prefix: &str,
    env: &str,
    entry: &serde_json::Value,
    fence: Option<&Fence>,
) -> Result<(), EtcdError> {
    append_history(client, prefix, env, entry, fence, false).await
}

async fn append_history(
    client: &mut Client,
    prefix: &str,
    env: &str,
    entry: &serde_json::Value,
    fence: Option<&Fence>,
    also_applied: bool,
) -> Result<(), EtcdError> {
    let applied = keys::applied(prefix, env);
    let dir = keys::history_dir(prefix, env);
    let named = if also_applied { applied.clone() } else { dir.clone() };
    let value = entry.to_string();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    for nanos in now..now + 16 {
        let entry_key = format!("{dir}{nanos:020}");
        let mut when = vec![Compare::create_revision(entry_key.as_str(), CompareOp::Equal, 0)];
        if let Some(f) = fence {
            when.push(Compare::lease(f.key.as_str(), CompareOp::Equal, f.lease));
        }
        let mut ops = vec![TxnOp::put(entry_key.as_str(), value.as_str(), None)];
        if also_applied {
            ops.push(TxnOp::put(applied.as_str(), value.as_str(), None));
        }
        let txn = Txn::new().when(when).and_then(ops);
        let response = txn_fresh(client, Resend::Undelivered, txn)
            .await
            .map_err(|e| EtcdError::Write { key: named.clone(), cause: describe(&e) })?;
        if response.succeeded() {
            tracing::debug!(key = named, history = entry_key, "recorded in the history");
            return Ok(());
        }
        // Failed: the history key exists (try the next one), or the lock is not ours.
        if let Some(f) = fence
            && !lease_holds(client, f).await?
        {
            return Err(EtcdError::Fenced { lock: f.key.clone(), key: named });
        }
    }
    Err(EtcdError::Write { key: named, cause: format!("every history key tried under {dir} already exists") })
}

/// The environment's rollback [`Pin`], if one is set.
///
/// # Errors
/// [`EtcdError::Read`] naming the key when etcd cannot be reached or the value is not a
/// pin; [`EtcdError::NotUtf8`].
pub async fn pin(client: &mut Client, prefix: &str, env: &str) -> Result<Option<Pin>, EtcdError> {
    let key = keys::pin(prefix, env);
    let response =
        get_fresh(client, &key, None).await.map_err(|e| EtcdError::Read { key: key.clone(), cause: describe(&e) })?;
    let Some(kv) = response.kvs().first() else { return Ok(None) };
    let text = std::str::from_utf8(kv.value()).map_err(|_| EtcdError::NotUtf8 { key: key.clone() })?;
    serde_json::from_str(text).map(Some).map_err(|e| EtcdError::Read {
        cause: format!("the value is not a rollback pin ({e}); fix or delete it (`etcdctl del {key}`)"),
        key,
    })
}

/// Whether the lock key is still on the fence's lease.
async fn lease_holds(client: &mut Client, f: &Fence) -> Result<bool, EtcdError> {
    let r = get_fresh(client, &f.key, None)
        .await
        .map_err(|e| EtcdError::Read { key: f.key.clone(), cause: describe(&e) })?;
    Ok(r.kvs().first().is_some_and(|kv| kv.lease() == f.lease))
}

/// The audit log of `env`, newest first, at most `limit` entries (none for 0).
///
/// # Errors
/// [`EtcdError::Read`] naming `history/` when etcd cannot be reached, or naming an entry
/// that is not JSON; [`EtcdError::NotUtf8`] naming an entry that is not UTF-8.
pub async fn history(
    client: &mut Client,
    prefix: &str,
    env: &str,
    limit: usize,
) -> Result<Vec<serde_json::Value>, EtcdError> {
    if limit == 0 {
        return Ok(Vec::new()); // etcd reads a limit of 0 as "no limit"
    }
    let dir = keys::history_dir(prefix, env);
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
    let response = get_fresh(client, &dir, Some(options))
        .await
        .map_err(|e| EtcdError::Read { key: dir.clone(), cause: describe(&e) })?;
    response
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let text = std::str::from_utf8(kv.value()).map_err(|_| EtcdError::NotUtf8 { key: key.clone() })?;
            serde_json::from_str(text).map_err(|e| EtcdError::Read {
                cause: format!("the history entry is not JSON ({e}); fix or delete it (`etcdctl del {key}`)"),
                key,
            })
        })
        .collect()
}

/// Every key under `dir` (ending in '/') with its value, in one read: the status page's
/// canary keys.
///
/// # Errors
/// [`EtcdError::Read`] naming `dir`; [`EtcdError::NotUtf8`] naming a key.
pub async fn read_prefix(client: &mut Client, dir: &str) -> Result<BTreeMap<String, String>, EtcdError> {
    let mut out = BTreeMap::new();
    read_ranges(client, &[dir.to_string()], None, &mut out).await?;
    Ok(out)
}

/// etcd's answer to a token issued before its auth store last changed: any user, role or
/// permission change anywhere in the cluster (another team's user added, a grant revoked)
/// makes every token older than it fail this way until the client authenticates again.
fn is_old_auth_revision(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("revision of auth store is old"))
}

/// `call`, made once more with a new token when etcd refused the token as older than its
/// auth store ([`is_old_auth_revision`]). The Go client does the same; etcd-client 0.21
/// re-authenticates only on an invalid token. The retry is not a retry of a refusal: it
/// asks again with the user's current permissions, so a revoked permission is then
/// "permission denied" (not retried; see README "etcd TLS and RBAC").
///
/// A request that failed on its way to a member is sent again, with a short back-off,
/// for up to [`RESEND_BUDGET`], as `resend` allows ([`Resend`]): etcd-client balances
/// over every endpoint it connected to and goes on picking a member that died since, so
/// in a cluster with one member down a share of the requests fail that way although the
/// others answer.
async fn fresh_auth<T, Fut>(client: &Client, resend: Resend, call: impl Fn() -> Fut) -> Result<T, etcd_client::Error>
where
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    resend_failed(resend, RESEND_BUDGET, || async {
        match call().await {
            Err(e) if is_old_auth_revision(&e) => {
                tracing::debug!("etcd's auth store changed since this client authenticated; authenticating again");
                client.refresh_token().await?;
                call().await
            }
            other => other,
        }
    })
    .await
}

/// Which failed requests [`fresh_auth`] sends again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Only one that reached no member ([`is_undelivered`]): for a request whose second
    /// success would differ from the first (create-if-absent: the lock, a history entry).
    Undelivered,
    /// Also one whose connection broke after it was sent ([`is_connection_lost`]): for a
    /// request made twice with the same result (reads, puts, deletes, a lease grant,
    /// whose extra lease only expires).
    Idempotent,
}

/// `call`, made again with a short back-off while its failure is one `resend` allows and
/// less than `budget` has passed; any other outcome is returned as it is.
async fn resend_failed<T, Fut>(
    resend: Resend,
    budget: Duration,
    call: impl Fn() -> Fut,
) -> Result<T, etcd_client::Error>
where
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    let allowed = |e: &etcd_client::Error| is_undelivered(e) || (resend == Resend::Idempotent && is_connection_lost(e));
    loop {
        match call().await {
            Err(e) if allowed(&e) && started.elapsed() + pause < budget => {
                tracing::debug!(error = %describe(&e), "the etcd member etcd-client picked is unreachable; sending again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(400));
            }
            other => return other,
        }
    }
}

/// How long [`fresh_auth`] goes on sending a request again.
const RESEND_BUDGET: Duration = Duration::from_secs(3);

/// Whether the request failed before it reached any member: the connection to the member
/// could not be made (refused, no route) or was still being made again after the member
/// went away. tonic reports the first as UNAVAILABLE "tcp connect error" with the OS
/// error as its source, the second as CANCELLED "connection was not ready".
fn is_undelivered(e: &etcd_client::Error) -> bool {
    status_says(e, &[CANCELLED, UNAVAILABLE], &["connect error", "connection refused", "connection was not ready"])
}

/// Whether the connection to the member broke under the request (the member died or
/// restarted): the request may or may not have been acted on.
fn is_connection_lost(e: &etcd_client::Error) -> bool {
    status_says(
        e,
        &[UNKNOWN, UNAVAILABLE],
        &["connection reset", "broken pipe", "connection error", "connection closed"],
    )
}

// gRPC status codes (tonic's `Code` is not re-exported by etcd-client).
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const UNAVAILABLE: i32 = 14;

/// A gRPC status with one of `codes` whose text (message and causes, lowercased)
/// contains one of `words`.
fn status_says(e: &etcd_client::Error, codes: &[i32], words: &[&str]) -> bool {
    let etcd_client::Error::GRpcStatus(s) = e else { return false };
    if !codes.contains(&(s.code() as i32)) {
        return false;
    }
    let text = describe(e).to_ascii_lowercase();
    words.iter().any(|w| text.contains(w))
}

/// A transaction through [`fresh_auth`].
async fn txn_fresh(client: &Client, resend: Resend, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
    fresh_auth(client, resend, || {
        let mut c = client.clone();
        let txn = txn.clone();
        async move { c.txn(txn).await }
    })
    .await
}

/// A range read through [`fresh_auth`], accepting large responses.
async fn get_fresh(
    client: &Client,
    key: &str,
    options: Option<GetOptions>,
) -> Result<etcd_client::GetResponse, etcd_client::Error> {
    fresh_auth(client, Resend::Idempotent, || {
        let mut kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
        let options = options.clone();
        async move { kv.get(key, options).await }
    })
    .await
}

/// Whether the request may succeed when sent again: the member is unreachable
/// (UNAVAILABLE, a transport error), a leader election is under way ("leader changed",
/// "request timed out, possibly due to previous leader failure"), or it timed out. Never
/// a refusal (permission denied, a wrong password, a bad request).
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() as i32 == UNAVAILABLE || s.message().contains("leader") || is_timeout(e)
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Whether etcd answered NOT_FOUND (e.g. revoking a lease that expired).
fn is_not_found(e: &etcd_client::Error) -> bool {
    const NOT_FOUND: i32 = 5;
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == NOT_FOUND)
}

/// Whether the error is a client-side timeout: tonic reports its own per-request timeout
/// as a status with gRPC code CANCELLED ("Timeout expired"), the server a
/// DEADLINE_EXCEEDED. (tonic's `Code` is not re-exported, hence the numeric gRPC codes.)
fn is_timeout(e: &etcd_client::Error) -> bool {
    const DEADLINE_EXCEEDED: i32 = 4;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let code = s.code() as i32;
            code == DEADLINE_EXCEEDED
                || (code == CANCELLED && s.message().to_ascii_lowercase().contains("timeout"))
                // A member's own deadline (forwarding to a leader being elected), as UNKNOWN.
                || s.message().contains("context deadline exceeded")
        }
        _ => false,
    }
}

/// A one-line cause: the gRPC code and message (without tonic's metadata dump) or the
/// error, followed by its source chain (where "connection refused" lives).
fn describe(e: &etcd_client::Error) -> String {
    if is_permission_denied(e) {
        let user = who().lock().ok().and_then(|w| w.clone()).unwrap_or_else(|| "this etcd user".into());
        return format!(
            "permission denied: {user} may not access it; grant the user's role readwrite on \
             <prefix>/<env>/ and <registry_prefix>/<app>_<env>/ (`etcdctl role grant-permission --prefix ROLE \
             readwrite KEY`, see README \"etcd TLS and RBAC\")"
        );
    }
    let (mut text, mut source) = match e {
        etcd_client::Error::GRpcStatus(s) => (format!("{:?}: {}", s.code(), s.message()), std::error::Error::source(s)),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod resend_tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use tokio::time::Instant;

    use etcd_client::Error;

    fn refused() -> Error {
        Error::GRpcStatus(tonic::Status::unavailable("tcp connect error"))
    }

    #[test]
    fn only_a_failed_connection_is_undelivered() {
        assert!(super::is_undelivered(&refused()));
        let reconnecting =
            tonic::Status::cancelled("operation was canceled: transport error: connection was not ready");
        assert!(super::is_undelivered(&Error::GRpcStatus(reconnecting)));
        // Reached a member (which may have acted on it): never sent again.
        for delivered in [
            tonic::Status::unavailable("etcdserver: leader changed"),
            tonic::Status::unavailable("etcdserver: request timed out"),
            tonic::Status::deadline_exceeded("context deadline exceeded"),
            tonic::Status::permission_denied("etcdserver: permission denied"),
            tonic::Status::cancelled("Timeout expired"),
        ] {
            assert!(!super::is_undelivered(&Error::GRpcStatus(delivered.clone())), "{delivered:?}");
        }
        assert!(!super::is_undelivered(&Error::InvalidArgs("x".into())));
    }

    #[tokio::test]
    async fn a_refused_request_is_sent_again_until_it_is_answered() {
        let calls = AtomicU32::new(0);
        let got = super::resend_failed(super::Resend::Undelivered, Duration::from_secs(3), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 { Err(refused()) } else { Ok(7) }
        })
        .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_broken_connection_is_lost_not_undelivered() {
        let reset = Error::GRpcStatus(tonic::Status::unknown("transport error: connection error: connection reset"));
        assert!(super::is_connection_lost(&reset));
        assert!(!super::is_undelivered(&reset));
        assert!(!super::is_connection_lost(&refused()), "refused before sending is undelivered, not lost");
        let denied = Error::GRpcStatus(tonic::Status::permission_denied("connection reset"));
        assert!(!super::is_connection_lost(&denied), "only UNKNOWN and UNAVAILABLE");
    }

    /// A lost connection is sent again only for an idempotent request.
    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_is_sent_again_only_when_idempotent() {
        for (resend, calls_made) in [(super::Resend::Idempotent, 2), (super::Resend::Undelivered, 1)] {
            let calls = AtomicU32::new(0);
            let got = super::resend_failed(resend, Duration::from_secs(3), || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(Error::GRpcStatus(tonic::Status::unknown(
                        "transport error: connection error: connection reset",
                    )))
                } else {
                    Ok(())
                }
            })
            .await;
            assert_eq!(got.is_ok(), resend == super::Resend::Idempotent, "{resend:?}");
            assert_eq!(calls.load(Ordering::SeqCst), calls_made, "{resend:?}");
        }
    }

    #[test]
    fn a_members_own_deadline_is_a_timeout() {
        let e = Error::GRpcStatus(tonic::Status::unknown("context deadline exceeded"));
        assert!(super::is_timeout(&e) && super::is_transient(&e));
    }

    #[tokio::test]
    async fn a_delivered_failure_is_returned_at_once() {
        let calls = AtomicU32::new(0);
        let got: Result<(), Error> =
            super::resend_failed(super::Resend::Undelivered, Duration::from_secs(3), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::GRpcStatus(tonic::Status::unavailable("etcdserver: leader changed")))
            })
            .await;
        assert!(got.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// On tokio's paused clock: pauses of 20, 40 and 80 ms, then the next (160 ms) would
    /// end past the 300 ms budget, so the fourth refusal is returned.
    #[tokio::test(start_paused = true)]
    async fn sending_again_stops_within_the_budget() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let got: Result<(), Error> =
            super::resend_failed(super::Resend::Undelivered, Duration::from_millis(300), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(refused())
            })
            .await;
        assert!(got.is_err_and(|e| super::is_undelivered(&e)));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(started.elapsed(), Duration::from_millis(140));
    }
}

#[cfg(test)]
mod lock_tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_608_000)), "2026-11-25T12:00:00Z");
        assert_eq!(super::rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(UNIX_EPOCH + Duration::from_millis(1_709_251_199_999)), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn actor_prefers_reconcile_then_ci_then_user() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(super::actor(env(&[("USER", "u"), ("GITHUB_ACTOR", "gh"), ("RECONCILE_ACTOR", "r")])), "r");
        assert_eq!(super::actor(env(&[("USER", "u"), ("GITLAB_USER_LOGIN", "gl")])), "gl");
        assert_eq!(super::actor(env(&[("USER", "u"), ("RECONCILE_ACTOR", "  ")])), "u");
        assert_eq!(super::actor(env(&[])), "unknown");
    }

    #[test]
    fn holder_json_round_trips_and_displays() {
        let h = super::current_holder("reconcile apply --env staging");
        assert_eq!(h.pid, std::process::id());
        assert!(!h.host.is_empty());
        assert_eq!(h.since.len(), "2026-11-25T12:00:00Z".len());
        let json = serde_json::to_string(&h).unwrap_or_default();
        assert_eq!(serde_json::from_str::<super::Holder>(&json).ok(), Some(h.clone()));
        assert!(h.to_string().contains("`reconcile apply --env staging`"));
    }
}
