//! Phase 4: which of the final instances receive traffic (registry and LB):
//! all but those `watch` marked unhealthy — unless every instance of an app is
//! marked (fail open).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::model::{InstanceId, keys};
use crate::placement::Assignment;

/// The health marks among observed etcd keys: container name → key.
pub fn health_marks(keys: &BTreeMap<String, String>, prefix: &str, env: &str) -> BTreeMap<String, String> {
    let dir = keys::health_dir(prefix, env);
    keys.range(dir.clone()..)
        .take_while(|(k, _)| k.starts_with(&dir))
        .filter_map(|(k, _)| k.strip_prefix(&dir).filter(|c| !c.is_empty()).map(|c| (c.to_string(), k.clone())))
        .collect()
}

/// Instances `(app, ordinal)` to keep out of traffic: those whose kept container has a
/// health mark — unless every instance of the app has one: then none (fail open; an LB
/// with no backend serves nobody, and nginx refuses an empty upstream).
pub fn out_of_traffic(
    finals: &[Assignment],
    kept: &BTreeMap<(String, u32), String>,
    marks: &BTreeMap<String, String>,
) -> BTreeSet<(String, u32)> {
    type Marked = Vec<(String, u32)>;
    let mut per_app: BTreeMap<&str, (usize, Marked)> = BTreeMap::new();
    for a in finals {
        let e = per_app.entry(a.app.as_str()).or_default();
        e.0 += 1;
        let key = (a.app.clone(), a.ordinal);
        if kept.get(&key).is_some_and(|c| marks.contains_key(c)) {
            e.1.push(key);
        }
    }
    per_app.into_values().filter(|(n, marked)| marked.len() < *n).flat_map(|(_, marked)| marked).collect()
}

/// The final instances that serve, given the kept containers and the health marks.
pub fn serving<'f>(
    finals: &'f [Assignment],
    kept: &BTreeMap<InstanceId, String>,
    marks: &BTreeMap<String, String>,
) -> Cow<'f, [Assignment]> {
    // Only marked containers matter: the rest cannot be excluded.
    let marked: BTreeMap<(String, u32), String> = kept
        .iter()
        .filter(|(_, c)| marks.contains_key(*c))
        .map(|(id, c)| ((id.app.clone(), id.ordinal), c.clone()))
        .collect();
    if marked.is_empty() {
        return Cow::Borrowed(finals); // nothing to exclude: no key built, nothing copied
    }
    let excluded = out_of_traffic(finals, &marked, marks);
    finals.iter().filter(|a| !excluded.contains(&(a.app.clone(), a.ordinal))).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asg(app: &str, ordinal: u32) -> Assignment {
        Assignment { app: app.into(), ordinal, host: "h1".into(), port: Some(20000 + ordinal as u16) }
    }

    #[test]
    fn marks_are_read_from_the_health_directory_only() {
        let keys: BTreeMap<String, String> =
            [("/r/t/health/t-api-0-abc", "{}"), ("/r/t/health/", "{}"), ("/r/t/healthy", "x"), ("/r/t/apps/api", "{}")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let marks = health_marks(&keys, "/r", "t");
        assert_eq!(marks.into_iter().collect::<Vec<_>>(), [("t-api-0-abc".into(), "/r/t/health/t-api-0-abc".into())]);
    }

    #[test]
    fn a_marked_kept_instance_leaves_traffic_unless_all_of_its_app_are_marked() {
        let finals = [asg("api", 0), asg("api", 1), asg("web", 0)];
        let kept: BTreeMap<InstanceId, String> = [
            (InstanceId::new("api", 0), "c-api-0".to_string()),
            (InstanceId::new("api", 1), "c-api-1".to_string()),
            (InstanceId::new("web", 0), "c-web-0".to_string()),
        ]
        .into();
        let mark = |names: &[&str]| -> BTreeMap<String, String> {
            names.iter().map(|n| (n.to_string(), format!("/r/t/health/{n}"))).collect()
        };
        let names = |v: Cow<'_, [Assignment]>| v.iter().map(|a| format!("{}-{}", a.app, a.ordinal)).collect::<Vec<_>>();
        assert_eq!(names(serving(&finals, &kept, &mark(&["c-api-0"]))), ["api-1", "web-0"]);
        // web's only instance is marked: it keeps serving (fail open).
        assert_eq!(names(serving(&finals, &kept, &mark(&["c-api-0", "c-web-0"]))), ["api-1", "web-0"]);
        assert_eq!(names(serving(&finals, &kept, &mark(&["c-api-0", "c-api-1"]))), ["api-0", "api-1", "web-0"]);
        // A mark on a container that is not kept (it is being replaced) excludes nothing.
        assert_eq!(names(serving(&finals, &kept, &mark(&["gone"]))), ["api-0", "api-1", "web-0"]);
    }
}
