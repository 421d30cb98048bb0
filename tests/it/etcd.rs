//! The etcd backend against the real etcd 3.4 of the test environment
//! (`RECONCILE_TEST_ETCD`, started by scripts/test-env.sh): what `observe` reads and,
//! as importantly, what it does not; connection errors; writes. These tests fail, never
//! skip, when the environment is missing. Each test works under its own prefix (and env
//! name) containing the process id, and a guard deletes its keys even when it panics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reconcile::backend::etcd::{self, Client, EtcdError, Write};
use reconcile::model::keys;
use reconcile::spec::types::EtcdSpec;

use super::support::{EtcdCleanup as Cleanup, etcd_client as client, etcd_spec as spec, unique_prefix};

const TIMEOUT: Duration = Duration::from_secs(5);

fn set(apps: &[&str]) -> BTreeSet<String> {
    apps.iter().map(|a| a.to_string()).collect()
}

async fn put_all(client: &mut Client, kvs: &[(&str, &str)]) {
    for (k, v) in kvs {
        etcd::put(client, k, v).await.unwrap();
    }
}

fn map(kvs: &[(&str, &str)]) -> BTreeMap<String, String> {
    kvs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn observe_on_an_empty_namespace_is_empty() {
    let p = unique_prefix("etcd", "empty");
    let _cleanup = Cleanup::new(&[&p]);
    let spec = spec(&p, &format!("{p}/services"));
    let mut c = client(&spec).await;
    let got = etcd::observe(&mut c, &spec, "staging", &set(&["api", "web"])).await.unwrap();
    assert!(got.keys.is_empty(), "{got:?}");
    let got = etcd::observe(&mut c, &spec, "staging", &BTreeSet::new()).await.unwrap();
    assert!(got.keys.is_empty(), "{got:?}");
}

#[tokio::test]
async fn observe_reads_exactly_the_env_namespaces_and_registry_dirs() {
    let p = unique_prefix("etcd", "scope");
    let other = format!("{p}-other");
    let r = format!("{p}/services");
    let _cleanup = Cleanup::new(&[&p, &other]);
    let spec = spec(&p, &r);
    let mut c = client(&spec).await;
    let config = keys::config(&p, "staging", "api", "timeout");
    let api_copy = keys::app(&p, "staging", "api");
    let old_copy = keys::app(&p, "staging", "old");
    let api_reg = keys::registry(&r, "api", "staging", "10.0.0.1", 20000);
    let old_reg = keys::registry(&r, "old", "staging", "10.0.0.2", 20001);
    let wanted = [
        (config.as_str(), "5s"),
        (api_copy.as_str(), r#"{"image":"api:1"}"#),
        (old_copy.as_str(), r#"{"image":"old:1"}"#),
        (api_reg.as_str(), "10.0.0.1:20000"),
        (old_reg.as_str(), "10.0.0.2:20001"),
    ];
    put_all(&mut c, &wanted).await;
    let unwanted: Vec<(String, &str)> = vec![
        // a registry dir of an app neither desired nor copied in apps/
        (keys::registry(&r, "gone", "staging", "10.0.0.3", 20002), "10.0.0.3:20002"),
        // another env, in every namespace
        (keys::registry(&r, "api", "prod", "10.0.0.1", 20000), "10.0.0.1:20000"),
        (keys::config(&p, "prod", "api", "timeout"), "9s"),
        (keys::app(&p, "prod", "api"), "{}"),
        // another prefix
        (keys::config(&other, "staging", "api", "timeout"), "1s"),
        (keys::app(&other, "staging", "api"), "{}"),
        // bookkeeping of the env itself
        (keys::applied(&p, "staging"), "abc123"),
        (format!("{}1", keys::history_dir(&p, "staging")), "applied abc123"),
        (keys::lock(&p, "staging"), "held"),
        (format!("{}/694d9a", keys::lock(&p, "staging")), ""),
        // siblings sharing a dir's name as a prefix, without its '/'
        (format!("{p}/staging/configuration/x"), "no"),
        (format!("{p}/staging/apps-old"), "no"),
        (format!("{r}/api_staging-canary/10.0.0.9-1"), "no"),
        (format!("{r}/api_staging"), "no"),
    ];
    for (k, v) in &unwanted {
        etcd::put(&mut c, k, v).await.unwrap();
    }

    let got = etcd::observe(&mut c, &spec, "staging", &set(&["api"])).await.unwrap();
    assert_eq!(got.keys, map(&wanted));

    // Without any desired app, the copies still pull in their registry dirs.
    let got = etcd::observe(&mut c, &spec, "staging", &BTreeSet::new()).await.unwrap();
    assert_eq!(got.keys, map(&wanted));

    // A desired app without a copy yet: its registry dir is read too.
    let got = etcd::observe(&mut c, &spec, "staging", &set(&["api", "gone"])).await.unwrap();
    let mut expected = map(&wanted);
    expected.insert(unwanted[0].0.clone(), unwanted[0].1.into());
    assert_eq!(got.keys, expected);
}

#[tokio::test]
async fn empty_registry_prefix_reads_only_the_apps_dirs_at_the_root() {
    let pid = std::process::id();
    let p = unique_prefix("etcd", "root");
    let env = format!("itroot{pid}");
    let decoy = format!("/unrelated/it-etcd-{pid}");
    let api_dir = keys::registry_dir("", "api", &env);
    let gone_dir = keys::registry_dir("", "gone", &env);
    assert_eq!(api_dir, format!("/api_{env}/"));
    let _cleanup = Cleanup::new(&[&p, &decoy, &api_dir, &gone_dir]);
    let spec = spec(&p, "");
    let mut c = client(&spec).await;
    let api_copy = keys::app(&p, &env, "api");
    let api_reg = keys::registry("", "api", &env, "10.0.0.1", 20000);
    let wanted = [(api_copy.as_str(), "{}"), (api_reg.as_str(), "10.0.0.1:20000")];
    put_all(&mut c, &wanted).await;
    let gone_reg = keys::registry("", "gone", &env, "10.0.0.2", 20000);
    put_all(&mut c, &[(decoy.as_str(), "x"), (gone_reg.as_str(), "10.0.0.2:20000")]).await;

    let got = etcd::observe(&mut c, &spec, &env, &set(&["api"])).await.unwrap();
    assert_eq!(got.keys, map(&wanted));
    // "/" means the root too.
    let slash = EtcdSpec { registry_prefix: "/".into(), ..spec.clone() };
    let got = etcd::observe(&mut c, &slash, &env, &set(&["api"])).await.unwrap();
    assert_eq!(got.keys, map(&wanted));
}

#[tokio::test]
async fn unreachable_etcd_is_a_connect_error_naming_the_endpoint() {
    let spec = EtcdSpec {
        endpoints: vec!["http://127.0.0.1:1".into()],
        prefix: "/x".into(),
        registry_prefix: "".into(),
        ..Default::default()
    };
    let timeout = Duration::from_secs(3);
    let start = Instant::now();
    let err = etcd::connect(&spec, timeout).await.err().expect("connecting to port 1 must fail");
    assert!(start.elapsed() < timeout + Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(matches!(err, EtcdError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("http://127.0.0.1:1"), "{msg}");
    eprintln!("{msg}");
}

#[tokio::test]
async fn silent_etcd_is_a_timeout_naming_the_endpoint() {
    // Accepts TCP connections (the kernel's backlog does) but never speaks HTTP/2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spec = EtcdSpec {
        endpoints: vec![url.clone()],
        prefix: "/x".into(),
        registry_prefix: "".into(),
        ..Default::default()
    };
    let timeout = Duration::from_millis(800);
    let start = Instant::now();
    let err = etcd::connect(&spec, timeout).await.err().expect("a silent endpoint must fail");
    assert!(start.elapsed() < timeout + Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(matches!(&err, EtcdError::Timeout { after, .. } if *after == timeout), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&url), "{msg}");
    eprintln!("{msg}");
    drop(listener);
}

#[tokio::test]
async fn no_endpoints_is_an_error() {
    let spec = EtcdSpec { endpoints: vec![], prefix: "/x".into(), registry_prefix: "".into(), ..Default::default() };
    assert_eq!(etcd::connect(&spec, TIMEOUT).await.err(), Some(EtcdError::NoEndpoints));
}

#[tokio::test]
async fn non_utf8_values_are_an_error_naming_the_key() {
    let p = unique_prefix("etcd", "utf8");
    let r = format!("{p}/services");
    let _cleanup = Cleanup::new(&[&p]);
    let spec = spec(&p, &r);
    let mut c = client(&spec).await;
    // In the config namespace (first round)…
    let bad = keys::config(&p, "staging", "api", "blob");
    c.put(bad.as_str(), vec![0xff, 0xfe, b'x'], None).await.unwrap();
    let err = etcd::observe(&mut c, &spec, "staging", &set(&["api"])).await.unwrap_err();
    assert_eq!(err, EtcdError::NotUtf8 { key: bad.clone() });
    assert!(err.to_string().contains(&bad), "{err}");
    etcd::delete(&mut c, &bad).await.unwrap();
    // …and in the registry dir of an app found only through its copy (second round).
    etcd::put(&mut c, &keys::app(&p, "staging", "old"), "{}").await.unwrap();
    let bad = keys::registry(&r, "old", "staging", "10.0.0.1", 20000);
    c.put(bad.as_str(), vec![b'1', 0xc3], None).await.unwrap();
    let err = etcd::observe(&mut c, &spec, "staging", &set(&["api"])).await.unwrap_err();
    assert_eq!(err, EtcdError::NotUtf8 { key: bad });
}

#[tokio::test]
async fn many_apps_are_read_in_chunked_transactions() {
    let p = unique_prefix("etcd", "chunk");
    let r = format!("{p}/services");
    let _cleanup = Cleanup::new(&[&p]);
    let spec = spec(&p, &r);
    let mut c = client(&spec).await;
    let apps: BTreeSet<String> = (0..300).map(|i| format!("app{i:03}")).collect();
    let mut expected = BTreeMap::new();
    let mut writes = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let port = 20000 + i as u16;
        let key = keys::registry(&r, app, "staging", "10.0.0.1", port);
        expected.insert(key.clone(), format!("10.0.0.1:{port}"));
        writes.push(Write::Put { key, value: format!("10.0.0.1:{port}") });
    }
    // And 140 apps no longer desired, each with a copy and a registry entry: the second
    // round then holds 300 - 126 + 140 = 314 dirs, three chunks.
    for i in 0..140u16 {
        let app = format!("old{i:03}");
        let copy = keys::app(&p, "staging", &app);
        let reg = keys::registry(&r, &app, "staging", "10.0.0.2", 30000 + i);
        expected.insert(copy.clone(), "{}".into());
        expected.insert(reg.clone(), format!("10.0.0.2:{}", 30000 + i));
        writes.push(Write::Put { key: copy, value: "{}".into() });
        writes.push(Write::Put { key: reg, value: format!("10.0.0.2:{}", 30000 + i) });
    }
    for chunk in writes.chunks(100) {
        etcd::batch(&mut c, chunk).await.unwrap();
    }
    let start = Instant::now();
    let got = etcd::observe(&mut c, &spec, "staging", &apps).await.unwrap();
    eprintln!("observed {} keys in {:?}", got.keys.len(), start.elapsed());
    assert_eq!(got.keys.len(), 300 + 2 * 140);
    assert_eq!(got.keys, expected);
}

#[tokio::test]
async fn put_delete_and_batch_round_trip() {
    let p = unique_prefix("etcd", "write");
    let _cleanup = Cleanup::new(&[&p]);
    let spec = spec(&p, &format!("{p}/services"));
    let mut c = client(&spec).await;
    let a = keys::config(&p, "staging", "api", "a");
    let b = keys::config(&p, "staging", "api", "b");
    let observe = |c: &mut Client| {
        let mut c = c.clone();
        let spec = spec.clone();
        async move { etcd::observe(&mut c, &spec, "staging", &BTreeSet::new()).await.unwrap().keys }
    };

    etcd::put(&mut c, &a, "1").await.unwrap();
    assert_eq!(observe(&mut c).await, map(&[(&a, "1")]));
    etcd::put(&mut c, &a, "2").await.unwrap();
    assert_eq!(observe(&mut c).await, map(&[(&a, "2")]));
    etcd::delete(&mut c, &a).await.unwrap();
    assert!(observe(&mut c).await.is_empty());
    etcd::delete(&mut c, &a).await.unwrap(); // deleting a missing key is fine

    // delete removes exactly the key, never what it prefixes
    let child = format!("{a}/child");
    put_all(&mut c, &[(&a, "1"), (&child, "2")]).await;
    etcd::delete(&mut c, &a).await.unwrap();
    assert_eq!(observe(&mut c).await, map(&[(&child, "2")]));
    etcd::delete(&mut c, &child).await.unwrap();

    // batch: puts and deletes together
    etcd::put(&mut c, &a, "old").await.unwrap();
    etcd::batch(&mut c, &[Write::Delete { key: a.clone() }, Write::Put { key: b.clone(), value: "3".into() }])
        .await
        .unwrap();
    assert_eq!(observe(&mut c).await, map(&[(&b, "3")]));
    etcd::batch(&mut c, &[]).await.unwrap();

    // a key twice is refused before sending
    let err =
        etcd::batch(&mut c, &[Write::Put { key: a.clone(), value: "x".into() }, Write::Delete { key: a.clone() }])
            .await
            .unwrap_err();
    assert_eq!(err, EtcdError::DuplicateKey { key: a.clone() });

    // all or nothing: a batch over etcd's limit writes nothing
    let too_many: Vec<Write> = (0..=etcd::MAX_TXN_OPS)
        .map(|i| Write::Put { key: keys::config(&p, "staging", "bulk", &i.to_string()), value: "v".into() })
        .collect();
    let err = etcd::batch(&mut c, &too_many).await.unwrap_err();
    assert!(matches!(&err, EtcdError::Batch { count, .. } if *count == etcd::MAX_TXN_OPS + 1), "{err:?}");
    eprintln!("{err}");
    assert_eq!(observe(&mut c).await, map(&[(&b, "3")]));
}
