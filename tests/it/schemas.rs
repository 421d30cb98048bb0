//! The published schemas against the real consumers. Editor schemas: every file of
//! this repo's own environments, the examples and the corpus is opened in a real yaml-language-server (installed by
//! scripts/test-env.sh) configured as README says; a file `validate` accepts shows no
//! diagnostic, and files `validate` rejects on their own show errors at the same lines.
//! Output schemas: the real `validate`, `status` and `history` JSON validate against
//! schema/{validate,status,history}.schema.json.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use serde_json::{Value, json};

use super::{reconcile, root, stderr, stdout};

const YAML_LS: &str = "/var/lib/reconcile-test/yaml-language-server/node_modules/.bin/yaml-language-server";

/// A headless language-server session over stdio (JSON-RPC with Content-Length frames).
struct Lsp {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    settings: Value,
    next_id: u64,
}

impl Drop for Lsp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lsp {
    fn start(settings: Value) -> Lsp {
        let bin = std::env::var("RECONCILE_TEST_YAML_LS").unwrap_or_else(|_| YAML_LS.into());
        assert!(
            Path::new(&bin).exists(),
            "{bin} is missing: run scripts/test-env.sh (it installs yaml-language-server)"
        );
        let mut child = Command::new(&bin)
            .arg("--stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, incoming) = channel();
        std::thread::spawn(move || {
            loop {
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if out.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                if out.read_exact(&mut body).is_err() || tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                    return;
                }
            }
        });
        let mut lsp = Lsp { child, stdin, incoming, settings, next_id: 1 };
        let id = lsp.request(
            "initialize",
            json!({"processId": null, "rootUri": uri(&root()), "capabilities": {"workspace": {"configuration": true}}}),
        );
        lsp.wait_for(|m| m["id"] == id);
        lsp.notify("initialized", json!({}));
        let settings = lsp.settings.clone();
        lsp.notify("workspace/didChangeConfiguration", json!({"settings": settings}));
        lsp
    }

    fn send(&mut self, msg: &Value) {
        let body = serde_json::to_vec(msg).unwrap();
        write!(self.stdin, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
        self.stdin.write_all(&body).unwrap();
        self.stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// The next message matching `f`, answering the server's own requests meanwhile.
    fn wait_for(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self
                .incoming
                .recv_timeout(Duration::from_secs(60))
                .expect("yaml-language-server sent nothing for 60 s (or exited)");
            if m.get("method").is_some() && m.get("id").is_some() {
                let result = if m["method"] == "workspace/configuration" {
                    let n = m["params"]["items"].as_array().map_or(0, Vec::len);
                    Value::Array(vec![self.settings["yaml"].clone(); n])
                } else {
                    Value::Null
                };
                let reply = json!({"jsonrpc": "2.0", "id": m["id"], "result": result});
                self.send(&reply);
                continue;
            }
            if f(&m) {
                return m;
            }
        }
    }

    /// Open each document and collect the first diagnostics published for it: uri → (line, message).
    fn diagnostics(&mut self, docs: &[(String, String)]) -> BTreeMap<String, Vec<(u64, String)>> {
        for (u, text) in docs {
            self.notify(
                "textDocument/didOpen",
                json!({"textDocument": {"uri": u, "languageId": "yaml", "version": 1, "text": text}}),
            );
        }
        let mut got = BTreeMap::new();
        while got.len() < docs.iter().map(|(u, _)| u).collect::<BTreeSet<_>>().len() {
            let m = self.wait_for(|m| m["method"] == "textDocument/publishDiagnostics");
            let u = m["params"]["uri"].as_str().unwrap().to_string();
            let d = m["params"]["diagnostics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (d["range"]["start"]["line"].as_u64().unwrap() + 1, d["message"].as_str().unwrap().to_string())
                })
                .collect();
            got.entry(u).or_insert(d);
        }
        got
    }
}

fn uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// The settings README gives for an editor (VS Code's `yaml.schemas`), with the
/// schema store off (no network here).
fn editor_settings() -> Value {
    let s = root().join("schema/editor");
    json!({"yaml": {
        "validate": true,
        "schemaStore": {"enable": false},
        "schemas": {
            uri(&s.join("environment.schema.json")): "**/environments/*/environment.yaml",
            uri(&s.join("app.schema.json")): "**/environments/*/apps/*.yaml",
        }
    }})
}

/// This repo (a config repo itself), the examples and the corpus.
fn repos() -> Vec<PathBuf> {
    let mut v = vec![root()];
    for dir in ["examples", "tests/corpus"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.join("environments").is_dir() {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

pub fn validator(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schema").join(name)).unwrap();
    jsonschema::draft202012::new(&serde_json::from_str::<Value>(&text).unwrap()).unwrap()
}

#[track_caller]
pub fn assert_valid(v: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = v.iter_errors(doc).map(|e| format!("{e} at {}", e.instance_path().as_str())).collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{doc:#}");
}

/// `validate --format json` of `repo`, checked against its schema: file → error lines.
fn validate_errors(repo: &Path, schema: &jsonschema::Validator) -> BTreeMap<PathBuf, BTreeSet<u64>> {
    let rel = match repo.strip_prefix(root()).unwrap_or(repo).to_string_lossy().into_owned() {
        r if r.is_empty() => ".".to_string(),
        r => r,
    };
    let o = reconcile(&["validate", "--repo", &rel, "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", stderr(&o)));
    assert_valid(schema, &v, &format!("validate --format json of {rel}"));
    let mut errors: BTreeMap<PathBuf, BTreeSet<u64>> = BTreeMap::new();
    for d in v["diagnostics"].as_array().unwrap().iter().filter(|d| d["severity"] == "error") {
        let file = root().join(d["file"].as_str().unwrap());
        errors.entry(file).or_default().insert(d["line"].as_u64().unwrap());
    }
    errors
}

/// Corpus cases whose one error is a schema error of one file: the editor shows it at the same lines.
const SAME_LINES: [&str; 9] = [
    "unknown-field",
    "unknown-nested-field",
    "wrong-type",
    "wrong-api-version",
    "wrong-kind",
    "list-where-map-belongs",
    "list-not-map",
    "secret-bad-source",
    "duplicate-key",
];

#[test]
fn editor_schemas_agree_with_validate() {
    let schema = validator("validate.schema.json");
    let mut errors = BTreeMap::new();
    let mut files = Vec::new();
    // An environment that extends nothing is checked whole by validate, and so by the
    // editor: incomplete `etcd:` and `lb:` are errors at the same lines.
    let own = tempfile::Builder::new().prefix("reconcile-schemas-").tempdir().unwrap(); // `**` skips dot dirs
    let own_env = own.path().join("environments/solo");
    std::fs::create_dir_all(&own_env).unwrap();
    std::fs::write(
        own_env.join("environment.yaml"),
        "apiVersion: reconcile/v1\nkind: Environment\nname: solo\nhosts:\n  - name: node-1\n    docker: unix:///var/run/docker.sock\n    address: 127.0.0.1\n    ports: 20000-20100\netcd:\n  prefix: /x\nlb:\n  template: lb.j2\n  path: /tmp/lb.conf\n",
    )
    .unwrap();
    let mut repos = repos();
    repos.push(own.path().to_path_buf());
    for r in repos {
        errors.extend(validate_errors(&r, &schema));
        files_under(&r.join("environments"), &mut files);
    }
    files.retain(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"));
    assert!(files.len() >= 150, "only {} files", files.len());
    let docs: Vec<(String, String)> =
        files.iter().map(|f| (uri(f), String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())).collect();
    // An override file of an example, with a mistake added: its modeline must reach the editor schema.
    let example = root().join("examples/multi-env/environments/production/apps/api.yaml");
    let broken_uri = uri(&example).replace("api.yaml", "api-broken.yaml");
    let broken = std::fs::read_to_string(&example).unwrap() + "replica: 3\n";
    let broken_line = broken.lines().count() as u64;
    let mut lsp = Lsp::start(editor_settings());
    let mut all = docs.clone();
    all.push((broken_uri.clone(), broken));
    let diags = lsp.diagnostics(&all);

    let mut problems = Vec::new();
    let mut accepted = 0;
    for f in &files {
        let got = &diags[&uri(f)];
        match errors.get(f) {
            None => {
                accepted += 1;
                if !got.is_empty() {
                    problems.push(format!("{}: validate accepts it, the editor shows {got:?}", f.display()));
                }
            }
            Some(lines)
                if f.starts_with(own.path())
                    || SAME_LINES.iter().any(|c| f.starts_with(root().join("tests/corpus").join(c))) =>
            {
                let editor: BTreeSet<u64> = got.iter().map(|(l, _)| *l).collect();
                if &editor != lines {
                    problems.push(format!("{}: validate errors at {lines:?}, the editor at {got:?}", f.display()));
                }
            }
            Some(_) => {}
        }
    }
    assert!(accepted >= 100, "only {accepted} accepted files");
    let b = &diags[&broken_uri];
    if !b.iter().any(|(l, m)| *l == broken_line && m.contains("replica")) {
        problems.push(format!("the example's modeline did not reach the schema: {b:?}"));
    }
    let solo = &errors[&own_env.join("environment.yaml")];
    assert_eq!(solo.len(), 2, "validate: {solo:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn reconcile_schema_prints_and_writes_every_schema() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_string_lossy().into_owned();
    let o = reconcile(&["schema", "--out", &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut written = Vec::new();
    files_under(dir.path(), &mut written);
    // `--out schema` reproduces this repo's schema/ exactly (the committed editor schemas are current).
    for f in &written {
        let rel = f.strip_prefix(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(f).unwrap(),
            std::fs::read_to_string(root().join("schema").join(rel)).unwrap()
        );
    }
    assert_eq!(written.len(), 10, "{written:?}");
    for kind in ["environment", "app", "plan", "validate", "status", "history", "report", "status-page"] {
        let o = reconcile(&["schema", kind]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema", "{kind}");
    }
    let o = reconcile(&["schema", "app", "--editor"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["required"], json!(["apiVersion", "kind", "name"]));
    let o = reconcile(&["schema", "plan", "--editor"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("`--editor` is for the spec files only"), "{}", stderr(&o));
}

/// `status --format json` (before and after an apply) and `history --format json`
/// of a real stack (Docker, etcd, nginx) validate against their schemas.
#[test]
fn status_and_history_json_match_their_schemas() {
    let s = super::apply::Stack::new("schemas", 27);
    let repo = s.repo();
    let status = validator("status.schema.json");
    let history = validator("history.schema.json");
    let run = |args: &[&str]| -> Value {
        let o = reconcile(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}{}", stdout(&o), stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let before = run(&["status", "--env", &s.env, "--repo", &repo, "--format", "json"]);
    assert_valid(&status, &before, "status before apply");
    assert!(before["instances"].as_array().unwrap().iter().all(|i| i["state"] == "missing"), "{before:#}");
    let empty = run(&["history", "--env", &s.env, "--repo", &repo, "--format", "json"]);
    assert_valid(&history, &empty, "empty history");
    let o = s.apply(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let after = run(&["status", "--env", &s.env, "--repo", &repo, "--format", "json"]);
    assert_valid(&status, &after, "status after apply");
    let running = after["instances"].as_array().unwrap();
    assert!(!running.is_empty() && running.iter().all(|i| i["state"] == "running" && i["container_id"].is_string()));
    let h = run(&["history", "--env", &s.env, "--repo", &repo, "--format", "json"]);
    assert_valid(&history, &h, "history after apply");
    assert_eq!(h["entries"].as_array().unwrap().len(), 1, "{h:#}");
}
