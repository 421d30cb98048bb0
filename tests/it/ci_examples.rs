//! examples/ci/: the pipelines users copy are valid against the public workflow
//! schemas (check-jsonschema's vendored `vendor.github-workflows` and
//! `vendor.gitlab-ci`, installed by scripts/test-env.sh), do what the README says,
//! and `validate --format github` emits the workflow commands they rely on.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{reconcile_in, root, stderr, stdout};

/// check-jsonschema from the test environment (fails loudly when it is missing).
fn check_jsonschema() -> PathBuf {
    let p = std::env::var("RECONCILE_TEST_CHECK_JSONSCHEMA")
        .unwrap_or_else(|_| "/var/lib/reconcile-test/check-jsonschema/bin/check-jsonschema".into());
    let p = PathBuf::from(p);
    assert!(p.exists(), "{} is missing: run scripts/test-env.sh up", p.display());
    p
}

fn check(schema: &str, file: &Path) -> std::process::Output {
    Command::new(check_jsonschema()).args(["--builtin-schema", schema]).arg(file).output().unwrap()
}

/// `file` is valid against `schema`, a copy broken by `break_it` (from, to) is not, and
/// the file does what the README says (`needles`).
#[track_caller]
fn assert_example(schema: &str, file: &Path, break_it: (&str, &str), needles: &[&str]) {
    let o = check(schema, file);
    assert!(o.status.success(), "{} is not valid against {schema}:\n{}{}", file.display(), stdout(&o), stderr(&o));
    // the same check rejects a broken copy: the schema really is applied
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(break_it.0), "{} has no {:?}", file.display(), break_it.0);
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join(file.file_name().unwrap());
    std::fs::write(&broken, text.replacen(break_it.0, break_it.1, 1)).unwrap();
    let o = check(schema, &broken);
    assert!(!o.status.success(), "a broken copy passed {schema}:\n{}", stdout(&o));
    for needle in needles {
        assert!(text.contains(needle), "{} lacks {needle:?}", file.display());
    }
}

#[test]
fn github_workflow_is_valid_and_posts_one_comment_per_environment() {
    let file = root().join("examples/ci/github/reconcile.yml");
    let needles = [
        "reconcile validate --format github",
        "reconcile diff --env",
        "<!-- reconcile:part-break -->",
        "updateComment",
        "group: reconcile-apply-${{ matrix.environment }}",
        "cancel-in-progress: false",
        "reconcile apply --env \"${{ matrix.environment }}\" --yes",
    ];
    assert_example("vendor.github-workflows", &file, ("runs-on:", "runs-onn:"), &needles);
}

#[test]
fn gitlab_pipeline_is_valid_and_its_note_script_compiles() {
    let file = root().join("examples/ci/gitlab/.gitlab-ci.yml");
    let needles = [
        "reconcile validate",
        "reconcile diff --env",
        "upsert-mr-notes.py",
        "resource_group: reconcile-apply-$ENVIRONMENT",
        "reconcile apply --env \"$ENVIRONMENT\" --yes",
    ];
    assert_example("vendor.gitlab-ci", &file, ("stage: apply", "stage: [apply"), &needles);
    let script = root().join("examples/ci/gitlab/upsert-mr-notes.py");
    let o = Command::new("python3").args(["-m", "py_compile"]).arg(&script).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&script).unwrap().contains("<!-- reconcile:part-break -->"));
}

#[test]
fn validate_format_github_emits_workflow_commands_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("environments/gh");
    std::fs::create_dir_all(env.join("apps")).unwrap();
    std::fs::write(
        env.join("environment.yaml"),
        "apiVersion: reconcile/v1\nkind: Environment\nname: gh\nhosts:\n  - {name: n1, docker: 'unix:///var/run/docker.sock', address: 127.0.0.1, ports: 26900-26909}\n",
    )
    .unwrap();
    std::fs::write(
        env.join("apps/web.yaml"),
        "apiVersion: reconcile/v1\nkind: App\nname: web\nimage: busybox:1\nreplicaz: 2\n",
    )
    .unwrap();
    let o = reconcile_in(dir.path(), &["validate", "--format", "github"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let line = out.lines().find(|l| l.starts_with("::error ")).unwrap_or_else(|| panic!("no ::error in\n{out}"));
    assert!(
        line.starts_with("::error file=environments/gh/apps/web.yaml,line=5,col=1,title=reconcile schema::"),
        "{line}"
    );
    assert!(line.contains("replicaz"), "{line}");
    std::fs::write(
        env.join("apps/web.yaml"),
        "apiVersion: reconcile/v1\nkind: App\nname: web\nimage: busybox:latest\n",
    )
    .unwrap();
    let o = reconcile_in(dir.path(), &["validate", "--format", "github"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).lines().any(|l| l.starts_with("::warning file=environments/gh/apps/web.yaml,line=4,")),
        "{}",
        stdout(&o)
    );
}

/// The GitLab note script against a stand-in of GitLab's notes API (the real GitLab
/// cannot run here): one note per part, updated in place, parts that went away deleted,
/// other environments' and people's notes untouched.
#[test]
fn gitlab_note_script_keeps_one_note_per_environment_and_part() {
    use std::io::BufRead as _;
    let token = "test-token";
    let mut server = Command::new("python3")
        .arg(root().join("tests/fixtures/ci/fake_gitlab_notes.py"))
        .arg(token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let _server = Kill(server);
    let port = port.trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let post = |env: &str, parts: &[&str]| {
        let plan = dir.path().join("plan.md");
        std::fs::write(&plan, parts.join("\n<!-- reconcile:part-break -->\n")).unwrap();
        let o = Command::new("python3")
            .arg(root().join("examples/ci/gitlab/upsert-mr-notes.py"))
            .arg(env)
            .arg(&plan)
            .env("CI_API_V4_URL", format!("http://127.0.0.1:{port}/api/v4"))
            .env("CI_PROJECT_ID", "1")
            .env("CI_MERGE_REQUEST_IID", "7")
            .env("RECONCILE_NOTES_TOKEN", token)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let state = || -> Vec<(u64, String)> {
        let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        std::io::Write::write_all(&mut s, b"GET /state HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = String::new();
        std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        let notes: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
        notes.iter().map(|n| (n["id"].as_u64().unwrap(), n["body"].as_str().unwrap().to_string())).collect()
    };

    post("staging", &["## Plan part 1", "## Plan part 2"]);
    let first = state();
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(first[0].1, "an unrelated review comment");
    assert!(
        first[1].1.starts_with("<!-- reconcile:comment env=staging part=0 -->")
            && first[1].1.ends_with("## Plan part 1")
    );
    assert!(
        first[2].1.starts_with("<!-- reconcile:comment env=staging part=1 -->")
            && first[2].1.ends_with("## Plan part 2")
    );

    post("production", &["## Production plan"]);
    post("staging", &["## Shorter plan"]);
    let last = state();
    let staging: Vec<_> = last.iter().filter(|(_, b)| b.contains("env=staging")).collect();
    assert_eq!(staging.len(), 1, "the second part went away: {last:?}");
    assert_eq!(staging[0].0, first[1].0, "part 0 was edited in place, not re-posted");
    assert!(staging[0].1.ends_with("## Shorter plan"));
    assert!(last.iter().any(|(_, b)| b.contains("env=production part=0") && b.ends_with("## Production plan")));
    assert!(last.iter().any(|(id, _)| *id == 1), "other notes are untouched: {last:?}");
}

/// The GitHub comment step (its `actions/github-script` body, taken from the workflow)
/// run by node against a stand-in of the comments API: one comment per environment and
/// part, edited in place, stale parts deleted, other comments untouched.
#[test]
fn github_comment_step_keeps_one_comment_per_environment_and_part() {
    let workflow = std::fs::read_to_string(root().join("examples/ci/github/reconcile.yml")).unwrap();
    let doc = reconcile::spec::yaml::parse_str(&workflow).unwrap().value;
    let script = doc["jobs"]["preview"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("actions/github-script@")))
        .and_then(|s| s["with"]["script"].as_str())
        .expect("the preview job has a github-script step")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let script_file = dir.path().join("step.js");
    std::fs::write(&script_file, script).unwrap();
    let state_file = dir.path().join("state.json");
    std::fs::write(&state_file, r#"{"comments": [{"id": 1, "body": "LGTM"}], "next": 2}"#).unwrap();
    let post = |env: &str, parts: &[&str]| {
        std::fs::write(dir.path().join("reconcile-plan.md"), parts.join("\n<!-- reconcile:part-break -->\n")).unwrap();
        let o = Command::new("node")
            .arg(root().join("tests/fixtures/ci/run_github_script.js"))
            .arg(&script_file)
            .arg(&state_file)
            .env("ENVIRONMENT", env)
            .current_dir(dir.path())
            .output()
            .expect("node is missing: run scripts/test-env.sh up");
        assert!(o.status.success(), "{}", stderr(&o));
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
        state["comments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].as_u64().unwrap(), c["body"].as_str().unwrap().to_string()))
            .collect::<Vec<_>>()
    };
    let first = post("staging", &["part one", "part two"]);
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first[1].1.starts_with("<!-- reconcile:comment env=staging part=0 -->\n### reconcile: `staging`"));
    assert!(first[1].1.ends_with("part one") && first[2].1.ends_with("part two"), "{first:?}");
    post("production", &["prod"]);
    let last = post("staging", &["shorter"]);
    let staging: Vec<_> = last.iter().filter(|(_, b)| b.contains("env=staging")).collect();
    assert_eq!(staging.len(), 1, "{last:?}");
    assert_eq!(staging[0].0, first[1].0, "edited in place");
    assert!(staging[0].1.ends_with("shorter"));
    assert!(last.iter().any(|(_, b)| b.contains("env=production part=0") && b.ends_with("prod")));
    assert!(last.contains(&(1, "LGTM".to_string())), "{last:?}");
}
