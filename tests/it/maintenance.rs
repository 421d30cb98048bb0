//! Maintenance mode (issue 10 item 4) end to end through a real nginx (`apply::Stack`,
//! slot 43: pool 24150-24199, LB on 127.0.0.1:28143): `lb: {maintenance: true}` keeps the
//! instances running and gives the LB template `app.maintenance`; the template (the same
//! block as the examples' nginx templates) answers 503 with a maintenance page. Plan shows
//! the switch: the LB file is rewritten and the app's section says maintenance on/off.

use super::apply::{Stack, web_app};
use std::time::Duration;

use super::support::{WEB_REQUEST, http_exchange, reconcile, split_response, wait_steady};
use super::{stderr, stdout};

/// The Stack's nginx template with the examples' maintenance block.
fn lb_template(port: u16) -> String {
    format!(
        "{{% for app in apps %}}\nupstream {{{{ app.name }}}} {{\n{{% for i in app.instances %}}\n  server {{{{ i.address }}}}:{{{{ i.port }}}};\n{{% else %}}\n  server 127.0.0.1:1 down;\n{{% endfor %}}\n}}\nserver {{\n  listen 127.0.0.1:{port};\n  location / {{\n{{% if app.maintenance %}}\n    default_type text/html;\n    return 503 \"<!doctype html><title>Maintenance</title><h1>{{{{ app.name }}}} is down for maintenance</h1>\\n\";\n{{% else %}}\n    proxy_pass http://{{{{ app.name }}}};\n    proxy_next_upstream off;\n{{% endif %}}\n  }}\n}}\n{{% endfor %}}\n"
    )
}

fn set_maintenance(s: &Stack, on: bool) {
    let web = web_app("1", "/", 2);
    let lb = if on { "lb: {host: web.test, maintenance: true}" } else { "lb: {host: web.test}" };
    assert!(web.contains("lb: {host: web.test}"), "{web}");
    s.write("apps/web.yaml", &web.replace("lb: {host: web.test}", lb));
}

/// Status line and body of GET / through nginx (empty on a connection error).
fn get(s: &Stack) -> (String, String) {
    let (response, _) = http_exchange("127.0.0.1", s.lb_port, WEB_REQUEST, None, Duration::from_secs(5));
    split_response(&response)
}

/// nginx reloads asynchronously: wait until every answer is `status` with `body` in it.
fn wait_for(s: &Stack, status: &str, body: &str) {
    let what = format!("nginx answering {status} with {body:?}");
    wait_steady(&what, Duration::from_millis(300), || get(s), |(st, b)| st.contains(status) && b.contains(body));
}

fn plan_text(s: &Stack) -> String {
    let repo = s.repo();
    let o = reconcile(&["plan", "--env", &s.env, "--repo", &repo]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn maintenance_on_answers_503_and_off_serves_again_with_the_same_instances() {
    let s = Stack::new("maint", 43);
    s.write("templates/lb.j2", &lb_template(s.lb_port));
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    wait_for(&s, "200", "version=1 instance=web-");
    let before = s.containers();

    set_maintenance(&s, true);
    let plan = plan_text(&s);
    assert!(plan.contains("app web") && plan.contains("~ maintenance on"), "{plan}");
    assert!(plan.contains(&format!("~ write {}", s.lb_file().display())) && plan.contains("return 503"), "{plan}");
    assert!(plan.contains("0 to add, 0 to replace, 0 to remove"), "instances are kept: {plan}");
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    wait_for(&s, "503", "web is down for maintenance");
    assert_eq!(s.containers(), before, "maintenance keeps the instances running");
    assert_eq!(s.registry().len(), 2, "{:?}", s.registry());
    assert!(s.plan_json().actions.is_empty(), "converged in maintenance");

    set_maintenance(&s, false);
    let plan = plan_text(&s);
    assert!(plan.contains("~ maintenance off") && plan.contains("proxy_pass"), "{plan}");
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    wait_for(&s, "200", "version=1 instance=web-");
    assert_eq!(s.containers(), before);
}
