//! `backend::docker` against the two real daemons of the test environment (and a few
//! fakes in front of them: a counting proxy, a socket that never answers, a TLS
//! server). Fails, never skips, when the environment is missing.
//!
//! Every test uses its own env name and container names (process id + test name) and
//! removes what it created, even when it fails (`Containers`'s `Drop`).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reconcile::backend::docker::{DockerError, connect, observe_all, observe_host};
use reconcile::model::{ContainerState, HostObservation, labels};
use reconcile::spec::types::TlsSpec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use super::support::host;
use super::support::{docker_cli, docker_quiet, unique, var, without_status};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Containers a test created; all removed on drop (also when the test panics).
#[derive(Default)]
struct Containers(Mutex<Vec<(String, String)>>);

impl Containers {
    /// `docker create` (or `run -d` when `start`) with host networking, `labels` and
    /// `sleep 300`; returns the full container id.
    fn make(&self, endpoint: &str, name: &str, image: &str, labels: &[(&str, &str)], start: bool) -> String {
        self.0.lock().unwrap().push((endpoint.to_string(), name.to_string()));
        let mut args: Vec<String> = vec![if start { "run" } else { "create" }.into()];
        if start {
            args.push("-d".into());
        }
        args.extend(["--name".into(), name.into(), "--network".into(), "host".into()]);
        for (k, v) in labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.extend([image.into(), "sleep".into(), "300".into()]);
        docker_cli(endpoint, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let mut by_endpoint: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (endpoint, name) in made {
            by_endpoint.entry(endpoint).or_default().push(name);
        }
        for (endpoint, names) in by_endpoint {
            docker_quiet(
                &endpoint,
                &[&["rm", "-f"], &names.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat(),
            );
        }
    }
}

fn managed<'a>(env: &'a str, app: &'a str, instance: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (labels::ENV, env),
        (labels::APP, app),
        (labels::INSTANCE, instance),
        (labels::SPEC_HASH, "sha256:0123"),
        (labels::COMMIT, "c0ffee"),
    ]
}

fn ok(result: Result<BTreeMap<String, HostObservation>, Vec<DockerError>>) -> BTreeMap<String, HostObservation> {
    result.unwrap_or_else(|errors| {
        panic!("observe_all failed: {:#?}", errors.iter().map(ToString::to_string).collect::<Vec<_>>())
    })
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn observes_both_daemons_with_every_field() {
    let (d1, d2) = (var("RECONCILE_TEST_DOCKER1"), var("RECONCILE_TEST_DOCKER2"));
    let (image1, image2) = (var("RECONCILE_TEST_IMAGE"), var("RECONCILE_TEST_IMAGE2"));
    let env = unique("docker", "fields");
    let hosts = [host("node-1", &d1), host("node-2", &d2)];

    // Negotiation: both 20.10 daemons speak 1.41 (bollard's default is newer).
    for h in &hosts {
        let docker = connect(h, TIMEOUT).await.unwrap();
        assert_eq!(docker.client_version().to_string(), "1.41", "{}", h.name);
    }

    // Nothing yet: every host present, each empty.
    let empty = ok(observe_all(&hosts, &env, 4, TIMEOUT).await);
    assert_eq!(empty.keys().collect::<Vec<_>>(), ["node-1", "node-2"]);
    assert!(empty.values().all(|o| o.instances.is_empty()), "{empty:#?}");

    let containers = Containers::default();
    let spec = format!(r#"{{"image":"{image1}","replicas":2}}"#);
    let mut api1 = managed(&env, "api", "api-1");
    api1.extend([(labels::PORT, "20002"), (labels::SPEC, spec.as_str())]);
    let mut api0 = managed(&env, "api", "api-0");
    api0.extend([(labels::PORT, "20001"), (labels::SPEC, spec.as_str())]);
    // Created in reverse order: the result is sorted, not in Docker's order.
    let id_api1 = containers.make(&d1, &format!("{env}-api-1"), &image1, &api1, false);
    let id_api0 = containers.make(&d1, &format!("{env}-api-0"), &image1, &api0, true);
    let mut web0 = managed(&env, "web", "web-0");
    web0.push((labels::SPEC, "{not json"));
    let id_web0 = containers.make(&d2, &format!("{env}-web-0"), &image2, &web0, true);

    let observed = ok(observe_all(&hosts, &env, 4, TIMEOUT).await);
    assert_eq!(observed.keys().collect::<Vec<_>>(), ["node-1", "node-2"]);

    let node1 = &observed["node-1"].instances;
    assert_eq!(node1.iter().map(|i| i.instance.as_str()).collect::<Vec<_>>(), ["api-0", "api-1"]);
    let (a0, a1) = (&node1[0], &node1[1]);
    assert_eq!(a0.container_id, id_api0);
    assert_eq!(a0.name, format!("{env}-api-0"));
    assert_eq!(a0.host, "node-1");
    assert_eq!((a0.app.as_str(), a0.ordinal), ("api", Some(0)));
    assert_eq!((a0.spec_hash.as_str(), a0.commit.as_str()), ("sha256:0123", "c0ffee"));
    assert_eq!(a0.image, image1);
    assert_eq!(a0.state, ContainerState::Running);
    assert!(a0.status.starts_with("Up"), "{}", a0.status);
    assert!((now() - a0.created).abs() < 600, "created {}", a0.created);
    assert_eq!(a0.port, Some(20001));
    assert_eq!(a0.spec, Some(serde_json::json!({"image": image1, "replicas": 2})));

    assert_eq!(a1.container_id, id_api1);
    assert_eq!((a1.ordinal, a1.port), (Some(1), Some(20002)));
    assert_eq!(a1.state, ContainerState::Created, "created, never started");
    assert!(!a1.state.is_running());
    assert_eq!(a1.status, "Created");

    let node2 = &observed["node-2"].instances;
    assert_eq!(node2.len(), 1, "{node2:#?}");
    let w = &node2[0];
    assert_eq!((w.container_id.as_str(), w.host.as_str()), (id_web0.as_str(), "node-2"));
    assert_eq!((w.app.as_str(), w.instance.as_str(), w.ordinal), ("web", "web-0", Some(0)));
    assert_eq!(w.image, image2);
    assert_eq!(w.state, ContainerState::Running);
    assert_eq!(w.port, None, "no port label");
    assert_eq!(w.spec, None, "an invalid spec label reads as no spec");

    // observe_host on a connected client gives the same observation.
    let docker = connect(&hosts[0], TIMEOUT).await.unwrap();
    assert_eq!(
        without_status(&observe_host("node-1", &docker, &env).await.unwrap()),
        without_status(&observed["node-1"])
    );
}

#[tokio::test]
async fn unmanaged_and_other_env_containers_are_never_returned() {
    let d1 = var("RECONCILE_TEST_DOCKER1");
    let image = var("RECONCILE_TEST_IMAGE");
    let env = unique("docker", "ownership");
    let other = format!("{env}-other"); // its name extends ours: the filter is exact
    let containers = Containers::default();
    containers.make(&d1, &format!("{env}-unmanaged"), &image, &[], true);
    containers.make(&d1, &format!("{env}-foreign"), &image, &[("app", "api"), ("reconcile.app", "api")], false);
    let id_other = containers.make(&d1, &format!("{env}-other-api-0"), &image, &managed(&other, "api", "api-0"), true);
    let id_ours = containers.make(&d1, &format!("{env}-api-0"), &image, &managed(&env, "api", "api-0"), false);
    // Env label only (half-written or hand-made): still ours, returned so the planner removes it.
    let id_stray = containers.make(&d1, &format!("{env}-stray"), &image, &[(labels::ENV, env.as_str())], false);
    // Sanity: the unmanaged container really is there.
    assert!(docker_cli(&d1, &["ps", "-a", "--format", "{{.Names}}"]).contains(&format!("{env}-unmanaged")));

    let hosts = [host("node-1", &d1)];
    let observed = ok(observe_all(&hosts, &env, 1, TIMEOUT).await);
    let ids: Vec<&str> = observed["node-1"].instances.iter().map(|i| i.container_id.as_str()).collect();
    assert_eq!(ids, [id_stray.as_str(), id_ours.as_str()], "stray sorts first (empty app)");
    let stray = &observed["node-1"].instances[0];
    assert_eq!((stray.app.as_str(), stray.instance.as_str(), stray.ordinal), ("", "", None));
    assert_eq!(stray.spec_hash, "");

    let theirs = ok(observe_all(&hosts, &other, 1, TIMEOUT).await);
    let ids: Vec<&str> = theirs["node-1"].instances.iter().map(|i| i.container_id.as_str()).collect();
    assert_eq!(ids, [id_other.as_str()]);
}

#[tokio::test]
async fn unreachable_hosts_fail_the_whole_observation() {
    let d1 = var("RECONCILE_TEST_DOCKER1");
    let image = var("RECONCILE_TEST_IMAGE");
    let env = unique("docker", "unreachable");
    let containers = Containers::default();
    containers.make(&d1, &format!("{env}-api-0"), &image, &managed(&env, "api", "api-0"), false);
    let nope = "unix:///run/reconcile-test/nope.sock";
    let hosts = [
        host("node-1", &d1),
        host("node-nope", nope),
        host("node-refused", "tcp://127.0.0.1:1"),
        host("node-typo", "unix:relative.sock"),
    ];
    let errors = observe_all(&hosts, &env, 4, TIMEOUT).await.expect_err("no partial success");
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    eprintln!("{messages:#?}");
    assert_eq!(errors.iter().map(DockerError::host).collect::<Vec<_>>(), ["node-nope", "node-refused", "node-typo"]);
    assert!(matches!(errors[0], DockerError::Connect { .. }), "{:?}", errors[0]);
    assert_eq!(messages[0], format!("host `node-nope` ({nope}): cannot connect: No such file or directory"));
    assert!(matches!(errors[1], DockerError::Connect { .. }), "{:?}", errors[1]);
    assert_eq!(messages[1], "host `node-refused` (tcp://127.0.0.1:1): cannot connect: Connection refused");
    assert!(matches!(errors[2], DockerError::Endpoint { .. }), "{:?}", errors[2]);
    assert!(messages[2].starts_with("host `node-typo` (unix:relative.sock): invalid endpoint: "), "{}", messages[2]);

    let err = connect(&hosts[1], TIMEOUT).await.expect_err("nope.sock does not exist");
    assert_eq!(err.to_string(), messages[0]);
}

#[tokio::test]
async fn a_daemon_that_never_answers_times_out() {
    let d1 = var("RECONCILE_TEST_DOCKER1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hang.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Accepts and holds every connection open, never writing a byte.
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            streams.push(stream);
        }
    });
    let endpoint = format!("unix://{}", path.display());
    let hosts = [host("node-1", &d1), host("node-hang", &endpoint)];
    let timeout = Duration::from_millis(500);

    let started = Instant::now();
    let errors = observe_all(&hosts, &unique("docker", "timeout"), 2, timeout).await.expect_err("must time out");
    let elapsed = started.elapsed();
    eprintln!("observe_all with a silent host failed after {elapsed:?}: {}", errors[0]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], DockerError::Timeout { host, after, .. } if host == "node-hang" && *after == timeout),
        "{:?}",
        errors[0]
    );
    assert_eq!(errors[0].to_string(), format!("host `node-hang` ({endpoint}): no answer within 500ms"));
    assert!(elapsed >= timeout && elapsed < timeout + Duration::from_secs(5), "{elapsed:?}");

    let started = Instant::now();
    let err = connect(&hosts[1], timeout).await.expect_err("must time out");
    assert!(matches!(err, DockerError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < timeout + Duration::from_secs(5));
    held.abort();
}

/// HTTP request lines seen by a proxy, e.g. `GET /version HTTP/1.1`.
type Seen = Arc<Mutex<Vec<String>>>;

fn is_request_line(line: &str) -> bool {
    let parts: Vec<&str> = line.split(' ').collect();
    parts.len() == 3
        && ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"].contains(&parts[0])
        && parts[2].starts_with("HTTP/1.")
}

/// Forward one client connection to the daemon's unix socket, recording request lines.
async fn forward<S>(client: S, daemon_socket: String, seen: Seen)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Ok(daemon) = tokio::net::UnixStream::connect(&daemon_socket).await else { return };
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut daemon_r, mut daemon_w) = daemon.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut line = Vec::new();
        loop {
            let n = match client_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                    if is_request_line(&text) {
                        seen.lock().unwrap().push(text);
                    }
                    line.clear();
                } else if line.len() < 8192 {
                    line.push(b);
                }
            }
            if daemon_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = daemon_w.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut daemon_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    };
    tokio::join!(up, down);
}

/// A unix socket at `path` that forwards to the daemon and counts requests.
fn unix_proxy(path: &std::path::Path, daemon_socket: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let seen = Seen::default();
    let (s, target) = (seen.clone(), daemon_socket.to_string());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(forward(stream, target.clone(), s.clone()));
        }
    });
    (seen, task)
}

fn take(seen: &Seen) -> Vec<String> {
    std::mem::take(&mut *seen.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_list_call_per_host_whatever_the_container_count() {
    let d1 = var("RECONCILE_TEST_DOCKER1");
    let image = var("RECONCILE_TEST_IMAGE");
    let socket = d1.strip_prefix("unix://").expect("RECONCILE_TEST_DOCKER1 is a unix:// endpoint").to_string();
    let env = unique("docker", "cost");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    let (seen, proxy) = unix_proxy(&path, &socket);
    let hosts = [host("node-1", &format!("unix://{}", path.display()))];
    let containers = Containers::default();

    containers.make(&d1, &format!("{env}-api-0"), &image, &managed(&env, "api", "api-0"), false);
    let one = ok(observe_all(&hosts, &env, 1, TIMEOUT).await);
    assert_eq!(one["node-1"].instances.len(), 1);
    let requests_for_1 = take(&seen);

    // 29 more, created (not started) in parallel.
    std::thread::scope(|scope| {
        for n in 1..30 {
            let (containers, d1, image, env) = (&containers, &d1, &image, &env);
            scope.spawn(move || {
                let instance = format!("api-{n}");
                containers.make(d1, &format!("{env}-{instance}"), image, &managed(env, "api", &instance), false);
            });
        }
    });
    let started = Instant::now();
    let thirty = ok(observe_all(&hosts, &env, 1, TIMEOUT).await);
    let elapsed = started.elapsed();
    let requests_for_30 = take(&seen);
    let ordinals: Vec<Option<u32>> = thirty["node-1"].instances.iter().map(|i| i.ordinal).collect();
    assert_eq!(ordinals.len(), 30);
    assert!(ordinals.iter().all(Option::is_some));

    eprintln!("observe with 1 container: {} requests {requests_for_1:?}", requests_for_1.len());
    eprintln!(
        "observe with 30 containers: {} requests {requests_for_30:?}, observe_all took {elapsed:?}",
        requests_for_30.len()
    );
    assert_eq!(requests_for_1.len(), requests_for_30.len());
    // The list alone, no `GET /version` negotiation: the path carries no `/vX.Y`
    // prefix, so the daemon answers at its own API version whatever the client's.
    assert_eq!(requests_for_30.len(), 1, "one list call: {requests_for_30:?}");
    assert!(requests_for_30[0].starts_with("GET /containers/json?"), "{requests_for_30:?}");
    assert!(requests_for_30[0].contains("all=true"), "{requests_for_30:?}");
    proxy.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_without_tls_speaks_plain_http() {
    let d1 = var("RECONCILE_TEST_DOCKER1");
    let image = var("RECONCILE_TEST_IMAGE");
    let socket = d1.strip_prefix("unix://").expect("RECONCILE_TEST_DOCKER1 is a unix:// endpoint").to_string();
    let env = unique("docker", "tcp");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let s = seen.clone();
    let proxy = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(forward(stream, socket.clone(), s.clone()));
        }
    });
    let containers = Containers::default();
    let id = containers.make(&d1, &format!("{env}-api-0"), &image, &managed(&env, "api", "api-0"), false);
    let hosts = [host("node-tcp", &format!("tcp://127.0.0.1:{port}"))];

    let observed = ok(observe_all(&hosts, &env, 1, TIMEOUT).await);
    assert_eq!(observed["node-tcp"].instances.iter().map(|i| i.container_id.as_str()).collect::<Vec<_>>(), [id]);
    assert_eq!(take(&seen).len(), 1, "the list call alone");
    assert_eq!(connect(&hosts[0], TIMEOUT).await.unwrap().client_version().to_string(), "1.41");
    proxy.abort();
}

/// `openssl s_server` with a fake `/version`, killed on drop.
struct TlsServer(Child);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}: the TLS test needs the openssl CLI (Debian package `openssl`)"));
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Mutual TLS: the server demands a client certificate signed by the CA, so this
/// proves the ca/cert/key files reach bollard in the right roles. No Docker daemon
/// here listens on TLS, so the server answers only the version negotiation.
#[tokio::test]
async fn tcp_with_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let ca_args = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=it-ca"];
    let ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"];
    openssl(d, &[&["req", "-x509"][..], &ec, &ca_args, &ca_ext].concat());
    std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) =
            (format!("{who}.key"), format!("{who}.csr"), format!("{who}.pem"), format!("{who}.ext"));
        openssl(d, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={who}")]].concat());
        let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
        openssl(d, &[&sign[..], &["-days", "2", "-out", &pem, "-extfile", &ext]].concat());
    }
    let www = d.join("www");
    std::fs::create_dir(&www).unwrap();
    let body = r#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#;
    let response =
        format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    std::fs::write(www.join("version"), response).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = |f: &str| d.join(f).display().to_string();
    let server = TlsServer(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-HTTP", "-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", &path("server.pem"), "-key", &path("server.key"), "-CAfile", &path("ca.pem")])
            .args(["-Verify", "1", "-verify_return_error"])
            .current_dir(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "openssl s_server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut h = host("node-tls", &format!("tcp://127.0.0.1:{port}"));
    h.tls = Some(TlsSpec { ca: path("ca.pem"), cert: path("client.pem"), key: path("client.key") });
    let docker = connect(&h, TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docker.client_version().to_string(), "1.41");

    // A client certificate the server's CA did not sign is refused (so the one above
    // really was checked), and so is a server the given CA did not sign.
    let rogue = ["-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2", "-subj", "/CN=rogue"];
    openssl(d, &[&["req", "-x509"][..], &ec, &rogue].concat());
    for (ca, cert, key) in [("ca.pem", "rogue.pem", "rogue.key"), ("rogue.pem", "client.pem", "client.key")] {
        h.tls = Some(TlsSpec { ca: path(ca), cert: path(cert), key: path(key) });
        let err = connect(&h, TIMEOUT).await.expect_err("an untrusted certificate is refused");
        eprintln!("ca {ca}, cert {cert}: {err}");
        assert!(matches!(err, DockerError::Connect { .. }), "{err:?}");
    }

    // A missing file is named, before any connection.
    h.tls = Some(TlsSpec { ca: path("missing-ca.pem"), cert: path("client.pem"), key: path("client.key") });
    let err = connect(&h, TIMEOUT).await.expect_err("missing CA file");
    assert_eq!(
        err.to_string(),
        format!(
            "host `node-tls` (tcp://127.0.0.1:{port}): cannot connect: tls ca file `{}`: No such file or directory",
            path("missing-ca.pem")
        )
    );
    drop(server);
}
