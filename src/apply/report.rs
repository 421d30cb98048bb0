//! The recovery report of `reconcile apply --report FILE`: per app, when its new
//! instances were created, healthy, registered and serving, and the environment's time
//! to serving and RTO. What a disaster-recovery drill hands in as its evidence.
//!
//! Two halves. [`Timeline`] is the small recorder the executor is given: the
//! executor calls [`Timeline::mark`] at each milestone of an instance, and the
//! timeline stamps it with its clock (the CLI's: time since the apply command started;
//! the unit tests': a counter). [`build`] turns those events, the plan and the
//! executor's outcome into a [`RecoveryReport`], rendered by [`json`] and [`markdown`].
//! Both are pure: no I/O, and no clock but the one handed in.
//!
//! Definitions (README "Disaster recovery drills" says the same to users):
//! - every time is in milliseconds since the start of the apply command;
//! - `created`: the container was created and started (an existing stopped one: started);
//! - `healthy`: its health check passed (no check: it still ran after a short settle);
//! - `registered`: its registry entry was written to etcd (only apps with `registry`);
//! - `serving`: the first LB reload whose config included it (or the LB file already
//!   held that config); for apps without `lb`: when it was registered, or healthy when
//!   it has no registry entry either;
//! - an app serves when the last of the instances this apply brought up serves;
//! - `rto_ms`: from the start of the apply command until the last app served;
//!   `time_to_serving_ms`: the same end, from the start of the changes (after the lock,
//!   the observation, the plan and the confirmation). Both are absent unless every app
//!   this apply brought instances up for serves.
//!
//! **Invariant:** no secret value reaches the report: it holds names, hosts, ports,
//! times and the executor's error lines, which mask secret values already; the CLI
//! masks the rendered text once more.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Report;
use crate::model::InstanceId;
use crate::placement::Assignment;
use crate::spec::{Env, Origin};

/// The report's JSON `format_version` (schema/report.schema.json).
pub const FORMAT_VERSION: u32 = 1;

/// One step of an instance on its way to serving, in the order it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Milestone {
    Created,
    Healthy,
    Registered,
    Serving,
}

/// One recorded milestone of one instance (`app`, `ordinal` on `host`:`port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub milestone: Milestone,
    pub slot: Assignment,
    /// Since the clock's zero (the apply command's start).
    pub at: Duration,
}

/// The time since the apply command started.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The recorder the executor is given: milestones, stamped by the clock, in the order
/// they were recorded.
pub struct Timeline {
    clock: Clock,
    inner: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    events: Vec<Event>,
    execution_started: Option<Duration>,
    /// Instances already recorded as serving since they were created: an LB reload
    /// that includes them again adds nothing.
    serving: BTreeSet<Assignment>,
}

impl Timeline {
    pub fn new(clock: Clock) -> Self {
        Timeline { clock, inner: Mutex::new(Recorded::default()) }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panic elsewhere while holding it leaves the events as they were: still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clock's reading now.
    pub fn now(&self) -> Duration {
        (self.clock)()
    }

    /// `slot` reached `milestone` now.
    pub fn mark(&self, milestone: Milestone, slot: &Assignment) {
        let at = self.now();
        let mut r = self.recorded();
        match milestone {
            Milestone::Created => {
                r.serving.remove(slot);
            }
            Milestone::Serving if !r.serving.insert(slot.clone()) => return,
            _ => {}
        }
        r.events.push(Event { milestone, slot: slot.clone(), at });
    }

    /// Every slot of `slots` serves now (an LB reload included them).
    pub fn serving<'a>(&self, slots: impl IntoIterator<Item = &'a Assignment>) {
        for s in slots {
            self.mark(Milestone::Serving, s);
        }
    }

    /// The changes start now (the plan was confirmed).
    pub fn execution_started(&self) {
        let at = self.now();
        self.recorded().execution_started = Some(at);
    }

    /// The events so far, in recording order.
    pub fn events(&self) -> Vec<Event> {
        self.recorded().events.clone()
    }

    pub fn execution_started_at(&self) -> Option<Duration> {
        self.recorded().execution_started
    }
}

/// How the apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step succeeded.
    Complete,
    /// Something failed (see the apps' `error` and `errors`).
    Incomplete,
    /// The plan was empty: nothing was changed, so nothing was timed.
    NoChanges,
}

/// Where one app stands at the end of the apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppStatus {
    /// Every instance this apply brought up serves.
    Serving,
    /// Its rollout stopped with an error.
    Failed,
    /// Brought up, but not every instance came to serve (e.g. the LB update failed).
    NotServing,
    /// This apply brought none of its instances up (untouched, or only removals).
    Unchanged,
}

/// A host of the environment (its Docker endpoint is left out on purpose).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportHost {
    pub name: String,
    pub address: String,
}

/// The milestones of one instance this apply brought up, in ms since the command started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceTimes {
    pub host: String,
    pub port: Option<u16>,
    pub created_ms: u64,
    pub healthy_ms: Option<u64>,
    pub registered_ms: Option<u64>,
    pub serving_ms: Option<u64>,
}

/// One app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppTimes {
    pub status: AppStatus,
    /// Served through the LB (`lb:` in the app and the environment).
    pub lb: bool,
    /// Has registry entries in etcd.
    pub registry: bool,
    /// When its last instance began serving.
    pub serving_ms: Option<u64>,
    pub instances: BTreeMap<String, InstanceTimes>,
    pub error: Option<String>,
}

/// The whole report (`format_version` 1, schema/report.schema.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    pub format_version: u32,
    pub environment: String,
    pub commit: Option<String>,
    pub reference: Option<String>,
    /// Applied from a working tree with uncommitted changes.
    pub dirty: bool,
    /// Wall-clock start of the apply command (RFC 3339, UTC).
    pub started: String,
    pub hosts: Vec<ReportHost>,
    pub outcome: Outcome,
    /// When the changes started (lock, observation, plan and confirmation done).
    pub execution_started_ms: Option<u64>,
    /// When the apply ended.
    pub finished_ms: u64,
    pub apps: BTreeMap<String, AppTimes>,
    /// Problems outside the apps (etcd, the LB file, the history record).
    pub errors: Vec<String>,
    /// From the start of the changes until the last app served.
    pub time_to_serving_ms: Option<u64>,
    /// From the start of the apply command until the last app served.
    pub rto_ms: Option<u64>,
}

/// What [`build`] reads.
pub struct Facts<'a> {
    pub env: &'a Env,
    pub origin: &'a Origin,
    /// Wall-clock start of the command (RFC 3339).
    pub started: String,
    /// The executor's outcome; `None` when nothing was executed.
    pub outcome: Option<&'a Report>,
    pub events: &'a [Event],
    pub execution_started: Option<Duration>,
    pub finished: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The report of one apply.
pub fn build(f: &Facts<'_>) -> RecoveryReport {
    let env_lb = f.env.spec.lb.is_some();
    let env_etcd = f.env.spec.etcd.is_some();
    let mut apps: BTreeMap<String, AppTimes> = BTreeMap::new();
    for (name, app) in &f.env.apps {
        let lb = env_lb && app.spec.lb.is_some();
        let registry = env_etcd && app.spec.registry;
        let error = f.outcome.and_then(|o| o.apps.get(name)).and_then(|o| o.error.clone());
        let instances = instance_times(name, lb, registry, f.events);
        let serving: Option<Vec<u64>> = instances.values().map(|i| i.serving_ms).collect();
        let status = match (&error, &serving) {
            (Some(_), _) => AppStatus::Failed,
            (None, _) if instances.is_empty() => AppStatus::Unchanged,
            (None, Some(_)) => AppStatus::Serving,
            (None, None) => AppStatus::NotServing,
        };
        let serving_ms = serving.and_then(|s| s.into_iter().max());
        apps.insert(name.clone(), AppTimes { status, lb, registry, serving_ms, instances, error });
    }
    // Apps the outcome names that the environment no longer has (removed from the repo).
    for (name, o) in f.outcome.map(|o| &o.apps).into_iter().flatten() {
        if !apps.contains_key(name) {
            let status = if o.error.is_some() { AppStatus::Failed } else { AppStatus::Unchanged };
            apps.insert(
                name.clone(),
                AppTimes {
                    status,
                    lb: false,
                    registry: false,
                    serving_ms: None,
                    instances: BTreeMap::new(),
                    error: o.error.clone(),
                },
            );
        }
    }
    let outcome = match f.outcome {
        None => Outcome::NoChanges,
        Some(r) if r.ok() => Outcome::Complete,
        Some(_) => Outcome::Incomplete,
    };
    let brought_up: Vec<&AppTimes> = apps.values().filter(|a| a.status != AppStatus::Unchanged).collect();
    let rto_ms = if !brought_up.is_empty() && brought_up.iter().all(|a| a.status == AppStatus::Serving) {
        brought_up.iter().filter_map(|a| a.serving_ms).max()
    } else {
        None
    };
    let execution_started_ms = f.execution_started.map(ms);
    RecoveryReport {
        format_version: FORMAT_VERSION,
        environment: f.env.name.clone(),
        commit: f.origin.commit.clone(),
        reference: f.origin.reference.clone(),
        dirty: f.origin.dirty,
        started: f.started.clone(),
        hosts: f
            .env
            .spec
            .hosts
            .iter()
            .map(|h| ReportHost { name: h.name.clone(), address: h.address.clone() })
            .collect(),
        outcome,
        execution_started_ms,
        finished_ms: ms(f.finished),
        apps,
        errors: f.outcome.map(|o| o.errors.clone()).unwrap_or_default(),
        time_to_serving_ms: rto_ms.map(|r| r.saturating_sub(execution_started_ms.unwrap_or(0))),
        rto_ms,
    }
}

/// The instances of `app` brought up (a `created` event), each with the first of every
/// later milestone of the same slot (host and port), in order.
fn instance_times(app: &str, lb: bool, registry: bool, events: &[Event]) -> BTreeMap<String, InstanceTimes> {
    let mut out = BTreeMap::new();
    for (k, created) in events.iter().enumerate() {
        if created.milestone != Milestone::Created || created.slot.app != app {
            continue;
        }
        let later = &events[k + 1..];
        let first = |m: Milestone, after: u64| {
            later
                .iter()
                .take_while(|e| !(e.milestone == Milestone::Created && e.slot == created.slot))
                .find(|e| e.milestone == m && e.slot == created.slot && ms(e.at) >= after)
                .map(|e| ms(e.at))
        };
        let created_ms = ms(created.at);
        let healthy_ms = first(Milestone::Healthy, created_ms);
        let registered_ms = if registry { healthy_ms.and_then(|h| first(Milestone::Registered, h)) } else { None };
        let ready = if registry { registered_ms } else { healthy_ms };
        let serving_ms = if lb { ready.and_then(|r| first(Milestone::Serving, r)) } else { ready };
        let name = InstanceId::new(app, created.slot.ordinal).to_string();
        out.insert(
            name,
            InstanceTimes {
                host: created.slot.host.clone(),
                port: created.slot.port,
                created_ms,
                healthy_ms,
                registered_ms,
                serving_ms,
            },
        );
    }
    out
}

/// The report as JSON (pretty, newline-terminated).
pub fn json(r: &RecoveryReport) -> String {
    // A struct of strings, numbers and maps with string keys always serialises.
    let mut s = serde_json::to_string_pretty(r).unwrap_or_default();
    s.push('\n');
    s
}

/// `1.234 s`, or `–` when absent.
fn secs(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_string(), |m| format!("{}.{:03} s", m / 1000, m % 1000))
}

/// The report as Markdown: a summary table, per-app and per-instance tables, errors in
/// fenced blocks.
pub fn markdown(r: &RecoveryReport) -> String {
    let mut s = String::new();
    let commit = r.commit.as_deref().map_or("no commit", |c| c.get(..12).unwrap_or(c));
    let _ = writeln!(s, "# Recovery report: `{}`\n", r.environment);
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| environment | `{}` |", r.environment);
    let reference = r.reference.as_deref().map(|x| format!(" ({})", cell(x))).unwrap_or_default();
    let dirty = if r.dirty { " (dirty)" } else { "" };
    let _ = writeln!(s, "| commit | `{commit}`{reference}{dirty} |");
    let _ = writeln!(s, "| started | {} |", r.started);
    let hosts: Vec<String> = r.hosts.iter().map(|h| format!("{} ({})", h.name, h.address)).collect();
    let _ = writeln!(s, "| hosts | {} |", cell(&hosts.join(", ")));
    let outcome = match r.outcome {
        Outcome::Complete => "complete",
        Outcome::Incomplete => "incomplete",
        Outcome::NoChanges => "no changes",
    };
    let _ = writeln!(s, "| outcome | {outcome} |");
    let _ = writeln!(s, "| changes started | {} |", secs(r.execution_started_ms));
    let _ = writeln!(s, "| time to serving | {} (from the start of the changes) |", secs(r.time_to_serving_ms));
    let _ = writeln!(
        s,
        "| **RTO** | **{}** (from the start of the apply command until the last app served) |",
        secs(r.rto_ms)
    );
    let _ = writeln!(s, "| finished | {} |\n", secs(Some(r.finished_ms)));
    let _ = writeln!(s, "Times are since the start of the apply command.\n");
    let _ = writeln!(s, "## Apps\n\n| app | status | via | instances | serving |\n|---|---|---|---:|---:|");
    for (name, a) in &r.apps {
        let status = match a.status {
            AppStatus::Serving => "serving",
            AppStatus::Failed => "**failed**",
            AppStatus::NotServing => "**not serving**",
            AppStatus::Unchanged => "unchanged",
        };
        let via = match (a.lb, a.registry) {
            (true, _) => "LB",
            (false, true) => "registry",
            (false, false) => "healthy",
        };
        let _ = writeln!(s, "| {name} | {status} | {via} | {} | {} |", a.instances.len(), secs(a.serving_ms));
    }
    let rows: Vec<(&String, &InstanceTimes)> = r.apps.values().flat_map(|a| a.instances.iter()).collect();
    if !rows.is_empty() {
        let _ = writeln!(
            s,
            "\n## Instances\n\n| instance | host | port | created | healthy | registered | serving |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for (name, i) in rows {
            let port = i.port.map(|p| p.to_string()).unwrap_or_else(|| "–".into());
            let _ = writeln!(
                s,
                "| {name} | {} | {port} | {} | {} | {} | {} |",
                i.host,
                secs(Some(i.created_ms)),
                secs(i.healthy_ms),
                secs(i.registered_ms),
                secs(i.serving_ms)
            );
        }
    }
    let errors: Vec<(String, &str)> = r
        .apps
        .iter()
        .filter_map(|(n, a)| a.error.as_deref().map(|e| (format!("app {n}"), e)))
        .chain(r.errors.iter().map(|e| ("environment".to_string(), e.as_str())))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\n## Errors\n");
        for (what, e) in errors {
            let fence = "`".repeat(longest_backtick_run(e).max(2) + 1);
            let _ = writeln!(s, "{what}:\n\n{fence}\n{e}\n{fence}\n");
        }
    }
    s
}

/// A table cell's text: `|` escaped, line breaks as spaces.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(app: &str, ordinal: u32, port: u16) -> Assignment {
        Assignment { app: app.into(), ordinal, host: "h1".into(), port: Some(port) }
    }

    /// A timeline whose clock advances 10 ms per reading.
    fn ticking() -> Timeline {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        Timeline::new(Arc::new(move || Duration::from_millis(10 * n.fetch_add(1, std::sync::atomic::Ordering::SeqCst))))
    }

    #[test]
    fn a_slot_is_serving_once_per_creation() {
        let t = ticking();
        let a = slot("web", 0, 20000);
        t.mark(Milestone::Created, &a);
        t.serving([&a]);
        t.serving([&a]);
        t.mark(Milestone::Created, &a);
        t.serving([&a]);
        let kinds: Vec<Milestone> = t.events().iter().map(|e| e.milestone).collect();
        assert_eq!(kinds, [Milestone::Created, Milestone::Serving, Milestone::Created, Milestone::Serving]);
    }

    #[test]
    fn times_take_the_first_later_milestone_of_the_same_slot() {
        let t = ticking();
        let (a, other) = (slot("web", 0, 20001), slot("web", 0, 20000));
        t.serving([&a]); // before its creation: an old instance's slot, not this one's
        t.mark(Milestone::Created, &a); // 10
        t.mark(Milestone::Healthy, &other); // another slot of the same instance
        t.mark(Milestone::Healthy, &a); // 30
        t.mark(Milestone::Registered, &a); // 40
        t.serving([&a, &other]); // 50
        let got = instance_times("web", true, true, &t.events());
        let i = &got["web-0"];
        assert_eq!((i.created_ms, i.healthy_ms, i.registered_ms, i.serving_ms), (10, Some(30), Some(40), Some(50)));
        // Without an LB the instance serves once registered; without a registry, once healthy.
        assert_eq!(instance_times("web", false, true, &t.events())["web-0"].serving_ms, Some(40));
        assert_eq!(instance_times("web", false, false, &t.events())["web-0"].serving_ms, Some(30));
    }

    #[test]
    fn an_lb_app_registered_but_never_reloaded_does_not_serve() {
        let t = ticking();
        let a = slot("web", 0, 20000);
        t.mark(Milestone::Created, &a);
        t.mark(Milestone::Healthy, &a);
        t.mark(Milestone::Registered, &a);
        assert_eq!(instance_times("web", true, true, &t.events())["web-0"].serving_ms, None);
    }

    #[test]
    fn markdown_fences_errors_and_escapes_cells() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert_eq!(longest_backtick_run("x ``` y ` z"), 3);
        assert_eq!(secs(Some(1234)), "1.234 s");
        assert_eq!(secs(Some(5)), "0.005 s");
        assert_eq!(secs(None), "–");
    }
}
