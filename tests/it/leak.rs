//! Issue 10 item 5, "a registry entry never outlives its instance", end to end: two
//! real Docker daemons, etcd and a real nginx (`apply::Stack`, slot 41: pool
//! 24050-24099, LB on 127.0.0.1:28141). An instance stopped outside reconcile whose
//! start then fails its health check is out of the registry and the LB by the end of
//! that apply, and the apply reports the failure.

use super::apply::{Stack, var};
use super::apply_chaos::{lb_upstreams, managed, registry_values};
use super::support::{app_yaml, daemons, docker_cli};
use super::{stderr, stdout};

/// web, 2 replicas: busybox httpd on its pool port, checked over http; a container
/// started a second time (its marker file survives `docker stop`) serves nothing, so
/// the restart fails the health check.
fn web_failing_on_restart() -> String {
    app_yaml(
        "web",
        &var("RECONCILE_TEST_IMAGE"),
        "[/bin/sh, -c, 'if [ -e /tmp/started ]; then exec sleep 3600; fi; touch /tmp/started; exec /bin/busybox httpd -f -p {{ instance.address }}:{{ instance.port }} -h /www']",
        "replicas: 2\nport: 8080\nhealth: {http: /, interval: 200ms, timeout: 1s, retries: 10}\nfiles: [{template: templates/index.html.j2, path: /www/index.html}]\nlb: {host: web.test}\nregistry: true\nstop_timeout: 1s\n",
    )
}

#[test]
fn a_stopped_instance_whose_start_fails_leaves_the_registry_and_the_lb() {
    let s = Stack::new("leak", 41);
    s.write("apps/web.yaml", &web_failing_on_restart());
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let webs: Vec<_> = managed(&s).into_iter().filter(|m| m.app == "web").collect();
    assert_eq!(webs.len(), 2, "{webs:?}");
    let at = |m: &super::support::Managed| format!("{}:{}", m.address(), m.port.unwrap());
    assert_eq!(lb_upstreams(&s), webs.iter().map(at).collect(), "both serve before the stop");
    assert_eq!(registry_values(&s).len(), 2, "{:?}", registry_values(&s));

    // Stopped outside reconcile: its registry entry and LB line are still there.
    let (gone, kept) = (&webs[1], &webs[0]);
    docker_cli(&daemons()[gone.daemon], &["stop", "-t", "1", &gone.id]);
    assert!(registry_values(&s).values().any(|v| *v == at(gone)));

    let o = s.apply(&[]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    assert!(out.contains("app web: FAILED") && out.contains(&gone.instance), "{out}");
    let registry = registry_values(&s);
    assert_eq!(registry.values().cloned().collect::<Vec<_>>(), [at(kept)], "{registry:?}");
    assert_eq!(lb_upstreams(&s), [at(kept)].into(), "the LB file still routes to the failed instance");
    let body = s.get().unwrap();
    assert!(body.contains(&format!("instance={}", kept.instance)), "nginx serves the healthy instance: {body}");
    let after = managed(&s);
    assert!(
        after.iter().all(|m| m.id != gone.id || m.state != "running"),
        "the unhealthy container still runs: {after:?}"
    );
}
