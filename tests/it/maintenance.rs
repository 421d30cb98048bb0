//! Maintenance mode (issue 10 item 4) end to end through a real nginx (`apply::Stack`,
//! slot 43: pool 24150-24199, LB on 127.0.0.1:28143) and a real haproxy (pool
//! 24800-24849, LB on 127.0.0.1:28156): `lb: {maintenance: true}` keeps the instances
//! running and gives the LB template `app.maintenance`; the template (the same block as
//! the examples' nginx and haproxy templates) answers 503 with a maintenance page. Plan
//! shows the switch: the LB file is rewritten and the app's section says maintenance
//! on/off.

use super::apply::{INDEX_TEMPLATE, Stack, web_app};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::support::{Daemon, TestEnv, WEB_REQUEST, http_exchange, reconcile, split_response, var, wait_steady};
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

/// Status line and body of GET / through the LB on `port` (empty on a connection error).
fn get_at(port: u16) -> (String, String) {
    let (response, _) = http_exchange("127.0.0.1", port, WEB_REQUEST, None, Duration::from_secs(5));
    split_response(&response)
}

/// The LB reloads asynchronously: wait until every answer is `status` with `body` in it.
fn wait_at(port: u16, status: &str, body: &str) {
    let what = format!("the LB on {port} answering {status} with {body:?}");
    wait_steady(&what, Duration::from_millis(300), || get_at(port), |(st, b)| st.contains(status) && b.contains(body));
}

fn wait_for(s: &Stack, status: &str, body: &str) {
    wait_at(s.lb_port, status, body);
}

fn plan_text(s: &TestEnv) -> String {
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

const HAPROXY_PORT: u16 = 28156;
const HAPROXY_POOL: (u16, u16) = (24800, 24849);

/// The examples' haproxy maintenance block (multi-env's haproxy.cfg.j2), put in each
/// backend of `apply_haproxy`'s template.
const HAPROXY_MAINTENANCE: &str = r#"{% if app.maintenance %}
  http-request return status 503 content-type text/html string "<!doctype html><title>Maintenance</title><h1>{{ app.name }} is down for maintenance</h1>"
{% endif %}
"#;

/// A haproxy on 127.0.0.1:HAPROXY_PORT whose whole config is `cfg` (first: a frontend
/// answering 503), reloaded by scripts/haproxy-reload; stopped when dropped.
fn start_haproxy(t: &TestEnv) -> Daemon {
    let dir = t.root().join("haproxy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!("defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\nfrontend fe\n  bind 127.0.0.1:{HAPROXY_PORT}\n  http-request return status 503\n"),
    )
    .unwrap();
    let haproxy = Daemon { name: "haproxy", pid_file: dir.join("haproxy.pid") };
    let log = std::fs::File::create(dir.join("start.log")).unwrap();
    let status = Command::new("haproxy")
        .args(["-W", "-D", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .arg("-p")
        .arg(&haproxy.pid_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    assert!(status.success(), "haproxy: {}", std::fs::read_to_string(dir.join("start.log")).unwrap_or_default());
    haproxy.wait_started();
    haproxy
}

#[test]
fn maintenance_through_haproxy_answers_503_and_off_serves_again() {
    let t = TestEnv::new("maint", "maintha");
    let haproxy = start_haproxy(&t);
    let cfg = t.root().join("haproxy/haproxy.cfg");
    t.write_environment(
        "{version: '1'}",
        &var("RECONCILE_TEST_DOCKER2"),
        HAPROXY_POOL,
        &format!(
            "\n  template: templates/lb.j2\n  path: '{}'\n  check: [haproxy, -c, -q, -f, '{{file}}']\n  reload: [sh, '{}', '{}']\n",
            cfg.display(),
            super::root().join("scripts/haproxy-reload").display(),
            haproxy.pid_file.display(),
        ),
    );
    let template = super::apply_haproxy::TEMPLATE.replace("@PORT@", &HAPROXY_PORT.to_string());
    t.write("templates/lb.j2", &template.replace("@EXTRA@", HAPROXY_MAINTENANCE));
    t.write("templates/index.html.j2", INDEX_TEMPLATE);
    let set = |on: bool| {
        let web = web_app("1", "/", 2);
        let lb = if on { "lb: {host: web.test, maintenance: true}" } else { "lb: {host: web.test}" };
        t.write("apps/web.yaml", &web.replace("lb: {host: web.test}", lb));
    };
    set(false);
    let o = t.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    wait_at(HAPROXY_PORT, "200", "version=1 instance=web-");
    let ids = || {
        let mut v: Vec<String> = super::support::managed_env(&t.env).into_iter().map(|m| m.id).collect();
        v.sort();
        v
    };
    let before = ids();

    set(true);
    let plan = plan_text(&t);
    assert!(plan.contains("~ maintenance on") && plan.contains("http-request return status 503"), "{plan}");
    let o = t.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    wait_at(HAPROXY_PORT, "503", "web is down for maintenance");
    let (status, _) = get_at(HAPROXY_PORT);
    assert!(status.contains("503"), "{status}");
    assert_eq!(ids(), before, "maintenance keeps the instances running");

    set(false);
    let o = t.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    wait_at(HAPROXY_PORT, "200", "version=1 instance=web-");
    assert_eq!(ids(), before);
    drop(haproxy);
}
