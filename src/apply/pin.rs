//! Rollback pins (`<prefix>/<env>/pin`, [`Pin`]): a rollback holds the environment at
//! its commit, so that `watch` converges to it instead of the repo's head and a routine
//! `apply` of another commit (a CI job on the next merge) does not undo it. `reconcile
//! rollback --release` ends the hold. Every read and write here happens under the apply
//! lock, so a rollback and a watch run cannot interleave between the pin and the apply.

use std::time::Duration;

use super::ApplyError;
use crate::backend::etcd;
use crate::model::Pin;
use crate::spec::Env;
use crate::spec::snapshot::Origin;

/// The environment's pin, read on the lock's connection when there is one (else on a new
/// one). `None` without etcd.
///
/// # Errors
/// etcd unreachable, or the pin key holds something else.
pub async fn read(env: &Env, guard: Option<&etcd::LockGuard>, timeout: Duration) -> Result<Option<Pin>, ApplyError> {
    let Some(spec) = &env.spec.etcd else { return Ok(None) };
    let mut client = match guard {
        Some(g) => g.client(),
        None => etcd::connect(spec, timeout).await?,
    };
    Ok(etcd::pin(&mut client, &spec.prefix, &env.name).await?)
}

/// `Ok` when applying `origin` keeps the pin (there is none, or it is `origin`'s commit).
///
/// # Errors
/// [`ApplyError::Pinned`], saying how to release the pin.
pub fn check(env: &str, pin: Option<&Pin>, origin: &Origin) -> Result<(), ApplyError> {
    match pin {
        Some(p) if origin.commit.as_deref() != Some(p.commit.as_str()) || origin.dirty => Err(ApplyError::Pinned {
            env: env.to_string(),
            pin: Box::new(p.clone()),
            commit: match (&origin.commit, origin.dirty) {
                (Some(c), false) => short(c).to_string(),
                (Some(c), true) => format!("{} with uncommitted changes", short(c)),
                (None, _) => "a directory outside Git".to_string(),
            },
        }),
        _ => Ok(()),
    }
}

/// Pin the environment to `origin` (a rollback), fenced by the lock.
///
/// # Errors
/// `origin` has no commit (a rollback always has one), or the write fails.
pub async fn set(env: &Env, guard: &etcd::LockGuard, origin: &Origin) -> Result<Option<Pin>, ApplyError> {
    let (Some(spec), Some(commit)) = (&env.spec.etcd, &origin.commit) else { return Ok(None) };
    let who = etcd::current_holder("reconcile rollback");
    let pin = Pin {
        reference: origin.reference.clone().unwrap_or_else(|| commit.clone()),
        commit: commit.clone(),
        who: who.who,
        host: who.host,
        time: who.since,
    };
    let value = serde_json::to_string(&pin).unwrap_or_default();
    let write = etcd::Write::Put { key: crate::model::keys::pin(&spec.prefix, &env.name), value };
    etcd::batch_fenced(&mut guard.client(), &[write], Some(&guard.fence())).await?;
    Ok(Some(pin))
}

/// Delete the pin, recorded in the history as a `release`. `None` when there was none.
///
/// # Errors
/// etcd unreachable, or the lock lost.
pub async fn release(env: &Env, guard: &etcd::LockGuard) -> Result<Option<Pin>, ApplyError> {
    let Some(spec) = &env.spec.etcd else { return Ok(None) };
    let mut client = guard.client();
    let Some(pin) = etcd::pin(&mut client, &spec.prefix, &env.name).await? else { return Ok(None) };
    let fence = guard.fence();
    let write = etcd::Write::Delete { key: crate::model::keys::pin(&spec.prefix, &env.name) };
    etcd::batch_fenced(&mut client, &[write], Some(&fence)).await?;
    let who = etcd::current_holder("reconcile rollback --release");
    let entry = serde_json::json!({
        "kind": super::HistoryKind::Release,
        "reference": pin.reference,
        "commit": pin.commit,
        "dirty": false,
        "time": etcd::now_rfc3339(),
        "who": who.who,
        "host": who.host,
        "summary": format!("released the pin set by {} at {}", pin.who, pin.time),
        "result": "ok",
    });
    etcd::record_event(&mut client, &spec.prefix, &env.name, &entry, Some(&fence)).await?;
    Ok(Some(pin))
}

/// The first 12 hex digits of a commit id.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(commit: &str) -> Pin {
        Pin {
            reference: "v1".into(),
            commit: commit.into(),
            who: "alice".into(),
            host: "ops-1".into(),
            time: "2026-11-29T20:00:00Z".into(),
        }
    }

    fn origin(commit: Option<&str>, dirty: bool) -> Origin {
        Origin { commit: commit.map(String::from), dirty, ..Origin::default() }
    }

    #[test]
    fn only_the_pinned_commit_may_be_applied_while_pinned() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        assert!(check("prod", None, &origin(Some(&b), false)).is_ok());
        assert!(check("prod", Some(&pin(&a)), &origin(Some(&a), false)).is_ok());
        let e = check("prod", Some(&pin(&a)), &origin(Some(&b), false)).unwrap_err().to_string();
        assert_eq!(
            e,
            "environment `prod` is pinned to aaaaaaaaaaaa (v1) by a rollback (alice on ops-1 at \
             2026-11-29T20:00:00Z); applying bbbbbbbbbbbb would undo it. Once the environment may follow \
             the repo again, release the pin: `reconcile rollback --env prod --release`"
        );
        // The pinned commit with local edits, or no commit at all, is not the pinned state.
        assert!(check("prod", Some(&pin(&a)), &origin(Some(&a), true)).is_err());
        assert!(check("prod", Some(&pin(&a)), &origin(None, false)).is_err());
    }
}
