//! The Markdown plan at PR scale: 3,000 and 20,000 changed apps (plus an app with a
//! huge diff and a big LB file), split into parts that each render on their own with
//! Debian's cmark-gfm (installed by scripts/test-env.sh) as GitHub does: every part
//! under GitHub's 65,536-character limit, every table with its header row, every
//! `<details>` block and code fence closed, every app in the summary exactly once.

use std::io::Write as _;
use std::process::{Command, Stdio};

use reconcile::model::ContainerState;
use reconcile::plan::render::{self, MARKDOWN_LIMIT, Source};
use reconcile::plan::{Action, Change, NewInstance, OldInstance, Plan, Reason, Summary};
use serde_json::{Value, json};

/// `apps` replaced apps, one instance each with a two-field change; app 0 also has a
/// 30,000-line file diff; an LB file of `apps` servers is rewritten.
fn big_plan(apps: usize) -> Plan {
    let mut actions = Vec::new();
    for a in 0..apps {
        let app = format!("svc-{a:05}");
        let lines = if a == 0 { 30_000 } else { 2 };
        let file = |v: usize| (0..lines).map(|i| format!("key{i}={}\n", i * v)).collect::<String>();
        actions.push(Action::Replace {
            instance: format!("{app}-0"),
            reason: Reason::SpecChanged,
            changes: vec![
                Change {
                    field: "image".into(),
                    old: Some(json!("img:1")),
                    new: Some(json!("img:2")),
                    sensitive: false,
                },
                Change {
                    field: "files./etc/app.conf".into(),
                    old: Some(Value::String(file(1))),
                    new: Some(Value::String(file(2))),
                    sensitive: false,
                },
            ],
            old: OldInstance {
                host: "node-1".into(),
                container_id: format!("c{a}"),
                container_name: format!("prod-{app}-0"),
                port: Some(20_000),
                spec_hash: "a".into(),
                state: ContainerState::Running,
            },
            new: NewInstance {
                host: "node-1".into(),
                address: "127.0.0.1".into(),
                port: Some(20_000),
                container_name: format!("prod-{app}-0"),
                spec_hash: "b".into(),
                spec: json!({"image": "img:2"}),
            },
            strategy: Default::default(),
            app,
        });
    }
    let server =
        |v: usize| (0..apps).map(|a| format!("  server svc-{a} 127.0.0.1:{}\n", 20_000 + v)).collect::<String>();
    actions.push(Action::WriteLb {
        lb: "default".into(),
        path: "/etc/haproxy.cfg".into(),
        content: server(1),
        old: Some(server(0)),
    });
    actions.push(Action::ReloadLb { lb: "default".into() });
    Plan {
        format_version: 1,
        env: "prod".into(),
        origin: Default::default(),
        against: "0".repeat(64),
        summary: Summary::of(&actions),
        actions,
        canaries: Vec::new(),
    }
}

fn cmark(md: &str) -> String {
    let mut c = Command::new("cmark-gfm")
        .args(["--unsafe", "-e", "table"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cmark-gfm is missing: run scripts/test-env.sh (it installs Debian's cmark-gfm)");
    c.stdin.take().unwrap().write_all(md.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

#[track_caller]
fn check(apps: usize, source: Source) {
    let p = big_plan(apps);
    let parts = render::markdown_for(&p, MARKDOWN_LIMIT, source);
    let n = parts.len();
    assert!(n > 1, "{n} parts");
    let mut rows = 0;
    let mut blocks = 0;
    for (i, part) in parts.iter().enumerate() {
        let at = format!("part {} of {n}", i + 1);
        assert!(part.chars().count() <= MARKDOWN_LIMIT, "{at}: {} characters", part.chars().count());
        let html = cmark(part);
        let count = |s: &str| html.matches(s).count();
        assert_eq!(count("<details>"), count("</details>"), "{at}: unbalanced <details>");
        // Each block's fenced diff is one code block: a broken fence would merge or split them.
        assert_eq!(count("<details>"), count("<pre><code class=\"language-diff\">"), "{at}: a broken fence");
        assert_eq!(count("<table>"), count("</thead>"), "{at}: a table without its header row");
        assert_eq!(count("<table>"), count("<th>app</th>"), "{at}");
        rows += html
            .split("<tbody>")
            .skip(1)
            .map(|t| t.split("</tbody>").next().unwrap().matches("<tr>").count())
            .sum::<usize>();
        blocks += count("<details>");
        assert!(html.contains(&format!("<sub>part {} of {n}</sub>", i + 1)), "{at}: no part marker");
        let note = format!("<code>reconcile {} --format text</code>", source.command());
        assert_eq!(html.contains(&note), i + 1 < n, "{at}: the note for the rest");
    }
    assert_eq!(rows, apps, "every app appears in the summary table once");
    assert!(blocks > apps, "the huge app and the LB are split: {blocks} blocks for {apps} apps and the LB");
    assert!(parts.iter().any(|p| p.contains("<summary>lb (2 of ")), "the LB diff is split by lines");
    assert!(parts.iter().any(|p| p.contains("<summary>app svc-00000 (2 of ")), "the huge diff is split");
}

#[test]
fn plan_of_3000_changed_apps_fits_in_valid_parts() {
    check(3_000, Source::Diff);
}

#[test]
fn plan_of_20000_changed_apps_fits_in_valid_parts() {
    check(20_000, Source::Plan);
}

/// The real `diff --format markdown` of 1,200 new apps: parts split on stdout by the
/// part break, each under the limit and rendering whole, the notes naming `diff`.
#[test]
fn diff_markdown_of_a_wide_change_is_split_and_names_diff() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("environments/wide");
    std::fs::create_dir_all(env.join("apps")).unwrap();
    std::fs::write(
        env.join("environment.yaml"),
        "apiVersion: reconcile/v1\nkind: Environment\nname: wide\nhosts:\n  - {name: node-1, docker: \"unix:///nonexistent/a.sock\", address: 127.0.0.1, ports: 20000-21999}\n",
    )
    .unwrap();
    let app = |n: usize| format!("apiVersion: reconcile/v1\nkind: App\nname: app-{n:04}\nimage: img:1\nport: 8080\n");
    std::fs::write(env.join("apps/app-0000.yaml"), app(0)).unwrap();
    super::git(dir.path(), &["init", "-q"]);
    super::git(dir.path(), &["add", "-A"]);
    super::git(dir.path(), &["commit", "-qm", "base"]);
    for n in 1..1_200 {
        std::fs::write(env.join(format!("apps/app-{n:04}.yaml")), app(n)).unwrap();
    }
    let repo = dir.path().to_string_lossy().into_owned();
    let o = super::reconcile(&["diff", "--env", "wide", "--repo", &repo, "--base", "HEAD", "--format", "markdown"]);
    assert_eq!(o.status.code(), Some(0), "{}", super::stderr(&o));
    let out = super::stdout(&o);
    let parts: Vec<&str> = out.split("\n<!-- reconcile:part-break -->\n").collect();
    assert!(parts.len() > 1, "{} characters in one part", out.len());
    let mut rows = 0;
    for (i, part) in parts.iter().enumerate() {
        assert!(part.chars().count() <= MARKDOWN_LIMIT);
        let html = cmark(part);
        assert_eq!(html.matches("<details>").count(), html.matches("</details>").count());
        rows += html.matches("<td><code>app-").count();
        assert_eq!(part.contains("`reconcile diff --format text`"), i + 1 < parts.len(), "part {}", i + 1);
        assert!(!part.contains("reconcile plan"), "part {} names plan", i + 1);
    }
    assert_eq!(rows, 1_199, "every new app in the summary once");
}
