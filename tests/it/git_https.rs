//! A config repo fetched over https, from a real smart-HTTP Git server: Git's own
//! `git http-backend` behind a small Python HTTPS server, with TLS from the test CA
//! (`$RECONCILE_TEST_TLS_CA`, server certificate for 127.0.0.1). `main` initialises
//! libgit2 without the system CA bundle and loads it only before an https fetch
//! (backend/git.rs, "The system CA bundle is loaded only for https"): these tests show
//! that the bundle named by `SSL_CERT_FILE` is then used, and that a server whose CA is
//! in no bundle is refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::support::{git, git_rev, reconcile_cmd_in, stderr, stdout, var, write_one_host_env};

/// Serves the bare repos under `argv[1]` over https on 127.0.0.1 (a free port, printed
/// first) at `/<repo>`, each request answered by `git http-backend` (CGI variables in
/// its environment). Replies carry a Content-Length: libgit2 reads a body without one
/// as empty.
const SERVER: &str = r#"
import http.server, os, ssl, subprocess, sys
root, cert, key = sys.argv[1:4]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.backend()
    def do_POST(self):
        self.backend()
    def backend(self):
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1", REQUEST_METHOD=self.command,
                   PATH_INFO=path, QUERY_STRING=query, CONTENT_LENGTH=str(length),
                   CONTENT_TYPE=self.headers.get("Content-Type", ""), REMOTE_ADDR="127.0.0.1")
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, payload = out.partition(sep)
        status, headers = 200, []
        for line in head.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"#;

/// The server, stopped when dropped.
struct Server {
    child: Child,
    url: String,
    /// The commit the repo holds.
    commit: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare repo `cfg.git` under `dir/repos` holding environment `env`, served over https.
fn serve(dir: &Path, env: &str) -> Server {
    let work = dir.join("work");
    write_one_host_env(
        &work,
        env,
        "{name: node-1, docker: 'unix:///nonexistent.sock', address: 127.0.0.1, ports: 20000-20099}",
        "",
    );
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "config"]);
    let commit = git_rev(&work, "HEAD");
    let repos = dir.join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    git(dir, &["clone", "-q", "--bare", "work", "repos/cfg.git"]);

    let tls = Path::new(&var("RECONCILE_TEST_TLS_CA")).parent().unwrap().to_path_buf();
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .arg(&repos)
        .arg(tls.join("server.pem"))
        .arg(tls.join("server-key.pem"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let port: u16 = port.trim().parse().unwrap_or_else(|_| panic!("the https Git server printed no port: {port:?}"));
    Server { child, url: format!("https://127.0.0.1:{port}/cfg.git"), commit }
}

/// `reconcile validate` of `url` with its own cache and `SSL_CERT_FILE` as given.
fn validate(dir: &Path, url: &str, env: &str, ca_file: Option<&str>) -> std::process::Output {
    let cache = dir.join("cache").display().to_string();
    let args = ["validate", "--repo", url, "--env", env, "--cache-dir", &cache, "--format", "json"];
    let mut cmd = reconcile_cmd_in(dir, &args);
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    if let Some(file) = ca_file {
        cmd.env("SSL_CERT_FILE", file);
    }
    cmd.output().unwrap()
}

#[test]
fn an_https_repo_is_fetched_with_the_bundle_named_by_ssl_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let env = "it-https";
    let server = serve(dir.path(), env);
    let o = validate(dir.path(), &server.url, env, Some(&var("RECONCILE_TEST_TLS_CA")));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["origin"]["commit"], server.commit.as_str(), "{report:#}");
    assert_eq!(report["environments"], serde_json::json!([env]), "{report:#}");
}

#[test]
fn an_https_repo_whose_ca_is_in_no_bundle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let env = "it-https-untrusted";
    let server = serve(dir.path(), env);
    // The system bundle (ca-certificates) does not hold the test CA.
    let o = validate(dir.path(), &server.url, env, None);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("could not fetch {}", server.url)), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
