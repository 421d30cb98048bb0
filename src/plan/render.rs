//! Plan rendering: text for terminals and CI logs, JSON for machines, Markdown
//! for pull-request comments (split into parts that each fit a comment).
//!
//! Invariant: pure; secrets are already masked in the plan, and sensitive
//! changes render as "(sensitive value changed)".

use std::collections::BTreeMap;

use serde_json::Value;
use similar::TextDiff;

use super::{Action, Change, Plan, Reason};

/// GitHub's limit for one comment.
pub const MARKDOWN_LIMIT: usize = 65_536;

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    fn add(&self, s: &str) -> String {
        self.paint("32", s)
    }
    fn change(&self, s: &str) -> String {
        self.paint("33", s)
    }
    fn del(&self, s: &str) -> String {
        self.paint("31", s)
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// Why, in words.
pub fn reason_text(r: &Reason) -> String {
    match r {
        Reason::Missing => "missing".into(),
        Reason::SpecChanged => "spec changed".into(),
        Reason::NotRunning => "not running".into(),
        Reason::NotInSpec => "app not in the repo".into(),
        Reason::ScaledDown => "scaled down".into(),
        Reason::Moved { why } => format!("moved: {why}"),
        Reason::Duplicate => "duplicate of the instance (interrupted replace)".into(),
        Reason::Unrecognised => "managed label without app/instance".into(),
        Reason::ImageDigest { digest } => format!("image tag now points to {digest}"),
        Reason::Canary { why } => format!("canary: {why}"),
    }
}

fn port(p: Option<u16>) -> String {
    p.map(|p| format!(":{p}")).unwrap_or_default()
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

/// Lines describing one field change (a unified diff for multi-line text).
fn change_lines(c: &Change) -> Vec<String> {
    if c.sensitive && c.old.is_none() && c.new.is_none() {
        return vec![format!("{}: (sensitive value changed)", c.field)];
    }
    if c.sensitive {
        let mut v = change_lines(&Change { sensitive: false, ..c.clone() });
        v.push(format!("{}: and a sensitive value in it changed", c.field));
        return v;
    }
    if c.field == "spec" && c.old.is_none() && c.new.is_none() {
        return vec!["spec: the container has no readable spec label; it is replaced to match the repo".into()];
    }
    match (&c.old, &c.new) {
        (Some(Value::String(a)), Some(Value::String(b))) if a.contains('\n') || b.contains('\n') => {
            let mut v = vec![format!("{}:", c.field)];
            v.extend(unified(a, b).lines().map(|l| format!("  {l}")));
            v
        }
        (Some(Value::String(a)), None) if a.contains('\n') => {
            let mut v = vec![format!("{}: removed", c.field)];
            v.extend(unified(a, "").lines().map(|l| format!("  {l}")));
            v
        }
        (None, Some(Value::String(b))) if b.contains('\n') => {
            let mut v = vec![format!("{}: added", c.field)];
            v.extend(unified("", b).lines().map(|l| format!("  {l}")));
            v
        }
        _ => vec![format!("{}: {} → {}", c.field, show(&c.old), show(&c.new))],
    }
}

/// A unified diff without file headers.
pub fn unified(old: &str, new: &str) -> String {
    let d = TextDiff::from_lines(old, new);
    let mut out = String::new();
    for hunk in d.unified_diff().context_radius(2).iter_hunks() {
        out.push_str(&hunk.to_string());
    }
    out
}

/// Pretty JSON for values that are JSON (etcd app copies), else the text.
fn pretty(v: &str) -> String {
    match serde_json::from_str::<Value>(v) {
        Ok(j @ (Value::Object(_) | Value::Array(_))) => {
            serde_json::to_string_pretty(&j).unwrap_or_else(|_| v.to_string()) + "\n"
        }
        _ => v.to_string(),
    }
}

/// Sections of a plan: (title, lines), one per app, then etcd, then the LB.
fn sections(plan: &Plan, st: &Style) -> Vec<(String, Vec<String>)> {
    let mut s = Sections::default();
    for a in &plan.actions {
        match a {
            Action::Create { .. } | Action::Replace { .. } | Action::Remove { .. } | Action::Start { .. } => {
                s.instance(a, st)
            }
            Action::PutKey { key, value, old } => s.put_key(&plan.env, key, value, old.as_deref(), st),
            Action::DeleteKey { key, old } => s.etcd.push(st.del(&format!("- {key} (was {:?})", truncate(old, 80)))),
            Action::WriteLb { lb, path, content, old } => {
                let lines = s.lbs.entry(lb).or_default();
                lines.push(st.change(&format!("~ write {path}{}", if old.is_none() { " (new file)" } else { "" })));
                lines.extend(unified(old.as_deref().unwrap_or(""), content).lines().map(|l| format!("    {l}")));
            }
            Action::ReloadLb { lb } => s.lbs.entry(lb).or_default().push(st.change("~ reload")),
        }
    }
    s.titled(plan)
}

/// The lines of [`sections`] as they are collected: per app, etcd, per LB.
#[derive(Default)]
struct Sections<'p> {
    apps: BTreeMap<&'p str, Vec<String>>,
    etcd: Vec<String>,
    lbs: BTreeMap<&'p str, Vec<String>>,
}

impl<'p> Sections<'p> {
    /// The line(s) of an instance action, in its app's section.
    fn instance(&mut self, a: &'p Action, st: &Style) {
        match a {
            Action::Create { app, instance, reason, new } => self.apps.entry(app).or_default().push(st.add(&format!(
                "+ {instance} on {}{} ({}) {}",
                new.host,
                port(new.port),
                reason_text(reason),
                new.spec.get("image").and_then(Value::as_str).unwrap_or_default()
            ))),
            Action::Replace { app, instance, reason, changes, old, new, strategy } => {
                let lines = self.apps.entry(app).or_default();
                let moved = if old.host != new.host || old.port != new.port {
                    format!("{}{} → {}{}", old.host, port(old.port), new.host, port(new.port))
                } else {
                    format!("{}{}", new.host, port(new.port))
                };
                let strategy = serde_json::to_value(strategy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                lines.push(st.change(&format!("~ {instance} on {moved} ({}, {strategy})", reason_text(reason))));
                for c in changes {
                    lines.extend(change_lines(c).into_iter().map(|l| format!("    {l}")));
                }
            }
            Action::Remove { app, instance, reason, old } => {
                let label = if instance.is_empty() { old.container_name.clone() } else { instance.clone() };
                let app = if app.is_empty() { "(unrecognised)" } else { app.as_str() };
                self.apps.entry(app).or_default().push(st.del(&format!(
                    "- {label} on {}{} ({})",
                    old.host,
                    port(old.port),
                    reason_text(reason)
                )))
            }
            Action::Start { app, instance, reason, old } => self.apps.entry(app).or_default().push(st.add(&format!(
                "> start {instance} on {} ({})",
                old.host,
                reason_text(reason)
            ))),
            _ => {}
        }
    }

    /// A key write in the etcd section (and a maintenance switch in its app's).
    fn put_key(&mut self, env: &str, key: &'p str, value: &str, old: Option<&str>, st: &Style) {
        if let Some((app, on)) = maintenance_switch(env, key, old, value) {
            let line = if on { "~ maintenance on (the LB stops routing to it)" } else { "~ maintenance off" };
            self.apps.entry(app).or_default().push(st.change(line));
        }
        let etcd = &mut self.etcd;
        match old {
            None if !value.contains('\n') && !value.starts_with('{') => {
                etcd.push(st.add(&format!("+ {key} = {value:?}")))
            }
            None => etcd.push(st.add(&format!(
                "+ {key} ({} bytes{})",
                value.len(),
                if value.starts_with('{') { " of JSON" } else { "" }
            ))),
            Some(o) if !o.contains('\n') && !value.contains('\n') && !o.starts_with('{') => {
                etcd.push(st.change(&format!("~ {key}: {o:?} → {value:?}")))
            }
            Some(o) => {
                etcd.push(st.change(&format!("~ {key}")));
                etcd.extend(unified(&pretty(o), &pretty(value)).lines().map(|l| format!("    {l}")));
            }
        }
    }

    /// Titled, in order: `app <name>` per app, `etcd`, `lb` / `lb <name>`, `canaries`.
    fn titled(self, plan: &Plan) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self.apps.into_iter().map(|(k, v)| (format!("app {k}"), v)).collect();
        if !self.etcd.is_empty() {
            out.push(("etcd".into(), self.etcd));
        }
        // One section per LB: `lb edge`, `lb internal`; the single default LB is just `lb`.
        for (name, lines) in self.lbs {
            let title = if super::lb::is_default_lb(name) { "lb".to_string() } else { format!("lb {name}") };
            out.push((title, lines));
        }
        let canaries = super::canary::lines(&plan.canaries, &plan.env);
        if !canaries.is_empty() {
            out.push(("canaries".into(), canaries));
        }
        out
    }
}

/// `lb.maintenance` switched in an app's desired copy (`<prefix>/<env>/apps/<app>`, whose
/// old value is the last applied spec): the app and whether it is now on. For display
/// only; the LB write that goes with it is the change apply acts on.
fn maintenance_switch<'k>(env: &str, key: &'k str, old: Option<&str>, new: &str) -> Option<(&'k str, bool)> {
    let (dir, app) = key.rsplit_once('/')?;
    dir.strip_suffix("/apps")?.strip_suffix(env)?.strip_suffix('/')?;
    let on = |v: &str| -> Option<bool> {
        let v: Value = serde_json::from_str(v).ok()?;
        (v.get("name")?.as_str()? == app).then(|| v.pointer("/lb/maintenance").and_then(Value::as_bool) == Some(true))
    };
    let (was, is) = (on(old?)?, on(new)?);
    (was != is).then_some((app, is))
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}

/// The header: environment and revision.
fn header(plan: &Plan) -> String {
    format!("Plan for environment `{}` at {}", plan.env, plan.origin.describe())
}

/// Text form. `color` only on a terminal.
pub fn text(plan: &Plan, color: bool) -> String {
    let st = Style { color };
    let mut out = format!("{}\n\n", st.bold(&header(plan)));
    for (title, lines) in sections(plan, &st) {
        out.push_str(&st.bold(&title));
        out.push('\n');
        for l in lines {
            out.push_str("  ");
            out.push_str(&l);
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(&st.bold(&plan.summary.to_string()));
    out.push('\n');
    out
}

/// JSON form (schema/plan.schema.json).
pub fn json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_default() + "\n"
}

/// The command whose output is rendered: the notes of a split comment name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Plan,
    Diff,
}

impl Source {
    pub fn command(self) -> &'static str {
        match self {
            Source::Plan => "plan",
            Source::Diff => "diff",
        }
    }
}

/// [`markdown_for`] the output of `reconcile plan`.
pub fn markdown(plan: &Plan, limit: usize) -> Vec<String> {
    markdown_for(plan, limit, Source::Plan)
}

/// Markdown for pull-request comments: a summary table, then one collapsible
/// block per app / etcd / LB, split into numbered parts of at most `limit` bytes
/// (so at most `limit` characters), each valid Markdown on its own.
///
/// Invariants: nothing is cut off. The summary table is split into several
/// tables, each with its header row; a block too big for one part is split by
/// instance (etcd: by key), and one instance's or key's diff (or the LB file's)
/// too big on its own by lines, each piece a closed `<details>` block. Every part
/// but the last ends with a note naming the next part and `source`'s command.
/// A `limit` too small for the frame (below about 1,000) cannot be honoured.
pub fn markdown_for(plan: &Plan, limit: usize, source: Source) -> Vec<String> {
    let st = Style { color: false };
    let mut counts: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    for a in &plan.actions {
        let Some(app) = a.app() else { continue };
        let c = counts.entry(app).or_default();
        match a {
            Action::Create { .. } => c[0] += 1,
            Action::Replace { .. } => c[1] += 1,
            Action::Remove { .. } => c[2] += 1,
            Action::Start { .. } => c[3] += 1,
            _ => {}
        }
    }
    let title = format!("### {}\n\n**{}**\n", header(plan), plan.summary);
    let command = source.command();
    // What every part may carry besides its content, with room for 5-digit part numbers.
    let frame = part_marker(99_999, 99_999).len() + title.len() + continued(99_999, 99_999, command).len();
    let room = limit.saturating_sub(frame).max(MIN_ROOM);

    let mut pieces = Vec::new();
    let rows: Vec<String> =
        counts.iter().map(|(app, c)| format!("| `{app}` | {} | {} | {} | {} |\n", c[0], c[1], c[2], c[3])).collect();
    pieces.extend(
        pack(&rows, room.saturating_sub(TABLE_HEAD.len())).into_iter().map(|rows| format!("{TABLE_HEAD}{rows}")),
    );
    for (name, lines) in sections(plan, &st) {
        pieces.extend(blocks(&name, &lines, room));
    }

    let mut bodies = vec![String::new()];
    for p in pieces {
        if let Some(last) = bodies.last_mut()
            && (last.is_empty() || last.len() + p.len() <= room)
        {
            last.push_str(&p);
        } else {
            bodies.push(p);
        }
    }
    let n = bodies.len();
    if n == 1 {
        return vec![title + &bodies.concat()];
    }
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let note = if i + 1 < n { continued(i + 2, n, command) } else { String::new() };
            format!("{}{title}{body}{note}", part_marker(i + 1, n))
        })
        .collect()
}

/// Content room of a part never goes below this, whatever `limit` says.
const MIN_ROOM: usize = 512;

const TABLE_HEAD: &str = "\n| app | add | replace | remove | start |\n|---|---:|---:|---:|---:|\n";

fn part_marker(i: usize, n: usize) -> String {
    format!("<sub>part {i} of {n}</sub>\n\n")
}

fn continued(next: usize, n: usize, command: &str) -> String {
    format!(
        "\n<sub>Continued in part {next} of {n}. The whole output in one piece: `reconcile {command} --format text`.</sub>\n"
    )
}

/// Pack items (each ending in a newline) into runs of at most `cap` bytes; an
/// item longer than `cap` gets a run of its own (callers split those first).
fn pack(items: &[String], cap: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for it in items {
        match out.last_mut() {
            Some(last) if last.len() + it.len() <= cap => last.push_str(it),
            _ => out.push(it.clone()),
        }
    }
    out
}

/// One section as `<details>` blocks of at most `room` bytes each: whole when it
/// fits, else split by unit (an instance or key line and its indented change
/// lines), and a unit too big on its own by lines, its first line repeated
/// on each piece; a line too long on its own is wrapped at character boundaries.
fn blocks(name: &str, lines: &[String], room: usize) -> Vec<String> {
    // A fence longer than any backtick run inside keeps the block closed.
    let fence = "`".repeat(3.max(lines.iter().map(|l| longest_backtick_run(l)).max().unwrap_or(0) + 1));
    let whole = details(name, &lines.join("\n"), &fence);
    if whole.len() <= room {
        return vec![whole];
    }
    let frame = details(&format!("{name} (99999 of 99999)"), "", &fence).len();
    let cap = room.saturating_sub(frame).max(MIN_ROOM / 2);
    let mut units: Vec<Vec<String>> = Vec::new();
    for l in lines {
        match units.last_mut() {
            Some(u) if l.starts_with(' ') => u.push(l.clone()),
            _ => units.push(vec![l.clone()]),
        }
    }
    let mut items = Vec::new();
    for u in units {
        let text: String = u.iter().map(|l| format!("{l}\n")).collect();
        if text.len() <= cap {
            items.push(text);
            continue;
        }
        let head = format!("{} (continued)\n", wrap(&u[0], cap / 4).swap_remove(0));
        let wrapped: Vec<String> = u.iter().flat_map(|l| wrap(l, cap / 2)).map(|l| l + "\n").collect();
        let mut first = true;
        for run in pack(&wrapped, cap.saturating_sub(head.len())) {
            items.push(if first { run } else { format!("{head}{run}") });
            first = false;
        }
    }
    let runs = pack(&items, cap);
    let k = runs.len();
    runs.iter()
        .enumerate()
        .map(|(i, run)| details(&format!("{name} ({} of {k})", i + 1), run.trim_end_matches('\n'), &fence))
        .collect()
}

fn details(name: &str, body: &str, fence: &str) -> String {
    format!("\n<details><summary>{}</summary>\n\n{fence}diff\n{body}\n{fence}\n\n</details>\n", html_escape(name))
}

/// `line` in pieces of at most `max` bytes, cut at character boundaries.
fn wrap(line: &str, max: usize) -> Vec<String> {
    let max = max.max(4);
    let mut out = Vec::new();
    let mut rest = line;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out.push(rest.to_string());
    out
}

fn longest_backtick_run(s: &str) -> usize {
    let mut best = 0;
    let mut cur = 0;
    for c in s.chars() {
        if c == '`' {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::{NewInstance, OldInstance, Summary};
    use super::*;
    use crate::model::ContainerState;
    use crate::spec::types::Strategy;
    use proptest::prelude::*;

    #[test]
    fn a_maintenance_switch_is_named_in_the_apps_section() {
        let copy = |m: Option<bool>| {
            let lb = match m {
                Some(m) => serde_json::json!({"host": "a.test", "path": "/", "maintenance": m}),
                None => serde_json::json!({"host": "a.test", "path": "/"}),
            };
            serde_json::json!({"name": "web", "image": "img", "lb": lb}).to_string()
        };
        let key = "/reconcile/prod/apps/web";
        let (off, on) = (copy(None), copy(Some(true)));
        assert_eq!(maintenance_switch("prod", key, Some(&off), &on), Some(("web", true)));
        assert_eq!(maintenance_switch("prod", key, Some(&on), &off), Some(("web", false)));
        assert_eq!(maintenance_switch("prod", key, Some(&on), &copy(Some(false))), Some(("web", false)));
        // No switch, a first copy, another environment's or another kind of key: nothing.
        assert_eq!(maintenance_switch("prod", key, Some(&on), &on), None);
        assert_eq!(maintenance_switch("prod", key, None, &on), None);
        assert_eq!(maintenance_switch("staging", key, Some(&off), &on), None);
        assert_eq!(maintenance_switch("prod", "/reconcile/prod/config/web/x", Some(&off), &on), None);
        let p = Plan {
            format_version: 1,
            env: "prod".into(),
            origin: Default::default(),
            against: String::new(),
            actions: vec![Action::PutKey { key: key.into(), value: on.clone(), old: Some(off.clone()) }],
            summary: Summary::default(),
            canaries: vec![],
        };
        let out = text(&p, false);
        assert!(out.contains("app web\n  ~ maintenance on"), "{out}");
    }

    /// A plan of `apps` apps with `per_app` replaced instances each, whose file diff
    /// has `diff_lines` lines, plus etcd keys and an LB file of `lb_lines` lines.
    fn plan(apps: usize, per_app: usize, diff_lines: usize, lb_lines: usize) -> Plan {
        let mut actions = Vec::new();
        let file = |v: usize| (0..diff_lines).map(|i| format!("line {i} = {}\n", i * v)).collect::<String>();
        for a in 0..apps {
            let app = format!("app-{a:05}");
            for i in 0..per_app {
                let instance = format!("{app}-{i}");
                let old = OldInstance {
                    host: "node-1".into(),
                    container_id: format!("c{a}x{i}"),
                    container_name: instance.clone(),
                    port: Some(20_000),
                    spec_hash: "0".into(),
                    state: ContainerState::Running,
                };
                let new = NewInstance {
                    host: "node-2".into(),
                    address: "127.0.0.2".into(),
                    port: Some(20_001),
                    container_name: instance.clone(),
                    spec_hash: "1".into(),
                    spec: serde_json::json!({"image": "x:2"}),
                };
                let changes = vec![Change {
                    field: "files./etc/app.conf".into(),
                    old: Some(Value::String(file(1))),
                    new: Some(Value::String(file(2))),
                    sensitive: false,
                }];
                let reason = Reason::SpecChanged;
                actions.push(if i % 3 == 2 {
                    Action::Create { app: app.clone(), instance, reason: Reason::Missing, new }
                } else {
                    Action::Replace {
                        app: app.clone(),
                        instance,
                        reason,
                        changes,
                        old,
                        new,
                        strategy: Strategy::Rolling,
                    }
                });
            }
            actions.push(Action::PutKey { key: format!("/r/e/config/{app}/k"), value: "v".into(), old: None });
        }
        if lb_lines > 0 {
            let content: String = (0..lb_lines).map(|i| format!("server s{i} 127.0.0.1:{}\n", 20_000 + i)).collect();
            actions.push(Action::WriteLb { lb: "default".into(), path: "/etc/lb.cfg".into(), content, old: None });
            actions.push(Action::ReloadLb { lb: "default".into() });
        }
        Plan {
            format_version: 1,
            env: "prod".into(),
            origin: Default::default(),
            against: String::new(),
            summary: Summary::of(&actions),
            actions,
            canaries: Vec::new(),
        }
    }

    /// The lines inside the diff fences of all parts, in order, without the
    /// repeated heads of a split unit.
    fn fenced(parts: &[String]) -> String {
        let mut out = String::new();
        for p in parts {
            let mut inside = false;
            for l in p.lines() {
                if l.starts_with("```") {
                    inside = !inside;
                } else if inside && !l.ends_with(" (continued)") {
                    out.push_str(l);
                }
            }
        }
        out
    }

    #[track_caller]
    fn check(p: &Plan, limit: usize) -> Vec<String> {
        let parts = markdown_for(p, limit, Source::Diff);
        let st = Style { color: false };
        let want: String = sections(p, &st).into_iter().flat_map(|(_, lines)| lines).collect();
        assert_eq!(fenced(&parts), want, "content lost or reordered");
        let mut rows = 0;
        for (i, part) in parts.iter().enumerate() {
            assert!(part.len() <= limit, "part {} is {} bytes", i + 1, part.len());
            assert_eq!(part.matches("<details>").count(), part.matches("</details>").count());
            assert_eq!(part.lines().filter(|l| l.starts_with("```")).count() % 2, 0);
            assert_eq!(
                part.matches("| app | add |").count(),
                part.matches("|---|---:|").count(),
                "a table without its header row"
            );
            rows += part.lines().filter(|l| l.starts_with("| `")).count();
            if parts.len() > 1 {
                assert!(part.starts_with(&format!("<sub>part {} of {}</sub>", i + 1, parts.len())));
                assert_eq!(part.contains("`reconcile diff --format text`"), i + 1 < parts.len());
            }
        }
        let apps: std::collections::BTreeSet<&str> = p.actions.iter().filter_map(Action::app).collect();
        assert_eq!(rows, apps.len(), "every app has exactly one row");
        parts
    }

    #[test]
    fn a_small_plan_is_one_part_without_notes() {
        let parts = check(&plan(3, 2, 3, 5), MARKDOWN_LIMIT);
        assert_eq!(parts.len(), 1);
        assert!(!parts[0].contains("<sub>") && !parts[0].contains("(1 of"), "{}", parts[0]);
    }

    #[test]
    fn the_summary_table_of_3000_apps_is_split_with_its_header() {
        let parts = check(&plan(3_000, 1, 0, 0), MARKDOWN_LIMIT);
        assert!(parts.len() > 1);
    }

    #[test]
    fn one_huge_instance_and_a_huge_lb_file_are_split_by_lines() {
        let parts = check(&plan(1, 1, 20_000, 30_000), MARKDOWN_LIMIT);
        assert!(parts.iter().any(|p| p.contains("<summary>app app-00000 (2 of ")), "instance diff not split");
        assert!(parts.iter().any(|p| p.contains("<summary>lb (2 of ")), "LB diff not split");
        assert!(parts.iter().any(|p| p.contains("~ write /etc/lb.cfg (new file) (continued)")));
    }

    #[test]
    fn an_app_with_many_instances_is_split_by_instance() {
        let p = plan(1, 600, 6, 0);
        let parts = check(&p, 8_000);
        // Every piece but a unit's continuation starts at an instance line.
        for part in &parts {
            for block in part.split("diff\n").skip(1) {
                assert!(block.starts_with("~ ") || block.starts_with("+ "), "{}", &block[..80.min(block.len())]);
            }
        }
    }

    #[test]
    fn a_line_longer_than_a_part_is_wrapped_not_cut() {
        let mut p = plan(0, 0, 0, 0);
        p.actions.push(Action::PutKey { key: "/k".into(), value: "é".repeat(40_000), old: Some("x".into()) });
        p.summary = Summary::of(&p.actions);
        check(&p, 10_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn every_part_fits_and_nothing_is_lost(
            apps in 0usize..120,
            per_app in 1usize..6,
            diff_lines in 0usize..60,
            lb_lines in 0usize..800,
            limit in 1_500usize..30_000,
        ) {
            check(&plan(apps, per_app, diff_lines, lb_lines), limit);
        }
    }
}
