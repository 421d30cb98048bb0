//! `pull: always`: does a kept instance run the image its tag points to now?
//!
//! `plan` gets the tags' current digests, resolved by the caller through a daemon's
//! distribution endpoint ([`Desired::digests`](super::Desired), image reference →
//! `sha256:…`), and each observed container's image with its repo digests
//! (`127.0.0.1:25000/team/api@sha256:…`, from the image's inspect data). An instance
//! whose image has no repo digest of that repository with the resolved digest runs
//! something else (an older push of the tag, or a local build) and is replaced.
//!
//! **Invariant:** pure. An image without a resolved digest (`pull: missing`, or
//! `--offline-images`) is never a reason to replace anything.

use std::collections::BTreeMap;

use crate::model::ObservedInstance;

/// The digest `image`'s tag points to now, when `observed` runs another one; `None`
/// when it runs that digest or no digest was resolved for `image`.
pub fn stale(observed: &ObservedInstance, image: &str, resolved: &BTreeMap<String, String>) -> Option<String> {
    let want = resolved.get(image)?;
    let repo = repository(image);
    let runs_it = observed.repo_digests.iter().any(|rd| match rd.rsplit_once('@') {
        Some((name, digest)) => digest == want && same_repository(name, repo),
        None => false,
    });
    (!runs_it).then(|| want.clone())
}

/// `registry.example:5000/team/api:1` → `registry.example:5000/team/api` (tag and
/// digest dropped; a registry port is not a tag).
fn repository(image: &str) -> &str {
    let no_digest = image.split_once('@').map_or(image, |(n, _)| n);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    }
}

/// Docker writes Hub repositories in repo digests as `busybox` / `team/app`; a spec
/// may say `docker.io/library/busybox`.
fn same_repository(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> &str {
        let s = s.strip_prefix("docker.io/").unwrap_or(s);
        s.strip_prefix("library/").unwrap_or(s)
    }
    norm(a) == norm(b)
}

/// A replacement for a new digest has the old container's spec hash, hence its name
/// (`<env>-<app>-<n>-<hash8>`); the new container is named after the digest instead,
/// so both can exist while the old one serves.
pub fn rename(new: &mut super::NewInstance, old_name: &str, digest: &str) {
    if new.container_name != old_name {
        return;
    }
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if let Some(base) = old_name.rsplit_once('-').map(|(b, _)| b) {
        new.container_name = format!("{base}-{}", hex.get(..8).unwrap_or(hex));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContainerState;

    fn running(repo_digests: &[&str]) -> ObservedInstance {
        ObservedInstance {
            container_id: "c1".into(),
            name: "n".into(),
            host: "h".into(),
            app: "api".into(),
            instance: "api-0".into(),
            ordinal: Some(0),
            spec_hash: "x".into(),
            commit: String::new(),
            image: "127.0.0.1:25000/team/api:1".into(),
            state: ContainerState::Running,
            status: String::new(),
            created: 0,
            port: None,
            spec: None,
            image_id: "sha256:img".into(),
            repo_digests: repo_digests.iter().map(|s| s.to_string()).collect(),
        }
    }

    const IMAGE: &str = "127.0.0.1:25000/team/api:1";

    #[test]
    fn a_moved_tag_replaces_and_a_current_one_keeps() {
        let resolved = BTreeMap::from([(IMAGE.to_string(), "sha256:new".to_string())]);
        assert_eq!(stale(&running(&["127.0.0.1:25000/team/api@sha256:new"]), IMAGE, &resolved), None);
        assert_eq!(
            stale(&running(&["127.0.0.1:25000/team/api@sha256:old"]), IMAGE, &resolved).as_deref(),
            Some("sha256:new")
        );
        // The digest of another repository is not this tag's.
        assert!(stale(&running(&["127.0.0.1:25000/team/other@sha256:new"]), IMAGE, &resolved).is_some());
        // A local build has no repo digest: it is not what the registry serves.
        assert!(stale(&running(&[]), IMAGE, &resolved).is_some());
        // The image carries several repo digests; one matching is enough.
        let both = ["127.0.0.1:25000/team/api@sha256:old", "127.0.0.1:25000/team/api@sha256:new"];
        assert_eq!(stale(&running(&both), IMAGE, &resolved), None);
    }

    #[test]
    fn nothing_resolved_is_never_a_reason() {
        assert_eq!(stale(&running(&[]), IMAGE, &BTreeMap::new()), None);
    }

    #[test]
    fn repositories_of_references() {
        assert_eq!(repository("127.0.0.1:25000/team/api:1"), "127.0.0.1:25000/team/api");
        assert_eq!(repository("127.0.0.1:25000/team/api"), "127.0.0.1:25000/team/api");
        assert_eq!(repository("busybox@sha256:00"), "busybox");
        assert!(same_repository("busybox", "docker.io/library/busybox"));
        assert!(!same_repository("busybox", "docker.io/team/busybox"));
    }

    #[test]
    fn a_digest_replacement_gets_its_own_name() {
        let mut new = crate::plan::NewInstance {
            host: "h".into(),
            address: "127.0.0.1".into(),
            port: None,
            container_name: "staging-api-0-0123abcd".into(),
            spec_hash: "0123abcdef".into(),
            spec: serde_json::json!({}),
        };
        rename(&mut new, "staging-api-0-0123abcd", "sha256:feedbeef00112233");
        assert_eq!(new.container_name, "staging-api-0-feedbeef");
        // Names that already differ (a port moved, an earlier digest) stay.
        rename(&mut new, "staging-api-0-0123abcd", "sha256:99");
        assert_eq!(new.container_name, "staging-api-0-feedbeef");
    }

    /// The whole planner: a `pull: always` app whose tag moved is replaced with the
    /// digest as its reason and a container name of its own; the JSON form stays
    /// valid; a current digest, or `pull: missing`, plans nothing.
    #[test]
    fn the_planner_replaces_on_a_moved_tag_only() {
        use std::sync::Arc;

        use crate::model::{HostObservation, ObservedState};
        use crate::plan::{Action, Desired, Reason, plan, render, simulate::simulate};
        use crate::spec::{Origin, RepoSnapshot, load};

        let snap = |pull: &str| {
            let mut files = BTreeMap::new();
            files.insert(
                "environments/t/environment.yaml".to_string(),
                b"apiVersion: reconcile/v1\nkind: Environment\nname: t\nhosts:\n  - {name: h1, docker: 'unix:///a.sock', address: 127.0.0.1, ports: 20000-20009}\n".to_vec(),
            );
            files.insert(
                "environments/t/apps/api.yaml".to_string(),
                format!("apiVersion: reconcile/v1\nkind: App\nname: api\nimage: {IMAGE}\npull: {pull}\n").into_bytes(),
            );
            RepoSnapshot { files, origin: Origin::default() }
        };
        let empty = ObservedState {
            env: "t".into(),
            hosts: BTreeMap::from([("h1".to_string(), HostObservation::default())]),
            etcd: None,
            lbs: Default::default(),
        };
        let plan_with = |pull: &str, observed: &ObservedState, digest: Option<&str>| {
            let s = snap(pull);
            let loaded = load(&s);
            assert!(loaded.diagnostics.iter().all(|d| !d.is_error()), "{:?}", loaded.diagnostics);
            let digests = digest.map(|d| BTreeMap::from([(IMAGE.to_string(), d.to_string())])).unwrap_or_default();
            let origin = Origin::default();
            let secrets = BTreeMap::new();
            let d = Desired {
                env: &loaded.envs["t"],
                files: Arc::new(s.files.clone()),
                origin: &origin,
                secrets: &secrets,
                digests,
            };
            plan(&d, observed).unwrap()
        };
        let mut running = simulate(&plan_with("always", &empty, None), &empty, "c1");
        for i in &mut running.hosts.get_mut("h1").unwrap().instances {
            i.repo_digests = vec!["127.0.0.1:25000/team/api@sha256:old".into()];
        }
        assert!(plan_with("always", &running, Some("sha256:old")).actions.is_empty());
        assert!(plan_with("missing", &running, Some("sha256:new")).actions.is_empty());
        let p = plan_with("always", &running, Some("sha256:0123456789abcdef"));
        let old_name = &running.hosts["h1"].instances[0].name;
        match p.actions.as_slice() {
            [Action::Replace { reason: Reason::ImageDigest { digest }, old, new, changes, .. }] => {
                assert_eq!(digest, "sha256:0123456789abcdef");
                assert_eq!(&old.container_name, old_name);
                assert_eq!(new.container_name, "t-api-0-01234567");
                assert!(changes.is_empty(), "{changes:?}");
            }
            other => panic!("{other:#?}"),
        }
        assert!(render::text(&p, false).contains("image tag now points to sha256:0123456789abcdef"));
        let schema: serde_json::Value = serde_json::from_str(crate::spec::schema::PLAN).unwrap();
        let json: serde_json::Value = serde_json::from_str(&render::json(&p)).unwrap();
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&json).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }
}
