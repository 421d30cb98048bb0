//! Notifications: what happened (an [`Event`]), whether to send it now
//! ([`Dedup`]: a failure repeated by watch's retries is sent once, then as a
//! reminder at most every `repeat`, then as resolved), and what each target kind
//! receives ([`request`]: the HTTP request, body signed for webhooks).
//!
//! Invariant: pure. Delivery (HTTP, timeouts, retries) is `backend::notify`;
//! the clock is passed in. Secret values are masked out of every body
//! ([`request`] replaces each one with `(sensitive)`), whatever a message carries.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::secret::{MASK, Secret};
use crate::spec::types::{NotificationSpec, NotifyKind};

/// Version of the webhook payload.
pub const FORMAT_VERSION: u32 = 1;
/// Default for a target's `repeat`: how often a persisting problem is sent again.
pub const REPEAT: Duration = Duration::from_secs(3600);
/// Default for a target's `timeout`.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ApplySucceeded,
    ApplyFailed,
    Rollback,
    Pin,
    PinReleased,
    CanaryStarted,
    CanaryPromoted,
    CanaryAborted,
    Heal,
    CrashLoop,
    Unhealthy,
    Drift,
    Recovered,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApplySucceeded => "apply_succeeded",
            Self::ApplyFailed => "apply_failed",
            Self::Rollback => "rollback",
            Self::Pin => "pin",
            Self::PinReleased => "pin_released",
            Self::CanaryStarted => "canary_started",
            Self::CanaryPromoted => "canary_promoted",
            Self::CanaryAborted => "canary_aborted",
            Self::Heal => "heal",
            Self::CrashLoop => "crash_loop",
            Self::Unhealthy => "unhealthy",
            Self::Drift => "drift",
            Self::Recovered => "recovered",
        }
    }

    /// A problem that lasts until something clears it (de-duplicated while it lasts).
    /// `canary_aborted` is not one: the abort is done when it is told (the old instances
    /// serve), nothing would ever clear it, and watch tells the failed run that aborted
    /// an unhealthy canary as `apply_failed` as well.
    pub fn is_problem(self) -> bool {
        matches!(self, Self::ApplyFailed | Self::CrashLoop | Self::Unhealthy | Self::Drift)
    }

    /// The event a canary step that an apply carried out tells: a start (or a restart
    /// with a new spec), a promote, an abort or an end (the repo went back to the old
    /// instances' spec: the canaries are removed, as by an abort); a canary that just
    /// keeps running tells nothing.
    pub fn of_canary(state: crate::plan::canary::CanaryState) -> Option<Self> {
        use crate::plan::canary::CanaryState;
        match state {
            CanaryState::Start | CanaryState::Replace => Some(Self::CanaryStarted),
            CanaryState::Promote => Some(Self::CanaryPromoted),
            CanaryState::Abort | CanaryState::End => Some(Self::CanaryAborted),
            CanaryState::Running => None,
        }
    }
}

/// One thing that happened, as every target is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub env: String,
    /// The app it concerns, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The instance it concerns, if one (crash loop, unhealthy, recovered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The commit applied (or being applied), when from Git.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub reference: String,
    /// The plan's summary line.
    pub summary: String,
    /// What happened, one or a few lines.
    pub message: String,
    /// RFC 3339.
    pub time: String,
}

impl Event {
    /// An event about the whole environment, with nothing but its message; set the
    /// other fields as needed.
    pub fn about(kind: EventKind, env: &str, message: String, time: String) -> Self {
        Self {
            kind,
            env: env.to_string(),
            app: None,
            instance: None,
            commit: None,
            reference: String::new(),
            summary: String::new(),
            message,
            time,
        }
    }

    /// What identifies one problem across repeats: a later event with the same key
    /// is the same problem again. `<env>/<kind>/<scope>`, the scope being the
    /// instance (crash loop, unhealthy), the app (apply failed, canary aborted) or
    /// nothing (drift, an environment-wide failure).
    pub fn incident_key(&self) -> String {
        let scope = match self.kind {
            EventKind::CrashLoop | EventKind::Unhealthy | EventKind::Heal | EventKind::Recovered => {
                self.instance.as_deref().unwrap_or("")
            }
            EventKind::Drift => "",
            _ => self.app.as_deref().unwrap_or(""),
        };
        format!("{}/{}/{scope}", self.env, self.kind.as_str())
    }

    /// The keys of the problems this event ends (an empty key prefix ends all of
    /// that kind in the environment): a success ends its app's failure (with no app,
    /// every failure of the environment), a recovery ends its instance's crash loop
    /// and unhealthiness (with no instance: the drift).
    fn clears(&self) -> Vec<(String, bool)> {
        let env = &self.env;
        let exact = |kind: EventKind, scope: &str| (format!("{env}/{}/{scope}", kind.as_str()), false);
        match (self.kind, self.app.as_deref(), self.instance.as_deref()) {
            (EventKind::ApplySucceeded | EventKind::Rollback, Some(app), _) => vec![exact(EventKind::ApplyFailed, app)],
            (EventKind::ApplySucceeded | EventKind::Rollback, None, _) => {
                vec![(format!("{env}/{}/", EventKind::ApplyFailed.as_str()), true)]
            }
            (EventKind::Recovered, _, Some(i)) => vec![exact(EventKind::CrashLoop, i), exact(EventKind::Unhealthy, i)],
            (EventKind::Recovered, _, None) => vec![exact(EventKind::Drift, "")],
            _ => vec![],
        }
    }
}

/// How a sent event stands to the problem it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A new problem, or an event that is no problem.
    New,
    /// The same problem, still there after `repeat`.
    Reminder,
    /// A problem that has cleared.
    Resolved,
}

/// An event that is to be sent, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub event: Event,
    pub status: Status,
    /// With [`Status::Resolved`]: the kind of the problem that ended.
    pub problem: Option<EventKind>,
}

impl Outgoing {
    pub fn new(event: Event) -> Self {
        Self { event, status: Status::New, problem: None }
    }
}

/// One open problem: the event that told it (the latest repeat) and when it was
/// last sent.
#[derive(Debug, Clone)]
struct Open {
    last_sent: Duration,
    event: Event,
}

/// Open problems, by incident key. `now` is any monotonic clock reading the caller
/// keeps (watch: time since it started).
///
/// Guarantees (property-tested): no two sends of one key within `repeat`; a
/// `resolved` only for a key that was sent and not resolved since; after a
/// `resolved` the same problem is `new` again.
#[derive(Debug, Default, Clone)]
pub struct Dedup {
    open: BTreeMap<String, Open>,
}

impl Dedup {
    /// What of `event` is sent now, and as what:
    /// - a problem ([`EventKind::is_problem`]): `new` the first time, then nothing
    ///   until `repeat` has passed since it was last sent, then a `reminder`;
    /// - an event that ends problems ([`Event`]'s successes and recoveries): one
    ///   `resolved` per problem it ends, carrying the problem's app and instance;
    ///   with none to end, a recovery is not sent, and a success only if `quiet_ok`
    ///   is false (watch sets it, so that its periodic successful runs stay silent);
    /// - a heal of an instance whose crash loop is open: nothing (the loop was told);
    /// - anything else: `new`.
    pub fn admit(&mut self, event: Event, now: Duration, repeat: Duration, quiet_ok: bool) -> Vec<Outgoing> {
        let key = event.incident_key();
        if event.kind.is_problem() {
            let status = match self.open.get(&key) {
                Some(o) if now.saturating_sub(o.last_sent) < repeat => {
                    // The same problem again: keep its latest words for the reminder.
                    let last_sent = o.last_sent;
                    self.open.insert(key, Open { last_sent, event });
                    return vec![];
                }
                Some(_) => Status::Reminder,
                None => Status::New,
            };
            self.open.insert(key, Open { last_sent: now, event: event.clone() });
            return vec![Outgoing { event, status, problem: None }];
        }
        if event.kind == EventKind::Heal {
            let looping =
                format!("{}/{}/{}", event.env, EventKind::CrashLoop.as_str(), event.instance.as_deref().unwrap_or(""));
            return if self.open.contains_key(&looping) { vec![] } else { vec![Outgoing::new(event)] };
        }
        let clears = event.clears();
        if clears.is_empty() {
            return vec![Outgoing::new(event)];
        }
        let ended: Vec<String> = self
            .open
            .keys()
            .filter(|k| clears.iter().any(|(c, prefix)| if *prefix { k.starts_with(c.as_str()) } else { *k == c }))
            .cloned()
            .collect();
        let out: Vec<Outgoing> = ended
            .into_iter()
            .filter_map(|k| self.open.remove(&k))
            .map(|o| {
                let mut e = event.clone();
                e.app = e.app.or(o.event.app);
                e.instance = e.instance.or(o.event.instance);
                Outgoing { event: e, status: Status::Resolved, problem: Some(o.event.kind) }
            })
            .collect();
        if !out.is_empty() {
            return out;
        }
        if event.kind == EventKind::Recovered || quiet_ok {
            return vec![];
        }
        vec![Outgoing::new(event)]
    }

    /// Reminders of the open problems last sent `repeat` or longer before `now`
    /// (for a sender that keeps running while a problem lasts without repeating).
    pub fn due(&mut self, now: Duration, repeat: Duration) -> Vec<Outgoing> {
        self.open
            .values_mut()
            .filter(|o| now.saturating_sub(o.last_sent) >= repeat)
            .map(|o| {
                o.last_sent = now;
                Outgoing { event: o.event.clone(), status: Status::Reminder, problem: None }
            })
            .collect()
    }

    /// Open problems now.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

/// A target, resolved: its secrets looked up.
#[derive(Debug, Clone)]
pub struct Target {
    pub spec: NotificationSpec,
    /// Name for logs and metrics: `<index>:<kind>`.
    pub name: String,
    pub url: Option<Secret>,
    pub signing: Option<Secret>,
    pub token: Option<Secret>,
}

impl Target {
    /// Whether this target wants `kind` (its `on:` filter; status targets take only
    /// the events that have a commit status).
    pub fn wants(&self, kind: EventKind) -> bool {
        if !self.wants_status_of(kind) {
            return false;
        }
        self.spec.on.is_empty() || self.spec.on.contains(&kind)
    }

    /// Whether this target receives `o`: it wants the event's kind, or `o` resolves
    /// a problem of a kind it wants (a target `on: [crash_loop]` hears it resolved).
    pub fn receives(&self, o: &Outgoing) -> bool {
        self.wants(o.event.kind)
            || o.problem.is_some_and(|p| self.spec.on.contains(&p) && self.wants_status_of(o.event.kind))
    }

    fn wants_status_of(&self, kind: EventKind) -> bool {
        !matches!(self.spec.kind, NotifyKind::GithubStatus | NotifyKind::GitlabStatus) || commit_state(kind).is_some()
    }
}

/// An HTTP request to make (the body may hold nothing secret: see [`request`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    pub method: &'static str,
    /// May carry a token (Slack's URLs do): never logged.
    pub url: Secret,
    pub headers: Vec<(String, Secret)>,
    pub body: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("method", &self.method).field("body", &self.body).finish_non_exhaustive()
    }
}

/// Why a request cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("notification {target}: `{field}` is required for kind {kind}")]
    Missing { target: String, kind: &'static str, field: &'static str },
    #[error("notification {target}: {event} has no commit to set a status on")]
    NoCommit { target: String, event: &'static str },
}

/// The commit status an event sets: (GitHub state, GitLab state, description prefix).
fn commit_state(kind: EventKind) -> Option<(&'static str, &'static str)> {
    match kind {
        EventKind::ApplySucceeded | EventKind::Heal => Some(("success", "success")),
        EventKind::ApplyFailed | EventKind::CanaryAborted => Some(("failure", "failed")),
        EventKind::CanaryStarted => Some(("pending", "running")),
        EventKind::CanaryPromoted => Some(("success", "success")),
        _ => None,
    }
}

/// One line for people: `[staging] apply_failed api: …`.
pub fn headline(o: &Outgoing) -> String {
    let e = &o.event;
    let status = match (o.status, o.problem) {
        (Status::New, _) => String::new(),
        (Status::Reminder, _) => " (still failing)".into(),
        (Status::Resolved, Some(p)) => format!(" (resolved {})", p.as_str()),
        (Status::Resolved, None) => " (resolved)".into(),
    };
    let what = e.instance.as_deref().or(e.app.as_deref()).map(|a| format!(" {a}")).unwrap_or_default();
    format!("[{}] {}{what}{status}: {}", e.env, e.kind.as_str(), e.message)
}

/// The request `target` receives for `o`, with every value of `secrets` masked
/// out of the body.
///
/// # Errors
/// The target lacks a field its kind needs, or a status event has no commit.
pub fn request(target: &Target, o: &Outgoing, secrets: &[Secret]) -> Result<Request, NotifyError> {
    let kind_name = match target.spec.kind {
        NotifyKind::Webhook => "webhook",
        NotifyKind::Slack => "slack",
        NotifyKind::GithubStatus => "github_status",
        NotifyKind::GitlabStatus => "gitlab_status",
    };
    let missing = |field| NotifyError::Missing { target: target.name.clone(), kind: kind_name, field };
    let mask = |s: String| mask_all(s, secrets);
    let e = &o.event;
    let json = |h: &[(&str, String)]| -> Vec<(String, Secret)> {
        let mut v = vec![("content-type".to_string(), Secret::new("application/json".into()))];
        v.extend(h.iter().map(|(k, val)| (k.to_string(), Secret::new(val.clone()))));
        v
    };
    match target.spec.kind {
        NotifyKind::Webhook => {
            let url = target.url.clone().ok_or_else(|| missing("url"))?;
            let body = mask(
                serde_json::json!({
                    "format_version": FORMAT_VERSION,
                    "event": e.kind,
                    "status": o.status,
                    "problem": o.problem,
                    "env": e.env,
                    "app": e.app,
                    "instance": e.instance,
                    "commit": e.commit,
                    "reference": e.reference,
                    "summary": e.summary,
                    "message": e.message,
                    "time": e.time,
                })
                .to_string(),
            );
            let mut headers = vec![("x-reconcile-event", e.kind.as_str().to_string())];
            if let Some(key) = &target.signing {
                headers.push(("x-reconcile-signature", format!("sha256={}", sign(key, &body))));
            }
            Ok(Request { method: "POST", url, headers: json(&headers), body })
        }
        NotifyKind::Slack => {
            let url = target.url.clone().ok_or_else(|| missing("url"))?;
            let mut text = headline(o);
            if !e.summary.is_empty() {
                text.push_str(&format!("\n{}", e.summary));
            }
            if let Some(c) = &e.commit {
                text.push_str(&format!("\ncommit {} ({})", short(c), e.reference));
            }
            let body = mask(serde_json::json!({ "text": text, "username": "reconcile" }).to_string());
            Ok(Request { method: "POST", url, headers: json(&[]), body })
        }
        NotifyKind::GithubStatus | NotifyKind::GitlabStatus => {
            let token = target.token.clone().ok_or_else(|| missing("token"))?;
            let commit = e
                .commit
                .as_deref()
                .ok_or(NotifyError::NoCommit { target: target.name.clone(), event: e.kind.as_str() })?;
            let (gh_state, gl_state) = commit_state(e.kind)
                .ok_or(NotifyError::NoCommit { target: target.name.clone(), event: e.kind.as_str() })?;
            let context = target.spec.context.clone().unwrap_or_else(|| format!("reconcile/{}", e.env));
            let description: String = mask(headline(o)).chars().take(140).collect();
            if target.spec.kind == NotifyKind::GithubStatus {
                let repo = target.spec.repository.as_deref().ok_or_else(|| missing("repository"))?;
                let api = target.spec.api_url.as_deref().unwrap_or("https://api.github.com").trim_end_matches('/');
                let body = mask(
                    serde_json::json!({ "state": gh_state, "context": context, "description": description })
                        .to_string(),
                );
                let headers = json(&[
                    ("accept", "application/vnd.github+json".into()),
                    ("user-agent", "reconcile".into()),
                    ("authorization", format!("Bearer {}", token.expose())),
                ]);
                let url = Secret::new(format!("{api}/repos/{repo}/statuses/{commit}"));
                Ok(Request { method: "POST", url, headers, body })
            } else {
                let project = target.spec.project.as_deref().ok_or_else(|| missing("project"))?;
                let api = target.spec.api_url.as_deref().unwrap_or("https://gitlab.com/api/v4").trim_end_matches('/');
                let body = mask(
                    serde_json::json!({ "state": gl_state, "name": context, "description": description }).to_string(),
                );
                let headers = json(&[("private-token", token.expose().to_string())]);
                let url = Secret::new(format!("{api}/projects/{}/statuses/{commit}", path_segment(project)));
                Ok(Request { method: "POST", url, headers, body })
            }
        }
    }
}

/// `sha256=` HMAC of `body` under `key`, hex.
pub fn sign(key: &Secret, body: &str) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body.as_bytes());
    crate::plan::instance::hex(&mac.finalize().into_bytes())
}

/// Replace every secret value (longer than 3 bytes: shorter ones would mask
/// ordinary text) by `(sensitive)`.
fn mask_all(mut s: String, secrets: &[Secret]) -> String {
    for v in secrets.iter().map(Secret::expose).filter(|v| v.len() > 3) {
        // Values as they appear inside JSON strings, too.
        let escaped = serde_json::to_string(v).unwrap_or_default();
        let escaped = escaped.trim_matches('"');
        for form in [v, escaped] {
            if s.contains(form) {
                s = s.replace(form, MASK);
            }
        }
    }
    s
}

/// A GitLab project path as one URL path segment (`group/name` → `group%2Fname`).
fn path_segment(p: &str) -> String {
    let mut out = String::new();
    for b in p.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(char::from(b)),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// A rollback's pin set (`Pin`) or ended (`PinReleased`).
pub fn pin_event(kind: EventKind, env: &str, pin: &crate::model::Pin, time: String) -> Event {
    let message = match kind {
        EventKind::PinReleased => format!(
            "pin to {} ({}) released: watch follows the repo again and apply is allowed",
            short(&pin.commit),
            pin.reference
        ),
        _ => format!(
            "pinned to {} ({}) by {}: watch keeps it there and apply of another commit is refused until `rollback --release`",
            short(&pin.commit),
            pin.reference,
            pin.who
        ),
    };
    Event {
        commit: Some(pin.commit.clone()),
        reference: pin.reference.clone(),
        ..Event::about(kind, env, message, time)
    }
}

/// The environment's targets with their secrets looked up in `secrets` (the
/// resolved secrets of the run; validate checks that the names exist).
pub fn targets(spec: &[NotificationSpec], secrets: &BTreeMap<String, Secret>) -> Vec<Target> {
    spec.iter()
        .enumerate()
        .map(|(i, n)| {
            let get = |name: &Option<String>| name.as_ref().and_then(|k| secrets.get(k)).cloned();
            let kind =
                serde_json::to_value(n.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            Target {
                spec: n.clone(),
                name: format!("{i}:{kind}"),
                url: get(&n.url),
                signing: get(&n.signing_secret),
                token: get(&n.token),
            }
        })
        .collect()
}

/// What one apply (or rollback) tells: per failed app an `apply_failed`, per app
/// that succeeded its canary's event when the apply started, promoted or aborted its
/// canary, else an `apply_succeeded` (so a failure of that app is resolved);
/// `ok_kind` is `ApplySucceeded`, `Rollback` or `Heal`.
pub struct ApplyFacts<'a> {
    pub env: &'a str,
    pub commit: Option<&'a str>,
    pub reference: &'a str,
    pub summary: &'a str,
    /// Per app with work: `None` when it succeeded, else why it failed.
    pub apps: &'a [(String, Option<String>)],
    /// Failures outside apps (etcd, LB).
    pub errors: &'a [String],
    pub ok_kind: EventKind,
    /// Per app whose canary this apply started, promoted or aborted: the event's kind
    /// ([`EventKind::of_canary`]) and what it left, for people.
    pub canaries: &'a [(String, EventKind, String)],
    pub time: &'a str,
}

/// The events of [`ApplyFacts`].
pub fn apply_events(f: &ApplyFacts<'_>) -> Vec<Event> {
    let event = |kind, app: Option<&String>, message: String| Event {
        kind,
        env: f.env.to_string(),
        app: app.cloned(),
        instance: None,
        commit: f.commit.map(str::to_string),
        reference: f.reference.to_string(),
        summary: f.summary.to_string(),
        message,
        time: f.time.to_string(),
    };
    let mut out: Vec<Event> = f
        .apps
        .iter()
        .map(|(app, err)| match err {
            Some(e) => event(EventKind::ApplyFailed, Some(app), e.clone()),
            None => match f.canaries.iter().find(|(a, ..)| a == app) {
                Some((_, kind, line)) => event(*kind, Some(app), line.clone()),
                None => event(f.ok_kind, Some(app), format!("{} applied", app)),
            },
        })
        .collect();
    if !f.errors.is_empty() {
        out.push(event(EventKind::ApplyFailed, None, f.errors.join("; ")));
    } else if f.apps.is_empty() || f.apps.iter().all(|(_, e)| e.is_none()) {
        out.push(event(f.ok_kind, None, format!("{} {}", f.ok_kind.as_str().replace('_', " "), f.summary)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, app: Option<&str>) -> Event {
        Event {
            kind,
            env: "staging".into(),
            app: app.map(str::to_string),
            instance: None,
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            reference: "main".into(),
            summary: "1 to add".into(),
            message: "api-0 on node-1: health check failed".into(),
            time: "2026-12-01T00:00:00Z".into(),
        }
    }

    fn spec(kind: NotifyKind) -> NotificationSpec {
        NotificationSpec {
            kind,
            url: Some("u".into()),
            signing_secret: None,
            token: Some("t".into()),
            repository: Some("acme/config".into()),
            project: Some("ops/config".into()),
            api_url: Some("http://127.0.0.1:1/api/".into()),
            context: None,
            on: vec![],
            repeat: None,
            timeout: None,
        }
    }

    fn target(kind: NotifyKind) -> Target {
        Target {
            spec: spec(kind),
            name: "0:test".into(),
            url: Some(Secret::new("http://127.0.0.1:1/hook".into())),
            signing: Some(Secret::new("signing-key".into())),
            token: Some(Secret::new("tok-123456".into())),
        }
    }

    const S: Duration = Duration::from_secs(1);

    /// The statuses `admit` returns.
    fn st(v: Vec<Outgoing>) -> Vec<Status> {
        v.into_iter().map(|o| o.status).collect()
    }

    #[test]
    fn a_repeated_failure_is_sent_once_then_as_reminder_then_resolved() {
        let mut d = Dedup::default();
        let hour = Duration::from_secs(3600);
        let fail = || event(EventKind::ApplyFailed, Some("api"));
        assert_eq!(st(d.admit(fail(), S, hour, true)), [Status::New]);
        assert_eq!(st(d.admit(fail(), 2 * S, hour, true)), []);
        assert_eq!(st(d.admit(fail(), hour, hour, true)), []);
        assert_eq!(st(d.admit(fail(), hour + S, hour, true)), [Status::Reminder]);
        assert_eq!(st(d.admit(fail(), hour + 2 * S, hour, true)), []);
        // Another app's failure is another problem.
        assert_eq!(st(d.admit(event(EventKind::ApplyFailed, Some("web")), 3 * S, hour, true)), [Status::New]);
        assert_eq!(d.open(), 2);
        let ok = d.admit(event(EventKind::ApplySucceeded, Some("api")), hour * 2, hour, true);
        assert_eq!(
            ok.iter().map(|o| (o.status, o.problem)).collect::<Vec<_>>(),
            [(Status::Resolved, Some(EventKind::ApplyFailed))]
        );
        assert_eq!(d.open(), 1);
        // Once resolved, success is quiet in watch and the next failure is new again.
        assert_eq!(st(d.admit(event(EventKind::ApplySucceeded, Some("api")), hour * 3, hour, true)), []);
        assert_eq!(st(d.admit(fail(), hour * 3, hour, true)), [Status::New]);
    }

    #[test]
    fn an_apply_that_moves_a_canary_tells_its_event_for_that_app() {
        use crate::plan::canary::CanaryState as C;
        let kinds = [C::Start, C::Replace, C::Running, C::Promote, C::Abort, C::End].map(EventKind::of_canary);
        assert_eq!(
            kinds,
            [
                Some(EventKind::CanaryStarted),
                Some(EventKind::CanaryStarted),
                None,
                Some(EventKind::CanaryPromoted),
                Some(EventKind::CanaryAborted),
                Some(EventKind::CanaryAborted)
            ]
        );
        let apps = [("web".to_string(), None), ("worker".to_string(), None), ("db".to_string(), Some("boom".into()))];
        let line = "canary web: 1 of 3 serving (promote: …)".to_string();
        let canaries = [
            ("web".to_string(), EventKind::CanaryStarted, line.clone()),
            ("db".into(), EventKind::CanaryStarted, "x".into()),
        ];
        let f = ApplyFacts {
            env: "staging",
            commit: None,
            reference: "main",
            summary: "1 to replace",
            apps: &apps,
            errors: &[],
            ok_kind: EventKind::ApplySucceeded,
            canaries: &canaries,
            time: "2026-12-01T00:00:00Z",
        };
        let got: Vec<(EventKind, Option<String>, String)> =
            apply_events(&f).into_iter().map(|e| (e.kind, e.app, e.message)).collect();
        assert_eq!(
            got,
            [
                (EventKind::CanaryStarted, Some("web".into()), line),
                (EventKind::ApplySucceeded, Some("worker".into()), "worker applied".into()),
                (EventKind::ApplyFailed, Some("db".into()), "boom".into()),
            ],
            "a failed app tells its failure, not its canary; one failure: no environment-wide success"
        );
        // Told once each, never held back or reminded of (an abort is no lasting problem).
        let mut d = Dedup::default();
        for kind in [EventKind::CanaryStarted, EventKind::CanaryAborted, EventKind::CanaryAborted] {
            assert_eq!(st(d.admit(event(kind, Some("web")), S, REPEAT, true)), [Status::New]);
        }
        assert_eq!(d.open(), 0);
    }

    #[test]
    fn outside_watch_a_success_is_always_sent() {
        let mut d = Dedup::default();
        assert_eq!(st(d.admit(event(EventKind::ApplySucceeded, None), S, REPEAT, false)), [Status::New]);
    }

    fn on(kind: EventKind, instance: Option<&str>) -> Event {
        let mut e = event(kind, Some("api"));
        e.instance = instance.map(str::to_string);
        e
    }

    #[test]
    fn an_environment_wide_success_resolves_every_failure_with_its_app() {
        let mut d = Dedup::default();
        let mut env_failure = event(EventKind::ApplyFailed, None);
        env_failure.message = "load: bad yaml".into();
        assert_eq!(st(d.admit(env_failure, S, REPEAT, true)), [Status::New]);
        assert_eq!(st(d.admit(event(EventKind::ApplyFailed, Some("web")), S, REPEAT, true)), [Status::New]);
        let got = d.admit(event(EventKind::ApplySucceeded, None), 2 * S, REPEAT, true);
        let apps: Vec<(Status, Option<&str>)> = got.iter().map(|o| (o.status, o.event.app.as_deref())).collect();
        assert_eq!(apps, [(Status::Resolved, None), (Status::Resolved, Some("web"))]);
        assert_eq!(d.open(), 0);
    }

    #[test]
    fn a_recovery_ends_its_instance_s_problems_and_is_silent_otherwise() {
        let mut d = Dedup::default();
        assert_eq!(st(d.admit(on(EventKind::Recovered, Some("api-0")), S, REPEAT, true)), []);
        assert_eq!(st(d.admit(on(EventKind::CrashLoop, Some("api-0")), S, REPEAT, true)), [Status::New]);
        assert_eq!(st(d.admit(on(EventKind::Unhealthy, Some("api-0")), S, REPEAT, true)), [Status::New]);
        assert_eq!(st(d.admit(on(EventKind::Unhealthy, Some("api-1")), S, REPEAT, true)), [Status::New]);
        // Heals of a crash-looping instance are part of the loop, not news.
        assert_eq!(st(d.admit(on(EventKind::Heal, Some("api-0")), 2 * S, REPEAT, true)), []);
        assert_eq!(st(d.admit(on(EventKind::Heal, Some("api-1")), 2 * S, REPEAT, true)), [Status::New]);
        let got = d.admit(on(EventKind::Recovered, Some("api-0")), 3 * S, REPEAT, true);
        let problems: Vec<Option<EventKind>> = got.iter().map(|o| o.problem).collect();
        assert_eq!(problems, [Some(EventKind::CrashLoop), Some(EventKind::Unhealthy)]);
        assert_eq!(d.open(), 1, "api-1 is still unhealthy");
        // Drift ends with an environment-wide recovery.
        assert_eq!(st(d.admit(event(EventKind::Drift, None), S, REPEAT, true)), [Status::New]);
        assert_eq!(st(d.admit(event(EventKind::Drift, None), 2 * S, REPEAT, true)), []);
        let got = d.admit(event(EventKind::Recovered, None), 3 * S, REPEAT, true);
        assert_eq!(got.iter().map(|o| o.problem).collect::<Vec<_>>(), [Some(EventKind::Drift)]);
    }

    #[test]
    fn due_reminds_of_problems_that_last_without_repeating() {
        let mut d = Dedup::default();
        let repeat = 10 * S;
        assert_eq!(st(d.admit(on(EventKind::Unhealthy, Some("api-0")), S, repeat, true)), [Status::New]);
        assert!(d.due(10 * S, repeat).is_empty());
        let r = d.due(11 * S, repeat);
        assert_eq!((r.len(), r[0].status, r[0].event.kind), (1, Status::Reminder, EventKind::Unhealthy));
        assert!(d.due(12 * S, repeat).is_empty(), "a reminder restarts the wait");
        assert_eq!(st(d.admit(on(EventKind::Unhealthy, Some("api-0")), 15 * S, repeat, true)), []);
    }

    #[test]
    fn a_resolution_reaches_targets_filtering_on_its_problem() {
        let mut t = target(NotifyKind::Webhook);
        t.spec.on = vec![EventKind::CrashLoop];
        let mut d = Dedup::default();
        let _ = d.admit(on(EventKind::CrashLoop, Some("api-0")), S, REPEAT, true);
        let got = d.admit(on(EventKind::Recovered, Some("api-0")), 2 * S, REPEAT, true);
        assert!(t.receives(&got[0]));
        assert!(!t.receives(&Outgoing::new(on(EventKind::Recovered, Some("api-0")))));
        let r = request(&t, &got[0], &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!((v["event"].as_str(), v["status"].as_str()), (Some("recovered"), Some("resolved")));
        assert_eq!(v["problem"], "crash_loop");
        assert!(headline(&got[0]).contains("api-0 (resolved crash_loop)"), "{}", headline(&got[0]));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// One step: an event kind, its scope, and how far the clock moves first.
        fn step() -> impl Strategy<Value = (EventKind, Option<u8>, u64)> {
            let kinds = prop::sample::select(vec![
                EventKind::ApplyFailed,
                EventKind::ApplySucceeded,
                EventKind::CrashLoop,
                EventKind::Unhealthy,
                EventKind::Recovered,
                EventKind::Drift,
                EventKind::Heal,
            ]);
            (kinds, prop::option::of(0u8..3), 0u64..4000)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn never_two_sends_of_a_key_within_repeat_and_resolved_only_after_a_send(
                steps in prop::collection::vec(step(), 1..80),
                repeat_ms in 1u64..3000,
                quiet in any::<bool>(),
            ) {
                let repeat = Duration::from_millis(repeat_ms);
                let mut d = Dedup::default();
                let mut now = Duration::ZERO;
                let mut last_sent: BTreeMap<String, Duration> = BTreeMap::new();
                let mut open: std::collections::BTreeSet<String> = Default::default();
                for (i, (kind, scope, dt)) in steps.into_iter().enumerate() {
                    now += Duration::from_millis(dt);
                    let mut e = event(kind, scope.map(|s| format!("app{s}")).as_deref());
                    e.instance = scope.map(|s| format!("app{s}-0"));
                    let out = if i % 5 == 4 { d.due(now, repeat) } else { d.admit(e, now, repeat, quiet) };
                    for o in out {
                        match o.status {
                            Status::New | Status::Reminder if o.event.kind.is_problem() => {
                                let key = o.event.incident_key();
                                if let Some(t) = last_sent.get(&key) {
                                    prop_assert!(now - *t >= repeat, "{key} sent twice within {repeat:?}");
                                }
                                prop_assert_eq!(o.status == Status::Reminder, open.contains(&key));
                                last_sent.insert(key.clone(), now);
                                open.insert(key);
                            }
                            Status::Resolved => {
                                let mut p = o.event.clone();
                                p.kind = o.problem.unwrap_or(p.kind);
                                let key = p.incident_key();
                                prop_assert!(open.remove(&key), "resolved {key}, which was not sent or already resolved");
                                last_sent.remove(&key);
                            }
                            _ => prop_assert!(!o.event.kind.is_problem()),
                        }
                    }
                    prop_assert_eq!(d.open(), open.len());
                }
            }
        }
    }

    #[test]
    fn webhook_bodies_are_signed_and_carry_no_secret() {
        let mut e = event(EventKind::ApplyFailed, Some("api"));
        e.message = "db said: password hunter22 rejected".into();
        let o = Outgoing::new(e);
        let r = request(&target(NotifyKind::Webhook), &o, &[Secret::new("hunter22".into())]).unwrap();
        assert!(!r.body.contains("hunter22"), "{}", r.body);
        assert!(r.body.contains("password (sensitive) rejected"), "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["event"], "apply_failed");
        assert_eq!(v["status"], "new");
        assert_eq!(v["format_version"], 1);
        let sig = r.headers.iter().find(|(k, _)| k == "x-reconcile-signature").unwrap().1.expose().to_string();
        // Known answer: HMAC-SHA256 of the body, recomputed independently of `sign`.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"signing-key").unwrap();
        mac.update(r.body.as_bytes());
        assert_eq!(sig, format!("sha256={}", crate::plan::instance::hex(&mac.finalize().into_bytes())));
        assert_ne!(sign(&Secret::new("other".into()), &r.body), sig["sha256=".len()..]);
        assert!(!format!("{r:?}").contains("127.0.0.1:1/hook"), "the URL may hold a token: not in Debug");
    }

    #[test]
    fn commit_statuses_go_to_the_applied_commit() {
        let o = Outgoing::new(event(EventKind::ApplyFailed, Some("api")));
        let gh = request(&target(NotifyKind::GithubStatus), &o, &[]).unwrap();
        assert_eq!(
            gh.url.expose(),
            "http://127.0.0.1:1/api/repos/acme/config/statuses/0123456789abcdef0123456789abcdef01234567"
        );
        let v: serde_json::Value = serde_json::from_str(&gh.body).unwrap();
        assert_eq!((v["state"].as_str(), v["context"].as_str()), (Some("failure"), Some("reconcile/staging")));
        assert!(gh.headers.iter().any(|(k, v)| k == "authorization" && v.expose() == "Bearer tok-123456"));
        let gl = request(&target(NotifyKind::GitlabStatus), &o, &[]).unwrap();
        assert!(gl.url.expose().ends_with("/projects/ops%2Fconfig/statuses/0123456789abcdef0123456789abcdef01234567"));
        let v: serde_json::Value = serde_json::from_str(&gl.body).unwrap();
        assert_eq!(v["state"], "failed");
        // Events without a status are not for status targets.
        assert!(!target(NotifyKind::GithubStatus).wants(EventKind::Drift));
        assert!(target(NotifyKind::Webhook).wants(EventKind::Drift));
    }

    #[test]
    fn the_on_filter_selects_events() {
        let mut t = target(NotifyKind::Slack);
        t.spec.on = vec![EventKind::ApplyFailed];
        assert!(t.wants(EventKind::ApplyFailed));
        assert!(!t.wants(EventKind::ApplySucceeded));
        let o = Outgoing { status: Status::Reminder, ..Outgoing::new(event(EventKind::ApplyFailed, Some("api"))) };
        let r = request(&t, &o, &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(v["text"].as_str().unwrap().starts_with("[staging] apply_failed api (still failing): "), "{v}");
    }
}
