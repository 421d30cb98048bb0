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
//! Decisions and pitfalls of etcd-client 0.21 against etcd 3.4 are in the project's
//! DEPENDENCIES notes (§5): `get_stream` needs etcd ≥ 3.7, so ranges use plain `get`
//! (inside transactions); the client is cheap to clone, one clone per concurrent task.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use etcd_client::Client;
use etcd_client::{ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};

use crate::model::{EtcdObservation, keys};
use crate::spec::model::EtcdSpec;

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
    let options = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
    let failed = |e: etcd_client::Error| {
        if is_timeout(&e) {
            EtcdError::Timeout { endpoints: endpoints.clone(), after: timeout }
        } else {
            EtcdError::Connect { endpoints: endpoints.clone(), cause: describe(&e) }
        }
    };
    let attempt = async {
        let mut client = Client::connect(&endpoints, Some(options)).await.map_err(failed)?;
        client.status().await.map_err(failed)?;
        Ok(client)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(EtcdError::Timeout { endpoints: endpoints.clone(), after: timeout }),
    }
}

/// Everything reconcile manages in etcd for `env`: all keys under
/// [`keys::config_dir`] and [`keys::apps_dir`], and the registry entries under
/// [`keys::registry_dir`] of every app in `apps` (the desired apps) and of every app named
/// by an existing `<prefix>/<env>/apps/<app>` key. Never `applied`, `history/` or `lock`.
///
/// One round trip when the ranges fit one transaction (up to 126 desired apps) and every
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
    let mut kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);

    // First round: both namespaces and as many desired registry dirs as fit.
    let mut first = vec![keys::config_dir(&spec.prefix, env), apps_dir.clone()];
    let mut rest: Vec<String> = Vec::new();
    for app in apps {
        if first.len() < MAX_TXN_OPS { &mut first } else { &mut rest }.push(registry_dir(app));
    }
    let mut observed = BTreeMap::new();
    let revision = read_ranges(&mut kv, &first, None, &mut observed).await?;

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
        let mut kv = kv.clone();
        async move {
            let mut part = BTreeMap::new();
            read_ranges(&mut kv, chunk, Some(revision), &mut part).await?;
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
    kv: &mut KvClient,
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
    let response =
        kv.txn(Txn::new().and_then(ops)).await.map_err(|e| EtcdError::Read { key: what(), cause: describe(&e) })?;
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
    client.put(key, value, None).await.map_err(|e| EtcdError::Write { key: key.into(), cause: describe(&e) })?;
    Ok(())
}

/// Delete `key` (exactly that key, never a prefix). Deleting a missing key succeeds.
///
/// # Errors
/// [`EtcdError::Write`] naming the key.
pub async fn delete(client: &mut Client, key: &str) -> Result<(), EtcdError> {
    client.delete(key, None).await.map_err(|e| EtcdError::Write { key: key.into(), cause: describe(&e) })?;
    Ok(())
}

/// Apply `writes` atomically in one transaction: all of them or none. An empty batch
/// makes no request.
///
/// # Errors
/// [`EtcdError::DuplicateKey`] when two writes name the same key (checked before sending);
/// [`EtcdError::Batch`] when etcd refuses or cannot be reached — including a batch larger
/// than the server's `--max-txn-ops` ([`MAX_TXN_OPS`] by default). Then nothing was written.
pub async fn batch(client: &mut Client, writes: &[Write]) -> Result<(), EtcdError> {
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
    client.txn(Txn::new().and_then(ops)).await.map_err(|e| EtcdError::Batch {
        count: writes.len(),
        first: first.key().into(),
        cause: describe(&e),
    })?;
    Ok(())
}

/// Whether the error is a client-side timeout: tonic reports its own per-request timeout
/// as a status with gRPC code CANCELLED ("Timeout expired"), the server a
/// DEADLINE_EXCEEDED. (tonic's `Code` is not re-exported, hence the numeric gRPC codes.)
fn is_timeout(e: &etcd_client::Error) -> bool {
    const CANCELLED: i32 = 1;
    const DEADLINE_EXCEEDED: i32 = 4;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let code = s.code() as i32;
            code == DEADLINE_EXCEEDED || (code == CANCELLED && s.message().to_ascii_lowercase().contains("timeout"))
        }
        _ => false,
    }
}

/// A one-line cause: the gRPC code and message (without tonic's metadata dump) or the
/// error, followed by its source chain (where "connection refused" lives).
fn describe(e: &etcd_client::Error) -> String {
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
