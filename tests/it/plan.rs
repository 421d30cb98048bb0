//! Plans of the embedded environment and the examples, pinned with insta in all
//! three formats: a first plan on an empty environment, and a change plan after
//! a simulated apply (env var, file template and replicas edited).

use std::collections::BTreeMap;
use std::sync::Arc;

use reconcile::backend::git;
use reconcile::model::{EtcdObservation, HostObservation, ObservedState};
use reconcile::plan::{self, Desired, Plan, render, simulate::simulate};
use reconcile::secret::Secret;
use reconcile::spec::{self, Origin, RepoSnapshot};

fn snapshot(repo: &str) -> RepoSnapshot {
    let dir = tempfile::tempdir().unwrap();
    let mut s = git::snapshot(&super::root().join(repo).to_string_lossy(), None, dir.path()).unwrap();
    // The commit changes with every commit of this repo; pin it for the snapshots.
    s.origin = Origin {
        repo: repo.into(),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        ..Default::default()
    };
    s
}

fn empty(env: &spec::Env) -> ObservedState {
    ObservedState {
        env: env.name.clone(),
        hosts: env.spec.hosts.iter().map(|h| (h.name.clone(), HostObservation::default())).collect(),
        etcd: env.spec.etcd.as_ref().map(|_| EtcdObservation::default()),
        lbs: env.spec.load_balancers().into_keys().map(|k| (k.to_string(), None)).collect(),
    }
}

fn plan_of(snap: &RepoSnapshot, env: &str, observed: Option<&ObservedState>) -> (Plan, ObservedState) {
    let (loaded, diags) = spec::validate(snap, Some(env)).unwrap();
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let e = &loaded.envs[env];
    let secrets: BTreeMap<String, Secret> =
        e.spec.secrets.keys().map(|k| (k.clone(), Secret::new(format!("{k}-value")))).collect();
    let d = Desired {
        env: e,
        files: Arc::new(snap.files.clone()),
        origin: &snap.origin,
        secrets: &secrets,
        digests: Default::default(),
    };
    let o = observed.cloned().unwrap_or_else(|| empty(e));
    (plan::plan(&d, &o).unwrap(), o)
}

fn check(name: &str, p: &Plan) {
    insta::assert_snapshot!(format!("plan__{name}__text"), render::text(p, false));
    insta::assert_snapshot!(
        format!("plan__{name}__markdown"),
        render::markdown(p, render::MARKDOWN_LIMIT).join("\n<!-- part -->\n")
    );
    insta::assert_snapshot!(format!("plan__{name}__json"), render::json(p));
    // Secret values never show, in any format.
    for out in [render::text(p, false), render::json(p), render::markdown(p, render::MARKDOWN_LIMIT).join("")] {
        assert!(!out.contains("-value\""), "a secret leaked into {name}");
    }
}

#[test]
fn first_plans_of_the_examples() {
    for (repo, env) in [
        (".", "local"),
        ("examples/two-tier", "prod"),
        ("examples/multi-env", "staging"),
        ("examples/multi-env", "production-dr"),
    ] {
        let snap = snapshot(repo);
        let (p, o) = plan_of(&snap, env, None);
        check(&format!("{}_{env}", repo.replace(['/', '.'], "_")), &p);
        // Applying it in memory converges.
        let after = simulate(&p, &o, "c");
        assert!(plan_of(&snap, env, Some(&after)).0.actions.is_empty(), "{repo} {env} does not converge");
    }
}

#[test]
fn change_plan_of_two_tier() {
    let snap = snapshot("examples/two-tier");
    let (p, o) = plan_of(&snap, "prod", None);
    let after = simulate(&p, &o, "c");
    let mut changed = snap.clone();
    let edit = |files: &mut BTreeMap<String, Vec<u8>>, path: &str, from: &str, to: &str| {
        let text = String::from_utf8(files[path].clone()).unwrap();
        assert!(text.contains(from), "{path}: {from}");
        files.insert(path.into(), text.replacen(from, to, 1).into_bytes());
    };
    edit(&mut changed.files, "environments/prod/environment.yaml", "log_level: warn", "log_level: debug");
    edit(&mut changed.files, "environments/prod/apps/web.yaml", "replicas: 3", "replicas: 2");
    edit(&mut changed.files, "environments/prod/templates/web/index.html.j2", "served by", "proudly served by");
    let (p2, _) = plan_of(&changed, "prod", Some(&after));
    assert_eq!((p2.summary.replace, p2.summary.remove, p2.summary.add), (4, 1, 0), "{}", render::text(&p2, false));
    check("two_tier_prod_change", &p2);
}
