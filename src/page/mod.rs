//! The status page: one value ([`StatusPage`]) that `watch` serves as `/` (HTML) and
//! `/status.json`, and that `reconcile status --format html` writes as a CI artifact.
//!
//! Pure: the callers gather the data (Docker, etcd, the watcher's memory) and pass the
//! time in; this module only shapes and renders it. **Invariant:** every piece of text
//! that comes from the world (app, host and image names, commit ids, history summaries,
//! error messages, canary values) reaches the HTML through [`escape`] and nothing else,
//! so no name or message can inject markup or script. The page loads nothing from
//! anywhere (inline CSS, no script, no fonts or images) and is readable without
//! JavaScript; on a narrow screen each table row becomes a card.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// `format_version` of `/status.json` (schema/status-page.schema.json).
pub const FORMAT_VERSION: u32 = 1;

/// History entries shown (newest first).
pub const HISTORY_LIMIT: usize = 10;

/// Failed runs kept and shown (newest first).
pub const ERRORS_LIMIT: usize = 10;

/// Seconds between reloads of the page `watch` serves.
pub const REFRESH_SECS: u32 = 10;

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusPage {
    pub format_version: u32,
    pub env: String,
    /// Who made it: `watch` (live) or `status` (a snapshot).
    pub source: Source,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// The commit the page describes (watch: the last run's; status: the repo's), if in Git.
    pub commit: Option<String>,
    pub reference: Option<String>,
    pub dirty: bool,
    /// The plan against the running environment changes nothing.
    pub in_sync: bool,
    /// The plan's summary in words.
    pub summary: String,
    /// The last run, whatever its result.
    pub last_run: Option<LastRun>,
    /// The last time the environment was found or made in sync with the repo.
    pub last_sync: Option<LastSync>,
    pub pin: Option<crate::model::Pin>,
    /// Canary rollouts in progress (`<prefix>/<env>/canary/<app>`), by app.
    pub canaries: Vec<Canary>,
    /// Sorted by name; instances sorted by instance then host.
    pub apps: Vec<App>,
    /// The latest entries of the audit log in etcd, newest first.
    pub history: Vec<HistoryEntry>,
    /// The watcher's recent failed runs, newest first (always empty from `status`).
    pub errors: Vec<RunError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Watch,
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// RFC 3339.
    pub time: String,
    /// `ok`, `failed`, `busy`, `dry_run` (watch) or the history entry's result (status).
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// RFC 3339.
    pub time: String,
    pub commit: Option<String>,
}

/// A canary rollout in progress: the app and the value of its etcd key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub app: String,
    /// The key's value: JSON when it parses, else the text.
    pub state: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub name: String,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub instance: String,
    pub host: String,
    pub image: String,
    pub port: Option<u16>,
    /// The container's state (`running`, `exited`, …) or `missing`.
    pub state: String,
    pub health: Health,
    /// What status shows in its HEALTH column, e.g. `unhealthy since … (…)`.
    pub health_text: Option<String>,
    pub uptime_secs: Option<i64>,
    pub restarts: Option<i64>,
    /// `in sync`, or what the plan would do to it and why.
    pub drift: String,
}

/// The health of an instance as the page colours it (always with its word beside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// Restarting, or Docker's own check still in its start period.
    Starting,
    /// The app has no health check (and the image none either).
    NoCheck,
    /// The check could not be run from here.
    Unknown,
    /// Not running (stopped, dead, or missing).
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Starting => "starting",
            Self::NoCheck => "no check",
            Self::Unknown => "unknown",
            Self::Down => "down",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Self::Healthy => "ok",
            Self::Unhealthy | Self::Down => "bad",
            Self::Starting | Self::Unknown => "warn",
            Self::NoCheck => "none",
        }
    }

    fn mark(self) -> &'static str {
        match self {
            Self::Healthy => "✔",
            Self::Unhealthy | Self::Down => "✖",
            Self::Starting | Self::Unknown => "◔",
            Self::NoCheck => "–",
        }
    }
}

/// One entry of the audit log (`reconcile history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time: String,
    pub kind: String,
    pub commit: Option<String>,
    pub who: String,
    pub summary: String,
    pub result: String,
}

impl HistoryEntry {
    /// From an entry as `backend::etcd::history` returns it (missing fields are empty).
    pub fn from_json(v: &serde_json::Value) -> Self {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        HistoryEntry {
            time: s("time"),
            kind: v.get("kind").and_then(|x| x.as_str()).unwrap_or("apply").to_string(),
            commit: v.get("commit").and_then(|x| x.as_str()).map(str::to_string),
            who: s("who"),
            summary: s("summary"),
            result: s("result"),
        }
    }
}

/// A failed watch run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// RFC 3339.
    pub time: String,
    /// `load`, `observe`, `plan`, `apply`, `lock`, …
    pub stage: String,
    /// The whole error, every line (a load error carries all its diagnostics), secret
    /// values masked; shown preformatted.
    pub message: String,
}

/// The last run (time, result) and the last sync (time, commit) the audit log shows:
/// `status`'s view of what `watch` keeps in memory. `entries` newest first.
pub fn runs_from_history(entries: &[HistoryEntry]) -> (Option<LastRun>, Option<LastSync>) {
    let run = entries.first().map(|e| LastRun { time: e.time.clone(), result: e.result.clone() });
    let sync = entries
        .iter()
        .find(|e| e.result == "ok" && e.kind != "release")
        .map(|e| LastSync { time: e.time.clone(), commit: e.commit.clone() });
    (run, sync)
}

/// `59s`, `12m`, `5h`, `3d`: an uptime at a glance.
pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// HTML-escape text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// A commit as `<code title="full">short</code>`, or a dash.
fn commit_html(commit: Option<&str>) -> String {
    match commit {
        Some(c) => format!("<code title=\"{}\">{}</code>", escape(c), escape(short(c))),
        None => "<span class=\"muted\">not in Git</span>".into(),
    }
}

/// The tone of a run's result: ok green, failed red, anything else amber.
fn result_class(result: &str) -> &'static str {
    if result == "ok" {
        "ok"
    } else if result.starts_with("failed") {
        "bad"
    } else {
        "warn"
    }
}

/// A result as a short badge, what failed below it (`failed: …` is long).
fn result_html(result: &str) -> String {
    match result.split_once(": ") {
        Some((word, rest)) => {
            format!("{}<span class=\"detail\">{}</span>", badge(result_class(word), word), escape(rest))
        }
        None => badge(result_class(result), result),
    }
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", escape(text))
}

const CSS: &str = r#"
:root{--fg:#1f2328;--muted:#59636e;--bg:#f6f8fa;--card:#fff;--line:#d1d9e0;
--ok:#1a7f37;--ok-bg:#dafbe1;--bad:#cf222e;--bad-bg:#ffebe9;--warn:#9a6700;--warn-bg:#fff8c5;--none-bg:#eef1f4}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:#24292f;color:#fff;padding:16px 24px}
header h1{margin:0;font-size:22px;font-weight:600;display:flex;flex-wrap:wrap;gap:8px 12px;align-items:center}
header .sub{margin:4px 0 0;color:#c9d1d9;font-size:13px}
main{max-width:1200px;margin:0 auto;padding:16px 24px 32px}
h2{font-size:17px;margin:24px 0 8px}
h3{font-size:15px;margin:0;display:flex;flex-wrap:wrap;gap:6px 10px;align-items:center}
code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,"DejaVu Sans Mono",monospace;background:var(--none-bg);padding:1px 5px;border-radius:4px;overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;min-width:0}
.card .k{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:0 0 4px}
.card .v{margin:0;overflow-wrap:anywhere}
.card .badge{white-space:normal}
.muted{color:var(--muted)}
.badge{display:inline-block;border-radius:999px;padding:1px 9px;font-size:13px;font-weight:600;white-space:nowrap}
.ok{color:var(--ok);background:var(--ok-bg)}.bad{color:var(--bad);background:var(--bad-bg)}
.warn{color:var(--warn);background:var(--warn-bg)}.none{color:var(--muted);background:var(--none-bg)}
.app{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:0 0 12px;overflow:hidden}
.app>h3{padding:10px 14px;border-bottom:1px solid var(--line)}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px}
th{text-align:left;font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em;background:var(--bg)}
th,td{padding:7px 12px;border-bottom:1px solid var(--line);vertical-align:top}
tr:last-child td{border-bottom:0}
td.num{font-variant-numeric:tabular-nums}
td.nowrap{white-space:nowrap}
table.instances{table-layout:fixed;min-width:920px}
table.instances th:nth-child(1){width:10%}table.instances th:nth-child(2){width:9%}
table.instances th:nth-child(3){width:7%}table.instances th:nth-child(4){width:9%}
table.instances th:nth-child(5){width:20%}table.instances th:nth-child(6){width:7%}
table.instances th:nth-child(7){width:7%}table.instances th:nth-child(8){width:22%}
table.instances th:nth-child(9){width:9%}
table.history{min-width:720px}
.detail{display:block;color:var(--muted);font-size:12px;overflow-wrap:anywhere}
.box{background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden}
.empty{padding:10px 14px;margin:0;color:var(--muted)}
ul.errors{list-style:none;margin:0;padding:0}
ul.errors li{padding:8px 14px;border-bottom:1px solid var(--line);overflow-wrap:anywhere}
ul.errors li:last-child{border-bottom:0}
ul.errors .muted{font-size:13px}
pre.message{margin:4px 0 0;white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;color:var(--muted)}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 16px 24px}
@media (max-width:640px){
 header{padding:12px 14px} main{padding:8px 12px 24px}
 .grid{grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:8px}
 .card{padding:8px 10px} .card .v{font-size:13px}
 table.instances,table.history{min-width:0}
 table,thead,tbody,tr,th,td{display:block}
 thead{display:none}
 tr{border-bottom:1px solid var(--line);padding:6px 0}
 tr:last-child{border-bottom:0}
 td,td.nowrap{border:0;padding:3px 14px;display:flex;gap:12px;white-space:normal}
 td::before{content:attr(data-label);flex:0 0 84px;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em;padding-top:2px}
 td>*{min-width:0}
}
"#;

/// The page as one self-contained HTML document. `refresh`: seconds between reloads
/// (`watch`), or `None` for a static artifact.
pub fn html(page: &StatusPage, refresh: Option<u32>) -> String {
    let mut o = String::with_capacity(8192);
    let env = escape(&page.env);
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(secs) = refresh {
        let _ = writeln!(o, "<meta http-equiv=\"refresh\" content=\"{secs}\">");
    }
    let _ = writeln!(o, "<title>{env} · reconcile status</title>\n<style>{CSS}</style>\n</head>\n<body>");
    header(&mut o, page);
    o.push_str("<main>\n");
    overview(&mut o, page);
    canaries(&mut o, page);
    apps(&mut o, page);
    errors(&mut o, page);
    history(&mut o, page);
    o.push_str("</main>\n<footer>");
    match refresh {
        Some(secs) => {
            let _ = write!(o, "reconcile watch · this page reloads every {secs} s · also as /status.json");
        }
        None => o.push_str("reconcile status --format html · a snapshot"),
    }
    o.push_str("</footer>\n</body>\n</html>\n");
    o
}

/// Instances up (healthy, or running with no check), needing attention (unhealthy,
/// down), in between (starting, unknown), and all of them.
fn counts<'a>(instances: impl Iterator<Item = &'a Instance>) -> (usize, usize, usize, usize) {
    instances.fold((0, 0, 0, 0), |(up, bad, warn, total), i| match i.health.class() {
        "ok" | "none" => (up + 1, bad, warn, total + 1),
        "bad" => (up, bad + 1, warn, total + 1),
        _ => (up, bad, warn + 1, total + 1),
    })
}

fn header(o: &mut String, page: &StatusPage) {
    let (_, bad, warn, total) = counts(page.apps.iter().flat_map(|a| &a.instances));
    let overall = if bad > 0 {
        badge("bad", &format!("{bad} of {total} instances need attention"))
    } else if warn > 0 {
        badge("warn", &format!("{warn} of {total} instances starting or unknown"))
    } else if total == 0 {
        badge("none", "no instances")
    } else {
        badge("ok", &format!("all {total} instances up"))
    };
    let by = match page.source {
        Source::Watch => "reconcile watch",
        Source::Status => "reconcile status",
    };
    let _ = writeln!(
        o,
        "<header>\n<h1><span>Environment <strong id=\"env\">{}</strong></span> {overall}</h1>\n<p class=\"sub\">{} at {}</p>\n</header>",
        escape(&page.env),
        by,
        escape(&page.generated_at)
    );
}

fn card(o: &mut String, id: &str, key: &str, value_html: &str) {
    let _ =
        writeln!(o, "<div class=\"card\" id=\"{id}\"><p class=\"k\">{key}</p><p class=\"v\">{value_html}</p></div>");
}

fn overview(o: &mut String, page: &StatusPage) {
    o.push_str("<section class=\"grid\" aria-label=\"overview\">\n");
    let mut commit = commit_html(page.commit.as_deref());
    if let Some(r) = &page.reference {
        let _ = write!(commit, " <span class=\"muted\">at</span> <code>{}</code>", escape(r));
    }
    if page.dirty {
        commit.push_str(" <span class=\"badge warn\">dirty</span>");
    }
    card(o, "commit", "Commit", &commit);
    let sync = match &page.last_sync {
        Some(s) => format!("{} <span class=\"detail\">{}</span>", escape(&s.time), commit_html(s.commit.as_deref())),
        None => "<span class=\"muted\">never</span>".into(),
    };
    card(o, "last-sync", "Last sync", &sync);
    let run = match &page.last_run {
        Some(r) => {
            format!("{} <span class=\"detail\">{}</span>", badge(result_class(&r.result), &r.result), escape(&r.time))
        }
        None => "<span class=\"muted\">none yet</span>".into(),
    };
    card(o, "last-run", "Last run", &run);
    let drift = if page.in_sync { badge("ok", "in sync") } else { badge("warn", &page.summary) };
    card(o, "drift", "Drift", &drift);
    let pin = match &page.pin {
        Some(p) => format!(
            "{} {} <span class=\"detail\">{} by {} at {}</span>",
            badge("warn", "pinned"),
            commit_html(Some(&p.commit)),
            escape(&p.reference),
            escape(&p.who),
            escape(&p.time)
        ),
        None => "<span class=\"muted\">not pinned: following the repo</span>".into(),
    };
    card(o, "pin", "Pin", &pin);
    o.push_str("</section>\n");
}

/// Canaries (the `canary` branch's etcd keys): a compact `key: value` line each.
fn canaries(o: &mut String, page: &StatusPage) {
    if page.canaries.is_empty() {
        return;
    }
    o.push_str("<h2>Canaries</h2>\n<div class=\"box\" id=\"canaries\"><ul class=\"errors\">\n");
    for c in &page.canaries {
        let state = match &c.state {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect::<Vec<_>>()
                .join(", "),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(
            o,
            "<li><strong>{}</strong> <span class=\"detail\">{}</span></li>",
            escape(&c.app),
            escape(&state)
        );
    }
    o.push_str("</ul></div>\n");
}

fn apps(o: &mut String, page: &StatusPage) {
    o.push_str("<h2>Apps</h2>\n");
    if page.apps.is_empty() {
        o.push_str("<div class=\"box\"><p class=\"empty\">No apps in this environment.</p></div>\n");
    }
    for app in &page.apps {
        let (up, bad, warn, total) = counts(app.instances.iter());
        let count = format!("{up}/{total} up");
        let tone = if bad > 0 || total == 0 {
            "bad"
        } else if warn > 0 {
            "warn"
        } else {
            "ok"
        };
        let name = escape(&app.name);
        let _ = writeln!(
            o,
            "<div class=\"app\" id=\"app-{name}\">\n<h3><span class=\"app-name\">{name}</span> {}</h3>\n<div class=\"scroll\"><table class=\"instances\">\n<thead><tr><th>Instance</th><th>Host</th><th>Port</th><th>State</th><th>Health</th><th>Uptime</th><th>Restarts</th><th>Image</th><th>Drift</th></tr></thead>\n<tbody>",
            badge(tone, &count)
        );
        for i in &app.instances {
            let dash = || "<span class=\"muted\">–</span>".to_string();
            let detail = match &i.health_text {
                Some(t) if t != i.health.as_str() => format!("<span class=\"detail\">{}</span>", escape(t)),
                _ => String::new(),
            };
            let health = format!(
                "<span class=\"badge {}\">{} {}</span>{detail}",
                i.health.class(),
                i.health.mark(),
                i.health.as_str()
            );
            let state_class = if i.state == "running" {
                "ok"
            } else if i.state == "restarting" {
                "warn"
            } else {
                "bad"
            };
            let drift = if i.drift == "in sync" {
                "<span class=\"muted\">in sync</span>".to_string()
            } else {
                escape(&i.drift)
            };
            let _ = writeln!(
                o,
                "<tr class=\"instance\"><td data-label=\"Instance\"><strong>{}</strong></td><td data-label=\"Host\">{}</td><td data-label=\"Port\" class=\"num\">{}</td><td data-label=\"State\"><span class=\"badge {state_class}\">{}</span></td><td data-label=\"Health\" class=\"health\"><div>{health}</div></td><td data-label=\"Uptime\" class=\"num\">{}</td><td data-label=\"Restarts\" class=\"num\">{}</td><td data-label=\"Image\"><code>{}</code></td><td data-label=\"Drift\">{drift}</td></tr>",
                escape(&i.instance),
                escape(&i.host),
                i.port.map_or_else(dash, |p| p.to_string()),
                escape(&i.state),
                i.uptime_secs.map_or_else(dash, human_duration),
                i.restarts.map_or_else(dash, |n| n.to_string()),
                escape(&i.image),
            );
        }
        if app.instances.is_empty() {
            o.push_str("<tr><td colspan=\"9\" class=\"muted\">no instances</td></tr>\n");
        }
        o.push_str("</tbody></table></div>\n</div>\n");
    }
}

fn errors(o: &mut String, page: &StatusPage) {
    o.push_str("<h2>Recent errors</h2>\n<div class=\"box\" id=\"errors\">");
    if page.errors.is_empty() {
        let text = match page.source {
            Source::Watch => "No failed runs since this watcher started.",
            Source::Status => "Not known here: failed runs are kept by reconcile watch (see its page).",
        };
        let _ = writeln!(o, "<p class=\"empty\">{text}</p></div>");
        return;
    }
    o.push_str("<ul class=\"errors\">\n");
    for e in &page.errors {
        let _ = writeln!(
            o,
            "<li>{} <span class=\"muted\">{}</span><pre class=\"message\">{}</pre></li>",
            badge("bad", &e.stage),
            escape(&e.time),
            escape(&e.message)
        );
    }
    o.push_str("</ul></div>\n");
}

fn history(o: &mut String, page: &StatusPage) {
    o.push_str("<h2>History</h2>\n<div class=\"box\" id=\"history\">");
    if page.history.is_empty() {
        o.push_str("<p class=\"empty\">No history recorded (it lives in etcd).</p></div>\n");
        return;
    }
    o.push_str("<div class=\"scroll\"><table class=\"history\">\n<thead><tr><th>Time</th><th>Kind</th><th>Commit</th><th>Who</th><th>Result</th><th>Summary</th></tr></thead>\n<tbody>\n");
    for h in &page.history {
        let _ = writeln!(
            o,
            "<tr><td data-label=\"Time\" class=\"nowrap\">{}</td><td data-label=\"Kind\">{}</td><td data-label=\"Commit\" class=\"nowrap\">{}</td><td data-label=\"Who\">{}</td><td data-label=\"Result\"><div>{}</div></td><td data-label=\"Summary\">{}</td></tr>",
            escape(&h.time),
            escape(&h.kind),
            commit_html(h.commit.as_deref()),
            escape(&h.who),
            result_html(&h.result),
            escape(&h.summary)
        );
    }
    o.push_str("</tbody></table></div></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, health: Health) -> Instance {
        Instance {
            instance: name.into(),
            host: "node-1".into(),
            image: "img:1".into(),
            port: Some(20001),
            state: "running".into(),
            health,
            health_text: Some(health.as_str().into()),
            uptime_secs: Some(3700),
            restarts: Some(2),
            drift: "in sync".into(),
        }
    }

    fn page() -> StatusPage {
        StatusPage {
            format_version: FORMAT_VERSION,
            env: "staging".into(),
            source: Source::Watch,
            generated_at: "2026-12-01T20:00:00Z".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            reference: Some("main".into()),
            dirty: false,
            in_sync: true,
            summary: "No changes: the environment matches the repo.".into(),
            last_run: Some(LastRun { time: "2026-12-01T19:59:00Z".into(), result: "ok".into() }),
            last_sync: Some(LastSync { time: "2026-12-01T19:59:00Z".into(), commit: Some("0123456789abcdef".into()) }),
            pin: None,
            canaries: Vec::new(),
            apps: vec![App {
                name: "web".into(),
                instances: vec![instance("web-0", Health::Healthy), instance("web-1", Health::Unhealthy)],
            }],
            history: vec![HistoryEntry {
                time: "2026-12-01T19:59:00Z".into(),
                kind: "watch".into(),
                commit: Some("0123456789abcdef".into()),
                who: "ci".into(),
                summary: "1 to create".into(),
                result: "ok".into(),
            }],
            errors: Vec::new(),
        }
    }

    #[test]
    fn names_and_messages_cannot_inject_markup() {
        let evil = "<script>alert(1)</script>\"'&{{ 7*7 }}{% if 1 %}x{% endif %}";
        let mut p = page();
        p.env = evil.into();
        p.apps[0].name = evil.into();
        p.apps[0].instances[0].instance = evil.into();
        p.apps[0].instances[0].health_text = Some(evil.into());
        p.apps[0].instances[0].image = evil.into();
        p.commit = Some(evil.into());
        p.history[0].summary = evil.into();
        p.history[0].who = evil.into();
        p.errors.push(RunError { time: "t".into(), stage: evil.into(), message: evil.into() });
        p.canaries.push(Canary { app: evil.into(), state: serde_json::json!({ "step": evil }) });
        let h = html(&p, Some(10));
        assert!(!h.contains("<script"), "{h}");
        assert!(!h.contains("alert(1)</"), "{h}");
        assert!(!h.contains("\"'&{{"), "quotes and ampersands must be escaped");
        // Template syntax stays literal text: nothing evaluates it.
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;{{ 7*7 }}{% if 1 %}x{% endif %}"));
        assert!(!h.contains(">49<"));
        // Every tag in the document is one the renderer writes.
        let allowed = [
            "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "span", "strong", "p",
            "main", "section", "div", "code", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "footer", "pre",
        ];
        for tag in h.split('<').skip(1).map(|t| t.trim_start_matches('/')) {
            let name: String = tag.chars().take_while(char::is_ascii_alphanumeric).collect();
            if tag.starts_with("!DOCTYPE") {
                continue;
            }
            assert!(allowed.contains(&name.as_str()), "unexpected tag <{name}> in: {tag:.40}");
        }
    }

    #[test]
    fn an_error_shows_every_line_escaped() {
        let mut p = page();
        let message = "environment `web` has 2 error(s):\n  × apps/web.yaml:4:11: <b>many</b> is not an integer\n  × apps/db.yaml:2:1: unknown field";
        p.errors.push(RunError { time: "t".into(), stage: "load".into(), message: message.into() });
        let h = html(&p, None);
        let want = "<pre class=\"message\">environment `web` has 2 error(s):\n  × apps/web.yaml:4:11: &lt;b&gt;many&lt;/b&gt; is not an integer\n  × apps/db.yaml:2:1: unknown field</pre>";
        assert!(h.contains(want), "{h}");
    }

    #[test]
    fn watch_refreshes_and_the_artifact_does_not() {
        let live = html(&page(), Some(REFRESH_SECS));
        assert!(live.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        let mut p = page();
        p.source = Source::Status;
        let file = html(&p, None);
        assert!(!file.contains("http-equiv=\"refresh\""));
        for h in [&live, &file] {
            // Self-contained: no external asset, no script.
            assert!(!h.contains("src=") && !h.contains("href=") && !h.contains("<script") && !h.contains("url("));
            assert!(h.contains("name=\"viewport\""));
        }
    }

    #[test]
    fn health_is_coloured_and_spelled_out() {
        let h = html(&page(), None);
        assert!(h.contains("<span class=\"badge ok\">✔ healthy</span>"), "{h}");
        assert!(h.contains("<span class=\"badge bad\">✖ unhealthy</span>"));
        assert!(h.contains("<span class=\"badge bad\">1/2 up</span>"));
        assert!(h.contains("1 of 2 instances need attention"));
        assert!(h.contains("<td data-label=\"Uptime\" class=\"num\">61m</td>"));
        assert!(h.contains("<code title=\"0123456789abcdef0123456789abcdef01234567\">0123456789ab</code>"));
        let mut p = page();
        p.apps[0].instances[1].health = Health::Starting;
        p.apps[0].instances[1].health_text = Some("starting, docker: starting".into());
        let h = html(&p, None);
        assert!(h.contains(
            "<span class=\"badge warn\">◔ starting</span><span class=\"detail\">starting, docker: starting</span>"
        ));
        assert!(h.contains("<span class=\"badge warn\">1/2 up</span>"));
        assert!(h.contains("<span class=\"badge ok\">in sync</span>"));
        p.in_sync = false;
        p.summary = "1 to add".into();
        p.history[0].result = "failed: app web: <boom>".into();
        let h = html(&p, None);
        assert!(h.contains("<span class=\"badge warn\">1 to add</span>"), "{h}");
        assert!(
            h.contains("<span class=\"badge bad\">failed</span><span class=\"detail\">app web: &lt;boom&gt;</span>")
        );
        assert!(h.contains("1 of 2 instances starting or unknown"));
        p.apps[0].instances[1].health = Health::NoCheck;
        assert!(html(&p, None).contains("<span class=\"badge ok\">all 2 instances up</span>"));
    }

    #[test]
    fn empty_sections_say_so() {
        let mut p = page();
        p.apps.clear();
        p.history.clear();
        p.last_run = None;
        p.last_sync = None;
        let h = html(&p, None);
        assert!(h.contains("No apps in this environment."));
        assert!(h.contains("No history recorded"));
        assert!(h.contains("No failed runs since this watcher started."));
        assert!(h.contains("never"));
        assert!(h.contains("no instances"));
        assert!(!h.contains("id=\"canaries\""));
    }

    #[test]
    fn last_run_and_sync_from_the_audit_log() {
        let e = |time: &str, kind: &str, result: &str, commit: &str| HistoryEntry {
            time: time.into(),
            kind: kind.into(),
            commit: Some(commit.into()),
            who: "w".into(),
            summary: String::new(),
            result: result.into(),
        };
        let entries =
            vec![e("t3", "apply", "failed: web", "c3"), e("t2", "release", "ok", "c2"), e("t1", "watch", "ok", "c1")];
        let (run, sync) = runs_from_history(&entries);
        assert_eq!(run, Some(LastRun { time: "t3".into(), result: "failed: web".into() }));
        assert_eq!(sync, Some(LastSync { time: "t1".into(), commit: Some("c1".into()) }));
        assert_eq!(runs_from_history(&[]), (None, None));
        let v = serde_json::json!({"kind": "rollback", "time": "t", "commit": null, "who": "me", "summary": "s", "result": "ok"});
        let h = HistoryEntry::from_json(&v);
        assert_eq!((h.kind.as_str(), h.commit, h.who.as_str()), ("rollback", None, "me"));
    }

    #[test]
    fn json_round_trips() {
        let p = page();
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<StatusPage>(&text).unwrap(), p);
        assert!(text.contains("\"health\":\"healthy\"") && text.contains("\"source\":\"watch\""));
    }

    #[test]
    fn human_durations() {
        assert_eq!(
            [59, 120, 7199, 7200, 172_800].map(human_duration),
            ["59s", "2m", "119m", "2h", "2d"].map(String::from)
        );
    }
}
