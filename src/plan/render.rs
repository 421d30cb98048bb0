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
    let mut apps: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut etcd = Vec::new();
    let mut lb = Vec::new();
    for a in &plan.actions {
        match a {
            Action::Create { app, instance, reason, new } => apps.entry(app).or_default().push(st.add(&format!(
                "+ {instance} on {}{} ({}) {}",
                new.host,
                port(new.port),
                reason_text(reason),
                new.spec.get("image").and_then(Value::as_str).unwrap_or_default()
            ))),
            Action::Replace { app, instance, reason, changes, old, new, strategy } => {
                let lines = apps.entry(app).or_default();
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
                apps.entry(app).or_default().push(st.del(&format!(
                    "- {label} on {}{} ({})",
                    old.host,
                    port(old.port),
                    reason_text(reason)
                )))
            }
            Action::Start { app, instance, reason, old } => apps.entry(app).or_default().push(st.add(&format!(
                "> start {instance} on {} ({})",
                old.host,
                reason_text(reason)
            ))),
            Action::PutKey { key, value, old } => match old {
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
            },
            Action::DeleteKey { key, old } => etcd.push(st.del(&format!("- {key} (was {:?})", truncate(old, 80)))),
            Action::WriteLb { path, content, old } => {
                lb.push(st.change(&format!("~ write {path}{}", if old.is_none() { " (new file)" } else { "" })));
                lb.extend(unified(old.as_deref().unwrap_or(""), content).lines().map(|l| format!("    {l}")));
            }
            Action::ReloadLb => lb.push(st.change("~ reload")),
        }
    }
    let mut out: Vec<(String, Vec<String>)> = apps.into_iter().map(|(k, v)| (format!("app {k}"), v)).collect();
    if !etcd.is_empty() {
        out.push(("etcd".into(), etcd));
    }
    if !lb.is_empty() {
        out.push(("lb".into(), lb));
    }
    out
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

/// Markdown for pull-request comments: a summary table, then one collapsible
/// block per app / etcd / LB. Split into numbered parts of at most `limit`
/// characters, each valid Markdown on its own (no block spans two parts).
pub fn markdown(plan: &Plan, limit: usize) -> Vec<String> {
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
    let mut head = format!("### {}\n\n**{}**\n", header(plan), plan.summary);
    if !counts.is_empty() {
        head.push_str("\n| app | add | replace | remove | start |\n|---|---:|---:|---:|---:|\n");
        for (app, c) in &counts {
            head.push_str(&format!("| `{app}` | {} | {} | {} | {} |\n", c[0], c[1], c[2], c[3]));
        }
    }
    let mut blocks = Vec::new();
    for (title, lines) in sections(plan, &st) {
        let mut body = lines.join("\n");
        let frame = 200 + title.len();
        let room = limit.saturating_sub(frame + 64);
        if body.len() > room {
            let mut cut = room;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push_str("\n… (truncated: run `reconcile plan` for the full diff)");
        }
        // A fence longer than any backtick run inside keeps the block closed.
        let fence = "`".repeat(3.max(longest_backtick_run(&body) + 1));
        blocks.push(format!(
            "\n<details><summary>{}</summary>\n\n{fence}diff\n{body}\n{fence}\n\n</details>\n",
            html_escape(&title)
        ));
    }
    let mut parts: Vec<String> = vec![head];
    for b in blocks {
        let last = parts.len() - 1;
        if parts[last].len() + b.len() + 40 > limit {
            parts.push(String::new());
        }
        let last = parts.len() - 1;
        parts[last].push_str(&b);
    }
    if parts.len() > 1 {
        let n = parts.len();
        for (i, p) in parts.iter_mut().enumerate() {
            *p = format!("<sub>part {} of {n}</sub>\n\n{p}", i + 1);
        }
    }
    parts
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
