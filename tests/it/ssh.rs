//! The `ssh://` Docker transport end to end, against the real sshd that
//! `scripts/test-env.sh` runs on 127.0.0.1:24022. bollard cannot take a port in
//! `ssh://HOST:PORT`, so the tests go through the documented workaround: the alias
//! `reconcile-test-ssh` in /etc/ssh/ssh_config.d/reconcile-test.conf (HostName, Port,
//! User, key), i.e. `$RECONCILE_TEST_SSH` = `ssh://reconcile-test-ssh`. The remote
//! `docker system dial-stdio` talks to the default socket, which is
//! `$RECONCILE_TEST_DOCKER1`: what goes through ssh is checked with the docker CLI on
//! the unix socket. Fails, never skips, when the environment is missing.

use std::time::{Duration, Instant};

use reconcile::backend::docker::{connect, observe_host};
use reconcile::model::labels;
use reconcile::spec::types::HostSpec;

use super::support::{
    app_yaml, docker_cli, host, http_get, remove_env_containers, var, web_0_run_args, without_status,
    write_one_host_env, write_web_app,
};
use super::{reconcile, stderr, stdout};

/// Generous: every new connection of the ssh transport starts an `ssh` master.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The test sshd's port (scripts/test-env.sh `SSH_PORT`), for the refused endpoint.
const SSHD_PORT: u16 = 24022;
/// This file's port pool: no other test uses 24600-24649.
const POOL: (u16, u16) = (24600, 24649);

fn ssh_host(name: &str, docker: &str) -> HostSpec {
    HostSpec { ports: format!("{}-{}", POOL.0, POOL.1), ..host(name, docker) }
}

/// A config repo in `dir` with environment `env`: one host `node-ssh` on `endpoint`
/// (this file's pool), plus `extra` (more top-level YAML).
fn write_env(dir: &std::path::Path, env: &str, endpoint: &str, extra: &str) -> std::path::PathBuf {
    let host = format!("{{name: node-ssh, docker: '{endpoint}', address: 127.0.0.1, ports: {}-{}}}", POOL.0, POOL.1);
    write_one_host_env(dir, env, &host, extra)
}

/// `docker -H $RECONCILE_TEST_DOCKER1 …` (the unix socket, not ssh); stdout trimmed.
fn docker1(args: &[&str]) -> String {
    docker_cli(&var("RECONCILE_TEST_DOCKER1"), args)
}

/// Removes every container of `env` when dropped (also when the test panics).
struct EnvContainers(String);

impl Drop for EnvContainers {
    fn drop(&mut self) {
        remove_env_containers(&self.0);
    }
}

#[tokio::test]
async fn connects_negotiates_and_observes_through_ssh() {
    let endpoint = var("RECONCILE_TEST_SSH");
    let env = format!("it-ssh-obs-{}", std::process::id());
    let _cleanup = EnvContainers(env.clone());
    let host = ssh_host("node-ssh", &endpoint);

    // Connect = an ssh master connection + `docker system dial-stdio` + GET /version.
    let t0 = Instant::now();
    let docker = connect(&host, TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"));
    let connected = t0.elapsed();
    assert_eq!(docker.client_version().to_string(), "1.41", "dockerd 20.10 through ssh");
    println!("ssh: connect + API version negotiation via {endpoint}: {} ms", connected.as_millis());

    let t0 = Instant::now();
    let empty = observe_host("node-ssh", &docker, &env).await.unwrap();
    println!("ssh: first observation (1 list call, connection reused): {} ms", t0.elapsed().as_millis());
    assert!(empty.instances.is_empty(), "{empty:#?}");

    // A container of this env and one of another env, made on the unix socket.
    let run = |name: &str, env_label: &str| {
        let mut args = web_0_run_args(env_label);
        args.splice(2..2, ["--name".to_string(), name.to_string()]);
        docker1(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let ours = run(&format!("{env}-web-0"), &env);
    let other_env = format!("{env}-other");
    let _cleanup_other = EnvContainers(other_env.clone());
    run(&format!("{other_env}-web-0"), &other_env);

    let t0 = Instant::now();
    let seen = observe_host("node-ssh", &docker, &env).await.unwrap();
    println!("ssh: observation with 1 container: {} ms", t0.elapsed().as_millis());
    let ids: Vec<&str> = seen.instances.iter().map(|i| i.container_id.as_str()).collect();
    assert_eq!(ids, [ours.as_str()], "only the env's container: {seen:#?}");
    let i = &seen.instances[0];
    assert_eq!((i.host.as_str(), i.app.as_str(), i.instance.as_str()), ("node-ssh", "web", "web-0"));
    assert!(i.state.is_running(), "{i:#?}");

    // The same daemon through its unix socket gives exactly the same observation.
    let unix = connect(&ssh_host("node-ssh", &var("RECONCILE_TEST_DOCKER1")), TIMEOUT).await.unwrap();
    assert_eq!(without_status(&observe_host("node-ssh", &unix, &env).await.unwrap()), without_status(&seen));

    // A user the sshd does not let in: an error naming host and endpoint, not a hang.
    let refused = ssh_host("node-ssh", &endpoint.replacen("ssh://", "ssh://nobody@", 1));
    let t0 = Instant::now();
    let e = connect(&refused, TIMEOUT).await.expect_err("nobody may not log in").to_string();
    println!("ssh: refused login reported in {} ms: {e}", t0.elapsed().as_millis());
    assert!(e.starts_with(&format!("host `node-ssh` ({}): cannot connect", refused.docker)), "{e}");
}

/// An environment with one host reached through the alias: apply creates the
/// container (file included) through ssh, the next plan is empty, status shows it.
#[test]
fn apply_plan_and_status_through_an_ssh_alias() {
    let endpoint = var("RECONCILE_TEST_SSH");
    let env = format!("it-ssh-{}", std::process::id());
    let _cleanup = EnvContainers(env.clone());
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().to_string_lossy().into_owned();
    let e = write_env(dir.path(), &env, &endpoint, "vars: {greeting: hello}\n");
    write_web_app(&e, "{{ vars.greeting }} via ssh from {{ instance.name }} on {{ instance.host }}\n");

    let t0 = Instant::now();
    let o = reconcile(&["apply", "--env", &env, "--repo", &repo, "--yes", "--timeout", "20s"]);
    println!("ssh: apply (create + file upload + start + health) through {endpoint}: {} ms", t0.elapsed().as_millis());
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("app web: ok"), "{}", stdout(&o));

    // On daemon 1 (the sshd's local daemon), with the reconcile labels.
    let format = format!(
        "{{{{.Names}}}} {{{{.State}}}} {{{{.Label \"{}\"}}}} {{{{.Label \"{}\"}}}} {{{{.Label \"{}\"}}}} {{{{.Label \"{}\"}}}}",
        labels::APP,
        labels::INSTANCE,
        labels::PORT,
        labels::SPEC_HASH
    );
    let ps = docker1(&["ps", "-a", "--filter", &format!("label={}={env}", labels::ENV), "--format", &format]);
    let rows: Vec<Vec<&str>> = ps.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 1, "one container: {ps}");
    let row = &rows[0];
    assert!(row[0].starts_with(&format!("{env}-web-0-")), "{ps}");
    assert_eq!(row[1..4], ["running", "web", "web-0"], "{ps}");
    let port: u16 = row[4].parse().unwrap_or_else(|_| panic!("port label: {ps}"));
    assert!((POOL.0..=POOL.1).contains(&port), "{ps}");
    assert!(row.len() == 6 && !row[5].is_empty(), "spec-hash label: {ps}");

    // The file went through the ssh transport too (tar upload before start).
    let page = http_get(port).unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}: {e}"));
    assert_eq!(page, "hello via ssh from web-0 on node-ssh\n");

    let t0 = Instant::now();
    let o = reconcile(&["plan", "--env", &env, "--repo", &repo, "--detailed-exitcode"]);
    println!("ssh: plan (no changes) through {endpoint}: {} ms", t0.elapsed().as_millis());
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));

    let o = reconcile(&["status", "--env", &env, "--repo", &repo, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v:#}");
    let r = &rows[0];
    assert_eq!(
        (r["instance"].as_str(), r["host"].as_str(), r["state"].as_str(), r["drift"].as_str()),
        (Some("web-0"), Some("node-ssh"), Some("running"), Some("in sync")),
        "{r:#}"
    );
    assert_eq!(r["port"].as_u64(), Some(u64::from(port)), "{r:#}");
}

/// `ssh://USER@HOST:PORT` is refused (the library would hand `HOST:PORT` to ssh as a
/// host name), with the hint that leads to the alias the other tests use.
#[test]
fn an_ssh_port_in_the_endpoint_is_refused_with_the_ssh_config_hint() {
    let env = format!("it-ssh-port-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let e = write_env(dir.path(), &env, &format!("ssh://root@127.0.0.1:{SSHD_PORT}"), "");
    std::fs::write(
        e.join("apps/web.yaml"),
        app_yaml("web", &var("RECONCILE_TEST_IMAGE"), "[/bin/busybox, sleep, '300']", ""),
    )
    .unwrap();
    let repo = dir.path().to_string_lossy().into_owned();
    let o = reconcile(&["plan", "--env", &env, "--repo", &repo]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("~/.ssh/config") && all.contains(&format!("Port {SSHD_PORT}")), "{all}");
    // (the hint is wrapped to the terminal width, possibly after `ssh://`)
    assert!(all.contains("[USER@]ALIAS"), "{all}");
}
