//! What apply writes to etcd outside the registry: the plan's config and desired-spec
//! keys (first, since apps may read them at start), the registry entries the executor
//! did not write itself (last), and the audit log (`applied`, `history/<nanos>`).

use std::collections::BTreeSet;
use std::time::Instant;

use super::effects::Effects;
use super::{Report, Shared, StepError};
use crate::backend::etcd;
use crate::model::keys;
use crate::plan::Action;

/// What a history entry records. Stored as its `kind` string (`apply`, `rollback`,
/// `watch`, `release`); entries of older versions without one are applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// `reconcile apply`.
    Apply,
    /// `reconcile rollback --to <ref>` (its reference and commit are in the entry).
    Rollback,
    /// A run of `reconcile watch`.
    Watch,
    /// `reconcile rollback --release`: the pin was deleted, nothing applied.
    Release,
    /// `reconcile promote`: a canary made the app's new version.
    Promote,
    /// `reconcile abort` (or `watch` aborting an unhealthy canary).
    Abort,
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Rollback => "rollback",
            Self::Watch => "watch",
            Self::Release => "release",
            Self::Promote => "promote",
            Self::Abort => "abort",
        }
    }

    /// The kind of a stored entry: `None` when it names a kind this version does not
    /// know (a newer one wrote it); an entry without `kind` is an apply.
    pub fn of_entry(entry: &serde_json::Value) -> Option<Self> {
        match entry.get("kind") {
            None | Some(serde_json::Value::Null) => Some(Self::Apply),
            Some(k) => serde_json::from_value(k.clone()).ok(),
        }
    }
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<E: Effects> Shared<'_, E> {
    /// The apply's `applied` / `history` entry in etcd.
    pub(super) async fn record(&self, report: &mut Report, started: Instant) {
        if self.env.spec.etcd.is_none() {
            return;
        }
        let plan = self.plan;
        let who = etcd::current_holder("reconcile apply");
        let entry = serde_json::json!({
            "kind": self.opts.kind,
            "reference": plan.origin.reference,
            "commit": plan.origin.commit,
            "dirty": plan.origin.dirty,
            "time": etcd::now_rfc3339(),
            "who": who.who,
            "host": who.host,
            "summary": super::canary::history_summary(plan),
            "result": report.result_line(),
            "duration_ms": started.elapsed().as_millis() as u64,
        });
        if let Err(e) = self.fx.record(&entry).await {
            report.errors.push(e.to_string());
        }
    }

    fn registry_prefix(&self) -> Option<&str> {
        self.env.spec.etcd.as_ref().map(|e| e.registry_prefix.as_str())
    }

    /// The app whose registry directory holds `key`, if any.
    fn registry_app(&self, key: &str) -> Option<String> {
        let rp = self.registry_prefix()?;
        let planned = self.plan.actions.iter().filter_map(Action::app);
        self.env
            .apps
            .keys()
            .map(String::as_str)
            .chain(planned)
            .find(|app| key.starts_with(&keys::registry_dir(rp, app, &self.env.name)))
            .map(str::to_string)
    }

    /// The plan's etcd writes outside the registry, in transactions of at most 128.
    pub(super) async fn etcd_non_registry(&self) -> Option<String> {
        self.env.spec.etcd.as_ref()?;
        if let Err(e) = self.locked() {
            return Some(e.to_string());
        }
        let writes: Vec<etcd::Write> = self
            .plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::PutKey { key, value, .. } if self.registry_app(key).is_none() => {
                    Some(etcd::Write::Put { key: key.clone(), value: value.clone() })
                }
                Action::DeleteKey { key, .. } if self.registry_app(key).is_none() => {
                    Some(etcd::Write::Delete { key: key.clone() })
                }
                _ => None,
            })
            .collect();
        for chunk in writes.chunks(etcd::MAX_TXN_OPS) {
            if let Err(e) = self.fx.etcd_write(chunk).await {
                return Some(e.during("etcd").to_string());
            }
        }
        if !writes.is_empty() {
            self.say(format!("etcd: {} config/spec keys written", writes.len()));
        }
        None
    }

    /// Registry writes the executor did not do itself (hand-edited or stale entries),
    /// except for apps whose rollout failed (their registry stays as the executor left it).
    pub(super) async fn etcd_registry_rest(&self, failed: &BTreeSet<String>) -> Option<String> {
        self.env.spec.etcd.as_ref()?;
        if let Err(e) = self.locked() {
            return Some(e.to_string());
        }
        for a in &self.plan.actions {
            let write = match a {
                Action::PutKey { key, value, .. } => etcd::Write::Put { key: key.clone(), value: value.clone() },
                Action::DeleteKey { key, .. } => etcd::Write::Delete { key: key.clone() },
                _ => continue,
            };
            match self.registry_app(write.key()) {
                Some(app) if !failed.contains(&app) => {}
                _ => continue,
            }
            if let Err(e) = self.fx.etcd_write(&[write]).await {
                return Some(e.during("etcd registry").to_string());
            }
        }
        None
    }

    /// Registry entries put or deleted in one transaction, fenced.
    pub(super) async fn registry_write(&self, writes: &[etcd::Write]) -> Result<(), StepError> {
        self.fx.etcd_write(writes).await.map_err(|e| e.during("registry"))
    }
}

impl StepError {
    /// Name the etcd write that failed (`registry`, `lb reload-pending mark`, …).
    pub fn during(self, what: &'static str) -> Self {
        match self {
            Self::Etcd { source, .. } => Self::Etcd { what, source },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HistoryKind;

    #[test]
    fn history_kinds_read_back_including_older_and_newer_entries() {
        for k in [
            HistoryKind::Apply,
            HistoryKind::Rollback,
            HistoryKind::Watch,
            HistoryKind::Release,
            HistoryKind::Promote,
            HistoryKind::Abort,
        ] {
            let entry = serde_json::json!({ "kind": k });
            assert_eq!(entry["kind"], k.as_str());
            assert_eq!(HistoryKind::of_entry(&entry), Some(k));
        }
        // Written before kinds existed: an apply.
        assert_eq!(HistoryKind::of_entry(&serde_json::json!({"commit": "abc"})), Some(HistoryKind::Apply));
        // Written by a newer version: unknown, shown as stored.
        assert_eq!(HistoryKind::of_entry(&serde_json::json!({"kind": "canary"})), None);
    }
}
