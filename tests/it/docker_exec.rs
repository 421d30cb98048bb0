//! `backend::docker`'s apply side (images, create with files, start, stop/remove,
//! exec) and `backend::probe`, against the two real daemons of the test environment
//! and, for pulls, a throwaway `docker-registry` on 127.0.0.1. Fails, never skips,
//! when the environment is missing.
//!
//! Every test uses its own container names and env label (process id + test name) and
//! removes what it created, even when it fails (`Cleanup`'s `Drop`).

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use reconcile::backend::docker::{
    Client, DockerError, ExecOutcome, check_running, cmd_runner, connect, create_instance, ensure_image, exec, exec_ok,
    start, still_running, stop_and_remove,
};
use reconcile::backend::probe::{HealthError, Probe, ProbeFailure, Schedule, probe_once, wait_healthy};
use reconcile::model::labels;
use reconcile::plan::instance::{InstanceSpec, Rendered};
use reconcile::spec::types::{HostSpec, Network};

use super::support::{self, docker_cli, docker_quiet, http_exchange, split_response, unique, var};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn client(var_name: &str) -> (Client, String) {
    let endpoint = var(var_name);
    let name = format!("node-{}", &var_name[var_name.len() - 1..]);
    let host = HostSpec { ports: "20000-29999".into(), ..support::host(&name, &endpoint) };
    (connect(&host, TIMEOUT).await.unwrap(), endpoint)
}

/// A port in 21000..29000 that nobody listens on now (checked on 0.0.0.0, which also
/// covers 127.0.0.1); distinct per call within this process.
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 21_000 + (std::process::id() % 800) as u16 * 10;
    loop {
        let candidate = base + NEXT.fetch_add(1, Ordering::SeqCst) % 8000;
        let candidate = if candidate >= 29_000 { candidate - 8000 } else { candidate };
        if TcpListener::bind(("0.0.0.0", candidate)).is_ok() {
            return candidate;
        }
    }
}

fn inspect(endpoint: &str, id: &str) -> serde_json::Value {
    let text = docker_cli(endpoint, &["inspect", "--type", "container", id]);
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[0].clone()
}

/// Containers (by name), images and processes a test made; removed on drop, also
/// when the test panics.
#[derive(Default)]
struct Cleanup {
    containers: Mutex<Vec<(String, String)>>,
    images: Mutex<Vec<(String, String)>>,
    children: Mutex<Vec<Child>>,
}

impl Cleanup {
    fn container(&self, endpoint: &str, name: &str) {
        self.containers.lock().unwrap().push((endpoint.into(), name.into()));
    }
    fn image(&self, endpoint: &str, name: &str) {
        self.images.lock().unwrap().push((endpoint.into(), name.into()));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (endpoint, name) in std::mem::take(&mut *self.containers.lock().unwrap_or_else(|e| e.into_inner())) {
            docker_quiet(&endpoint, &["rm", "-f", "-v", &name]);
        }
        for (endpoint, name) in std::mem::take(&mut *self.images.lock().unwrap_or_else(|e| e.into_inner())) {
            docker_quiet(&endpoint, &["rmi", &name]);
        }
        for mut child in std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_string()).collect()
}

fn spec(image: &str, command: &[&str]) -> InstanceSpec {
    InstanceSpec {
        image: image.into(),
        command: Some(command.iter().map(|a| Rendered::plain(*a)).collect()),
        env: BTreeMap::new(),
        network: Network::Host,
        port: None,
        container_port: None,
        init: true,
        nano_cpus: None,
        memory: None,
        volumes: vec![],
        files: BTreeMap::new(),
        health: None,
        stop_timeout_secs: 10,
        user: None,
        working_dir: None,
        labels: BTreeMap::new(),
        sensitive: BTreeMap::new(),
    }
}

fn managed_labels(env: &str, app: &str, ordinal: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::ENV.to_string(), env.to_string()),
        (labels::APP.to_string(), app.to_string()),
        (labels::INSTANCE.to_string(), format!("{app}-{ordinal}")),
        (labels::SPEC_HASH.to_string(), "0123abcd".to_string()),
    ])
}

/// `GET path` on 127.0.0.1:port (HTTP/1.0): (status line, body); panics when the exchange fails.
fn get_path(port: u16, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let (response, error) = http_exchange("127.0.0.1", port, &request, None, Duration::from_secs(5));
    assert!(error.is_none(), "GET {path} on 127.0.0.1:{port}: {error:?}");
    split_response(&response)
}

fn http_probe(port: u16, path: &str) -> Probe {
    Probe::Http { address: "127.0.0.1".into(), port, path: path.into() }
}

fn quick(retries: u32) -> Schedule {
    Schedule {
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        retries,
        start_period: Duration::ZERO,
    }
}

/// Tests 1 and 2: host networking, labels, env, command, files, init, limits, a bind
/// mount; healthy over http; everything visible in `docker inspect` and in the
/// container.
async fn full_instance(var_name: &str, image_var: &str, test: &str) {
    let (d, endpoint) = client(var_name).await;
    let host = "node-x";
    let image = var(image_var);
    let cleanup = Cleanup::default();
    let env_name = unique("exec", test);
    let name = format!("{env_name}-web-1");
    cleanup.container(&endpoint, &name);
    let port = free_port();
    let content = format!("hello from {name}\n");
    let secret = format!("s3cret-{}", std::process::id());
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), "bound\n").unwrap();

    let mut s = spec(&image, &["busybox", "httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h", "/www"]);
    s.env.insert("V".into(), Rendered::plain(secret.clone()));
    s.env.insert("PORT".into(), Rendered::plain(port.to_string()));
    s.port = Some(port);
    s.nano_cpus = Some(500_000_000);
    s.memory = Some(64 * 1024 * 1024);
    s.stop_timeout_secs = 7;
    s.volumes = vec![format!("{}:/data:ro", data.path().display())];
    s.files.insert("/www/index.html".into(), Rendered::plain(content.clone()));
    s.files.insert("/etc/app/nested/conf.txt".into(), Rendered::plain("c=1\n"));
    s.files.insert("/tmp/app/t.txt".into(), Rendered::plain("t\n"));
    let lbls = managed_labels(&env_name, "web", 1);

    assert!(!ensure_image(&d, host, &image, &mut |l| panic!("no pull expected: {l}")).await.unwrap());
    let id = create_instance(&d, host, &name, &s, &lbls).await.unwrap();
    // Created, not started.
    assert_eq!(inspect(&endpoint, &id)["State"]["Status"], "created");
    start(&d, host, &id).await.unwrap();
    start(&d, host, &id).await.unwrap(); // already running: Ok
    let t = Instant::now();
    wait_healthy(&http_probe(port, "/"), &quick(50), || still_running(&d, host, &id)).await.unwrap();
    println!("{var_name}: healthy in {:?}", t.elapsed());
    let (status, body) = get_path(port, "/index.html");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, content);

    let i = inspect(&endpoint, &id);
    assert_eq!(i["Name"], format!("/{name}"));
    for (k, v) in &lbls {
        assert_eq!(i["Config"]["Labels"][k], v.as_str(), "label {k}");
    }
    assert_eq!(i["HostConfig"]["Memory"], 64 * 1024 * 1024);
    assert_eq!(i["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(i["HostConfig"]["Init"], true);
    assert_eq!(i["HostConfig"]["NetworkMode"], "host");
    assert_eq!(i["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(i["Config"]["StopTimeout"], 7);
    assert_eq!(i["Config"]["Image"], image.as_str());
    assert_eq!(i["Config"]["Cmd"][1], "httpd");
    assert!(i["Config"]["Env"].as_array().unwrap().iter().any(|e| e == &format!("V={secret}")));

    // The env value, through the CLI (output) and through exec_ok (comparison).
    assert_eq!(docker_cli(&endpoint, &["exec", &id, "sh", "-c", "echo $V"]), secret);
    assert!(
        exec_ok(&d, host, &id, &strings(&["sh", "-c", &format!("test \"$V\" = {secret}")]), TIMEOUT).await.unwrap()
    );
    // Files: content, mode 0644, owner root; parents created 0755; /tmp keeps 1777.
    assert_eq!(docker_cli(&endpoint, &["exec", &id, "cat", "/etc/app/nested/conf.txt"]), "c=1");
    assert_eq!(
        docker_cli(
            &endpoint,
            &[
                "exec",
                &id,
                "stat",
                "-c",
                "%a %u:%g %n",
                "/www/index.html",
                "/etc/app/nested/conf.txt",
                "/etc/app/nested",
                "/etc",
                "/tmp",
                "/tmp/app/t.txt"
            ]
        ),
        "644 0:0 /www/index.html\n644 0:0 /etc/app/nested/conf.txt\n755 0:0 /etc/app/nested\n755 0:0 /etc\n1777 0:0 /tmp\n644 0:0 /tmp/app/t.txt"
    );
    // The bind mount, read-only.
    assert_eq!(docker_cli(&endpoint, &["exec", &id, "cat", "/data/f"]), "bound");
    assert!(!exec_ok(&d, host, &id, &strings(&["sh", "-c", "echo x > /data/g"]), TIMEOUT).await.unwrap());

    // The same name again: a clear conflict naming host and container.
    let e = create_instance(&d, host, &name, &s, &lbls).await.unwrap_err();
    assert!(matches!(e, DockerError::NameConflict { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("host `{host}`: cannot create container `{name}`: the name is taken")), "{msg}");
    assert!(!msg.contains(&secret), "{msg}");

    stop_and_remove(&d, host, &id, Duration::from_secs(7)).await.unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "still listening after stop");
}

#[tokio::test]
async fn creates_a_full_instance_on_daemon_1() {
    full_instance("RECONCILE_TEST_DOCKER1", "RECONCILE_TEST_IMAGE", "full1").await;
}

#[tokio::test]
async fn creates_a_full_instance_on_daemon_2() {
    full_instance("RECONCILE_TEST_DOCKER2", "RECONCILE_TEST_IMAGE2", "full2").await;
}

#[tokio::test]
async fn stop_and_remove_is_idempotent_and_quick_with_init() {
    let (d, endpoint) = client("RECONCILE_TEST_DOCKER1").await;
    let host = "node-1";
    let cleanup = Cleanup::default();
    let env_name = unique("exec", "stop");
    let image = var("RECONCILE_TEST_IMAGE");
    let sleeper = spec(&image, &["sleep", "300"]);

    let name = format!("{env_name}-sleep-1");
    cleanup.container(&endpoint, &name);
    let id = create_instance(&d, host, &name, &sleeper, &managed_labels(&env_name, "sleep", 1)).await.unwrap();
    start(&d, host, &id).await.unwrap();
    let t = Instant::now();
    stop_and_remove(&d, host, &id, Duration::from_secs(10)).await.unwrap();
    let took = t.elapsed();
    println!("stop_and_remove with init (grace 10s): {took:?}");
    assert!(took < Duration::from_secs(5), "init should forward SIGTERM: {took:?}");
    let o = Command::new("docker").args(["-H", &endpoint, "inspect", &id]).output().unwrap();
    assert!(!o.status.success(), "still there");
    // Again, and an id that never existed: Ok.
    stop_and_remove(&d, host, &id, Duration::from_secs(10)).await.unwrap();
    stop_and_remove(&d, host, &format!("{env_name}-never-existed"), Duration::from_secs(1)).await.unwrap();

    // Created but never started: stop is a no-op, removal works.
    let name = format!("{env_name}-sleep-2");
    cleanup.container(&endpoint, &name);
    let id = create_instance(&d, host, &name, &sleeper, &managed_labels(&env_name, "sleep", 2)).await.unwrap();
    stop_and_remove(&d, host, &id, Duration::from_secs(1)).await.unwrap();
    assert!(!Command::new("docker").args(["-H", &endpoint, "inspect", &name]).output().unwrap().status.success());

    // Without init, busybox sleep as PID 1 ignores SIGTERM: the grace period is used up.
    let name = format!("{env_name}-sleep-3");
    cleanup.container(&endpoint, &name);
    let no_init = InstanceSpec { init: false, ..sleeper.clone() };
    let id = create_instance(&d, host, &name, &no_init, &managed_labels(&env_name, "sleep", 3)).await.unwrap();
    start(&d, host, &id).await.unwrap();
    let t = Instant::now();
    stop_and_remove(&d, host, &id, Duration::from_millis(1500)).await.unwrap(); // rounded up to 2s
    let took = t.elapsed();
    println!("stop_and_remove without init (grace 1.5s → 2s): {took:?}");
    assert!(took >= Duration::from_millis(1900), "{took:?}");
}

#[tokio::test]
async fn exec_and_probes() {
    let (d, endpoint) = client("RECONCILE_TEST_DOCKER1").await;
    let host = "node-1";
    let cleanup = Cleanup::default();
    let env_name = unique("exec", "probes");
    let image = var("RECONCILE_TEST_IMAGE");
    let port = free_port();

    let mut web = spec(&image, &["busybox", "httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h", "/www"]);
    web.files.insert("/www/index.html".into(), Rendered::plain("ok\n"));
    let name = format!("{env_name}-web-1");
    cleanup.container(&endpoint, &name);
    let id = create_instance(&d, host, &name, &web, &managed_labels(&env_name, "web", 1)).await.unwrap();
    start(&d, host, &id).await.unwrap();
    wait_healthy(&Probe::Tcp { address: "127.0.0.1".into(), port }, &quick(50), || still_running(&d, host, &id))
        .await
        .unwrap();
    check_running(&d, host, &id).await.unwrap();

    // exec: exit codes, a missing binary, a timeout, an empty command.
    assert!(exec_ok(&d, host, &id, &strings(&["true"]), TIMEOUT).await.unwrap());
    assert!(!exec_ok(&d, host, &id, &strings(&["false"]), TIMEOUT).await.unwrap());
    assert_eq!(
        exec(&d, host, &id, &strings(&["sh", "-c", "exit 42"]), TIMEOUT).await.unwrap(),
        ExecOutcome::Exited(42)
    );
    let missing = exec(&d, host, &id, &strings(&["/no/such/binary"]), TIMEOUT).await;
    assert!(matches!(missing, Ok(ExecOutcome::Exited(126 | 127))), "{missing:?}");
    let t = Instant::now();
    assert_eq!(
        exec(&d, host, &id, &strings(&["sleep", "5"]), Duration::from_millis(300)).await.unwrap(),
        ExecOutcome::TimedOut
    );
    assert!(t.elapsed() < Duration::from_millis(4500), "the 300 ms timeout did not cut `sleep 5` short");
    assert!(matches!(exec(&d, host, &id, &[], TIMEOUT).await, Err(DockerError::Exec { .. })));

    // Probes: tcp, http 200 / 404, cmd.
    let t2 = Duration::from_secs(2);
    probe_once(&Probe::Tcp { address: "127.0.0.1".into(), port }, t2).await.unwrap();
    probe_once(&http_probe(port, "/index.html"), t2).await.unwrap();
    let e = probe_once(&http_probe(port, "/missing"), t2).await.unwrap_err();
    assert!(matches!(e, ProbeFailure::Status { status: 404, .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.starts_with(&format!("GET /missing on 127.0.0.1:{port}: 404")), "{e}");
    let cmd = |argv: &[&str]| Probe::Cmd {
        argv: strings(argv),
        run: cmd_runner(d.clone(), host.to_string(), id.clone(), strings(argv)),
    };
    probe_once(&cmd(&["sh", "-c", "test -f /www/index.html"]), t2).await.unwrap();
    let e = probe_once(&cmd(&["sh", "-c", "exit 3"]), t2).await.unwrap_err().to_string();
    assert_eq!(e, "cmd `sh -c exit 3`: exit code 3");
    wait_healthy(&cmd(&["true"]), &quick(3), || still_running(&d, host, &id)).await.unwrap();

    // Giving up after `retries` failures in a row, with the last reason.
    let t = Instant::now();
    let e = wait_healthy(&http_probe(port, "/missing"), &quick(3), || still_running(&d, host, &id)).await.unwrap_err();
    assert!(matches!(e, HealthError::GaveUp { attempts: 3, failures: 3, .. }), "{e:?}");
    let e = e.to_string();
    println!("gave up after {:?}: {e}", t.elapsed());
    assert!(e.starts_with("unhealthy after 3 probes (3 failed in a row): GET /missing"), "{e}");
    assert!(e.contains(": 404"), "{e}");

    // A container that exits at once is reported at the first failed probe, not after
    // all retries (its restart policy brings it back: a restart counts as a crash).
    let name = format!("{env_name}-crash-1");
    cleanup.container(&endpoint, &name);
    let crash = spec(&image, &["sh", "-c", "exit 3"]);
    let cid = create_instance(&d, host, &name, &crash, &managed_labels(&env_name, "crash", 1)).await.unwrap();
    start(&d, host, &cid).await.unwrap();
    let dead_port = free_port();
    let t = Instant::now();
    let slow = Schedule { interval: Duration::from_millis(500), retries: 100, ..quick(100) };
    let e = wait_healthy(&Probe::Tcp { address: "127.0.0.1".into(), port: dead_port }, &slow, || {
        still_running(&d, host, &cid)
    })
    .await
    .unwrap_err();
    assert!(matches!(e, HealthError::NotRunning { .. }), "{e:?}");
    let e = e.to_string();
    println!("crashing container reported after {:?}: {e}", t.elapsed());
    // Far less than the 100 retries × 500 ms the probe alone would take.
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(e.contains(&format!("container `{cid}` is not running")), "{e}");
    // Caught exited or restarting, the exit code is known; caught running again after
    // a restart, Docker has reset it, and only the restart count tells.
    assert!(
        e.contains("exited with code 3") || e.contains("restarted") && e.contains("running again (it crashed)"),
        "{e}"
    );
    assert!(e.contains(&format!("connect 127.0.0.1:{dead_port}: Connection refused")), "{e}");

    // exec in a container that is not running, and on a gone one: errors naming them.
    stop_and_remove(&d, host, &cid, Duration::from_secs(1)).await.unwrap();
    let e = exec(&d, host, &cid, &strings(&["true"]), TIMEOUT).await.unwrap_err();
    assert!(e.to_string().starts_with(&format!("host `{host}`: cannot exec in container `{cid}`")), "{e}");
    let e = check_running(&d, host, &cid).await.unwrap_err();
    assert_eq!(e.to_string(), format!("host `{host}`: container `{cid}` is not running: gone"));
    stop_and_remove(&d, host, &id, Duration::from_secs(2)).await.unwrap();
}

/// A `docker-registry` on 127.0.0.1:<free port> with storage in `dir`, once it answers.
fn registry(cleanup: &Cleanup, dir: &std::path::Path) -> u16 {
    let port = free_port();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("/usr/bin/docker-registry");
    cleanup.children.lock().unwrap().push(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    port
}

#[tokio::test]
async fn ensure_image_pulls_only_when_missing() {
    let (d, endpoint) = client("RECONCILE_TEST_DOCKER1").await;
    let host = "node-1";
    let cleanup = Cleanup::default();
    let image = var("RECONCILE_TEST_IMAGE");

    // Present: no pull, no progress.
    let mut lines = Vec::new();
    assert!(!ensure_image(&d, host, &image, &mut |l| lines.push(l)).await.unwrap());
    assert!(lines.is_empty(), "{lines:?}");

    // Missing: an image with a layer of its own (4 MB of noise, so there is something
    // to download) is built, pushed to a local registry and deleted, then pulled.
    let dir = tempfile::tempdir().unwrap();
    let port = registry(&cleanup, dir.path());
    let remote = format!("127.0.0.1:{port}/it-{}/busybox:1", std::process::id());
    cleanup.image(&endpoint, &remote);
    let context = dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), format!("FROM {image}\nCOPY blob /blob\n")).unwrap();
    let mut x = u64::from(std::process::id()) | 1;
    let noise: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(context.join("blob"), noise).unwrap();
    docker_cli(&endpoint, &["build", "-q", "-t", &remote, context.to_str().unwrap()]);
    docker_cli(&endpoint, &["push", &remote]);
    docker_cli(&endpoint, &["rmi", &remote]);
    let mut lines = Vec::new();
    let t = Instant::now();
    assert!(ensure_image(&d, host, &remote, &mut |l| lines.push(l)).await.unwrap());
    println!("pulled in {:?}:\n{}", t.elapsed(), lines.join("\n"));
    assert_eq!(lines[0], format!("{host}: pulling {remote}"));
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with(&format!("{host}: pulling {remote}"))), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("Downloaded newer image")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains(": Downloading ") && l.contains("/4.")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains(": Pull complete")), "{lines:?}");
    docker_cli(&endpoint, &["image", "inspect", &remote]);
    // Now present.
    assert!(!ensure_image(&d, host, &remote, &mut |l| panic!("no pull expected: {l}")).await.unwrap());

    // Unknown: a clear error naming host and image.
    let missing = format!("127.0.0.1:{port}/it-{}/nope:1", std::process::id());
    let e = ensure_image(&d, host, &missing, &mut |_| {}).await.unwrap_err();
    println!("{e}");
    assert!(matches!(e, DockerError::Pull { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("host `{host}`: cannot pull image `{missing}`: ")), "{e}");

    // Not a valid reference at all.
    let e = ensure_image(&d, host, "Not/A:Valid:Ref", &mut |_| {}).await.unwrap_err();
    assert!(e.to_string().starts_with(&format!("host `{host}`: cannot pull image `Not/A:Valid:Ref`")), "{e}");

    // A missing image on create: a create error naming it (ensure_image comes first).
    let e = create_instance(&d, host, &unique("exec", "noimage"), &spec(&missing, &["true"]), &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(e, DockerError::Create { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("from image `{missing}`")), "{e}");
}

#[tokio::test]
async fn bridge_publishes_the_container_port_on_the_pool_port() {
    let (d, endpoint) = client("RECONCILE_TEST_DOCKER1").await;
    let host = "node-1";
    let cleanup = Cleanup::default();
    let env_name = unique("exec", "bridge");
    let port = free_port();
    let mut s = spec(&var("RECONCILE_TEST_IMAGE"), &["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]);
    s.network = Network::Bridge;
    s.port = Some(port);
    s.container_port = Some(8080);
    s.files.insert("/www/index.html".into(), Rendered::plain("bridged\n"));
    let name = format!("{env_name}-web-1");
    cleanup.container(&endpoint, &name);
    let id = create_instance(&d, host, &name, &s, &managed_labels(&env_name, "web", 1)).await.unwrap();
    start(&d, host, &id).await.unwrap();
    wait_healthy(&http_probe(port, "/"), &quick(50), || still_running(&d, host, &id)).await.unwrap();
    assert_eq!(get_path(port, "/").1, "bridged\n");
    let i = inspect(&endpoint, &id);
    assert_eq!(i["HostConfig"]["NetworkMode"], "bridge");
    assert_eq!(i["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"], port.to_string());
    assert_eq!(i["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"], "");
    stop_and_remove(&d, host, &id, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn bad_file_paths_leave_nothing_behind() {
    let (d, endpoint) = client("RECONCILE_TEST_DOCKER1").await;
    let cleanup = Cleanup::default();
    let name = unique("exec", "badfile");
    cleanup.container(&endpoint, &name);
    let mut s = spec(&var("RECONCILE_TEST_IMAGE"), &["true"]);
    s.files.insert("/etc/../../escape".into(), Rendered::plain("x"));
    let e = create_instance(&d, "node-1", &name, &s, &BTreeMap::new()).await.unwrap_err();
    assert!(matches!(e, DockerError::Files { .. }), "{e:?}");
    assert!(e.to_string().contains("`..` is not allowed"), "{e}");
    assert!(!Command::new("docker").args(["-H", &endpoint, "inspect", &name]).output().unwrap().status.success());
}
