//! The health monitor of `watch`: probes every running managed instance that has a
//! health check, on its app's interval, and turns failures into health marks in etcd
//! (`<prefix>/<env>/health/<container>`). A mark takes the instance out of the
//! registry and the LB at the next run (the planner reads the marks); deleting it
//! brings the instance back. Hysteresis and flap damping: [`HealthTracker`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::metrics;
use super::schedule::{Health, HealthTracker, Transition, Trigger};
use crate::backend::{docker, etcd, probe};
use crate::model::{HealthMark, keys};
use crate::notify::EventKind;
use crate::spec::Env;

/// One instance to probe.
#[derive(Clone)]
pub struct Target {
    pub app: String,
    pub instance: String,
    pub container_id: String,
    pub container_name: String,
    pub host: String,
    pub probe: probe::Probe,
    pub schedule: probe::Schedule,
    /// Marked unhealthy in etcd when the target list was made.
    pub marked: bool,
}

/// The targets for the instances `observed` shows running, with the probes their apps'
/// health checks describe (instances of apps without one are not probed).
pub fn targets(
    env: &Env,
    observed: &crate::model::ObservedState,
    clients: &BTreeMap<String, docker::Client>,
) -> Vec<Target> {
    let marks = match (&env.spec.etcd, &observed.etcd) {
        (Some(spec), Some(obs)) => crate::plan::health_marks(&obs.keys, &spec.prefix, &env.name),
        _ => BTreeMap::new(),
    };
    let mut out = Vec::new();
    for (host, obs) in &observed.hosts {
        let address = env.spec.hosts.iter().find(|h| &h.name == host).map(|h| h.address.clone()).unwrap_or_default();
        for i in obs.instances.iter().filter(|i| i.state.is_running()) {
            let Some(h) = env.apps.get(&i.app).and_then(|a| a.spec.health.as_ref()) else { continue };
            let Ok(schedule) = probe::Schedule::from_spec(h) else { continue };
            let client = clients.get(host).cloned();
            let (hostname, id) = (host.clone(), i.container_id.clone());
            let made = probe::Probe::from_spec(h, &address, i.port, |argv| match client {
                Some(c) => docker::cmd_runner(c, hostname, id, argv),
                None => Arc::new(move |_| Box::pin(async { Err("no connection to the host".to_string()) })),
            });
            let Ok(probe) = made else { continue };
            out.push(Target {
                app: i.app.clone(),
                instance: i.instance.clone(),
                container_id: i.container_id.clone(),
                container_name: i.name.clone(),
                host: host.clone(),
                probe,
                schedule,
                marked: marks.contains_key(&i.name),
            });
        }
    }
    out
}

/// Probe `targets` (replaced whenever the watcher sends a new list) until the channel
/// closes. On a transition: write or delete the health mark, then send a
/// [`Trigger::Health`] so a run takes the instance out of (or back into) traffic.
pub async fn monitor(
    env: Arc<Env>,
    mut targets: watch::Receiver<Vec<Target>>,
    mut tracker: HealthTracker,
    triggers: mpsc::Sender<Trigger>,
    metrics: metrics::Shared,
    timeout: Duration,
    notes: super::notify::Notes,
) {
    let mut next: BTreeMap<String, Instant> = BTreeMap::new();
    // Unhealthy containers told, with their instance (told recovered when they go).
    let mut told: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut client = None;
    loop {
        let list = targets.borrow_and_update().clone();
        let now = Instant::now();
        // Seed what etcd already says, forget what no longer runs.
        let names: BTreeSet<&str> = list.iter().map(|t| t.container_name.as_str()).collect();
        tracker.retain(|c| names.contains(c));
        let gone: Vec<(String, String)> =
            told.iter().filter(|(c, _)| !names.contains(c.as_str())).map(|(_, v)| v.clone()).collect();
        told.retain(|c, _| names.contains(c.as_str()));
        let events = gone
            .iter()
            .map(|(app, i)| {
                notes.event(EventKind::Recovered, Some(app), Some(i), format!("{i}: its unhealthy container is gone"))
            })
            .collect();
        notes.tell(events, true);
        next.retain(|c, _| names.contains(c.as_str()));
        for t in &list {
            if t.marked && tracker.health(&t.container_name) == Health::Healthy && !next.contains_key(&t.container_name)
            {
                tracker.seed(&t.container_name, Health::Unhealthy, now);
            }
            next.entry(t.container_name.clone()).or_insert(now + t.schedule.start_period);
        }
        let due: Vec<&Target> =
            list.iter().filter(|t| next.get(&t.container_name).is_some_and(|n| *n <= now)).collect();
        let results = futures::future::join_all(
            due.iter().map(|t| async move { (*t, probe::probe_once(&t.probe, t.schedule.timeout).await) }),
        )
        .await;
        let now = Instant::now();
        for (t, r) in results {
            next.insert(t.container_name.clone(), now + t.schedule.interval);
            let ok = r.is_ok();
            let Some(change) = tracker.observe(&t.container_name, ok, t.schedule.retries, now) else { continue };
            let error = r.err().map(|e| e.to_string()).unwrap_or_default();
            let (app, i) = (Some(t.app.as_str()), Some(t.instance.as_str()));
            let event = match change {
                Transition::Down => {
                    tracing::warn!(
                        instance = t.instance,
                        host = t.host,
                        error,
                        "instance unhealthy: taking it out of traffic"
                    );
                    told.insert(t.container_name.clone(), (t.app.clone(), t.instance.clone()));
                    let message =
                        format!("{} on {}: health check failing ({error}); out of traffic", t.instance, t.host);
                    notes.event(EventKind::Unhealthy, app, i, message)
                }
                Transition::Up => {
                    tracing::info!(instance = t.instance, host = t.host, "instance healthy again: back into traffic");
                    told.remove(&t.container_name);
                    let message = format!("{} on {}: healthy again, back into traffic", t.instance, t.host);
                    notes.event(EventKind::Recovered, app, i, message)
                }
            };
            notes.tell(vec![event], true);
            if let Err(e) = write_mark(&env, &mut client, t, change, &error, timeout).await {
                tracing::warn!(instance = t.instance, error = %e, "cannot write the health mark");
                if let Ok(mut m) = metrics.lock() {
                    *m.failures.entry("health_mark").or_default() += 1;
                }
                continue;
            }
            let _ = triggers.try_send(Trigger::Health { instance: t.instance.clone() });
        }
        if let Ok(mut m) = metrics.lock() {
            m.unhealthy = list.iter().filter(|t| tracker.health(&t.container_name) == Health::Unhealthy).count() as u64;
        }
        // Sleep until the next probe is due, or the list changes.
        let wake = next.values().min().copied().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            changed = targets.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(50))) => {}
        }
    }
}

async fn write_mark(
    env: &Env,
    client: &mut Option<etcd::Client>,
    t: &Target,
    change: Transition,
    error: &str,
    timeout: Duration,
) -> Result<(), String> {
    let Some(spec) = &env.spec.etcd else {
        // No etcd, so no registry or LB either: nothing to take out of traffic.
        return Ok(());
    };
    if client.is_none() {
        *client = Some(etcd::connect(spec, timeout).await.map_err(|e| e.to_string())?);
    }
    let Some(c) = client.as_mut() else { return Ok(()) };
    let key = keys::health(&spec.prefix, &env.name, &t.container_name);
    let r = match change {
        Transition::Down => {
            let mark = HealthMark {
                app: t.app.clone(),
                instance: t.instance.clone(),
                container_id: t.container_id.clone(),
                since: etcd::now_rfc3339(),
                error: error.to_string(),
            };
            let value = serde_json::to_string(&mark).map_err(|e| e.to_string())?;
            etcd::put(c, &key, &value).await
        }
        Transition::Up => etcd::delete(c, &key).await,
    };
    if r.is_err() {
        *client = None;
    }
    r.map_err(|e| e.to_string())
}
