//! Phase 6: the LB config rendered over the serving instances, written (and
//! reloaded) only when it differs from the observed file — or reloaded alone when
//! an earlier apply left its reload pending.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::context::host_slots;
use super::instance::contexts;
use super::{Action, PlanError};
use crate::placement::Assignment;
use crate::spec::check::lb_apps;
use crate::spec::load::Env;
use crate::spec::template::Templates;

/// Render the LB config for an arbitrary set of serving instances (apply renders
/// intermediate configs during a rolling replace: new instance added, old removed).
///
/// # Errors
/// The LB template fails, or the environment has no LB.
pub fn lb_content(
    env: &Env,
    files: Arc<BTreeMap<String, Vec<u8>>>,
    serving: &[Assignment],
) -> Result<String, PlanError> {
    lb_content_with(env, files, serving, &std::collections::BTreeSet::new())
}

/// [`lb_content`], where the instances in `canaries` are canaries: the template's
/// `instance.canary` and `instance.weight` (`plan::canary::weigh`).
///
/// # Errors
/// As [`lb_content`].
pub fn lb_content_with(
    env: &Env,
    files: Arc<BTreeMap<String, Vec<u8>>>,
    serving: &[Assignment],
    canaries: &std::collections::BTreeSet<Assignment>,
) -> Result<String, PlanError> {
    let Some(lb) = &env.spec.lb else {
        return Err(PlanError::LbTemplate { message: "the environment has no lb".into() });
    };
    let t = Templates::new(env.dirs.clone(), files);
    let names: Vec<String> = env.spec.secrets.keys().cloned().collect();
    let ctx = contexts(&env.name, &env.spec.vars, &BTreeMap::new(), &names);
    let slots = host_slots(env)?;
    let mut apps = lb_apps(env, &slots, serving);
    super::canary::weigh(&mut apps, env, canaries);
    let apps = minijinja::Value::from(minijinja::value::Serde(apps));
    let c = minijinja::context! { apps => apps, ..ctx.masked };
    t.render_value(&lb.template, &c).map_err(|e| PlanError::LbTemplate { message: e.message })
}

/// The LB actions for `content` given the observed file (`None`: no file) and
/// whether an earlier apply left a reload pending.
pub fn lb_actions(path: &str, content: String, current: Option<&String>, reload_pending: bool) -> Vec<Action> {
    if current != Some(&content) {
        vec![Action::WriteLb { path: path.to_string(), content, old: current.cloned() }, Action::ReloadLb]
    } else if reload_pending {
        // An earlier apply wrote this file but did not see the LB reload it.
        vec![Action::ReloadLb]
    } else {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lb_is_written_and_reloaded_only_when_its_content_differs() {
        let same = "upstream a {}".to_string();
        assert_eq!(lb_actions("/lb.conf", same.clone(), Some(&same), false), []);
        assert_eq!(
            lb_actions("/lb.conf", same.clone(), None, false),
            [Action::WriteLb { path: "/lb.conf".into(), content: same.clone(), old: None }, Action::ReloadLb]
        );
        let old = "upstream b {}".to_string();
        assert_eq!(
            lb_actions("/lb.conf", same.clone(), Some(&old), true),
            [Action::WriteLb { path: "/lb.conf".into(), content: same.clone(), old: Some(old) }, Action::ReloadLb]
        );
    }

    #[test]
    fn a_pending_reload_of_an_unchanged_file_is_redone() {
        let same = "x".to_string();
        assert_eq!(lb_actions("/lb.conf", same.clone(), Some(&same), true), [Action::ReloadLb]);
    }
}
