//! The status page in a real browser: `reconcile watch` against a real stack (Docker,
//! etcd, nginx) serves `/` and `/status.json`; headless Chromium (installed by
//! scripts/test-env.sh) renders the page (`--dump-dom`) and takes screenshots at a
//! desktop and a phone width, kept under target/tmp/status-page/ as test artifacts.
//! `/status.json` is validated against schema/status-page.schema.json. The same for
//! `reconcile status --format html --out FILE` opened from a file:// URL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::apply::Stack;
use super::support::{git_rev, http_exchange, reconcile_cmd, split_response};
use super::{git, stderr, stdout};

/// Outside the other watch tests' metrics ports (28191–28199).
const METRICS_PORT: u16 = 28177;

/// Where the screenshots and the HTML artifact go.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(path: &str) -> Result<(String, String), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (response, error) = http_exchange("127.0.0.1", METRICS_PORT, &request, None, Duration::from_secs(10));
    match error {
        Some(e) => Err(e),
        None => Ok(split_response(&response)),
    }
}

fn status_json() -> Option<Value> {
    let (status, body) = get("/status.json").ok()?;
    status.contains(" 200 ").then(|| serde_json::from_str(&body).ok())?
}

/// Headless Chromium with the flags that keep it off the network and out of any profile.
fn chromium(args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("chromium is missing: run scripts/test-env.sh (it installs Debian's chromium)");
    assert!(o.status.success(), "chromium {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn dump_dom(url: &str) -> String {
    String::from_utf8(chromium(&["--dump-dom", url]).stdout).unwrap()
}

/// The live page's DOM once it shows `app` (a request whose inspect or probes fail on a
/// loaded machine shows the error instead of the instances, as it should; the next one
/// shows them again).
fn dump_dom_showing(url: &str, app: &str) -> String {
    let t0 = Instant::now();
    loop {
        let dom = dump_dom(url);
        if dom.contains(&format!("<span class=\"app-name\">{app}</span>")) || t0.elapsed() > Duration::from_secs(60) {
            return dom;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A screenshot of `url` at `w`×`h` into the artifacts; asserts a real, non-trivial PNG.
fn screenshot(url: &str, name: &str, (w, h): (u32, u32)) -> PathBuf {
    let file = artifacts().join(name);
    let _ = std::fs::remove_file(&file);
    chromium(&[&format!("--screenshot={}", file.display()), &format!("--window-size={w},{h}"), url]);
    let png = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", file.display());
    let (pw, ph) =
        (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((pw, ph), (w, h), "{}", file.display());
    // A blank page compresses to a few hundred bytes; text, tables and badges do not.
    assert!(png.len() > 20_000, "{} is only {} bytes: an empty page?", file.display(), png.len());
    println!("screenshot: {}", file.display());
    file
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(super::root().join("schema/status-page.schema.json")).unwrap();
    jsonschema::draft202012::new(&serde_json::from_str::<Value>(&text).unwrap()).unwrap()
}

#[track_caller]
fn assert_valid(v: &jsonschema::Validator, doc: &Value) {
    let errors: Vec<String> = v.iter_errors(doc).map(|e| format!("{e} at {}", e.instance_path().as_str())).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
}

/// The DOM checks both pages share: the environment, every instance row with its health
/// spelled out, the commit.
fn check_dom(dom: &str, env: &str, commit: &str) {
    assert!(dom.contains(&format!("<strong id=\"env\">{env}</strong>")), "{dom}");
    assert!(
        dom.contains("<span class=\"app-name\">web</span>") && dom.contains("<span class=\"app-name\">worker</span>"),
        "{dom}"
    );
    for i in ["web-0", "web-1", "worker-0"] {
        assert!(dom.contains(&format!("<td data-label=\"Instance\"><strong>{i}</strong></td>")), "{i}: {dom}");
    }
    assert_eq!(dom.matches("<tr class=\"instance\">").count(), 3, "{dom}");
    assert_eq!(dom.matches("✔ healthy</span>").count(), 2, "the web instances: {dom}");
    assert_eq!(dom.matches("– no check</span>").count(), 1, "the worker: {dom}");
    assert!(dom.contains(&format!("<code title=\"{commit}\">{}</code>", &commit[..12])), "{dom}");
    assert!(dom.contains("<span class=\"badge ok\">all 3 instances up</span>"), "{dom}");
    assert!(
        dom.contains("<span class=\"badge ok\">2/2 up</span>")
            && dom.contains("<span class=\"badge ok\">1/1 up</span>")
    );
}

#[test]
fn watch_serves_the_status_page_and_status_writes_it_for_ci() {
    let s = Stack::new("page", 37);
    let repo_dir = s.root().join("repo");
    git(&repo_dir, &["init", "-q"]);
    git(&repo_dir, &["add", "-A"]);
    git(&repo_dir, &["commit", "-qm", "v1"]);
    let commit = git_rev(&repo_dir, "HEAD");
    let log = s.root().join("watch.log");
    let file = std::fs::File::create(&log).unwrap();
    let addr = format!("127.0.0.1:{METRICS_PORT}");
    let _w = Watch(
        reconcile_cmd(&["watch", "--env", &s.env, "--repo", &s.repo(), "--interval", "60s", "--metrics-addr", &addr])
            .args(["--timeout", "10s"])
            .env("RUST_LOG", "reconcile=info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Converged: every instance running, the web ones healthy, the run recorded.
    let schema = validator();
    let t0 = Instant::now();
    let page = loop {
        if let Some(p) = status_json() {
            assert_valid(&schema, &p);
            let instances: Vec<&Value> =
                p["apps"].as_array().unwrap().iter().flat_map(|a| a["instances"].as_array().unwrap()).collect();
            let healthy = instances.iter().filter(|i| i["health"] == "healthy").count();
            if instances.len() == 3
                && healthy == 2
                && p["last_run"]["result"] == "ok"
                && !p["history"].as_array().unwrap().is_empty()
            {
                break p;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "the page never showed the converged stack\n{}", read_log());
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(page["env"], s.env.as_str());
    assert_eq!(page["source"], "watch");
    assert_eq!(page["commit"], commit.as_str());
    assert_eq!(page["last_sync"]["commit"], commit.as_str());
    assert_eq!(page["in_sync"], true, "{page:#}");
    assert_eq!(page["canaries"], serde_json::json!([]));
    let names: Vec<&str> = page["apps"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web", "worker"]);
    let web = &page["apps"][0]["instances"];
    for (n, i) in web.as_array().unwrap().iter().enumerate() {
        assert_eq!(i["instance"], format!("web-{n}"));
        assert_eq!((i["state"].as_str(), i["restarts"].as_i64()), (Some("running"), Some(0)), "{i}");
        assert!(i["port"].as_u64().is_some_and(|p| (s.pool.0..=s.pool.1).contains(&(p as u16))), "{i}");
        assert!(i["uptime_secs"].as_i64().is_some() && i["host"].is_string());
    }
    assert_eq!(page["apps"][1]["instances"][0]["health"], "no_check");
    assert_eq!(page["history"][0]["kind"], "watch");
    assert_eq!(page["history"][0]["commit"], commit.as_str());

    // The HTML in Chromium: the same data, reloading itself.
    let (status, html) = get("/").unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
    let url = format!("http://{addr}/");
    let dom = dump_dom_showing(&url, "worker");
    check_dom(&dom, &s.env, &commit);
    assert!(dom.contains("No failed runs since this watcher started."), "{dom}");
    assert!(dom.contains("<span class=\"badge ok\">in sync</span>"));
    screenshot(&url, "watch-desktop.png", (1280, 800));
    screenshot(&url, "watch-phone.png", (390, 844));

    // The CI artifact: the same page from `status --format html`, without the reload.
    let out = artifacts().join("status.html");
    let o = reconcile_cmd(&["status", "--env", &s.env, "--repo", &s.repo(), "--format", "html", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).is_empty(), "--out writes nothing on stdout: {}", stdout(&o));
    let file_html = std::fs::read_to_string(&out).unwrap();
    assert!(!file_html.contains("http-equiv=\"refresh\""), "a CI artifact does not reload");
    let file_url = format!("file://{}", out.display());
    let dom = dump_dom(&file_url);
    check_dom(&dom, &s.env, &commit);
    assert!(dom.contains("reconcile status at "), "{dom}");
    assert!(dom.contains("<span class=\"badge ok\">ok</span>"), "the last run from the history: {dom}");
    screenshot(&file_url, "status-desktop.png", (1280, 800));
    screenshot(&file_url, "status-phone.png", (390, 844));

    // A failed run shows up among the errors, on the page and in the JSON.
    s.write("apps/web.yaml", "apiVersion: reconcile/v1\nkind: App\nname: web\nreplicas: many\n");
    git(&repo_dir, &["commit", "-qam", "broken <b>web</b>"]);
    let t0 = Instant::now();
    let errors = loop {
        if let Some(p) = status_json() {
            assert_valid(&schema, &p);
            if let Some(e) = p["errors"].as_array().filter(|e| !e.is_empty()) {
                break e.clone();
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the failed run never reached the page\n{}", read_log());
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(errors[0]["stage"], "load", "{errors:?}");
    // The whole load error: its summary line and then the diagnostic itself (which file,
    // which field), as validate prints it.
    let message = errors[0]["message"].as_str().unwrap();
    let (summary, diagnostics) = message.split_once('\n').unwrap_or((message, ""));
    assert!(summary.contains(&format!("environment `{}` has 1 error(s)", s.env)), "{message}");
    assert!(diagnostics.contains("apps/web.yaml") && diagnostics.contains("replicas"), "{message}");
    let dom = dump_dom_showing(&url, "worker");
    assert!(dom.contains("<span class=\"badge bad\">load</span>"), "{dom}");
    // Every line of it on the page, preformatted and escaped.
    let pre = dom.split("<pre class=\"message\">").nth(1).and_then(|p| p.split("</pre>").next()).unwrap_or("");
    assert!(pre.contains("has 1 error(s)") && pre.contains("apps/web.yaml") && pre.contains('\n'), "{dom}");
    assert!(!pre.contains("<b>"), "{pre}");
    assert!(!dom.contains("No failed runs"), "{dom}");
    // The instances are still shown from the last good observation.
    assert_eq!(dom.matches("<tr class=\"instance\">").count(), 3, "{dom}");
}
