//! Who receives traffic while an apply runs: the serving set (instances that should
//! get requests now), the registry entries and LB configs rendered from it, and
//! taking instances out of traffic (deregister → LB reload → drain wait).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::effects::Effects;
use super::{Shared, StepError};
use crate::backend::etcd;
use crate::model::{ObservedState, keys};
use crate::placement::Assignment;
use crate::plan::{self, Action, Plan};
use crate::spec::Env;

/// Instances that receive traffic before anything changes: the observed running
/// containers the plan keeps or replaces (not duplicates or unrecognised ones).
pub(super) fn initial_serving(env: &Env, plan: &Plan, observed: &ObservedState) -> BTreeSet<Assignment> {
    let dropped: BTreeSet<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { old, reason: plan::Reason::Duplicate | plan::Reason::Unrecognised, .. } => {
                Some(old.container_id.as_str())
            }
            Action::Start { old, .. } => Some(old.container_id.as_str()),
            _ => None,
        })
        .collect();
    let running: Vec<(Assignment, String)> = observed
        .hosts
        .values()
        .flat_map(|h| h.instances.iter())
        .filter(|i| i.state.is_running() && !dropped.contains(i.container_id.as_str()))
        .filter_map(|i| {
            let a = Assignment { app: i.app.clone(), ordinal: i.ordinal?, host: i.host.clone(), port: i.port };
            Some((a, i.name.clone()))
        })
        .collect();
    // Instances `watch` marked unhealthy are not serving (as in the plan's own LB content).
    let marks = match (&env.spec.etcd, &observed.etcd) {
        (Some(spec), Some(obs)) => plan::health_marks(&obs.keys, &spec.prefix, &env.name),
        _ => BTreeMap::new(),
    };
    let assignments: Vec<Assignment> = running.iter().map(|(a, _)| a.clone()).collect();
    let kept: BTreeMap<(String, u32), String> =
        running.iter().map(|(a, c)| ((a.app.clone(), a.ordinal), c.clone())).collect();
    let excluded = plan::out_of_traffic(&assignments, &kept, &marks);
    assignments.into_iter().filter(|a| !excluded.contains(&(a.app.clone(), a.ordinal))).collect()
}

impl<E: Effects> Shared<'_, E> {
    /// The address of `host` (its `address` in the environment).
    pub(super) fn address_of(&self, host: &str) -> Result<&str, StepError> {
        self.env
            .spec
            .hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| h.address.as_str())
            .ok_or_else(|| StepError::UnknownHost { host: host.to_string() })
    }

    /// Put `a` into (or take it out of) the registry, then the serving set (which the
    /// next LB update renders). An app removed from the repo has its entries deleted
    /// too, before its instances stop.
    pub(super) async fn register(&self, a: &Assignment, on: bool) -> Result<(), StepError> {
        self.locked()?;
        let registry = match self.env.apps.get(&a.app) {
            Some(x) => x.spec.registry,
            None => !on,
        };
        if let (true, Some(spec), Some(port)) = (registry, &self.env.spec.etcd, a.port) {
            let ip = self.address_of(&a.host)?;
            let key = keys::registry(&spec.registry_prefix, &a.app, &self.env.name, ip, port);
            let write =
                if on { etcd::Write::Put { key, value: format!("{ip}:{port}") } } else { etcd::Write::Delete { key } };
            self.registry_write(write).await?;
        }
        let mut s = self.serving.lock().await;
        if on {
            s.insert(a.clone());
        } else {
            s.remove(a);
        }
        Ok(())
    }

    /// Rewrite and reload the LB for the current serving set, when the app is LB-backed.
    /// `Ok(true)` when the LB was reloaded (its content changed).
    pub(super) async fn lb_update(&self, app: &str) -> Result<bool, StepError> {
        self.lb_update_with(app, false).await
    }

    /// [`Shared::lb_update`]; with `unsure`, also reload an unchanged file unless this
    /// apply reloaded already.
    async fn lb_update_with(&self, app: &str, unsure: bool) -> Result<bool, StepError> {
        if self.env.spec.lb.is_none() || self.env.apps.get(app).is_none_or(|a| a.spec.lb.is_none()) {
            return Ok(false);
        }
        self.locked()?;
        let _one_at_a_time = self.lb_lock.lock().await;
        let content = self.serving_lb_content().await?;
        let force = unsure && !self.lb_reloaded.load(Ordering::SeqCst);
        let reloaded = self.lb_write_and_reload(content, force).await?;
        if reloaded {
            self.lb_reloaded.store(true, Ordering::SeqCst);
        }
        Ok(reloaded)
    }

    /// The LB config for the instances serving now.
    async fn serving_lb_content(&self) -> Result<String, StepError> {
        let serving: Vec<Assignment> =
            self.serving.lock().await.iter().filter(|a| self.env.apps.contains_key(&a.app)).cloned().collect();
        let canaries = super::canary::serving_canaries(self.plan);
        Ok(plan::lb_content_with(self.env, Arc::clone(&self.files), &serving, &canaries)?)
    }

    /// After instances of `app` left the serving set: reload the LB and, when it was
    /// reloaded, wait [`Shared::drain`] before anything is stopped — a reload is
    /// asynchronous (nginx's old workers keep the old upstreams until they exit), so
    /// stopping at once fails the requests still routed to the leaving instances.
    ///
    /// The first time in an apply this reloads even when the file already has the
    /// wanted content: an apply killed between writing the file and reloading leaves a
    /// right file and a running LB that still routes to the instances about to stop.
    pub(super) async fn leave_traffic(&self, app: &str) -> Result<(), StepError> {
        if self.lb_update_with(app, true).await? && !self.drain.is_zero() {
            self.say(format!("lb: waiting {:?} for the reload to drain {app}'s leaving instances", self.drain));
            self.fx.sleep(self.drain).await;
        }
        Ok(())
    }

    /// The LB file after all apps: the plan's content when everything succeeded,
    /// else the rendering of what serves now.
    pub(super) async fn final_lb(&self, all_ok: bool) -> Option<String> {
        self.env.spec.lb.as_ref()?;
        if let Err(e) = self.locked() {
            return Some(format!("lb: not updated: {e}"));
        }
        let _one_at_a_time = self.lb_lock.lock().await;
        let planned = self
            .plan
            .actions
            .iter()
            .find_map(|a| if let Action::WriteLb { content, .. } = a { Some(content.clone()) } else { None })
            .filter(|_| all_ok);
        let content = match planned {
            Some(c) => c,
            None => match self.serving_lb_content().await {
                Ok(c) => c,
                Err(e) => return Some(format!("lb: {e}")),
            },
        };
        // The plan asks for a reload without a write when an earlier apply left one pending.
        let force =
            self.plan.actions.iter().any(|a| matches!(a, Action::ReloadLb)) && !self.lb_reloaded.load(Ordering::SeqCst);
        self.lb_write_and_reload(content, force).await.err().map(|e| format!("lb: {e}"))
    }

    /// Write `content` to the LB file (checked) and reload, unless it is already there
    /// (and `force` is false). `Ok(true)` when it reloaded.
    ///
    /// `<prefix>/<env>/lb/reload-pending` is set before the file changes and deleted
    /// once the reload succeeded: a crash in between leaves the mark, and the next plan
    /// reloads.
    async fn lb_write_and_reload(&self, content: String, force: bool) -> Result<bool, StepError> {
        let same = self.fx.lb_read().await?.as_deref() == Some(content.as_str());
        if same && !force {
            return Ok(false);
        }
        let pending = self.env.spec.etcd.as_ref().map(|spec| keys::lb_reload_pending(&spec.prefix, &self.env.name));
        let mark = |write: etcd::Write| async {
            self.fx.etcd_write(&[write]).await.map_err(|e| e.during("lb reload-pending mark"))
        };
        if let Some(key) = &pending
            && !same
        {
            mark(etcd::Write::Put { key: key.clone(), value: etcd::now_rfc3339() }).await?;
        }
        if !same {
            self.locked()?;
            self.fx.lb_write_checked(&content).await?;
        }
        self.locked()?;
        self.fx.lb_reload().await?;
        if let Some(key) = pending {
            mark(etcd::Write::Delete { key }).await?;
        }
        Ok(true)
    }
}
