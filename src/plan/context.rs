//! Phase 0: what every later phase reads — the environment's hosts as placement
//! sees them, their addresses, the compiled templates and the template contexts —
//! built once per plan, and the rendering of one instance at a slot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::instance::{self, AppTemplates, Contexts, InstanceSpec, Slot, contexts};
use super::{Desired, PlanError, template_error};
use crate::placement::{Assignment, HostSlot};
use crate::spec::load::{App, Env};
use crate::spec::template::Templates;
use crate::spec::units;

/// The environment's hosts as placement sees them (name, address, labels, pool).
///
/// # Errors
/// A host's port pool does not parse (validate reports it first).
pub fn host_slots(env: &Env) -> Result<Vec<HostSlot>, PlanError> {
    env.spec
        .hosts
        .iter()
        .map(|h| {
            let pool = units::port_range(&h.ports)
                .map_err(|e| PlanError::Pool { host: h.name.clone(), message: e.message })?;
            Ok(HostSlot { name: h.name.clone(), address: h.address.clone(), labels: h.labels.clone(), pool })
        })
        .collect()
}

/// Everything rendering needs, prepared once.
pub struct Context<'a> {
    pub env: &'a Env,
    pub slots: Vec<HostSlot>,
    /// Host → address; only looked up (twice per instance), so hashed.
    addresses: HashMap<String, String>,
    templates: Templates,
    ctx: Contexts,
    prepared: BTreeMap<String, AppTemplates>,
    /// `pull: always`: image → the digest its tag points to now (`plan::digest`).
    pub digests: BTreeMap<String, String>,
}

impl<'a> Context<'a> {
    /// # Errors
    /// A port pool or an app's inline template is invalid.
    pub fn new(d: &Desired<'a>) -> Result<Self, PlanError> {
        let env = d.env;
        let mut templates = Templates::new(env.dirs.clone(), Arc::clone(&d.files));
        let secret_names: Vec<String> = env.spec.secrets.keys().cloned().collect();
        let ctx = contexts(&env.name, &env.spec.vars, d.secrets, &secret_names);
        let slots = host_slots(env)?;
        let addresses = slots.iter().map(|s| (s.name.clone(), s.address.clone())).collect();
        let mut prepared = BTreeMap::new();
        for (n, app) in &env.apps {
            prepared.insert(n.clone(), instance::prepare(app, &ctx, &mut templates).map_err(|e| template_error(n, e))?);
        }
        Ok(Self { env, slots, addresses, templates, ctx, prepared, digests: d.digests.clone() })
    }

    /// The address of a host of the environment; `None` for a host it does not have.
    pub fn address(&self, host: &str) -> Option<&str> {
        self.addresses.get(host).map(String::as_str)
    }

    /// The address of a host placement chose (so one of the environment's).
    ///
    /// # Errors
    /// The host is not the environment's: a placement bug, reported rather than
    /// rendered with an empty address.
    pub fn placed_address(&self, host: &str) -> Result<&str, PlanError> {
        self.address(host)
            .ok_or_else(|| PlanError::Placement(format!("placement chose host `{host}`, which the environment lacks")))
    }

    /// The assignment's app, its prepared templates and its host's address.
    fn prepared(&self, a: &Assignment) -> Result<(&App, &AppTemplates, &str), PlanError> {
        let address = self.placed_address(&a.host)?;
        match (self.env.apps.get(&a.app), self.prepared.get(&a.app)) {
            (Some(app), Some(prepared)) => Ok((app, prepared, address)),
            _ => Err(PlanError::Placement(format!("placement produced an instance of unknown app `{}`", a.app))),
        }
    }

    /// Render one instance of the assignment's app at `port`; `mask` as in
    /// [`instance::render`]. Returns the spec and its hash.
    ///
    /// # Errors
    /// A template fails, or the assignment names an unknown app or host.
    pub fn render(&self, a: &Assignment, port: Option<u16>, mask: bool) -> Result<(InstanceSpec, String), PlanError> {
        let (app, prepared, address) = self.prepared(a)?;
        let slot = Slot { ordinal: a.ordinal, host: &a.host, address, port };
        let spec = instance::render(app, &slot, prepared, &self.ctx, &self.templates, &self.env.name, mask)
            .map_err(|e| template_error(&a.app, e))?;
        let hash = spec.hash();
        Ok((spec, hash))
    }

    /// The spec-hash of the assignment's instance at its assigned port: what
    /// [`render`](Self::render) gives, without building the spec.
    fn hash(&self, a: &Assignment, buf: &mut Vec<u8>) -> Result<String, PlanError> {
        let (app, prepared, address) = self.prepared(a)?;
        let slot = Slot { ordinal: a.ordinal, host: &a.host, address, port: a.port };
        instance::hash_at(app, &slot, prepared, &self.templates, &self.env.name, buf)
            .map_err(|e| template_error(&a.app, e))
    }

    /// The spec-hash of every assignment at its assigned port, in order — the bulk of
    /// planning, spread over threads (still pure). Only the hashes leave the workers:
    /// what the plan shows is rendered again, masked, for the few instances that change.
    pub fn hashes(&self, assignments: &[Assignment]) -> Vec<Result<String, PlanError>> {
        let workers = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 8);
        let chunk = assignments.len().div_ceil(workers).max(64);
        std::thread::scope(|scope| {
            let handles: Vec<_> = assignments
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut buf = Vec::new();
                        part.iter().map(|a| self.hash(a, &mut buf)).collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| vec![Err(PlanError::Placement("a render worker panicked".into()))])
                })
                .collect()
        })
    }
}
