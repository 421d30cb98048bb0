//! The in-memory world for the executor's unit tests: containers kept as an
//! `ObservedState` changed with `plan::simulate`'s own steps, etcd keys, the LB file
//! and what the LB last loaded. Every call is recorded in order, as one line
//! (`create <name>`, `put <key>`, `lb reload`, `sleep 1.5s`, …); reads that change
//! nothing (`lb_read`, `still_running`) are not recorded. Failures are injected by
//! instance: unhealthy new or restarted containers (with their output), a lock lost after N writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use super::effects::{Check, Effects, LogTail};
use super::{Progress, StepError};
use crate::backend::probe::{HealthError, ProbeFailure};
use crate::backend::{docker, etcd};
use crate::model::{ObservedState, labels};
use crate::plan::instance::InstanceSpec;
use crate::plan::{Action, NewInstance, Plan, simulate};

#[derive(Default)]
struct Inner {
    state: ObservedState,
    /// Container name → the plan's new instance it is.
    planned: BTreeMap<String, NewInstance>,
    /// Container id → name, of every container ever seen.
    names: BTreeMap<String, String>,
    etcd: BTreeMap<String, String>,
    /// Per LB, its config (as `ObservedState::lbs`).
    lb_files: BTreeMap<String, Option<String>>,
    /// Per LB, the content it loaded at its last reload.
    lb_live: BTreeMap<String, Option<String>>,
    clock: i64,
    calls: Vec<String>,
    writes: usize,
    lose_lock_after: Option<usize>,
    /// Instances whose new containers fail their health check, with their output.
    unhealthy: BTreeMap<String, String>,
    /// The LB check rejects configs containing this text.
    lb_rejects: Option<String>,
    /// Instances whose existing (observed) containers fail their health check once
    /// started again, with their output.
    unhealthy_restarted: BTreeMap<String, String>,
    /// An LB reload lets the other tasks run before it is done.
    slow_lb: bool,
    /// Every reload: the number of calls recorded once it was done, the LB, what it loaded.
    reloads: Vec<(usize, String, Option<String>)>,
}

impl Inner {
    /// LB `lb`'s config as observed before the apply.
    fn state_lb(&self, lb: &str) -> Option<String> {
        self.state.lbs.get(lb).cloned().flatten()
    }
}

/// The in-memory [`Effects`].
pub struct Memory {
    inner: Mutex<Inner>,
}

impl Memory {
    /// The world as `observed` says, about to be changed by `plan`.
    pub fn new(observed: &ObservedState, plan: &Plan) -> Self {
        let planned = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { new, .. } | Action::Replace { new, .. } => {
                    Some((new.container_name.clone(), new.clone()))
                }
                _ => None,
            })
            .collect();
        let names = observed
            .hosts
            .values()
            .flat_map(|h| h.instances.iter().map(|i| (i.container_id.clone(), i.name.clone())))
            .collect();
        let etcd = observed.etcd.as_ref().map(|e| e.keys.clone()).unwrap_or_default();
        let lb_files = observed.lbs.clone();
        let inner = Inner {
            state: observed.clone(),
            planned,
            names,
            etcd,
            lb_live: lb_files.clone(),
            lb_files,
            clock: simulate::latest_created(observed),
            ..Inner::default()
        };
        Self { inner: Mutex::new(inner) }
    }

    /// New containers of `instance` fail their health check, having printed `output`.
    pub fn unhealthy(self, instance: &str, output: &str) -> Self {
        self.with(|i| {
            i.unhealthy.insert(instance.to_string(), output.to_string());
        })
    }

    /// The existing container of `instance` fails its health check when started again,
    /// having printed `output`.
    pub fn unhealthy_when_restarted(self, instance: &str, output: &str) -> Self {
        self.with(|i| {
            i.unhealthy_restarted.insert(instance.to_string(), output.to_string());
        })
    }

    /// The lock is lost after `n` writes.
    pub fn lose_lock_after(self, n: usize) -> Self {
        self.with(|i| i.lose_lock_after = Some(n))
    }

    /// The LB's check command rejects any config containing `text`.
    pub fn lb_rejects(self, text: &str) -> Self {
        self.with(|i| i.lb_rejects = Some(text.to_string()))
    }

    /// An LB reload takes a moment (it yields once before it is done), so apps that
    /// finish together find the LB busy, as with a real reload.
    pub fn slow_lb(self) -> Self {
        self.with(|i| i.slow_lb = true)
    }

    /// What LB `lb` ran once `calls` calls were recorded (the content of its last reload by
    /// then; the observed file before any).
    pub fn lb_live_at(&self, lb: &str, calls: usize) -> Option<String> {
        let i = self.lock();
        match i.reloads.iter().rev().find(|(at, l, _)| *at <= calls && l == lb) {
            Some((_, _, content)) => content.clone(),
            None => i.state_lb(lb),
        }
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> Self {
        f(&mut self.lock());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A test that panicked while holding it has failed already.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The containers, etcd keys and LB file now, as an observation would see them.
    pub fn observed(&self) -> ObservedState {
        let i = self.lock();
        let mut out = i.state.clone();
        simulate::sort_instances(&mut out);
        if let Some(e) = out.etcd.as_mut() {
            e.keys.clone_from(&i.etcd);
        }
        out.lbs.clone_from(&i.lb_files);
        out
    }

    /// What the default LB serves from (its content at the last reload).
    pub fn lb_live(&self) -> Option<String> {
        self.lb_live_of(crate::spec::types::DEFAULT_LB)
    }

    /// What LB `lb` serves from.
    pub fn lb_live_of(&self, lb: &str) -> Option<String> {
        self.lock().lb_live.get(lb).cloned().flatten()
    }

    /// `lb <verb>` for the default LB (as the single LB was always recorded), else
    /// `lb <name> <verb>`.
    fn lb_call(lb: &str, verb: &str) -> String {
        if lb == crate::spec::types::DEFAULT_LB { format!("lb {verb}") } else { format!("lb {lb} {verb}") }
    }

    /// The lock counts as lost once the writes reached the limit.
    fn lost(i: &Inner) -> bool {
        i.lose_lock_after.is_some_and(|n| i.writes >= n)
    }

    /// Record a write.
    fn write(&self, call: String) {
        let mut i = self.lock();
        i.calls.push(call);
        i.writes += 1;
    }

    fn container<'i>(i: &'i Inner, host: &str, id: &str) -> Option<&'i crate::model::ObservedInstance> {
        i.state.hosts.get(host).and_then(|h| h.instances.iter().find(|c| c.container_id == id))
    }

    /// The failures injected for container `name`: `unhealthy` when this plan creates
    /// it, else `unhealthy_restarted`.
    fn failing<'i>(i: &'i Inner, name: &str) -> &'i BTreeMap<String, String> {
        if i.planned.contains_key(name) { &i.unhealthy } else { &i.unhealthy_restarted }
    }

    fn name(i: &Inner, id: &str) -> String {
        i.names.get(id).cloned().unwrap_or_else(|| id.to_string())
    }
}

fn gone(host: &str, id: &str) -> StepError {
    StepError::Docker(docker::DockerError::NotRunning {
        host: host.to_string(),
        container: id.to_string(),
        state: "gone".into(),
    })
}

impl Effects for Memory {
    /// Images are always there in memory (pull failures are tested against a real
    /// registry: tests/it/registry.rs).
    fn pull_failures(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    async fn ensure_image(&self, host: &str, image: &str, _progress: &Progress) -> Result<(), StepError> {
        self.lock().calls.push(format!("image {host} {image}"));
        Ok(())
    }

    async fn create(
        &self,
        host: &str,
        name: &str,
        _spec: &InstanceSpec,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, StepError> {
        self.write(format!("create {name}"));
        let mut i = self.lock();
        let new = i.planned.get(name).cloned().ok_or_else(|| StepError::Task(format!("{name} is not in the plan")))?;
        let id = format!("mem-{name}");
        let (app, instance) = (labels.get(labels::APP), labels.get(labels::INSTANCE));
        let (app, instance) = (app.cloned().unwrap_or_default(), instance.cloned().unwrap_or_default());
        i.clock += 1;
        let clock = i.clock;
        simulate::add_instance(&mut i.state, &app, &instance, &new, "", id.clone(), clock);
        // Created, not started yet.
        if let Some(c) = i.state.hosts.get_mut(host).and_then(|h| h.instances.iter_mut().find(|c| c.container_id == id))
        {
            c.state = crate::model::ContainerState::Created;
        }
        i.names.insert(id.clone(), name.to_string());
        Ok(id)
    }

    async fn start(&self, host: &str, id: &str) -> Result<(), StepError> {
        let name = Self::name(&self.lock(), id);
        self.write(format!("start {name}"));
        simulate::set_running(&mut self.lock().state, host, id);
        Ok(())
    }

    async fn stop_and_remove(&self, host: &str, id: &str, _grace: Duration) -> Result<(), StepError> {
        let name = Self::name(&self.lock(), id);
        self.write(format!("stop {name}"));
        simulate::remove_container(&mut self.lock().state, host, id);
        Ok(())
    }

    async fn still_running(&self, host: &str, id: &str) -> Result<(), StepError> {
        let i = self.lock();
        let running = Self::container(&i, host, id).is_some_and(|c| c.state.is_running());
        if running { Ok(()) } else { Err(gone(host, id)) }
    }

    async fn wait_healthy(&self, host: &str, id: &str, _check: Check<'_>) -> Result<(), StepError> {
        let mut i = self.lock();
        let name = Self::name(&i, id);
        let instance = Self::container(&i, host, id).map(|c| c.instance.clone()).unwrap_or_default();
        // New containers (made here) fail as `unhealthy` says, observed ones as
        // `unhealthy_restarted` does.
        let fails = Self::failing(&i, &name).contains_key(&instance);
        i.calls.push(format!("{} {name}", if fails { "unhealthy" } else { "healthy" }));
        if fails {
            return Err(StepError::Unhealthy {
                host: host.to_string(),
                container: id.to_string(),
                cause: Box::new(HealthError::GaveUp {
                    attempts: 3,
                    failures: 3,
                    last: ProbeFailure::Status {
                        path: "/healthz".into(),
                        at: host.to_string(),
                        status: 503,
                        phrase: String::new(),
                    },
                }),
            });
        }
        Ok(())
    }

    async fn logs_tail(&self, host: &str, id: &str, tail: LogTail) -> Result<String, StepError> {
        let mut i = self.lock();
        let name = Self::name(&i, id);
        i.calls.push(format!("logs {name}"));
        let instance = Self::container(&i, host, id).map(|c| c.instance.clone()).unwrap_or_default();
        let out = Self::failing(&i, &name).get(&instance).cloned().unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines[lines.len().saturating_sub(tail.lines)..].join("\n"))
    }

    async fn etcd_write(&self, writes: &[etcd::Write]) -> Result<(), StepError> {
        if Self::lost(&self.lock()) {
            let key = writes.first().map(|w| w.key().to_string()).unwrap_or_default();
            let source = etcd::EtcdError::Fenced { lock: "lock".into(), key };
            return Err(StepError::Etcd { what: "etcd", source });
        }
        for w in writes {
            match w {
                etcd::Write::Put { key, value } => {
                    self.write(format!("put {key}"));
                    self.lock().etcd.insert(key.clone(), value.clone());
                }
                etcd::Write::Delete { key } => {
                    self.write(format!("delete {key}"));
                    self.lock().etcd.remove(key);
                }
            }
        }
        Ok(())
    }

    async fn record(&self, entry: &serde_json::Value) -> Result<(), StepError> {
        if Self::lost(&self.lock()) {
            let source = etcd::EtcdError::Fenced { lock: "lock".into(), key: "applied".into() };
            return Err(StepError::Etcd { what: "recording the apply in etcd", source });
        }
        let kind = entry.get("kind").and_then(|k| k.as_str()).unwrap_or("?").to_string();
        let result = entry.get("result").and_then(|k| k.as_str()).unwrap_or("?").to_string();
        self.write(format!("record {kind}: {result}"));
        Ok(())
    }

    async fn lb_read(&self, lb: &str) -> Result<Option<String>, StepError> {
        Ok(self.lock().lb_files.get(lb).cloned().flatten())
    }

    async fn lb_write_checked(&self, lb: &str, content: &str) -> Result<(), StepError> {
        self.write(Self::lb_call(lb, "write"));
        let mut i = self.lock();
        if let Some(bad) = i.lb_rejects.as_deref().filter(|b| content.contains(b)) {
            return Err(StepError::Lb(crate::backend::lb::LbError::CheckFailed {
                path: "lb.conf".into(),
                command: "check".into(),
                output: format!("rejected: {bad}"),
            }));
        }
        i.lb_files.insert(lb.to_string(), Some(content.to_string()));
        Ok(())
    }

    async fn lb_reload(&self, lb: &str) -> Result<(), StepError> {
        let slow = self.lock().slow_lb;
        if slow {
            tokio::task::yield_now().await;
        }
        self.write(Self::lb_call(lb, "reload"));
        let mut i = self.lock();
        let file = i.lb_files.get(lb).cloned().flatten();
        let at = i.calls.len();
        i.reloads.push((at, lb.to_string(), file.clone()));
        i.lb_live.insert(lb.to_string(), file);
        Ok(())
    }

    async fn lb_seed(&self, lb: &str, _host: &str, id: &str, _content: &str) -> Result<(), StepError> {
        let name = Self::name(&self.lock(), id);
        self.write(Self::lb_call(lb, &format!("seed {name}")));
        Ok(())
    }

    fn lock_lost(&self) -> Option<String> {
        let mut i = self.lock();
        if Self::lost(&i) {
            if i.calls.last().map(String::as_str) != Some("lock lost") {
                i.calls.push("lock lost".into());
            }
            return Some("/reconcile/t/lock".into());
        }
        None
    }

    async fn sleep(&self, d: Duration) {
        self.lock().calls.push(format!("sleep {d:?}"));
    }
}

/// The calls that change something (everything but reads, sleeps and the lock check).
pub fn writes(calls: &[String]) -> Vec<&str> {
    let reads = ["image ", "healthy ", "unhealthy ", "logs ", "sleep ", "lock lost"];
    calls.iter().map(String::as_str).filter(|c| !reads.iter().any(|r| c.starts_with(r))).collect()
}

/// The set of `(host, container name)` of running containers.
pub fn running(o: &ObservedState) -> BTreeSet<(String, String)> {
    o.hosts
        .iter()
        .flat_map(|(h, obs)| obs.instances.iter().filter(|i| i.state.is_running()).map(|i| (h.clone(), i.name.clone())))
        .collect()
}
