//! Applying a plan to an observed state in memory: what the world looks like
//! after a successful apply. Used by property tests (`plan(d, simulate(plan(d, o), o))`
//! is empty) and as the model the real executor must match.
//!
//! Invariant: pure. `created` times come from a counter, not the clock.

use crate::model::{ContainerState, ObservedInstance, ObservedState};

use super::{Action, NewInstance, Plan};

/// The state after `plan` has been applied to `observed`.
pub fn simulate(plan: &Plan, observed: &ObservedState, commit: &str) -> ObservedState {
    let mut out = observed.clone();
    let mut clock = latest_created(observed);
    let mut next_id = 0u64;
    let mut create = |out: &mut ObservedState, app: &str, instance: &str, new: &NewInstance| {
        clock += 1;
        next_id += 1;
        let id = format!("sim{next_id:06}-{}", &new.spec_hash[..8.min(new.spec_hash.len())]);
        add_instance(out, app, instance, new, commit, id, clock);
    };
    for a in &plan.actions {
        match a {
            Action::Create { app, instance, new, .. } => create(&mut out, app, instance, new),
            Action::Replace { app, instance, old, new, .. } => {
                create(&mut out, app, instance, new);
                remove_container(&mut out, &old.host, &old.container_id);
            }
            Action::Remove { old, .. } => remove_container(&mut out, &old.host, &old.container_id),
            Action::Start { old, .. } => set_running(&mut out, &old.host, &old.container_id),
            Action::PutKey { key, value, .. } => {
                if let Some(e) = out.etcd.as_mut() {
                    e.keys.insert(key.clone(), value.clone());
                }
            }
            Action::DeleteKey { key, .. } => {
                if let Some(e) = out.etcd.as_mut() {
                    e.keys.remove(key);
                }
            }
            Action::WriteLb { lb, content, .. } => {
                out.lbs.insert(lb.clone(), Some(content.clone()));
            }
            Action::ReloadLb { .. } => {}
        }
    }
    sort_instances(&mut out);
    out
}

/// The newest creation time in `observed` (0 when empty): simulated containers are
/// created after it.
pub fn latest_created(observed: &ObservedState) -> i64 {
    observed.hosts.values().flat_map(|h| h.instances.iter().map(|i| i.created)).max().unwrap_or(0)
}

/// A running container `id` for `new`, as the executor's create + start leave it.
pub fn add_instance(
    out: &mut ObservedState,
    app: &str,
    instance: &str,
    new: &NewInstance,
    commit: &str,
    id: String,
    created: i64,
) {
    let host = out.hosts.entry(new.host.clone()).or_default();
    host.instances.push(ObservedInstance {
        container_id: id,
        name: new.container_name.clone(),
        host: new.host.clone(),
        app: app.to_string(),
        instance: instance.to_string(),
        ordinal: ObservedInstance::ordinal_of(app, instance),
        spec_hash: new.spec_hash.clone(),
        commit: commit.to_string(),
        image: new.spec.get("image").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
        state: ContainerState::Running,
        status: "Up".into(),
        created,
        port: new.port,
        spec: Some(new.spec.clone()),
        image_id: String::new(),
        repo_digests: Vec::new(),
    });
}

/// Container `id` on `host` is gone (stopped and removed).
pub fn remove_container(out: &mut ObservedState, host: &str, id: &str) {
    if let Some(h) = out.hosts.get_mut(host) {
        h.instances.retain(|i| i.container_id != id);
    }
}

/// Container `id` on `host` runs.
pub fn set_running(out: &mut ObservedState, host: &str, id: &str) {
    if let Some(i) = out.hosts.get_mut(host).and_then(|h| h.instances.iter_mut().find(|i| i.container_id == id)) {
        i.state = ContainerState::Running;
    }
}

/// Each host's instances in the order observation lists them.
pub fn sort_instances(out: &mut ObservedState) {
    for h in out.hosts.values_mut() {
        h.instances.sort_by(|a, b| {
            (&a.app, &a.instance, a.created, &a.container_id).cmp(&(&b.app, &b.instance, b.created, &b.container_id))
        });
    }
}
