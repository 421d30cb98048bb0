//! Who receives traffic while an apply runs: the serving set (instances that should
//! get requests now), the registry entries and LB configs rendered from it, and
//! taking instances out of traffic (deregister → LB reload → drain wait).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::effects::Effects;
use super::report::Milestone;
use super::{Shared, StepError};
use crate::backend::etcd;
use crate::model::{ObservedState, keys};
use crate::placement::Assignment;
use crate::plan::{self, Action, Plan};
use crate::spec::Env;

/// The most registry writes in one etcd transaction (etcd refuses more than its
/// `--max-txn-ops`, 128 by default).
pub(super) const REGISTRY_TXN: usize = 100;

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
        self.register_all(std::slice::from_ref(a), on).await
    }

    /// [`Shared::register`] for several instances at once: their registry entries in one
    /// etcd transaction (at most [`REGISTRY_TXN`] writes each), then the serving set.
    pub(super) async fn register_all(&self, all: &[Assignment], on: bool) -> Result<(), StepError> {
        self.locked()?;
        let mut writes = Vec::new();
        let mut registered = Vec::new();
        for a in all {
            let registry = match self.env.apps.get(&a.app) {
                Some(x) => x.spec.registry,
                None => !on,
            };
            if let (true, Some(spec), Some(port)) = (registry, &self.env.spec.etcd, a.port) {
                let ip = self.address_of(&a.host)?;
                let key = keys::registry(&spec.registry_prefix, &a.app, &self.env.name, ip, port);
                writes.push(if on {
                    etcd::Write::Put { key, value: format!("{ip}:{port}") }
                } else {
                    etcd::Write::Delete { key }
                });
                registered.push(a);
            }
        }
        for chunk in writes.chunks(REGISTRY_TXN) {
            self.registry_write(chunk).await?;
        }
        if on {
            for a in registered {
                self.mark(Milestone::Registered, a);
            }
        }
        let mut s = self.serving.lock().await;
        for a in all {
            if on {
                s.insert(a.clone());
            } else {
                s.remove(a);
            }
        }
        Ok(())
    }

    /// The LBs that route `app` (`EnvironmentSpec::lb_for` of its `lb.via`).
    fn lbs_routing(&self, app: &str) -> Vec<String> {
        let Some(lb) = self.env.apps.get(app).and_then(|a| a.spec.lb.as_ref()) else { return vec![] };
        self.env.spec.lb_for(lb.via.as_deref()).map(|l| vec![l.to_string()]).unwrap_or_default()
    }

    /// The container LBs whose config lives in instances of `app`.
    fn lbs_hosted_by(&self, app: &str) -> Vec<String> {
        self.env
            .spec
            .load_balancers()
            .into_iter()
            .filter(|(_, spec)| spec.container.as_ref().is_some_and(|c| c.app == app))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Rewrite and reload every LB that routes `app`, for the current serving set.
    /// `Ok(true)` when one was reloaded (its content changed).
    pub(super) async fn lb_update(&self, app: &str) -> Result<bool, StepError> {
        Ok(!self.lb_update_with(app, false).await?.is_empty())
    }

    /// [`Shared::lb_update`]; with `unsure`, also reload an unchanged config unless this
    /// apply reloaded that LB already. The LBs that were reloaded.
    ///
    /// Apps finishing at once (a cold start or a DR brings every app of a level up
    /// together) share reloads: LB writes are serialised, and an app that gets the LB
    /// after another one rendered a serving set with its instances in finds the same
    /// content in place and reloads nothing. Only the instances in the rendered set
    /// are marked serving (`apply --report`), not ones registered meanwhile.
    async fn lb_update_with(&self, app: &str, unsure: bool) -> Result<Vec<String>, StepError> {
        let mut reloaded = Vec::new();
        for lb in self.lbs_routing(app) {
            self.locked()?;
            let _one_at_a_time = self.lb_lock.lock().await;
            let (content, rendered) = self.serving_lb_content_for(&lb).await?;
            let force = unsure && !self.reloaded(&lb);
            if self.lb_write_and_reload(&lb, content, force).await? {
                reloaded.push(lb);
            }
            self.served(&rendered);
        }
        Ok(reloaded)
    }

    /// Whether this apply reloaded LB `lb` already.
    fn reloaded(&self, lb: &str) -> bool {
        self.lb_reloaded.lock().is_ok_and(|s| s.contains(lb))
    }

    /// These instances are served by the LBs (`apply --report`).
    fn served(&self, serving: &[Assignment]) {
        if let Some(t) = &self.timeline {
            t.serving(serving);
        }
    }

    /// LB `lb`'s config for the instances serving now.
    async fn serving_lb_content(&self, lb: &str) -> Result<String, StepError> {
        Ok(self.serving_lb_content_for(lb).await?.0)
    }

    /// LB `lb`'s config for the instances serving now, and those instances.
    async fn serving_lb_content_for(&self, lb: &str) -> Result<(String, Vec<Assignment>), StepError> {
        let serving: Vec<Assignment> =
            self.serving.lock().await.iter().filter(|a| self.env.apps.contains_key(&a.app)).cloned().collect();
        let canaries = super::canary::serving_canaries(self.plan);
        let content = plan::lb_content_with(self.env, Arc::clone(&self.files), lb, &serving, &canaries)?;
        Ok((content, serving))
    }

    /// A new container of an app that hosts LBs (`container: {app}`): before it starts,
    /// it gets each LB's config for what serves now, so it serves (and passes its health
    /// check) with the same config as its peers instead of the image's default.
    pub(super) async fn seed_lbs(&self, app: &str, host: &str, id: &str) -> Result<(), StepError> {
        for lb in self.lbs_hosted_by(app) {
            self.locked()?;
            let content = self.serving_lb_content(&lb).await?;
            self.fx.lb_seed(&lb, host, id, &content).await?;
        }
        Ok(())
    }

    /// After instances of `app` left the serving set: reload its LBs and, for each LB
    /// that was reloaded, wait its drain before anything is stopped — a reload is
    /// asynchronous (nginx's old workers keep the old upstreams until they exit), so
    /// stopping at once fails the requests still routed to the leaving instances.
    ///
    /// The first time in an apply this reloads even when the config already has the
    /// wanted content: an apply killed between writing the file and reloading leaves a
    /// right file and a running LB that still routes to the instances about to stop.
    pub(super) async fn leave_traffic(&self, app: &str) -> Result<(), StepError> {
        let reloaded = self.lb_update_with(app, true).await?;
        let drain = reloaded.iter().map(|lb| self.drain.of(lb)).max().unwrap_or_default();
        if !drain.is_zero() {
            self.say(format!("lb: waiting {drain:?} for the reload to drain {app}'s leaving instances"));
            self.fx.sleep(drain).await;
        }
        Ok(())
    }

    /// Every LB's config after all apps: the plan's content when everything succeeded,
    /// else the rendering of what serves now. One message per LB that failed.
    pub(super) async fn final_lb(&self, all_ok: bool) -> Vec<String> {
        let mut errors = Vec::new();
        for lb in self.env.spec.load_balancers().into_keys() {
            if let Err(e) = self.final_lb_of(lb, all_ok).await {
                errors.push(if plan::is_default_lb(lb) { format!("lb: {e}") } else { format!("lb {lb}: {e}") });
            }
        }
        errors
    }

    async fn final_lb_of(&self, lb: &str, all_ok: bool) -> Result<(), String> {
        self.locked().map_err(|e| format!("not updated: {e}"))?;
        let _one_at_a_time = self.lb_lock.lock().await;
        let planned = self
            .plan
            .actions
            .iter()
            .find_map(|a| match a {
                Action::WriteLb { lb: l, content, .. } if l == lb => Some(content.clone()),
                _ => None,
            })
            .filter(|_| all_ok);
        // The instances the written config serves: with the plan's content, every one
        // serving now (all apps are done: that is the plan's final set).
        let (content, rendered) = match planned {
            Some(c) => (c, self.serving.lock().await.iter().cloned().collect()),
            None => self.serving_lb_content_for(lb).await.map_err(|e| e.to_string())?,
        };
        // The plan asks for a reload without a write when an earlier apply left one pending.
        let force =
            self.plan.actions.iter().any(|a| matches!(a, Action::ReloadLb { lb: l } if l == lb)) && !self.reloaded(lb);
        self.lb_write_and_reload(lb, content, force).await.map_err(|e| e.to_string())?;
        self.served(&rendered);
        Ok(())
    }

    /// Write `content` to LB `lb` (checked) and reload, unless it is already there
    /// (and `force` is false). `Ok(true)` when it reloaded.
    ///
    /// The LB's reload-pending mark (`<prefix>/<env>/lb/reload-pending` for `default`,
    /// `<prefix>/<env>/lb/<name>/reload-pending` for the others) is set before the config
    /// changes and deleted once the reload succeeded everywhere: a crash in between, or an
    /// instance whose reload failed, leaves the mark, and the next plan reloads.
    async fn lb_write_and_reload(&self, lb: &str, content: String, force: bool) -> Result<bool, StepError> {
        let same = self.fx.lb_read(lb).await?.as_deref() == Some(content.as_str());
        if same && !force {
            return Ok(false);
        }
        let pending =
            self.env.spec.etcd.as_ref().map(|spec| keys::lb_reload_pending_for(&spec.prefix, &self.env.name, lb));
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
            self.fx.lb_write_checked(lb, &content).await?;
        }
        self.locked()?;
        self.fx.lb_reload(lb).await?;
        if let Ok(mut s) = self.lb_reloaded.lock() {
            s.insert(lb.to_string());
        }
        if let Some(key) = pending {
            mark(etcd::Write::Delete { key }).await?;
        }
        Ok(true)
    }
}
