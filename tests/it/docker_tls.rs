//! Docker over TCP with TLS, against the real `dockerd --tlsverify` that
//! `scripts/test-env.sh` runs on 127.0.0.1:23761 (`$RECONCILE_TEST_DOCKER_TLS`, client
//! files of the test CA in `$RECONCILE_TEST_TLS_{CA,CERT,KEY}`): observe, apply and
//! status through it, and a client certificate of another CA refused with an error
//! naming the host. What reconcile did is checked with the docker CLI over the same
//! TLS endpoint. Fails, never skips, when the environment is missing.

use std::process::Command;
use std::time::Duration;

use reconcile::backend::docker::{connect, observe_host};
use reconcile::model::labels;
use reconcile::spec::types::{HostSpec, TlsSpec};

use super::apply::{http_get, var};
use super::support::{web_0_run_args, write_one_host_env, write_web_app};
use super::{reconcile, stderr, stdout};

/// This file's port pool: no other test uses 26300-26349.
const POOL: (u16, u16) = (26300, 26349);

fn tls(cert: &str, key: &str) -> TlsSpec {
    TlsSpec { ca: var("RECONCILE_TEST_TLS_CA"), cert: var(cert), key: var(key) }
}

/// `docker --tlsverify -H $RECONCILE_TEST_DOCKER_TLS …` with the test CA's client
/// files; stdout trimmed.
pub fn docker_tls(args: &[&str]) -> String {
    let o = Command::new("docker")
        .args(["--tlsverify", "--tlscacert", &var("RECONCILE_TEST_TLS_CA")])
        .args(["--tlscert", &var("RECONCILE_TEST_TLS_CERT"), "--tlskey", &var("RECONCILE_TEST_TLS_KEY")])
        .args(["-H", &var("RECONCILE_TEST_DOCKER_TLS")])
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(o.status.success(), "docker (tls) {args:?}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

/// Removes every container of the environment on the TLS daemon when dropped.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = docker_tls(&["ps", "-aq", "--filter", &format!("label={}={}", labels::ENV, self.0)]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            docker_tls(&[&["rm", "-f"], ids.as_slice()].concat());
        }
    }
}

/// A config repo with one host `node-tls` on the TLS daemon, using `cert`/`key`
/// (names of environment variables), and app `web` serving a rendered file.
fn write_repo(dir: &std::path::Path, env: &str, cert: &str, key: &str) {
    let host = format!(
        "{{name: node-tls, docker: '{endpoint}', tls: {{ca: '{ca}', cert: '{cert}', key: '{key}'}}, address: 127.0.0.1, ports: {a}-{b}}}",
        endpoint = var("RECONCILE_TEST_DOCKER_TLS"),
        ca = var("RECONCILE_TEST_TLS_CA"),
        cert = var(cert),
        key = var(key),
        a = POOL.0,
        b = POOL.1,
    );
    let e = write_one_host_env(dir, env, &host, "");
    write_web_app(&e, "tls {{ instance.name }} on {{ instance.host }}\n");
}

#[tokio::test]
async fn connects_and_observes_over_tls_and_refuses_another_cas_certificate() {
    let endpoint = var("RECONCILE_TEST_DOCKER_TLS");
    let env = format!("it-tls-obs-{}", std::process::id());
    let _cleanup = Cleanup(env.clone());
    let host = HostSpec {
        tls: Some(tls("RECONCILE_TEST_TLS_CERT", "RECONCILE_TEST_TLS_KEY")),
        ports: format!("{}-{}", POOL.0, POOL.1),
        ..super::docker::host("node-tls", &endpoint)
    };
    let docker = connect(&host, Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docker.client_version().to_string(), "1.41", "dockerd 20.10 over TLS");
    assert!(observe_host("node-tls", &docker, &env).await.unwrap().instances.is_empty());
    let args = web_0_run_args(&env);
    let id = docker_tls(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let seen = observe_host("node-tls", &docker, &env).await.unwrap();
    assert_eq!(seen.instances.iter().map(|i| i.container_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);

    // A client certificate from another CA: the daemon refuses the handshake.
    let other = HostSpec { tls: Some(tls("RECONCILE_TEST_TLS_OTHER_CERT", "RECONCILE_TEST_TLS_OTHER_KEY")), ..host };
    let e = connect(&other, Duration::from_secs(10)).await.expect_err("another CA's cert must be refused").to_string();
    assert!(e.starts_with(&format!("host `node-tls` ({endpoint}): cannot connect")), "{e}");
}

#[test]
fn apply_plan_and_status_over_tls() {
    let env = format!("it-tls-{}", std::process::id());
    let _cleanup = Cleanup(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().to_string_lossy().into_owned();
    write_repo(dir.path(), &env, "RECONCILE_TEST_TLS_CERT", "RECONCILE_TEST_TLS_KEY");

    let o = reconcile(&["apply", "--env", &env, "--repo", &repo, "--yes", "--timeout", "20s"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("app web: ok"), "{}", stdout(&o));
    let ps = docker_tls(&[
        "ps",
        "--filter",
        &format!("label={}={env}", labels::ENV),
        "--format",
        &format!("{{{{.State}}}} {{{{.Label \"{}\"}}}}", labels::PORT),
    ]);
    let (state, port) = ps.split_once(' ').unwrap_or_else(|| panic!("one container: {ps}"));
    assert_eq!(state, "running", "{ps}");
    let port: u16 = port.parse().unwrap_or_else(|_| panic!("{ps}"));
    assert_eq!(http_get(port).unwrap(), "tls web-0 on node-tls\n", "the file went in over TLS");

    let o = reconcile(&["plan", "--env", &env, "--repo", &repo, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));
    let o = reconcile(&["status", "--env", &env, "--repo", &repo, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let status = stdout(&o);
    assert!(status.contains("node-tls") && status.contains("web-0"), "{status}");

    // The same environment with another CA's client certificate: exit 1 naming the
    // host, and the container is untouched.
    write_repo(dir.path(), &env, "RECONCILE_TEST_TLS_OTHER_CERT", "RECONCILE_TEST_TLS_OTHER_KEY");
    let o = reconcile(&["apply", "--env", &env, "--repo", &repo, "--yes", "--timeout", "10s"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("host `node-tls` ({}): cannot connect", var("RECONCILE_TEST_DOCKER_TLS"))), "{err}");
    let after = docker_tls(&["ps", "--filter", &format!("label={}={env}", labels::ENV), "--format", "{{.State}}"]);
    assert_eq!(after, "running", "nothing changed");
}
