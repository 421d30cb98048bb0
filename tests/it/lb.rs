//! The LB file backend against real load balancers: our own nginx and haproxy
//! instances (temp dirs, own pid files, 127.0.0.1 only) in front of in-process HTTP
//! upstreams. Missing nginx/haproxy binaries fail these tests; they are part of the test
//! environment (`scripts/test-env.sh`).
//!
//! Check and reload commands used here, as operators would write them in environment.yaml:
//! - nginx: `check: [nginx, -t, -q, -c, <main conf>]` (no `{file}`: the main config
//!   includes lb.path, so the candidate is checked in place and restored on failure).
//! - haproxy (lb.path is the whole config): `check: [haproxy, -c, -f, "{file}"]`; not
//!   `-q`, which silences haproxy's error messages too.
//! - nginx: `reload: [nginx, -s, reload, -c, <main conf>]` (`-c` only because this
//!   instance does not use the default /etc/nginx/nginx.conf; with it, `[nginx, -s, reload]`).
//! - haproxy in master-worker mode (`-W`) with a pid file (`-p`): `reload: [pkill, -USR2,
//!   -F, <pid file>]` sends SIGUSR2 to the master named in the pid file; under systemd,
//!   `[systemctl, reload, haproxy]` does the same.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use reconcile::backend::lb::{self, LbError};

use super::support::{Daemon, http_exchange, split_response, wait_steady};

const NGINX_PORT: u16 = 28701;
const HAPROXY_PORT: u16 = 28702;

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny HTTP server on 127.0.0.1 answering every request with `body`.
struct Upstream {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        Upstream { port, stop, thread: Some(thread) }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GET / through the LB on `port`; the response body, or the error as text.
fn get(port: u16) -> String {
    let request = "GET / HTTP/1.0\r\nHost: api.internal\r\n\r\n";
    let (response, error) =
        http_exchange("127.0.0.1", port, request, Some(Duration::from_secs(2)), Duration::from_secs(5));
    if let Some(e) = error {
        return format!("(error: {e})");
    }
    let (status, body) = split_response(&response);
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        body
    } else {
        format!("(non-200: {status})")
    }
}

/// Poll until GET through the LB answers `body`, steadily: reloads are asynchronous, and
/// for a moment old workers (previous config) still accept next to the new ones.
fn wait_for_body(port: u16, body: &str) {
    wait_steady(
        &format!("LB on 127.0.0.1:{port} (for {body:?})"),
        Duration::from_millis(300),
        || get(port),
        |last| last == body,
    );
}

/// The directory holds exactly `names` (no temp, backup or marker file left behind).
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    want.sort();
    assert_eq!(found, want, "unexpected files in {}", dir.display());
}

/// Start a daemon (it forks and its first process exits); its output goes to a log file
/// in `dir`, so a daemon keeping stdout/stderr open cannot hang the test.
fn start_daemon(dir: &Path, program: &str, args: &[&str]) {
    let log = dir.join(format!("{program}.start.log"));
    let out = std::fs::File::create(&log).unwrap();
    let status = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed and on PATH?): {e}"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::remove_file(&log).unwrap();
    assert!(status.success(), "{program} {args:?} failed ({status}): {text}");
}

fn nginx_upstream(port: u16) -> String {
    format!("# managed by reconcile\nupstream api {{\n  server 127.0.0.1:{port};\n}}\n")
}

#[test]
fn nginx_check_in_place_reload_and_broken_render() {
    let a = Upstream::start("A");
    let b = Upstream::start("B");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf_d = d.join("conf.d");
    let managed = conf_d.join("reconcile.conf"); // lb.path; conf.d/ is created by write_checked
    let main = d.join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             \x20 access_log off;\n\
             \x20 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
             \x20 uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             \x20 include {managed};\n\
             \x20 server {{\n\
             \x20   listen 127.0.0.1:{NGINX_PORT};\n\
             \x20   location / {{ proxy_pass http://api; }}\n\
             \x20 }}\n\
             }}\n",
            d = d.display(),
            managed = managed.display(),
        ),
    )
    .unwrap();
    let check = argv(&["nginx", "-t", "-q", "-c", s(&main)]);
    let reload = argv(&["nginx", "-s", "reload", "-c", s(&main)]);
    let path = s(&managed);

    // First version, pointing at A: checked in place (no {file}), then nginx starts on it.
    lb::write_checked(path, &nginx_upstream(a.port), Some(&check)).unwrap();
    let nginx = Daemon { name: "nginx", pid_file: d.join("nginx.pid") };
    start_daemon(d, "nginx", &["-c", s(&main)]);
    nginx.wait_started();
    wait_for_body(NGINX_PORT, "A");

    // Second version, pointing at B.
    lb::write_checked(path, &nginx_upstream(b.port), Some(&check)).unwrap();
    lb::reload(&reload).unwrap();
    wait_for_body(NGINX_PORT, "B");

    // A broken render: rejected with nginx's message, B restored, nginx still on B.
    let broken = format!("upstream api {{\n  server 127.0.0.1:{} no_such_parameter;\n}}\n", a.port);
    let err = lb::write_checked(path, &broken, Some(&check)).unwrap_err();
    let LbError::CheckFailed { path: p, command, output } = &err else { panic!("expected CheckFailed, got {err:?}") };
    assert_eq!(p, path);
    assert!(command.starts_with("nginx -t -q -c "), "{command}");
    assert!(output.contains("invalid parameter") && output.contains("no_such_parameter"), "{output}");
    let message = err.to_string();
    assert!(
        message.contains(path) && message.contains("nginx -t") && message.contains("no_such_parameter"),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(&managed).unwrap(), nginx_upstream(b.port));
    assert_only(&conf_d, &["reconcile.conf"]);
    assert_eq!(get(NGINX_PORT), "B");
    // Even a reload now (apply would not do one) keeps serving B: the file is the good one.
    lb::reload(&reload).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(NGINX_PORT), "B");
    drop(nginx);
}

fn haproxy_cfg(d: &Path, port: u16, extra: &str) -> String {
    format!(
        "# managed by reconcile\n\
         global\n\
         \x20 master-worker\n\
         \x20 pidfile {pid}\n\
         defaults\n\
         \x20 mode http\n\
         \x20 timeout connect 2s\n\
         \x20 timeout client 5s\n\
         \x20 timeout server 5s\n\
         frontend web\n\
         \x20 bind 127.0.0.1:{HAPROXY_PORT}\n\
         \x20 default_backend api\n\
         backend api\n\
         \x20 server api-1 127.0.0.1:{port}{extra}\n",
        pid = d.join("haproxy.pid").display(),
    )
}

#[test]
fn haproxy_check_candidate_then_swap_reload_and_broken_render() {
    let a = Upstream::start("A");
    let b = Upstream::start("B");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("haproxy.cfg"); // lb.path: the whole haproxy config
    let pid_file = d.join("haproxy.pid");
    // No `-q`: with it haproxy 2.6 prints nothing at all on errors, not even its alerts.
    let check = argv(&["haproxy", "-c", "-f", "{file}"]);
    let reload = argv(&["pkill", "-USR2", "-F", s(&pid_file)]);
    let path = s(&cfg);

    lb::write_checked(path, &haproxy_cfg(d, a.port, ""), Some(&check)).unwrap();
    let haproxy = Daemon { name: "haproxy", pid_file: pid_file.clone() };
    // Master-worker (`master-worker` in global, same as -W), daemonised, pid file = master.
    start_daemon(d, "haproxy", &["-D", "-f", path, "-p", s(&pid_file)]);
    haproxy.wait_started();
    wait_for_body(HAPROXY_PORT, "A");
    let master = haproxy.pid().unwrap();

    lb::write_checked(path, &haproxy_cfg(d, b.port, ""), Some(&check)).unwrap();
    lb::reload(&reload).unwrap();
    wait_for_body(HAPROXY_PORT, "B");
    assert_eq!(haproxy.pid().unwrap(), master, "the master re-executes in place on SIGUSR2");

    // A broken render: the candidate is checked before the swap; haproxy.cfg never changes.
    let before = std::fs::metadata(&cfg).unwrap().modified().unwrap();
    let err = lb::write_checked(path, &haproxy_cfg(d, a.port, " no-such-keyword"), Some(&check)).unwrap_err();
    let LbError::CheckFailed { path: p, command, output } = &err else { panic!("expected CheckFailed, got {err:?}") };
    assert_eq!(p, path);
    assert!(command.starts_with("haproxy -c -f ") && command.ends_with(".haproxy.cfg.reconcile-tmp"), "{command}");
    assert!(output.contains("unknown keyword 'no-such-keyword'"), "{output}");
    assert!(err.to_string().contains(path), "{err}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), haproxy_cfg(d, b.port, ""));
    assert_eq!(std::fs::metadata(&cfg).unwrap().modified().unwrap(), before, "the file was not touched");
    assert_only(d, &["haproxy.cfg", "haproxy.pid"]);
    assert_eq!(get(HAPROXY_PORT), "B");
    lb::reload(&reload).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    wait_for_body(HAPROXY_PORT, "B");
    drop(haproxy);
}

/// Leftovers of a killed run: `.<file>.reconcile-tmp` (half-written candidate),
/// `.<file>.reconcile-bak` (killed while an unchecked candidate was in place) and
/// `.<file>.reconcile-new` (same, when there was no previous file).
#[test]
fn leftovers_of_a_killed_run_are_repaired_and_do_not_break_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("lb.conf");
    let path = s(&file);
    let tmp = d.join(".lb.conf.reconcile-tmp");
    let bak = d.join(".lb.conf.reconcile-bak");
    let new = d.join(".lb.conf.reconcile-new");
    let accepts_good_in_place = argv(&["grep", "-q", "good", path]);
    let accepts_good_candidate = argv(&["grep", "-q", "good", "{file}"]);

    // Half-written temp file, {file} check: removed, the write succeeds.
    std::fs::write(&file, "good v1\n").unwrap();
    std::fs::write(&tmp, "garbage from a killed run").unwrap();
    lb::write_checked(path, "good v2\n", Some(&accepts_good_candidate)).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "good v2\n");
    assert_only(d, &["lb.conf"]);

    // Half-written temp file, in-place check: same.
    std::fs::write(&tmp, "garbage").unwrap();
    lb::write_checked(path, "good v3\n", Some(&accepts_good_in_place)).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "good v3\n");
    assert_only(d, &["lb.conf"]);

    // Killed mid-check: an unchecked candidate is in place, the backup next to it. The
    // next write starts from the backup, so its own failed check leaves the backup's content.
    std::fs::write(&file, "bad unchecked candidate\n").unwrap();
    std::fs::write(&bak, "good v3\n").unwrap();
    std::fs::write(&tmp, "garbage").unwrap();
    let err = lb::write_checked(path, "bad v4\n", Some(&accepts_good_in_place)).unwrap_err();
    assert!(matches!(err, LbError::CheckFailed { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "good v3\n");
    assert_only(d, &["lb.conf"]);

    // Same crash, next write passes.
    std::fs::write(&file, "bad unchecked candidate\n").unwrap();
    std::fs::write(&bak, "good v3\n").unwrap();
    lb::write_checked(path, "good v5\n", Some(&accepts_good_candidate)).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "good v5\n");
    assert_only(d, &["lb.conf"]);

    // Killed mid-check when there was no previous file: the unchecked file goes away.
    std::fs::write(&file, "bad unchecked candidate\n").unwrap();
    std::fs::write(&new, "").unwrap();
    let err = lb::write_checked(path, "bad v6\n", Some(&accepts_good_candidate)).unwrap_err();
    assert!(matches!(err, LbError::CheckFailed { .. }), "{err:?}");
    assert_only(d, &[]);
}

#[test]
fn write_checked_paths_without_a_running_lb() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("new/dir/lb.conf");
    let path = s(&file);
    let in_place = argv(&["grep", "-q", "good", path]);

    // No previous file, in-place check rejects: no file afterwards, no marker.
    let err = lb::write_checked(path, "bad\n", Some(&in_place)).unwrap_err();
    assert!(matches!(&err, LbError::CheckFailed { output, .. } if output.contains("exit status: 1")), "{err:?}");
    assert_only(&dir.path().join("new/dir"), &[]);

    // Accepted; no check at all; permissions of the previous file are kept.
    lb::write_checked(path, "good 1\n", Some(&in_place)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    lb::write_checked(path, "anything\n", None).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "anything\n");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);

    // The checker's stderr and stdout both reach the error.
    let err = lb::write_checked(path, "x", Some(&argv(&["ls", "{file}", "/no/such/reconcile-file"]))).unwrap_err();
    let LbError::CheckFailed { output, .. } = &err else { panic!("{err:?}") };
    assert!(output.contains("/no/such/reconcile-file") && output.contains(".lb.conf.reconcile-tmp"), "{output}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "anything\n");

    // A checker that cannot be run: named, file kept, nothing left behind.
    for check in [argv(&["no-such-checker-reconcile", "{file}"]), argv(&["no-such-checker-reconcile"])] {
        let err = lb::write_checked(path, "y", Some(&check)).unwrap_err();
        assert!(
            matches!(&err, LbError::Spawn { command, .. } if command.starts_with("no-such-checker-reconcile")),
            "{err:?}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "anything\n");
        assert_only(&dir.path().join("new/dir"), &["lb.conf"]);
    }
    assert!(matches!(lb::write_checked(path, "z", Some(&[])), Err(LbError::EmptyCommand { .. })));

    // A symlink at the path is followed, not replaced.
    let link = dir.path().join("link.conf");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    lb::write_checked(s(&link), "via link\n", Some(&argv(&["grep", "-q", "via", s(&link)]))).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "via link\n");
}

#[test]
fn reload_failure_carries_the_output() {
    let err = lb::reload(&argv(&["false"])).unwrap_err();
    let LbError::ReloadFailed { command, output } = &err else { panic!("{err:?}") };
    assert_eq!(command, "false");
    assert!(output.contains("exit status: 1"), "{output}");

    let err = lb::reload(&argv(&["ls", "/no/such/reconcile-dir"])).unwrap_err();
    let LbError::ReloadFailed { output, .. } = &err else { panic!("{err:?}") };
    assert!(output.contains("/no/such/reconcile-dir"), "{output}");
    assert!(err.to_string().contains("ls /no/such/reconcile-dir"), "{err}");

    assert!(matches!(lb::reload(&argv(&["no-such-reload-reconcile"])), Err(LbError::Spawn { .. })));
    assert!(matches!(lb::reload(&[]), Err(LbError::EmptyCommand { .. })));
    lb::reload(&argv(&["true"])).unwrap();
}
