//! The real test environment is up: two Docker daemons, etcd, nginx and haproxy,
//! and the locally built test images. Started by scripts/test-env.sh (the README's
//! test command runs it); these tests fail, never skip, when it is missing.

use std::process::Command;

use super::support::var as env;

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

#[test]
fn two_docker_daemons_with_the_test_images() {
    for (var, image) in
        [("RECONCILE_TEST_DOCKER1", "RECONCILE_TEST_IMAGE"), ("RECONCILE_TEST_DOCKER2", "RECONCILE_TEST_IMAGE2")]
    {
        let host = env(var);
        let img = env(image);
        let o = run("docker", &["-H", &host, "image", "inspect", "--format", "{{.Id}}", &img]);
        assert!(o.status.success(), "{host} lacks {img}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let ids: Vec<String> = ["RECONCILE_TEST_DOCKER1", "RECONCILE_TEST_DOCKER2"]
        .iter()
        .map(|v| {
            String::from_utf8_lossy(&run("docker", &["-H", &env(v), "info", "--format", "{{.ID}}"]).stdout)
                .trim()
                .to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1], "the two daemons must be distinct engines");
}

#[test]
fn etcd_answers() {
    let o = run("etcdctl", &["--endpoints", &env("RECONCILE_TEST_ETCD"), "endpoint", "health"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn nginx_and_haproxy_check_configs() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, format!("pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{ access_log off; server {{ listen 127.0.0.1:28999; }} }}\n", dir.path().display())).unwrap();
    let o = run("nginx", &["-t", "-q", "-c", conf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, "defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\nfrontend f\n  bind 127.0.0.1:28998\n  default_backend b\nbackend b\n  server s1 127.0.0.1:20000\n").unwrap();
    let o = run("haproxy", &["-c", "-q", "-f", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // And a broken config is refused: the check can fail.
    std::fs::write(&cfg, "frontend f\n  bind 127.0.0.1:28998\n  nonsense\n").unwrap();
    assert!(!run("haproxy", &["-c", "-q", "-f", cfg.to_str().unwrap()]).status.success());
}
