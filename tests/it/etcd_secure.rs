//! etcd with TLS, client-certificate auth and RBAC (the secured etcd of
//! `scripts/test-env.sh` on 127.0.0.1:23791): apply through a client certificate, through
//! a password, through both; a confined user may not touch another environment's keys
//! (exit 1, the key and the user named, no container created); a certificate of another CA
//! and a wrong password are clear errors. The README's RBAC commands are run verbatim.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::apply::var;
use super::{stderr, stdout};

/// The tests share the environment `sec-ci` (the fixed grants of test-env.sh), and a
/// change to etcd's auth store (the RBAC test) fails requests in flight with "revision of
/// auth store is old": they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn endpoint() -> String {
    std::env::var("RECONCILE_TEST_ETCD_SECURE").unwrap_or_else(|_| "https://127.0.0.1:23791".into())
}

fn tls_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("RECONCILE_TEST_ETCD_TLS").unwrap_or_else(|_| "/var/lib/reconcile-test/etcd-tls".into()),
    )
}

fn tls(name: &str) -> String {
    tls_dir().join(name).to_string_lossy().into_owned()
}

/// etcdctl as root (client certificate CN=root).
fn etcdctl_root(args: &[&str]) -> Output {
    let ca = tls("ca.pem");
    let cert = tls("root.pem");
    let key = tls("root-key.pem");
    let o = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint(), "--cacert", &ca, "--cert", &cert, "--key", &key])
        .args(args)
        .output()
        .unwrap();
    assert!(
        tls_dir().join("ca.pem").exists(),
        "the secured etcd's CA is missing: run scripts/test-env.sh (it makes {})",
        tls_dir().display()
    );
    o
}

/// A config repo with one environment and one sleeping app, its etcd the secured one
/// (or the password-only one, see [`SecureEnv::on`]).
struct SecureEnv {
    dir: tempfile::TempDir,
    env: String,
    /// Deletes what the test wrote, as root of the etcd the environment uses.
    etcd_root: fn(&[&str]) -> Output,
}

impl Drop for SecureEnv {
    fn drop(&mut self) {
        let d = var("RECONCILE_TEST_DOCKER1");
        if let Ok(o) = Command::new("docker")
            .args(["-H", &d, "ps", "-aq", "--filter", &format!("label=reconcile.env={}", self.env)])
            .output()
        {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["-H", &d, "rm", "-f", id]).output();
            }
        }
        let _ = (self.etcd_root)(&["del", "--prefix", &format!("/reconcile/{}/", self.env)]);
        let _ = (self.etcd_root)(&["del", "--prefix", &format!("/services/sleeper_{}/", self.env)]);
    }
}

impl SecureEnv {
    /// `etcd_auth` is the YAML inside `etcd: {…}` after endpoints (tls, username, password).
    fn new(env: &str, etcd_auth: &str, secrets: &str) -> Self {
        Self::on(&endpoint(), etcdctl_root, env, etcd_auth, secrets)
    }

    /// As [`SecureEnv::new`], on the etcd at `endpoint` whose root is `etcd_root`.
    fn on(endpoint: &str, etcd_root: fn(&[&str]) -> Output, env: &str, etcd_auth: &str, secrets: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let e = dir.path().join("environments").join(env);
        std::fs::create_dir_all(e.join("apps")).unwrap();
        std::fs::write(
            e.join("environment.yaml"),
            format!(
                "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\n{secrets}hosts:\n  - {{name: node-1, docker: '{d1}', address: 127.0.0.1, ports: 29600-29609}}\netcd: {{endpoints: ['{ep}'], {etcd_auth}}}\n",
                d1 = var("RECONCILE_TEST_DOCKER1"),
                ep = endpoint,
            ),
        )
        .unwrap();
        std::fs::write(
            e.join("apps/sleeper.yaml"),
            format!(
                "apiVersion: reconcile/v1\nkind: App\nname: sleeper\nimage: {}\ncommand: [/bin/busybox, sleep, '3600']\nconfig: {{color: blue}}\nstop_timeout: 1s\n",
                var("RECONCILE_TEST_IMAGE")
            ),
        )
        .unwrap();
        SecureEnv { dir, env: env.to_string(), etcd_root }
    }

    fn repo(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    fn run(&self, cmd: &str, envs: &[(&str, &str)]) -> Output {
        self.command(cmd, envs).output().unwrap()
    }

    /// `reconcile CMD --env … --repo … --timeout 10s` (apply: `--yes`), with `envs`.
    fn command(&self, cmd: &str, envs: &[(&str, &str)]) -> Command {
        let repo = self.repo();
        let mut args = vec![cmd, "--env", &self.env, "--repo", &repo, "--timeout", "10s"];
        if cmd == "apply" {
            args.push("--yes");
        }
        let mut c = Command::new(env!("CARGO_BIN_EXE_reconcile"));
        c.args(&args).env("NO_COLOR", "1").env_remove("RUST_LOG");
        c.env_remove("RECONCILE_AGE_IDENTITY").env_remove("RECONCILE_AGE_IDENTITY_FILE");
        for (k, v) in envs {
            c.env(k, v);
        }
        c
    }

    fn containers(&self) -> usize {
        let o = Command::new("docker")
            .args([
                "-H",
                &var("RECONCILE_TEST_DOCKER1"),
                "ps",
                "-aq",
                "--filter",
                &format!("label=reconcile.env={}", self.env),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).split_whitespace().count()
    }
}

fn cert_auth(cert: &str) -> String {
    format!(
        "tls: {{ca: '{}', cert: '{}', key: '{}'}}",
        tls("ca.pem"),
        tls(&format!("{cert}.pem")),
        tls(&format!("{cert}-key.pem"))
    )
}

#[test]
fn client_certificate_auth_applies_within_the_users_prefix() {
    let _serial = serial();
    // reconcile-ci (CN of its certificate) may write /reconcile/sec-ci/ only (test-env.sh).
    let auth = format!("{}, registry_prefix: /services", cert_auth("reconcile-ci"));
    let s = SecureEnv::new("sec-ci", &auth, "");
    let o = s.run("apply", &[]);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    assert_eq!(s.containers(), 1);
    let got = etcdctl_root(&["get", "--print-value-only", "/reconcile/sec-ci/config/sleeper/color"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "blue", "{}", String::from_utf8_lossy(&got.stderr));
    let o = s.run("plan", &[]);
    assert_eq!(o.status.code(), Some(0), "a second plan is empty: {}{}", stdout(&o), stderr(&o));
}

#[test]
fn a_user_without_permission_fails_before_any_host_is_touched() {
    let _serial = serial();
    let env = format!("sec-denied-{}", std::process::id());
    let s = SecureEnv::new(&env, &cert_auth("reconcile-ci"), "");
    let o = s.run("apply", &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{}{err}", stdout(&o));
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains(&format!("/reconcile/{env}/")), "names the key: {err}");
    assert!(err.contains("reconcile-ci"), "names the user (its certificate): {err}");
    assert_eq!(s.containers(), 0, "no container may be created when the lock cannot be taken");
    let keys = etcdctl_root(&["get", "--prefix", "--keys-only", &format!("/reconcile/{env}/")]);
    assert_eq!(String::from_utf8_lossy(&keys.stdout).trim(), "", "nothing written to etcd");
}

#[test]
fn a_certificate_of_another_ca_and_a_wrong_password_are_clear_errors() {
    let _serial = serial();
    let s = SecureEnv::new("sec-ci", &cert_auth("other-client"), "");
    let o = s.run("plan", &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to etcd at https://127.0.0.1:23791"), "{err}");

    let auth = format!("{}, username: reconcile-ci, password: etcd_pw", cert_auth("reconcile-nobody"));
    let s = SecureEnv::new("sec-ci", &auth, "secrets: {etcd_pw: {from_env: IT_ETCD_PW}}\n");
    let o = s.run("plan", &[("IT_ETCD_PW", "not-the-password")]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refused user `reconcile-ci`"), "{err}");
    assert!(!err.contains("not-the-password"), "the password is never shown: {err}");

    let o = s.run("plan", &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("IT_ETCD_PW") && err.contains("etcd_pw"), "names the secret and its source: {err}");
}

/// The commands of README "etcd TLS and RBAC", run verbatim (with this test's names),
/// then an apply as that user (password + the certificate of a user without roles: the
/// password decides), and proof the user is confined to its own keys.
#[test]
fn readme_rbac_commands_confine_a_ci_user_to_its_environment() {
    let _serial = serial();
    let pid = std::process::id();
    let env = format!("sec-rbac-{pid}");
    let user = format!("ci-{env}");
    let role = user.clone();
    let password = format!("pw-{pid}-x");
    let prefix = "/reconcile";
    let registry_prefix = "/services";
    let app = "sleeper";
    // --- README commands (etcdctl as root) ---
    let steps = [
        format!("role add {role}"),
        format!("role grant-permission --prefix {role} readwrite {prefix}/{env}/"),
        format!("role grant-permission --prefix {role} readwrite {registry_prefix}/{app}_{env}/"),
        format!("user add {user}:{password}"),
        format!("user grant-role {user} {role}"),
        // Already enabled by test-env.sh; running it again is harmless and part of the README.
        "auth enable".to_string(),
    ];
    for step in &steps {
        let args: Vec<&str> = step.split_whitespace().collect();
        let o = etcdctl_root(&args);
        assert!(o.status.success(), "etcdctl {step}: {}", String::from_utf8_lossy(&o.stderr));
    }

    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = etcdctl_root(&["user", "delete", &self.0]);
            let _ = etcdctl_root(&["role", "delete", &self.1]);
        }
    }
    let _cleanup = Cleanup(user.clone(), role.clone());

    let auth = format!(
        "{}, username: '{user}', password: etcd_password, registry_prefix: '{registry_prefix}'",
        cert_auth("reconcile-nobody")
    );
    let s = SecureEnv::new(&env, &auth, "secrets: {etcd_password: {from_env: IT_ETCD_PASSWORD}}\n");
    let o = s.run("apply", &[("IT_ETCD_PASSWORD", &password)]);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    assert_eq!(s.containers(), 1);
    assert!(!stdout(&o).contains(&password) && !stderr(&o).contains(&password));

    // The user may not read or write outside its prefixes.
    let ca = tls("ca.pem");
    let cert = tls("reconcile-nobody.pem");
    let key = tls("reconcile-nobody-key.pem");
    let as_user = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoint(), "--cacert", &ca, "--cert", &cert, "--key", &key])
            .args(["--user", &format!("{user}:{password}")])
            .args(args)
            .output()
            .unwrap()
    };
    let own = as_user(&["put", &format!("{prefix}/{env}/probe"), "x"]);
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    for key in ["/reconcile/sec-ci/probe".to_string(), format!("{registry_prefix}/other_{env}/x")] {
        let o = as_user(&["put", &key, "x"]);
        assert!(!o.status.success(), "{key} must be refused");
        assert!(String::from_utf8_lossy(&o.stderr).contains("permission denied"));
    }
}

#[test]
fn a_missing_tls_file_is_named_by_validate_check_secrets_and_at_connect() {
    let _serial = serial();
    let auth = format!("tls: {{ca: '{}', cert: /nonexistent/etcd.pem, key: /nonexistent/etcd-key.pem}}", tls("ca.pem"));
    let s = SecureEnv::new("sec-ci", &auth, "");
    let repo = s.repo();
    let o = super::reconcile(&["validate", "--repo", &repo]);
    assert_eq!(o.status.code(), Some(0), "plain validate does not look at this machine: {}", stdout(&o));
    let o = super::reconcile(&["validate", "--repo", &repo, "--check-secrets", "--format", "json"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("etcd tls cert file `/nonexistent/etcd.pem`"), "{out}");
    assert!(out.contains("environment.yaml") && out.contains("\"line\": 6"), "at the line of etcd: {out}");
    let o = s.run("plan", &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("etcd tls cert file `/nonexistent/etcd.pem`"), "{err}");
}

// ---- the password-only etcd (test-env.sh: TLS with the CA only, no client certificates)

fn password_endpoint() -> String {
    std::env::var("RECONCILE_TEST_ETCD_PASSWORD").unwrap_or_else(|_| "https://127.0.0.1:23795".into())
}

fn password_of(user: &str) -> String {
    let path = tls_dir().join(format!("{user}.password"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test-env.sh makes it)", path.display()))
        .trim()
        .to_string()
}

/// etcdctl as root of the password-only etcd (user and password, no certificate).
fn etcdctl_password_root(args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &password_endpoint(), "--cacert", &tls("ca.pem")])
        .args(["--user", &format!("root:{}", password_of("root"))])
        .args(args)
        .output()
        .unwrap()
}

/// The password-only etcd's tests share its users and roles: one at a time.
static PASSWORD_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Username and password alone (no client certificate, TLS verifying the server with
/// the CA): apply writes within the user's prefix, a second plan is empty. The password
/// is an age file of the config repo (`from_age`), so the etcd connection resolves it
/// through the environment's linked secrets; without the identity it is a clear error.
#[test]
fn password_only_auth_with_an_age_encrypted_password() {
    let _serial = PASSWORD_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = SecureEnv::on(
        &password_endpoint(),
        etcdctl_password_root,
        "pw-ci",
        &format!(
            "tls: {{ca: '{}'}}, username: reconcile-pw, password: etcd_pw, registry_prefix: /services",
            tls("ca.pem")
        ),
        "age: {recipients: [RECIPIENT]}\nsecrets: {etcd_pw: {from_age: secrets/etcd.age}}\n",
    );
    // The age key and the encrypted password, written with Debian's age CLI.
    let key = s.dir.path().join("age-key.txt");
    let o = Command::new("age-keygen").arg("-o").arg(&key).output().expect("age-keygen (Debian `age`, test-env.sh)");
    assert!(o.status.success(), "{}", stderr(&o));
    let recipient = stdout(&Command::new("age-keygen").arg("-y").arg(&key).output().unwrap()).trim().to_string();
    let e = s.dir.path().join("environments/pw-ci");
    let yaml = std::fs::read_to_string(e.join("environment.yaml")).unwrap().replace("RECIPIENT", &recipient);
    std::fs::write(e.join("environment.yaml"), yaml).unwrap();
    std::fs::create_dir_all(e.join("secrets")).unwrap();
    let o = Command::new("age")
        .args(["-r", &recipient, "-o"])
        .arg(e.join("secrets/etcd.age"))
        .arg(tls_dir().join("reconcile-pw.password"))
        .output()
        .expect("age (Debian `age`)");
    assert!(o.status.success(), "{}", stderr(&o));
    let key = key.to_string_lossy().into_owned();

    let o = s.run("plan", &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("etcd_pw") && err.contains("no age identity"), "names the secret and the cause: {err}");

    let o = s.run("apply", &[("RECONCILE_AGE_IDENTITY_FILE", &key)]);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    assert_eq!(s.containers(), 1);
    let got = etcdctl_password_root(&["get", "--print-value-only", "/reconcile/pw-ci/config/sleeper/color"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "blue", "{}", stderr(&got));
    let o = s.run("plan", &[("RECONCILE_AGE_IDENTITY_FILE", &key)]);
    assert_eq!(o.status.code(), Some(0), "a second plan is empty: {}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));
    let pw = password_of("reconcile-pw");
    assert!(!stdout(&o).contains(&pw) && !stderr(&o).contains(&pw), "the password is never shown");
    let dump = etcdctl_password_root(&["get", "--prefix", "/reconcile/pw-ci/"]);
    assert!(!stdout(&dump).is_empty() && !stdout(&dump).contains(&pw), "nor stored in etcd");
}

/// The user's write permission revoked in the middle of an apply (after its first
/// container, before its etcd writes): the apply fails cleanly — exit 1, the error
/// names the key, the user and "permission denied" (not "revision of auth store is
/// old", which every token issued before an auth change gets) — and once the permission
/// is back, the next apply converges. A permission error is not retried.
#[test]
fn write_permission_revoked_mid_apply_fails_cleanly_and_the_next_apply_converges() {
    let _serial = PASSWORD_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    let env = format!("pw-revoke-{pid}");
    let user = format!("rv-{pid}");
    let password = format!("rv-pw-{pid}");
    let root = |args: &[&str]| {
        let o = etcdctl_password_root(args);
        assert!(o.status.success(), "etcdctl {args:?}: {}", stderr(&o));
    };
    let prefixes =
        [format!("/reconcile/{env}/"), format!("/services/sleeper_{env}/"), format!("/services/second_{env}/")];
    root(&["role", "add", &user]);
    for p in &prefixes {
        root(&["role", "grant-permission", "--prefix", &user, "readwrite", p]);
    }
    root(&["user", "add", &format!("{user}:{password}")]);
    root(&["user", "grant-role", &user, &user]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = etcdctl_password_root(&["user", "delete", &self.0]);
            let _ = etcdctl_password_root(&["role", "delete", &self.0]);
        }
    }
    let _cleanup = Cleanup(user.clone());

    let s = SecureEnv::on(
        &password_endpoint(),
        etcdctl_password_root,
        &env,
        &format!("tls: {{ca: '{}'}}, username: '{user}', password: etcd_pw, registry_prefix: /services", tls("ca.pem")),
        "secrets: {etcd_pw: {from_env: IT_RV_PASSWORD}}\n",
    );
    // `sleeper` turns healthy 3 s after it starts; `second` waits for it, so the apply
    // has its first container well before its etcd writes for `second`.
    let apps = s.dir.path().join("environments").join(&env).join("apps");
    let img = var("RECONCILE_TEST_IMAGE");
    std::fs::write(
        apps.join("sleeper.yaml"),
        format!("apiVersion: reconcile/v1\nkind: App\nname: sleeper\nimage: {img}\ncommand: [/bin/busybox, sh, -c, 'sleep 3; touch /tmp/ready; exec sleep 3600']\nhealth: {{cmd: [/bin/busybox, test, -f, /tmp/ready], interval: 200ms, timeout: 1s, retries: 60}}\nconfig: {{color: blue}}\nstop_timeout: 1s\n"),
    )
    .unwrap();
    std::fs::write(
        apps.join("second.yaml"),
        format!("apiVersion: reconcile/v1\nkind: App\nname: second\nimage: {img}\ncommand: [/bin/busybox, sleep, '3600']\ndepends_on: [sleeper]\nconfig: {{shape: round}}\nstop_timeout: 1s\n"),
    )
    .unwrap();
    let vars = [("IT_RV_PASSWORD", password.as_str()), ("RECONCILE_LOCK_TTL", "3s")];
    let child = s
        .command("apply", &vars)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.containers() == 0 {
        assert!(std::time::Instant::now() < deadline, "apply created nothing within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Write permission revoked: read stays, so the error is about writing.
    for p in &prefixes {
        root(&["role", "revoke-permission", "--prefix", &user, p]);
        root(&["role", "grant-permission", "--prefix", &user, "read", p]);
    }
    let o = child.wait_with_output().unwrap();
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(all.contains("permission denied") && all.contains(&format!("etcd user `{user}`")), "{all}");
    assert!(prefixes.iter().any(|p| all.contains(p.as_str())), "names the key it could not write: {all}");
    assert!(!all.contains("revision of auth store is old"), "the token was refreshed: {all}");
    assert!(!all.contains(&password), "the password is never shown");

    // The permission back: the next apply (after the old lock's lease, if the revoke
    // left it, expires) converges, and a plan after it is empty.
    for p in &prefixes {
        root(&["role", "grant-permission", "--prefix", &user, "readwrite", p]);
    }
    let o = s.command("apply", &vars).args(["--lock-timeout", "30s"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = s.run("plan", &vars);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));
    assert_eq!(s.containers(), 2, "one instance of each app, no leftovers");
    let got = etcdctl_password_root(&["get", "--print-value-only", &format!("/reconcile/{env}/config/second/shape")]);
    assert_eq!(stdout(&got).trim(), "round", "{}", stderr(&got));
}
