//! Private registries and `pull: always`, against the real `docker-registry` that
//! `scripts/test-env.sh` runs on `$RECONCILE_TEST_REGISTRY` (127.0.0.1:25000, TLS from
//! the test CA, htpasswd user `$RECONCILE_TEST_REGISTRY_USER`, password in
//! `$RECONCILE_TEST_REGISTRY_PASSWORD_FILE`). Each test pushes its own repository
//! (`it/<test>-<pid>`) with the docker CLI after a `docker login` into a throwaway
//! DOCKER_CONFIG, so tests never share a tag. Apps run on daemon 1 with host
//! networking in this file's pool. Fails, never skips, when the environment is missing.

use std::path::Path;
use std::process::{Command, Output};

use reconcile::model::labels;

use super::apply::{http_get, var};
use super::{stderr, stdout};

/// This file's port pool: no other test uses 26350-26399. Each test has its own ten
/// ports in it (its slot): environments do not see each other's ports.
const POOL: (u16, u16) = (26350, 26399);

fn password() -> String {
    std::fs::read_to_string(var("RECONCILE_TEST_REGISTRY_PASSWORD_FILE")).unwrap().trim().to_string()
}

fn docker1(config: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new("docker");
    if let Some(dir) = config {
        c.arg("--config").arg(dir);
    }
    c.args(["-H", &var("RECONCILE_TEST_DOCKER1")]).args(args).output().expect("docker CLI")
}

fn docker1_ok(args: &[&str]) -> String {
    let o = docker1(None, args);
    assert!(o.status.success(), "docker {args:?}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

/// Push the local test image `source` as `<registry>/<repo>:1`, then drop the tag on
/// daemon 1 so that reconcile has to pull it. Returns the pushed reference.
fn push(repo: &str, source: &str) -> String {
    let reference = format!("{}/{repo}:1", var("RECONCILE_TEST_REGISTRY"));
    let config = tempfile::tempdir().unwrap();
    let mut login = Command::new("docker")
        .arg("--config")
        .arg(config.path())
        .args(["-H", &var("RECONCILE_TEST_DOCKER1"), "login", "--password-stdin", "-u"])
        .arg(var("RECONCILE_TEST_REGISTRY_USER"))
        .arg(var("RECONCILE_TEST_REGISTRY"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut login.stdin.take().unwrap(), password().as_bytes()).unwrap();
    let o = login.wait_with_output().unwrap();
    assert!(o.status.success(), "docker login: {}", stderr(&o));
    docker1_ok(&["tag", source, &reference]);
    let o = docker1(Some(config.path()), &["push", &reference]);
    assert!(o.status.success(), "docker push {reference}: {}", stderr(&o));
    untag(&reference);
    reference
}

fn untag(reference: &str) {
    let _ = docker1(None, &["rmi", reference]);
}

/// Containers of the environment on daemon 1 (`id state image`), sorted.
fn containers(env: &str) -> Vec<String> {
    let ps = docker1_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={}={env}", labels::ENV),
        "--format",
        "{{.ID}} {{.State}} {{.Image}}",
    ]);
    let mut rows: Vec<String> = ps.lines().map(str::to_string).collect();
    rows.sort();
    rows
}

/// An environment in a temp repo: one host on daemon 1, etcd under its own prefix,
/// and app `web` (httpd serving the image's /var/www) from `image`.
struct Env {
    dir: tempfile::TempDir,
    name: String,
    prefix: String,
    references: Vec<String>,
    ports: (u16, u16),
}

impl Env {
    fn new(test: &str, slot: u16) -> Self {
        let name = format!("it-reg-{test}-{}", std::process::id());
        let prefix = format!("/it-reg-{test}-{}", std::process::id());
        let first = POOL.0 + 10 * slot;
        assert!(first + 9 <= POOL.1, "slot {slot} is outside the pool");
        Self { dir: tempfile::tempdir().unwrap(), name, prefix, references: Vec::new(), ports: (first, first + 9) }
    }

    fn repo(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    /// (Re)write the repo: `top` is extra top-level YAML (secrets, registries), `app`
    /// extra app YAML.
    fn write(&self, top: &str, image: &str, app: &str) {
        let e = self.dir.path().join("environments").join(&self.name);
        std::fs::create_dir_all(e.join("apps")).unwrap();
        std::fs::write(
            e.join("environment.yaml"),
            format!(
                "apiVersion: reconcile/v1\nkind: Environment\nname: {name}\n{top}etcd: {{endpoints: ['{etcd}'], prefix: {prefix}}}\nhosts:\n  - {{name: node-1, docker: '{d1}', address: 127.0.0.1, ports: {a}-{b}}}\n",
                name = self.name,
                etcd = var("RECONCILE_TEST_ETCD"),
                prefix = self.prefix,
                d1 = var("RECONCILE_TEST_DOCKER1"),
                a = self.ports.0,
                b = self.ports.1,
            ),
        )
        .unwrap();
        std::fs::write(
            e.join("apps/web.yaml"),
            format!(
                "apiVersion: reconcile/v1\nkind: App\nname: web\nimage: {image}\ncommand: [/bin/busybox, httpd, -f, -p, '{{{{ instance.address }}}}:{{{{ instance.port }}}}', -h, /var/www]\nport: 8080\nhealth: {{http: /, interval: 200ms, timeout: 1s, retries: 20}}\nstop_timeout: 1s\n{app}"
            ),
        )
        .unwrap();
    }

    fn run(&self, args: &[&str], docker_config: Option<&Path>) -> Output {
        self.run_logging(args, docker_config, None)
    }

    /// As [`Env::run`], with `RUST_LOG=log` when given (every log line on stderr).
    fn run_logging(&self, args: &[&str], docker_config: Option<&Path>, log: Option<&str>) -> Output {
        self.run_with(args, docker_config, log, &[])
    }

    /// As [`Env::run_logging`], with extra environment variables.
    fn run_with(
        &self,
        args: &[&str],
        docker_config: Option<&Path>,
        log: Option<&str>,
        vars: &[(&str, &Path)],
    ) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_reconcile"));
        c.args(args).args(["--env", &self.name, "--repo", &self.repo()]).env("NO_COLOR", "1").env_remove("RUST_LOG");
        c.env_remove("RECONCILE_AGE_IDENTITY").env_remove("RECONCILE_AGE_IDENTITY_FILE");
        c.envs(vars.iter().copied());
        if let Some(filter) = log {
            c.env("RUST_LOG", filter);
        }
        // Never the user's own docker config: an empty one unless the test gives one.
        let empty = self.dir.path().join("no-docker-config");
        c.env("DOCKER_CONFIG", docker_config.map_or(empty, Path::to_path_buf));
        c.output().unwrap()
    }

    fn apply(&self, docker_config: Option<&Path>) -> Output {
        self.run(&["apply", "--yes", "--timeout", "30s"], docker_config)
    }

    /// Everything etcd holds for this environment.
    fn etcd_dump(&self) -> String {
        let o = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &var("RECONCILE_TEST_ETCD"), "get", "--prefix", &self.prefix])
            .output()
            .unwrap();
        assert!(o.status.success(), "etcdctl: {}", stderr(&o));
        stdout(&o)
    }

    fn served(&self) -> String {
        let port: u16 = docker1_ok(&[
            "ps",
            "--filter",
            &format!("label={}={}", labels::ENV, self.name),
            "--format",
            &format!("{{{{.Label \"{}\"}}}}", labels::PORT),
        ])
        .parse()
        .unwrap();
        http_get(port).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let ps = docker1(None, &["ps", "-aq", "--filter", &format!("label={}={}", labels::ENV, self.name)]);
        let ids: Vec<String> = stdout(&ps).split_whitespace().map(str::to_string).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["-H", &var("RECONCILE_TEST_DOCKER1"), "rm", "-f"]).args(&ids).output();
        }
        for r in &self.references {
            untag(r);
        }
        let _ = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &var("RECONCILE_TEST_ETCD"), "del", "--prefix", &self.prefix])
            .output();
    }
}

fn registries(password_secret_file: &str) -> String {
    format!(
        "secrets:\n  registry_password: {{from_file: '{password_secret_file}'}}\nregistries:\n  - {{host: '{}', username: {}, password: registry_password}}\n",
        var("RECONCILE_TEST_REGISTRY"),
        var("RECONCILE_TEST_REGISTRY_USER"),
    )
}

fn all_output(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

#[test]
fn pulls_with_registries_credentials_and_never_shows_the_password() {
    let mut env = Env::new("creds", 0);
    let image = push(&format!("it/creds-{}", std::process::id()), &var("RECONCILE_TEST_IMAGE"));
    env.references.push(image.clone());
    env.write(&registries(&var("RECONCILE_TEST_REGISTRY_PASSWORD_FILE")), &image, "");
    let plan_json = env.run(&["plan", "--format", "json"], None);
    assert_eq!(plan_json.status.code(), Some(0), "{}", all_output(&plan_json));
    // Debug logs of reconcile and its libraries too: the password is in none of them.
    let o = env.run_logging(&["apply", "--yes", "--timeout", "30s"], None, Some("debug"));
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(stderr(&o).contains(&format!("node-1: pulling {image}")), "plain progress lines: {}", stderr(&o));
    assert!(stderr(&o).contains("DEBUG"), "debug logging was on: {}", stderr(&o));
    let basic = base64(&format!("{}:{}", var("RECONCILE_TEST_REGISTRY_USER"), password()));
    assert!(!all_output(&o).contains(&basic), "user:password in base64 appears in the debug log");
    let rows = containers(&env.name);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains(" running ") && rows[0].ends_with(&image), "{rows:?}");
    assert_eq!(env.served(), "reconcile-test busybox 1\n");
    let pw = password();
    for (what, text) in
        [("plan JSON", all_output(&plan_json)), ("apply output", all_output(&o)), ("etcd", env.etcd_dump())]
    {
        assert!(!text.is_empty() || what == "etcd", "{what} is empty");
        assert!(!text.contains(&pw), "the registry password appears in the {what}");
    }
    assert!(env.etcd_dump().contains("history"), "etcd was written (the grep looked at something)");
}

#[test]
fn pulls_with_the_users_docker_config() {
    let mut env = Env::new("config", 1);
    let image = push(&format!("it/config-{}", std::process::id()), &var("RECONCILE_TEST_IMAGE2"));
    env.references.push(image.clone());
    env.write("", &image, "");
    // Without credentials the registry refuses the pull.
    let o = env.apply(None);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(stdout(&o).contains("anonymous"), "{}", stdout(&o));
    // With `auths` in $DOCKER_CONFIG/config.json, as `docker login` writes it.
    let config = tempfile::tempdir().unwrap();
    let auth = base64(&format!("{}:{}", var("RECONCILE_TEST_REGISTRY_USER"), password()));
    std::fs::write(
        config.path().join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, var("RECONCILE_TEST_REGISTRY")),
    )
    .unwrap();
    let o = env.apply(Some(config.path()));
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert_eq!(env.served(), "reconcile-test busybox 2\n");
    assert!(!all_output(&o).contains(&password()));
}

#[test]
fn wrong_password_and_missing_image_fail_and_change_nothing() {
    let mut env = Env::new("wrong", 2);
    let image = push(&format!("it/wrong-{}", std::process::id()), &var("RECONCILE_TEST_IMAGE2"));
    env.references.push(image.clone());
    // First a running instance from a local image.
    let wrong = env.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    env.write(&registries(&wrong.to_string_lossy()), &var("RECONCILE_TEST_IMAGE"), "");
    let o = env.apply(None);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let before = containers(&env.name);
    assert_eq!(before.len(), 1, "{before:?}");

    // The private image with a wrong password: exit 1 naming image and registry.
    env.write(&registries(&wrong.to_string_lossy()), &image, "");
    let o = env.apply(None);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let out = all_output(&o);
    let registry = var("RECONCILE_TEST_REGISTRY");
    assert!(
        out.contains(&format!(
            "cannot pull image `{image}` from registry `{registry}` (credentials from registries[0])"
        )),
        "{out}"
    );
    assert!(out.contains("check the username and the password"), "{out}");
    assert!(!out.contains("not-the-password"), "{out}");
    assert_eq!(containers(&env.name), before, "nothing changed on the host");
    assert_eq!(env.served(), "reconcile-test busybox 1\n");

    // The right password, a tag that was never pushed.
    let missing = image.replace(":1", ":404");
    env.write(&registries(&var("RECONCILE_TEST_REGISTRY_PASSWORD_FILE")), &missing, "");
    let o = env.apply(None);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let out = all_output(&o);
    assert!(out.contains(&format!("cannot pull image `{missing}` from registry `{registry}`")), "{out}");
    assert_eq!(containers(&env.name), before, "nothing changed on the host");
}

#[test]
fn pull_always_replaces_an_instance_when_the_tag_moves() {
    let mut env = Env::new("always", 3);
    let repo = format!("it/always-{}", std::process::id());
    let image = push(&repo, &var("RECONCILE_TEST_IMAGE"));
    env.references.push(image.clone());
    env.write(&registries(&var("RECONCILE_TEST_REGISTRY_PASSWORD_FILE")), &image, "pull: always\n");
    let o = env.apply(None);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert_eq!(env.served(), "reconcile-test busybox 1\n");
    let first = containers(&env.name);

    // The tag still points to what runs: nothing to do.
    let o = env.run(&["plan", "--detailed-exitcode"], None);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));

    // The tag is pushed again with other content: the instance is replaced.
    push(&repo, &var("RECONCILE_TEST_IMAGE2"));
    let o = env.run_logging(&["plan", "--detailed-exitcode"], None, Some("debug"));
    assert_eq!(o.status.code(), Some(2), "{}", all_output(&o));
    assert!(stdout(&o).contains("image tag now points to sha256:"), "{}", stdout(&o));
    assert!(!all_output(&o).contains(&password()), "the digest lookup's credentials stay out of the debug log");
    // Offline: a warning and no digest check.
    let o = env.run(&["plan", "--detailed-exitcode", "--offline-images"], None);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(stderr(&o).contains("--offline-images: no registry digest check"), "{}", stderr(&o));
    let o = env.apply(None);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert_eq!(env.served(), "reconcile-test busybox 2\n");
    let second = containers(&env.name);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "a new container");
    let o = env.run(&["plan", "--detailed-exitcode"], None);
    assert_eq!(o.status.code(), Some(0), "converged: {}", all_output(&o));

    // A registry that does not answer: an error naming it.
    env.write("", "127.0.0.1:25999/it/nothing:1", "pull: always\n");
    let o = env.run(&["plan"], None);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(stderr(&o).contains("registry `127.0.0.1:25999`"), "{}", stderr(&o));
}

/// The registry password as an age file of the config repo (written by Debian's `age`
/// CLI): it resolves through the environment's linked secrets like any other secret,
/// and without the identity the apply fails naming registry and secret, changing nothing.
#[test]
fn a_from_age_registry_password_resolves() {
    let mut env = Env::new("age", 4);
    let image = push(&format!("it/age-{}", std::process::id()), &var("RECONCILE_TEST_IMAGE2"));
    env.references.push(image.clone());
    let key = env.dir.path().join("age-key.txt");
    let o = Command::new("age-keygen").arg("-o").arg(&key).output().expect("age-keygen (Debian `age`, test-env.sh)");
    assert!(o.status.success(), "age-keygen: {}", stderr(&o));
    let o = Command::new("age-keygen").arg("-y").arg(&key).output().unwrap();
    let recipient = stdout(&o).trim().to_string();
    let secrets_dir = env.dir.path().join("environments").join(&env.name).join("secrets");
    std::fs::create_dir_all(&secrets_dir).unwrap();
    let o = Command::new("age")
        .args(["-r", &recipient, "-o"])
        .arg(secrets_dir.join("registry.age"))
        .arg(var("RECONCILE_TEST_REGISTRY_PASSWORD_FILE"))
        .output()
        .expect("age (Debian `age`, test-env.sh)");
    assert!(o.status.success(), "age: {}", stderr(&o));
    let top = format!(
        "age: {{recipients: ['{recipient}']}}\nsecrets:\n  registry_password: {{from_age: secrets/registry.age}}\nregistries:\n  - {{host: '{}', username: {}, password: registry_password}}\n",
        var("RECONCILE_TEST_REGISTRY"),
        var("RECONCILE_TEST_REGISTRY_USER"),
    );
    env.write(&top, &image, "");

    // No identity: exit 1 naming the secret, its file and the way to give a key.
    let o = env.apply(None);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let out = all_output(&o);
    assert!(
        out.contains("secret `registry_password`: cannot decrypt")
            && out.contains("secrets/registry.age: no age identity given")
            && out.contains("RECONCILE_AGE_IDENTITY"),
        "{out}"
    );
    assert!(containers(&env.name).is_empty(), "nothing was started: {:?}", containers(&env.name));

    // With the identity the private image is pulled and served.
    let o = env.run_with(&["apply", "--yes", "--timeout", "30s"], None, None, &[("RECONCILE_AGE_IDENTITY_FILE", &key)]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(stderr(&o).contains(&format!("node-1: pulling {image}")), "{}", stderr(&o));
    assert_eq!(env.served(), "reconcile-test busybox 2\n");
    assert!(!all_output(&o).contains(&password()), "{}", all_output(&o));
    assert!(!env.etcd_dump().contains(&password()), "the password is not in etcd");
}

/// Standard base64 with padding (what `docker login` writes into `auths`).
fn base64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
