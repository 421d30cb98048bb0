//! The apply lock and the audit log against the real etcd 3.4 of the test environment
//! (`RECONCILE_TEST_ETCD`, started by scripts/test-env.sh). These tests fail, never skip,
//! when the environment is missing. Each test works under its own prefix containing the
//! process id; a guard deletes its keys even when the test panics.
//!
//! `lease_dies_with_the_process` re-executes this test binary, selecting
//! `lock_child_helper` (which does nothing unless `RECONCILE_LOCK_CHILD=1`), to hold the
//! lock in a child process that is then killed with SIGKILL.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reconcile::backend::etcd::{self, Client, EtcdError, Holder, LockGuard};
use reconcile::model::keys;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::support::{EtcdCleanup, etcd_client, etcd_spec, unique_prefix};

const ENV: &str = "staging";
const CHILD_VAR: &str = "RECONCILE_LOCK_CHILD";
const CHILD_PREFIX_VAR: &str = "RECONCILE_LOCK_CHILD_PREFIX";
const CHILD_MARKER: &str = "RECONCILE-LOCK-CHILD-LOCKED";

fn holder(who: &str) -> Holder {
    Holder {
        who: who.into(),
        host: "test-host".into(),
        pid: std::process::id(),
        since: "2000-01-01T00:00:00Z".into(),
        command: format!("reconcile apply --env {ENV}"),
    }
}

/// The lock key's value (as a Holder) and lease, or None when absent.
async fn lock_key(client: &mut Client, prefix: &str) -> Option<(Holder, i64)> {
    let r = client.get(keys::lock(prefix, ENV), None).await.unwrap();
    r.kvs().first().map(|kv| (serde_json::from_slice(kv.value()).unwrap(), kv.lease()))
}

/// The remaining TTL of a lease in seconds; -1 once it is gone.
async fn lease_ttl(client: &mut Client, lease: i64) -> i64 {
    client.lease_time_to_live(lease, None).await.unwrap().ttl()
}

async fn acquire(
    client: &Client,
    prefix: &str,
    who: &Holder,
    ttl: Duration,
    wait: Duration,
) -> Result<LockGuard, EtcdError> {
    etcd::acquire_lock(client, prefix, ENV, who, ttl, wait, &mut |h| panic!("unexpected wait for {h}")).await
}

/// Poll until the lock key is gone; how long that took, or None after `limit`.
async fn wait_until_gone(client: &mut Client, prefix: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if lock_key(client, prefix).await.is_none() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn acquire_writes_the_holder_on_a_lease_and_release_revokes_it() {
    let p = unique_prefix("lock", "acquire");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let mut c = etcd_client(&etcd_spec("", "")).await;
    let me = holder("alice");

    let guard = acquire(&c, &p, &me, Duration::from_secs(15), Duration::ZERO).await.unwrap();
    assert_eq!(guard.key(), keys::lock(&p, ENV));
    assert!(!guard.lost());
    assert_eq!(guard.ttl(), Duration::from_secs(15));
    let (stored, lease) = lock_key(&mut c, &p).await.expect("the lock key exists");
    assert_eq!(&stored, guard.holder());
    assert_eq!(stored, Holder { since: stored.since.clone(), ..me.clone() }, "the holder as given");
    assert_ne!(stored.since, me.since, "since is the moment the lock was taken");
    assert_eq!(lease, guard.lease_id(), "the key is on the guard's lease");
    let ttl = lease_ttl(&mut c, lease).await;
    assert!((1..=15).contains(&ttl), "lease ttl {ttl}");

    guard.release().await.unwrap();
    assert_eq!(lock_key(&mut c, &p).await, None, "release deletes the key");
    assert_eq!(lease_ttl(&mut c, lease).await, -1, "release revokes the lease");

    // Free again: a second acquire succeeds at once.
    let again = acquire(&c, &p, &me, Duration::from_secs(15), Duration::ZERO).await.unwrap();
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_apply_waits_for_the_first_and_never_overlaps() {
    let p = unique_prefix("lock", "contend");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let c = etcd_client(&etcd_spec("", "")).await;
    let in_section = Arc::new(AtomicBool::new(false));

    let a = acquire(&c, &p, &holder("alice"), Duration::from_secs(15), Duration::ZERO).await.unwrap();
    let a_holder = a.holder().clone();
    assert!(!in_section.swap(true, Ordering::SeqCst), "overlap at A's start");

    let seen: Arc<Mutex<Vec<Holder>>> = Arc::default();
    let b = tokio::spawn({
        let (c, p, seen, in_section) = (c.clone(), p.clone(), Arc::clone(&seen), Arc::clone(&in_section));
        async move {
            let start = Instant::now();
            let mut waiting = |h: &Holder| seen.lock().unwrap().push(h.clone());
            let b = etcd::acquire_lock(
                &c,
                &p,
                ENV,
                &holder("bob"),
                Duration::from_secs(15),
                Duration::from_secs(12),
                &mut waiting,
            )
            .await
            .unwrap();
            let waited = start.elapsed();
            assert!(!in_section.swap(true, Ordering::SeqCst), "B entered while A was inside");
            tokio::time::sleep(Duration::from_millis(100)).await;
            in_section.store(false, Ordering::SeqCst);
            b.release().await.unwrap();
            waited
        }
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    in_section.store(false, Ordering::SeqCst);
    a.release().await.unwrap();
    let waited = b.await.unwrap();
    println!("B waited {waited:?} for A's lock");
    assert!(waited >= Duration::from_millis(400), "B got the lock after {waited:?}, before A released it");
    // Noticed the release, not the expiry of A's 15 s lease (margin for a loaded machine).
    assert!(waited < Duration::from_secs(8), "B took {waited:?} to notice the release");
    assert_eq!(*seen.lock().unwrap(), vec![a_holder], "B's `waiting` saw A, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_contenders_take_turns() {
    let p = unique_prefix("lock", "many");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let c = etcd_client(&etcd_spec("", "")).await;
    let in_section = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let (c, p, in_section) = (c.clone(), p.clone(), Arc::clone(&in_section));
            tokio::spawn(async move {
                let me = holder(&format!("contender-{i}"));
                let g =
                    etcd::acquire_lock(&c, &p, ENV, &me, Duration::from_secs(15), Duration::from_secs(20), &mut |_| {})
                        .await
                        .unwrap();
                assert!(!in_section.swap(true, Ordering::SeqCst), "two holders at once");
                tokio::time::sleep(Duration::from_millis(150)).await;
                in_section.store(false, Ordering::SeqCst);
                g.release().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_short_wait_times_out_naming_the_holder() {
    let p = unique_prefix("lock", "timeout");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let c = etcd_client(&etcd_spec("", "")).await;
    let a = acquire(&c, &p, &holder("alice"), Duration::from_secs(15), Duration::ZERO).await.unwrap();

    let start = Instant::now();
    let mut calls = 0;
    let err = etcd::acquire_lock(
        &c,
        &p,
        ENV,
        &holder("bob"),
        Duration::from_secs(15),
        Duration::from_millis(300),
        &mut |_| calls += 1,
    )
    .await
    .unwrap_err();
    let took = start.elapsed();
    assert_eq!(
        err,
        EtcdError::LockTimeout {
            key: keys::lock(&p, ENV),
            holder: Box::new(a.holder().clone()),
            waited: Duration::from_millis(300)
        }
    );
    assert_eq!(calls, 1);
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "gave up after {took:?}");
    let message = err.to_string();
    assert!(message.contains("alice on test-host") && message.contains(&keys::lock(&p, ENV)), "{message}");

    // A is unaffected.
    let mut c2 = c.clone();
    assert_eq!(lock_key(&mut c2, &p).await.map(|(h, _)| h).as_ref(), Some(a.holder()));
    assert!(!a.lost());
    a.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_outlives_its_ttl_while_held() {
    let p = unique_prefix("lock", "keepalive");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let mut c = etcd_client(&etcd_spec("", "")).await;
    let guard = acquire(&c, &p, &holder("alice"), Duration::from_secs(2), Duration::ZERO).await.unwrap();
    // `when_lost` (what `watch` waits on to step down) stays pending all that time.
    assert!(tokio::time::timeout(Duration::from_secs(5), guard.when_lost()).await.is_err(), "lost while held");
    assert!(!guard.lost());
    assert_eq!(lock_key(&mut c, &p).await.map(|(_, lease)| lease), Some(guard.lease_id()), "still held after 2.5 TTLs");
    guard.release().await.unwrap();
}

/// Not a test on its own: the child process of `lease_dies_with_the_process`.
#[tokio::test]
async fn lock_child_helper() {
    if std::env::var(CHILD_VAR).as_deref() != Ok("1") {
        return;
    }
    let p = std::env::var(CHILD_PREFIX_VAR).unwrap();
    let c = etcd_client(&etcd_spec("", "")).await;
    let me = etcd::current_holder("lock child helper");
    let _guard = acquire(&c, &p, &me, Duration::from_secs(2), Duration::ZERO).await.unwrap();
    println!("\n{CHILD_MARKER}");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[tokio::test]
async fn lease_dies_with_the_process() {
    let p = unique_prefix("lock", "sigkill");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let mut c = etcd_client(&etcd_spec("", "")).await;

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "etcd_lock::lock_child_helper", "--nocapture"])
        .env(CHILD_VAR, "1")
        .env(CHILD_PREFIX_VAR, &p)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.trim() == CHILD_MARKER {
                return;
            }
        }
        panic!("the child exited without taking the lock");
    })
    .await
    .expect("the child took the lock within 20 s");

    let child_pid = child.id().unwrap();
    let (stored, lease) = lock_key(&mut c, &p).await.expect("the child holds the lock");
    assert_eq!(stored.pid, child_pid);
    assert_eq!(stored.command, "lock child helper");

    child.start_kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    child.wait().await.unwrap();

    let mut seen = None;
    let guard = etcd::acquire_lock(
        &c,
        &p,
        ENV,
        &holder("parent"),
        Duration::from_secs(15),
        Duration::from_secs(10),
        &mut |h| seen = Some(h.clone()),
    )
    .await
    .unwrap();
    let took = killed.elapsed();
    println!("the lock of the SIGKILLed child (lease ttl 2 s) was free {took:?} after the kill");
    assert_eq!(seen, Some(stored), "the parent waited for the child");
    // Freed by the lease's expiry, long before the parent's 10 s lock timeout.
    assert!(took <= Duration::from_secs(7), "took {took:?}, more than TTL + 5 s");
    assert_eq!(lease_ttl(&mut c, lease).await, -1, "the child's lease expired");
    guard.release().await.unwrap();
}

#[tokio::test]
async fn dropping_the_guard_lets_the_lease_expire() {
    let p = unique_prefix("lock", "drop");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let mut c = etcd_client(&etcd_spec("", "")).await;
    let guard = acquire(&c, &p, &holder("alice"), Duration::from_secs(2), Duration::ZERO).await.unwrap();
    let lease = guard.lease_id();
    drop(guard);
    let dropped = Instant::now();
    let gone = wait_until_gone(&mut c, &p, Duration::from_secs(7)).await;
    println!("the dropped guard's key (lease ttl 2 s) disappeared after {gone:?}");
    gone.expect("the key disappeared within TTL + 5 s");
    assert!(dropped.elapsed() >= Duration::from_millis(500), "the key vanished at once: revoked, not expired");
    assert_eq!(lease_ttl(&mut c, lease).await, -1);
}

#[tokio::test]
async fn record_apply_sets_applied_and_appends_history() {
    let p = unique_prefix("lock", "history");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let mut c = etcd_client(&etcd_spec("", "")).await;
    assert_eq!(etcd::history(&mut c, &p, ENV, 10).await.unwrap(), Vec::<serde_json::Value>::new());

    let first =
        json!({"commit": "aaa", "time": "2026-01-01T00:00:00Z", "who": "alice", "summary": "1 to add", "result": "ok"});
    let second = json!({"commit": "bbb", "time": "2026-01-01T00:01:00Z", "who": "bob", "summary": "1 to replace", "result": "failed"});
    etcd::record_apply(&mut c, &p, ENV, &first, None).await.unwrap();
    etcd::record_apply(&mut c, &p, ENV, &second, None).await.unwrap();

    let applied = c.get(keys::applied(&p, ENV), None).await.unwrap();
    let applied: serde_json::Value = serde_json::from_slice(applied.kvs()[0].value()).unwrap();
    assert_eq!(applied, second);
    assert_eq!(etcd::history(&mut c, &p, ENV, 10).await.unwrap(), vec![second.clone(), first.clone()]);
    assert_eq!(etcd::history(&mut c, &p, ENV, 1).await.unwrap(), vec![second]);
    assert_eq!(etcd::history(&mut c, &p, ENV, 0).await.unwrap(), Vec::<serde_json::Value>::new());

    // The history keys are fixed-width and ordered.
    let dir = keys::history_dir(&p, ENV);
    let r = c.get(dir.as_str(), Some(etcd_client_prefix())).await.unwrap();
    let names: Vec<String> =
        r.kvs().iter().map(|kv| String::from_utf8(kv.key().to_vec()).unwrap().replacen(&dir, "", 1)).collect();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit())), "{names:?}");
    assert!(names[0] < names[1]);

    // A corrupt entry is an error naming it.
    let bad = format!("{dir}{:020}", 1);
    etcd::put(&mut c, &bad, "not json").await.unwrap();
    let err = etcd::history(&mut c, &p, ENV, 10).await.unwrap_err();
    assert!(matches!(&err, EtcdError::Read { key, .. } if *key == bad), "{err:?}");
}

fn etcd_client_prefix() -> etcd_client::GetOptions {
    etcd_client::GetOptions::new().with_prefix()
}

#[tokio::test]
async fn a_revoked_lease_is_reported_lost() {
    let p = unique_prefix("lock", "lost");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let mut c = etcd_client(&etcd_spec("", "")).await;
    let guard = acquire(&c, &p, &holder("alice"), Duration::from_secs(3), Duration::ZERO).await.unwrap();
    assert!(!guard.lost());
    c.lease_revoke(guard.lease_id()).await.unwrap(); // as if it had expired
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), guard.when_lost()).await.expect("not reported lost within TTL + 5 s");
    assert!(guard.lost());
    println!("a revoked lease was reported lost after {:?}", start.elapsed());
    guard.release().await.unwrap(); // an expired lease is not an error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_the_ttl_keeps_the_waiters_lease_alive() {
    let p = unique_prefix("lock", "longwait");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let c = etcd_client(&etcd_spec("", "")).await;
    let a = acquire(&c, &p, &holder("alice"), Duration::from_secs(15), Duration::ZERO).await.unwrap();
    let b = tokio::spawn({
        let (c, p) = (c.clone(), p.clone());
        async move {
            let b = etcd::acquire_lock(
                &c,
                &p,
                ENV,
                &holder("bob"),
                Duration::from_secs(2),
                Duration::from_secs(10),
                &mut |_| {},
            )
            .await
            .unwrap();
            assert!(!b.lost());
            b.release().await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_secs(4)).await; // twice B's TTL
    a.release().await.unwrap();
    b.await.unwrap();
}

#[tokio::test]
async fn fenced_writes_fail_once_the_lock_is_someone_elses() {
    let p = unique_prefix("lock", "fence");
    let _cleanup = EtcdCleanup::new(&[&format!("{p}/")]);
    let mut c = etcd_client(&etcd_spec("", "")).await;
    let first = acquire(&c, &p, &holder("first"), Duration::from_secs(5), Duration::ZERO).await.unwrap();
    let fence = first.fence();
    let a = format!("{p}/staging/config/web/a");
    let b = format!("{p}/staging/config/web/b");
    etcd::batch_fenced(&mut c, &[etcd::Write::Put { key: a.clone(), value: "1".into() }], Some(&fence)).await.unwrap();
    etcd::record_apply(&mut c, &p, ENV, &json!({"kind": "apply"}), Some(&fence)).await.unwrap();

    // The lease goes (expired, or revoked as here) and another apply takes the lock.
    c.lease_revoke(fence.lease).await.unwrap();
    let second = acquire(&c, &p, &holder("second"), Duration::from_secs(5), Duration::ZERO).await.unwrap();
    let e = etcd::batch_fenced(
        &mut c,
        &[etcd::Write::Put { key: a.clone(), value: "2".into() }, etcd::Write::Delete { key: b.clone() }],
        Some(&fence),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, EtcdError::Fenced { .. }), "{e}");
    assert!(e.to_string().contains("no longer ours"), "{e}");
    let r = c.get(a.as_str(), None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"1", "nothing written by the fenced-out apply");
    let history_before = etcd::history(&mut c, &p, ENV, 100).await.unwrap().len();
    let e = etcd::record_apply(&mut c, &p, ENV, &json!({"kind": "apply"}), Some(&fence)).await.unwrap_err();
    assert!(matches!(e, EtcdError::Fenced { .. }), "{e}");
    assert_eq!(etcd::history(&mut c, &p, ENV, 100).await.unwrap().len(), history_before);
    // The new holder's fence works.
    etcd::batch_fenced(&mut c, &[etcd::Write::Put { key: a.clone(), value: "3".into() }], Some(&second.fence()))
        .await
        .unwrap();
    second.release().await.unwrap();
}
