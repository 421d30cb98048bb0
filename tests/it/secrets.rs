//! Secrets end to end: `from_age` files interoperating with Debian's `age` CLI in both
//! directions, `reconcile secret set|list`, identities missing or for another key,
//! `from_command` (small scripts), and a secret delivered in a file reaching no
//! `docker inspect`, plan (text/JSON/Markdown), log line, etcd key or history entry.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::apply::var;
use super::{stderr, stdout};

fn run(dir: &Path, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reconcile"));
    c.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("RECONCILE_AGE_IDENTITY")
        .env_remove("RECONCILE_AGE_IDENTITY_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// `age-keygen -o FILE`; returns the recipient.
fn keygen(path: &Path) -> String {
    let o = Command::new("age-keygen").arg("-o").arg(path).output().expect("age-keygen (Debian `age`, test-env.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("age-keygen").arg("-y").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn age_cli(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("age")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "age {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// A repo with environment `env` whose `secrets:` and extra top-level YAML are given.
fn repo(root: &Path, env: &str, head: &str) -> PathBuf {
    let e = root.join("environments").join(env);
    std::fs::create_dir_all(e.join("apps")).unwrap();
    std::fs::write(
        e.join("environment.yaml"),
        format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: {env}\n{head}hosts:\n  - {{name: node-1, docker: 'unix:///var/run/docker.sock', address: 127.0.0.1, ports: 29700-29709}}\n"
        ),
    )
    .unwrap();
    e
}

#[test]
fn age_files_interoperate_with_the_age_cli_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key.txt");
    let recipient = keygen(&key);
    let other = tmp.path().join("other.txt");
    keygen(&other);
    let root = tmp.path().join("repo");
    let e = repo(
        &root,
        "prod",
        &format!(
            "age: {{recipients: ['{recipient}']}}\nsecrets:\n  db: {{from_age: secrets/db.age}}\n  api: {{from_age: secrets/api.age}}\n"
        ),
    );
    std::fs::create_dir_all(e.join("secrets")).unwrap();
    // age CLI → reconcile: a binary file and an armored one.
    std::fs::write(e.join("secrets/db.age"), age_cli(&["-r", &recipient], b"db-value-1\n")).unwrap();
    std::fs::write(e.join("secrets/api.age"), age_cli(&["-a", "-r", &recipient], b"api-value-2")).unwrap();
    let r = root.to_string_lossy().into_owned();
    let key_s = key.to_string_lossy().into_owned();

    let o = run(tmp.path(), &["validate", "--repo", &r], &[], None);
    assert_eq!(o.status.code(), Some(0), "validate checks the files without a key: {}{}", stdout(&o), stderr(&o));

    let o = run(tmp.path(), &["validate", "--repo", &r, "--check-secrets", "--format", "json"], &[], None);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("secret `db`") && out.contains("environments/prod/secrets/db.age"), "{out}");
    assert!(out.contains("no age identity"), "{out}");

    let o = run(
        tmp.path(),
        &["validate", "--repo", &r, "--check-secrets", "--format", "json", "--age-identity", &key_s],
        &[],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let key_text = std::fs::read_to_string(&key).unwrap();
    let o = run(
        tmp.path(),
        &["validate", "--repo", &r, "--check-secrets", "--format", "json"],
        &[("RECONCILE_AGE_IDENTITY", &key_text)],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    let other_s = other.to_string_lossy().into_owned();
    let o = run(
        tmp.path(),
        &["validate", "--repo", &r, "--check-secrets", "--format", "json"],
        &[("RECONCILE_AGE_IDENTITY_FILE", &other_s)],
        None,
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("secret `api`") && out.contains("not encrypted to any"), "{out}");

    // reconcile → age CLI.
    let o = run(tmp.path(), &["secret", "set", "--repo", &r, "--env", "prod", "token"], &[], Some("tok-value-3\n"));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("token: {from_age: secrets/token.age}"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("tok-value-3"));
    let written = std::fs::read(e.join("secrets/token.age")).unwrap();
    assert!(!String::from_utf8_lossy(&written).contains("tok-value-3"));
    assert_eq!(age_cli(&["-d", "-i", &key_s], &written), b"tok-value-3");

    // An entry whose file is still missing: validate fails, `secret set` writes it.
    let yaml = std::fs::read_to_string(e.join("environment.yaml")).unwrap();
    std::fs::write(
        e.join("environment.yaml"),
        yaml.replace("secrets:\n", "secrets:\n  later: {from_age: secrets/later.age}\n"),
    )
    .unwrap();
    let o = run(tmp.path(), &["validate", "--repo", &r], &[], None);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let o = run(tmp.path(), &["secret", "set", "--repo", &r, "--env", "prod", "later"], &[], Some("later-value"));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("add to"), "the entry exists: {}", stdout(&o));
    let o = run(tmp.path(), &["validate", "--repo", &r, "--check-secrets", "--age-identity", &key_s], &[], None);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    let o = run(tmp.path(), &["secret", "list", "--repo", &r, "--env", "prod"], &[], None);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("db\tfrom_age secrets/db.age") && out.contains("api\tfrom_age"), "{out}");
    assert!(!out.contains("db-value-1") && !out.contains("api-value-2"), "{out}");
}

#[test]
fn from_command_errors_show_stderr_never_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("vault.sh");
    std::fs::write(&script, "#!/bin/sh\necho LEAKED-STDOUT\necho \"vault: permission denied for $1\" >&2\nexit 2\n")
        .unwrap();
    let ok = tmp.path().join("ok.sh");
    std::fs::write(&ok, "#!/bin/sh\nprintf 'from-cmd-value\\n'\n").unwrap();
    let hang = tmp.path().join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\necho waiting >&2\nexec sleep 30\n").unwrap();
    for p in [&script, &ok, &hang] {
        Command::new("chmod").arg("+x").arg(p).status().unwrap();
    }
    let root = tmp.path().join("repo");
    repo(
        &root,
        "staging",
        &format!(
            "secrets:\n  db: {{from_command: ['{}', secret/db]}}\n  ok: {{from_command: ['{}']}}\n  slow: {{from_command: ['{}']}}\n",
            script.display(),
            ok.display(),
            hang.display()
        ),
    );
    let r = root.to_string_lossy().into_owned();
    let o = run(tmp.path(), &["validate", "--repo", &r], &[], None);
    assert_eq!(o.status.code(), Some(0), "validate without --check-secrets runs nothing: {}", stdout(&o));
    let o = run(
        tmp.path(),
        &["validate", "--repo", &r, "--check-secrets", "--format", "json"],
        &[("RECONCILE_SECRET_COMMAND_TIMEOUT", "1s")],
        None,
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("secret `db`") && out.contains("vault.sh") && out.contains("exit status 2"), "{out}");
    assert!(out.contains("vault: permission denied for secret/db"), "{out}");
    assert!(!out.contains("LEAKED-STDOUT"), "{out}");
    assert!(
        out.contains("secret `slow`") && out.contains("did not finish within 1s") && out.contains("waiting"),
        "{out}"
    );
    assert!(!out.contains("secret `ok`"), "{out}");
}

/// A secret delivered in a file (and the validate warning for one in `env`).
#[test]
fn a_secret_in_a_file_reaches_no_inspect_plan_log_etcd_or_history() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key.txt");
    let recipient = keygen(&key);
    let env = format!("it-secfile-{}", std::process::id());
    let prefix = format!("/it-secfile-{}", std::process::id());
    let value = format!("S3cr3t-{}-value", std::process::id());
    let root = tmp.path().join("repo");
    let etcd = var("RECONCILE_TEST_ETCD");
    let e = repo(
        &root,
        &env,
        &format!(
            "age: {{recipients: ['{recipient}']}}\nsecrets:\n  db: {{from_age: secrets/db.age}}\netcd: {{endpoints: ['{etcd}'], prefix: '{prefix}', registry_prefix: '{prefix}-reg'}}\n"
        ),
    );
    std::fs::create_dir_all(e.join("secrets")).unwrap();
    std::fs::create_dir_all(e.join("templates")).unwrap();
    std::fs::write(e.join("secrets/db.age"), age_cli(&["-a", "-r", &recipient], value.as_bytes())).unwrap();
    std::fs::write(e.join("templates/db.conf.j2"), "password={{ secrets.db }}\n").unwrap();
    let app = |env_line: &str| {
        format!(
            "apiVersion: reconcile/v1\nkind: App\nname: sleeper\nimage: {}\ncommand: [/bin/busybox, sleep, '3600']\n{env_line}files: [{{template: templates/db.conf.j2, path: /etc/app/db.conf}}]\nconfig: {{color: blue}}\nstop_timeout: 1s\n",
            var("RECONCILE_TEST_IMAGE")
        )
    };
    std::fs::write(e.join("apps/sleeper.yaml"), app("env: {DB_PASSWORD: '{{ secrets.db }}'}\n")).unwrap();
    let r = root.to_string_lossy().into_owned();
    let key_s = key.to_string_lossy().into_owned();
    let id = [("RECONCILE_AGE_IDENTITY_FILE", key_s.as_str())];

    let o = run(tmp.path(), &["validate", "--repo", &r, "--format", "json"], &[], None);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("env DB_PASSWORD carries secret `db`") && out.contains("files:"), "{out}");
    assert!(out.contains("apps/sleeper.yaml") && out.contains("\"line\": 6"), "points at the line: {out}");

    std::fs::write(e.join("apps/sleeper.yaml"), app("")).unwrap();
    let o = run(tmp.path(), &["validate", "--repo", &r], &[], None);
    assert!(!stdout(&o).contains("carries secret"), "{}", stdout(&o));

    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let d = var("RECONCILE_TEST_DOCKER1");
            if let Ok(o) = Command::new("docker")
                .args(["-H", &d, "ps", "-aq", "--filter", &format!("label=reconcile.env={}", self.0)])
                .output()
            {
                for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["-H", &d, "rm", "-f", id]).output();
                }
            }
            let etcd = var("RECONCILE_TEST_ETCD");
            for p in [self.1.clone(), format!("{}-reg", self.1)] {
                let _ = Command::new("etcdctl").args(["--endpoints", &etcd, "del", "--prefix", &p]).output();
            }
        }
    }
    let _cleanup = Cleanup(env.clone(), prefix.clone());

    let mut seen = String::new();
    for format in ["text", "json", "markdown"] {
        let o = run(
            tmp.path(),
            &["plan", "--env", &env, "--repo", &r, "--format", format, "-vv", "--detailed-exitcode"],
            &id,
            None,
        );
        assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
        seen += &stdout(&o);
        seen += &stderr(&o);
    }
    let o = run(tmp.path(), &["apply", "--env", &env, "--repo", &r, "--yes", "-vv", "--log-format", "json"], &id, None);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    seen += &stdout(&o);
    seen += &stderr(&o);
    let o = run(tmp.path(), &["history", "--env", &env, "--repo", &r], &id, None);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    seen += &stdout(&o);

    let d = var("RECONCILE_TEST_DOCKER1");
    let ids = Command::new("docker")
        .args(["-H", &d, "ps", "-aq", "--filter", &format!("label=reconcile.env={env}")])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(String::from).collect();
    assert_eq!(ids.len(), 1, "one container");
    let inspect = Command::new("docker").args(["-H", &d, "inspect"]).args(&ids).output().unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout).into_owned();
    assert!(inspect.contains("reconcile.env"), "inspect output is real: {inspect}");
    // The file is there, with the value: the secret was delivered.
    let cat = Command::new("docker").args(["-H", &d, "exec", &ids[0], "cat", "/etc/app/db.conf"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), format!("password={value}\n"));

    let mut etcd_dump = String::new();
    for p in [prefix.clone(), format!("{prefix}-reg")] {
        let o = Command::new("etcdctl").args(["--endpoints", &etcd, "get", "--prefix", &p]).output().unwrap();
        etcd_dump += &String::from_utf8_lossy(&o.stdout);
    }
    assert!(etcd_dump.contains("/history/") && etcd_dump.contains("color"), "etcd dump is real: {etcd_dump}");

    assert!(seen.contains("sleeper"), "outputs are real: {seen}");
    for (what, text) in [("plan/log/history output", &seen), ("docker inspect", &inspect), ("etcd", &etcd_dump)] {
        assert!(!text.contains(&value), "the secret value appears in {what}");
    }
}
