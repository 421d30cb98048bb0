//! Every effect the executor has on the world, behind one trait: Docker (images,
//! containers, health, logs), etcd writes (always fenced by the apply lock), the LB
//! file and its reload, the lock-lost check and sleeping.
//!
//! [`Backends`] is the real implementation over `backend::*`; the unit tests use an
//! in-memory one (`apply::memory`) that records every call in order, so the
//! executor's decisions (order, pacing, gating, failure handling) are tested without
//! daemons. **Invariant:** the executor reaches Docker, etcd and the LB only through
//! this trait.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{Mutex, OnceCell};

use super::{ApplyError, Progress, StepError};
use crate::backend::{docker, etcd, lb, probe};
use crate::plan::instance::InstanceSpec;
use crate::plan::{Action, Plan};
use crate::spec::Env;
use crate::spec::types::{HealthSpec, LbSpec, LbTarget};

/// How much of a failed container's output is kept as evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogTail {
    /// At most this many lines (the last ones)…
    pub lines: usize,
    /// …and at most this many bytes of them.
    pub bytes: usize,
}

/// A health check of one instance: its spec, and where the instance listens.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub health: &'a HealthSpec,
    pub address: &'a str,
    pub port: Option<u16>,
}

/// What the executor does to the world. Methods take the host by name; the
/// implementation knows how to reach it.
pub trait Effects: Sync {
    /// Per app whose images could not be pulled, why: the pulls ran before anything
    /// stopped ([`Backends::pull`]); such an app is then not touched at all.
    fn pull_failures(&self) -> BTreeMap<String, String>;
    /// Pull `image` on `host` unless it is there.
    fn ensure_image(
        &self,
        host: &str,
        image: &str,
        progress: &Progress,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Create (not start) container `name`; its id.
    fn create(
        &self,
        host: &str,
        name: &str,
        spec: &InstanceSpec,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, StepError>> + Send;
    fn start(&self, host: &str, id: &str) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Stop (SIGTERM, SIGKILL after `grace`) and remove; gone already is `Ok`.
    fn stop_and_remove(
        &self,
        host: &str,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// `Ok` while the container runs as started (no exit, no restart).
    fn still_running(&self, host: &str, id: &str) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Wait until the container passes `health` (at `address:port`; `cmd` runs inside
    /// it), failing fast when it stops running.
    fn wait_healthy(
        &self,
        host: &str,
        id: &str,
        check: Check<'_>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// The last lines of the container's stdout and stderr, bounded by `tail`.
    fn logs_tail(&self, host: &str, id: &str, tail: LogTail) -> impl Future<Output = Result<String, StepError>> + Send;
    /// One etcd transaction, fenced by the apply lock (fails once it is lost).
    fn etcd_write(&self, writes: &[etcd::Write]) -> impl Future<Output = Result<(), StepError>> + Send;
    /// The `applied` entry and a `history/<nanos>` entry, fenced.
    fn record(&self, entry: &serde_json::Value) -> impl Future<Output = Result<(), StepError>> + Send;
    /// LB `lb`'s current config (`None`: absent or unreadable; for an LB in containers,
    /// also when its running instances do not all hold the same one).
    fn lb_read(&self, lb: &str) -> impl Future<Output = Result<Option<String>, StepError>> + Send;
    /// Put `content` through LB `lb`'s check command and into place (in every running
    /// instance of an LB in containers, checked in all of them first).
    fn lb_write_checked(&self, lb: &str, content: &str) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Make LB `lb` load its config (in every running instance).
    fn lb_reload(&self, lb: &str) -> impl Future<Output = Result<(), StepError>> + Send;
    /// An LB in containers: put `content` (checked already elsewhere, or the first
    /// config) into container `id` on `host`, created but not started yet, so that it
    /// starts serving with it.
    fn lb_seed(
        &self,
        lb: &str,
        host: &str,
        id: &str,
        content: &str,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// `Some(lock key)` once the apply lock's lease can no longer be proven alive.
    fn lock_lost(&self) -> Option<String>;
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// Per `(host, image)`: set once the image is known to be there.
type Present = BTreeMap<(String, String), Arc<OnceCell<()>>>;

/// The real world: Docker daemons, etcd, the LB file and commands.
pub struct Backends<'a> {
    clients: BTreeMap<String, Result<docker::Client, String>>,
    etcd: Option<Mutex<etcd::Client>>,
    /// `(prefix, env)` for the history records.
    records: Option<(String, String)>,
    lock: Option<&'a etcd::LockGuard>,
    lbs: BTreeMap<String, LbSpec>,
    env: String,
    /// [`Backends::pull`]'s failures, by app.
    pull_failed: BTreeMap<String, String>,
    /// Per `(host, image)`, set once this apply found (or pulled) the image there: every
    /// instance's [`Effects::ensure_image`] after the first costs no daemon request.
    present: std::sync::Mutex<Present>,
}

impl<'a> Backends<'a> {
    /// Connect to etcd (when the environment has it) and to the Docker daemons of the
    /// hosts the plan touches. A host that cannot be reached fails only its steps.
    ///
    /// # Errors
    /// etcd unreachable.
    pub async fn connect(
        env: &Env,
        plan: &Plan,
        timeout: Duration,
        lock: Option<&'a etcd::LockGuard>,
    ) -> Result<Self, ApplyError> {
        let etcd = match &env.spec.etcd {
            Some(spec) => Some(Mutex::new(etcd::connect(spec, timeout).await?)),
            None => None,
        };
        let lbs: BTreeMap<String, LbSpec> =
            env.spec.load_balancers().into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        // An LB in containers is written into its app's instances wherever they run.
        let every_host = lbs.values().any(|l| l.container.is_some());
        let mut hosts: BTreeSet<&str> = plan
            .actions
            .iter()
            .flat_map(|a| match a {
                Action::Create { new, .. } => vec![new.host.as_str()],
                Action::Replace { old, new, .. } => vec![old.host.as_str(), new.host.as_str()],
                Action::Remove { old, .. } | Action::Start { old, .. } => vec![old.host.as_str()],
                _ => vec![],
            })
            .collect();
        if every_host {
            hosts.extend(env.spec.hosts.iter().map(|h| h.name.as_str()));
        }
        let mut clients = BTreeMap::new();
        for h in env.spec.hosts.iter().filter(|h| hosts.contains(h.name.as_str())) {
            clients.insert(h.name.clone(), docker::connect(h, timeout).await.map_err(|e| e.to_string()));
        }
        let records = env.spec.etcd.as_ref().map(|s| (s.prefix.clone(), env.name.clone()));
        Ok(Self {
            clients,
            etcd,
            records,
            lock,
            lbs,
            env: env.name.clone(),
            pull_failed: BTreeMap::new(),
            present: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Every image the plan's new containers need, on their hosts, at once (`pull:
    /// always` pulls even present tags), with progress; before anything stops.
    pub async fn pull(&mut self, env: &Env, plan: &Plan, specs: &BTreeMap<String, InstanceSpec>, progress: &Progress) {
        self.pull_failed = docker::pull_for_plan(env, plan, specs, &self.clients, &**progress).await;
    }

    fn client(&self, host: &str) -> Result<&docker::Client, StepError> {
        match self.clients.get(host) {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(StepError::Connect { host: host.to_string(), cause: e.clone() }),
            None => Err(StepError::UnknownHost { host: host.to_string() }),
        }
    }

    fn fence(&self) -> Option<etcd::Fence> {
        self.lock.map(etcd::LockGuard::fence)
    }

    fn lb_spec(&self, lb: &str) -> Result<&LbSpec, StepError> {
        self.lbs.get(lb).ok_or_else(|| StepError::Task(format!("the environment has no LB `{lb}`")))
    }

    /// LB `lb`'s target, and for an LB in containers its running instances (listed now).
    async fn lb_target(&self, lb: &str) -> Result<(&LbSpec, Target), StepError> {
        let spec = self.lb_spec(lb)?;
        let target = match spec.target() {
            Some(LbTarget::File(path)) => Target::File(path.to_string()),
            Some(LbTarget::Container { app, path }) => {
                // Unreachable hosts are skipped: their instances are not part of the pair now.
                let hosts: Vec<(String, docker::Client)> =
                    self.clients.iter().filter_map(|(h, c)| c.as_ref().ok().map(|c| (h.clone(), c.clone()))).collect();
                let instances = lb::running_instances(&hosts, &self.env, app).await?;
                Target::Containers { path: path.to_string(), instances }
            }
            None => return Err(StepError::Task(format!("LB `{lb}` has neither `path` nor `container`"))),
        };
        Ok((spec, target))
    }
}

/// Where an LB's config goes, resolved for one call.
enum Target {
    File(String),
    Containers { path: String, instances: Vec<lb::Instance> },
}

/// Run blocking LB work off the async workers (which also keep the lock's lease alive).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, StepError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StepError::Task(e.to_string()))
}

impl Effects for Backends<'_> {
    fn pull_failures(&self) -> BTreeMap<String, String> {
        self.pull_failed.clone()
    }

    async fn ensure_image(&self, host: &str, image: &str, progress: &Progress) -> Result<(), StepError> {
        let client = self.client(host)?;
        let cell = match self.present.lock() {
            Ok(mut p) => Arc::clone(p.entry((host.to_string(), image.to_string())).or_default()),
            Err(_) => Arc::new(OnceCell::new()),
        };
        // Concurrent callers for the same image wait for the first one's answer; a
        // failure is not kept, so the next caller asks again.
        cell.get_or_try_init(|| async {
            let mut say = |line: String| progress(line);
            docker::ensure_image(client, host, image, &mut say).await.map(|_| ())
        })
        .await?;
        Ok(())
    }

    async fn create(
        &self,
        host: &str,
        name: &str,
        spec: &InstanceSpec,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, StepError> {
        Ok(docker::create_instance(self.client(host)?, host, name, spec, labels).await?)
    }

    async fn start(&self, host: &str, id: &str) -> Result<(), StepError> {
        Ok(docker::start(self.client(host)?, host, id).await?)
    }

    async fn stop_and_remove(&self, host: &str, id: &str, grace: Duration) -> Result<(), StepError> {
        Ok(docker::stop_and_remove(self.client(host)?, host, id, grace).await?)
    }

    async fn still_running(&self, host: &str, id: &str) -> Result<(), StepError> {
        Ok(docker::check_running(self.client(host)?, host, id).await?)
    }

    async fn wait_healthy(&self, host: &str, id: &str, check: Check<'_>) -> Result<(), StepError> {
        let (client, health) = (self.client(host)?, check.health);
        let probe = probe::Probe::from_spec(health, check.address, check.port, |argv| {
            docker::cmd_runner(client.clone(), host.to_string(), id.to_string(), argv)
        })?;
        let schedule = probe::Schedule::from_spec(health)?;
        probe::wait_healthy(&probe, &schedule, || docker::still_running(client, host, id)).await.map_err(|cause| {
            StepError::Unhealthy { host: host.to_string(), container: id.to_string(), cause: Box::new(cause) }
        })
    }

    async fn logs_tail(&self, host: &str, id: &str, tail: LogTail) -> Result<String, StepError> {
        Ok(docker::logs_tail(self.client(host)?, host, id, tail.lines, tail.bytes).await?)
    }

    async fn etcd_write(&self, writes: &[etcd::Write]) -> Result<(), StepError> {
        let Some(c) = &self.etcd else { return Ok(()) };
        let mut client = c.lock().await;
        etcd::batch_fenced(&mut client, writes, self.fence().as_ref())
            .await
            .map_err(|source| StepError::Etcd { what: "etcd", source })
    }

    async fn record(&self, entry: &serde_json::Value) -> Result<(), StepError> {
        let (Some(c), Some((prefix, env))) = (&self.etcd, &self.records) else { return Ok(()) };
        let mut client = c.lock().await;
        etcd::record_apply(&mut client, prefix, env, entry, self.fence().as_ref())
            .await
            .map_err(|source| StepError::Etcd { what: "recording the apply in etcd", source })
    }

    async fn lb_read(&self, lb: &str) -> Result<Option<String>, StepError> {
        match self.lb_target(lb).await?.1 {
            Target::File(path) => blocking(move || lb::read(&path).ok().flatten()).await,
            Target::Containers { path, instances } => Ok(lb::read_in(&instances, &path).await.ok().flatten()),
        }
    }

    async fn lb_write_checked(&self, lb: &str, content: &str) -> Result<(), StepError> {
        let (spec, target) = self.lb_target(lb).await?;
        let check = spec.check.clone();
        match target {
            Target::File(path) => {
                let content = content.to_string();
                Ok(blocking(move || lb::write_checked(&path, &content, check.as_deref())).await??)
            }
            Target::Containers { path, instances } => {
                lb::write_checked_in(&instances, &path, content, check.as_deref()).await?;
                Ok(())
            }
        }
    }

    async fn lb_reload(&self, lb: &str) -> Result<(), StepError> {
        let (spec, target) = self.lb_target(lb).await?;
        let reload = spec.reload.clone();
        match target {
            Target::File(_) => Ok(blocking(move || lb::reload(&reload)).await??),
            Target::Containers { instances, .. } => Ok(lb::reload_in(&instances, &reload).await?),
        }
    }

    async fn lb_seed(&self, lb: &str, host: &str, id: &str, content: &str) -> Result<(), StepError> {
        let spec = self.lb_spec(lb)?;
        let Some(LbTarget::Container { path, .. }) = spec.target() else { return Ok(()) };
        Ok(docker::put_file(self.client(host)?, host, id, path, content.as_bytes()).await?)
    }

    fn lock_lost(&self) -> Option<String> {
        self.lock.filter(|g| g.lost()).map(|g| g.key().to_string())
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}
