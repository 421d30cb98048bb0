//! The spec layer: a config repo snapshot in, typed environments and
//! diagnostics out. Pure: see `backend::git` for where snapshots come from.

pub mod check;
pub mod load;
pub mod merge;
pub mod schema;
pub mod snapshot;
pub mod template;
pub mod types;
pub mod units;
pub mod yaml;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::diag::{self, Diagnostic};
pub use load::{Env, Loaded, load};
pub use snapshot::{Origin, RepoSnapshot};

/// Everything `validate` reports for a snapshot: load + semantic checks of
/// every deployable environment (or only `only`, and the files of its chain).
pub fn validate(snap: &RepoSnapshot, only: Option<&str>) -> Result<(Loaded, Vec<Diagnostic>), UnknownEnv> {
    let loaded = load::load_only(snap, only);
    if let Some(e) = only
        && !loaded.names.contains(e)
    {
        return Err(UnknownEnv { name: e.to_string(), known: loaded.names.iter().cloned().collect() });
    }
    let files = Arc::new(snap.files.clone());
    let display = |p: &str| snap.display(p);
    let mut out: Vec<Diagnostic> = Vec::new();
    let relevant: Option<Vec<String>> = only.map(|e| {
        loaded
            .chains
            .get(e)
            .cloned()
            .unwrap_or_else(|| vec![e.to_string()])
            .iter()
            .map(|n| snap.display(&format!("environments/{n}/")))
            .collect()
    });
    for d in &loaded.diagnostics {
        let keep = match (&relevant, &d.file) {
            (Some(dirs), Some(f)) => dirs.iter().any(|dir| f.starts_with(dir.as_str())),
            _ => true,
        };
        if keep {
            out.push(d.clone());
        }
    }
    for (name, env) in &loaded.envs {
        if env.spec.is_abstract || only.is_some_and(|o| o != name) {
            continue;
        }
        out.extend(check::check(env, &files, &display));
    }
    diag::normalize(&mut out);
    Ok((loaded, out))
}

/// `--env` names an environment that is not in the repo.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no environment `{name}` in this repo (environments: {})", known.join(", "))]
pub struct UnknownEnv {
    pub name: String,
    pub known: Vec<String>,
}

/// The snapshot's texts keyed by display path, for rendering diagnostics.
pub fn sources(snap: &RepoSnapshot) -> BTreeMap<String, String> {
    snap.files.iter().map(|(k, v)| (snap.display(k), String::from_utf8_lossy(v).into_owned())).collect()
}
