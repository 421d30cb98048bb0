#!/usr/bin/env python3
"""Generate the malformed-repo corpus under tests/corpus/.

Each case is a complete config repo: the valid base below with one mutation.
`EXPECT` holds what the test asserts: first line `file:line` (relative to the
case directory) that the diagnostics must name, further lines substrings of the
message. Re-run after changing the base: `python3 tests/corpus/generate.py`.
"""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))

BASE = {
    "environments/base/environment.yaml": """apiVersion: reconcile/v1
kind: Environment
name: base
abstract: true
vars:
  log_level: info
secrets:
  db_password: {from_env: DB_PASSWORD}
etcd:
  endpoints: [http://127.0.0.1:23790]
lb:
  template: templates/nginx.conf.j2
  path: /etc/nginx/conf.d/reconcile.conf
  check: [nginx, -t]
  reload: [nginx, -s, reload]
""",
    "environments/base/apps/api.yaml": """apiVersion: reconcile/v1
kind: App
name: api
image: registry.example/api:1.4.2
command: [/app/api, --log-level, "{{ vars.log_level }}"]
env:
  DB_PASSWORD_FILE: /etc/worker.ini
replicas: 2
port: 8080
health: {http: /healthz, interval: 1s, timeout: 2s, retries: 10}
resources: {cpus: 0.5, memory: 256Mi}
lb: {host: api.internal, path: /}
registry: true
""",
    "environments/base/apps/worker.yaml": """apiVersion: reconcile/v1
kind: App
name: worker
image: registry.example/worker:1.4.2
depends_on: [api]
files:
  - template: templates/worker.ini.j2
    path: /etc/worker.ini
""",
    "environments/base/templates/nginx.conf.j2": """{% for app in apps %}
upstream {{ app.name }} {
{% for i in app.instances %}  server {{ i.address }}:{{ i.port }};
{% endfor %}}
{% endfor %}
""",
    "environments/base/templates/worker.ini.j2": """[worker]
env = {{ env.name }}
host = {{ instance.host }}
db_password = {{ secrets.db_password }}
""",
    "environments/staging/environment.yaml": """apiVersion: reconcile/v1
kind: Environment
name: staging
extends: base
vars:
  log_level: debug
hosts:
  - name: node-1
    docker: unix:///var/run/docker.sock
    address: 127.0.0.1
    labels: {zone: a}
    ports: 20000-20099
  - name: node-2
    docker: unix:///run/reconcile-test/docker2.sock
    address: 127.0.0.2
    labels: {zone: b}
    ports: 20000-20099
""",
    "environments/staging/apps/api.yaml": """apiVersion: reconcile/v1
kind: App
name: api
image: registry.example/api:1.5.0
replicas: 3
""",
}

ENV = "environments/staging/environment.yaml"
BENV = "environments/base/environment.yaml"
API = "environments/staging/apps/api.yaml"
BAPI = "environments/base/apps/api.yaml"
WORKER = "environments/base/apps/worker.yaml"
NGINX = "environments/base/templates/nginx.conf.j2"


def sub(path, old, new):
    def f(files):
        assert old in files[path], (path, old)
        files[path] = files[path].replace(old, new, 1)
    return f


def put(path, text):
    def f(files):
        files[path] = text
    return f


def drop(path):
    def f(files):
        del files[path]
    return f


def both(*fs):
    def f(files):
        for g in fs:
            g(files)
    return f


# name: (mutation, expected file:line, message substrings...)
CASES = {
    "yaml-syntax": (sub(API, "replicas: 3", "replicas: [3"), f"{API}:6", "invalid YAML"),
    "yaml-tab-indent": (sub(API, "replicas: 3", "env:\n\tA: b"), f"{API}:6", "invalid YAML"),
    "unknown-field": (sub(API, "replicas: 3", "replica: 3"), f"{API}:5", "unknown field `replica`", "did you mean `replicas`?"),
    "unknown-nested-field": (sub(BAPI, "health: {http: /healthz,", "health: {htp: /healthz,"), f"{BAPI}:10", "unknown field `htp`"),
    "wrong-type": (sub(API, "replicas: 3", 'replicas: "3"'), f"{API}:5", "replicas", "is not of type"),
    "duplicate-key": (sub(API, "replicas: 3", "replicas: 3\nreplicas: 4"), f"{API}:6", "invalid YAML"),
    "alias-bomb": (put(API, "apiVersion: reconcile/v1\nkind: App\nname: api\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}" if i else "x"] * 10) + "]\n" for i in range(9))), f"{API}:", "alias"),
    "invalid-utf8": (put(API, "apiVersion: reconcile/v1\nkind: App\nname: api\nimage: \udcff\n"), f"{API}:4", "not valid UTF-8"),
    "empty-file": (put(API, ""), f"{API}:1", "file is empty"),
    "list-not-map": (put(API, "- apiVersion: reconcile/v1\n- kind: App\n"), f"{API}:1", "expected a mapping"),
    "list-where-map-belongs": (sub(API, "replicas: 3", "placement:\n  - node-1"), f"{API}:6", "placement", "is not of type"),
    "wrong-api-version": (sub(API, "apiVersion: reconcile/v1", "apiVersion: reconcile/v2"), f"{API}:1", "apiVersion"),
    "wrong-kind": (sub(API, "kind: App", "kind: Environment"), f"{API}:2", "kind"),
    "name-mismatch": (sub(API, "name: api", "name: apii"), f"{API}:3", "does not match"),
    "missing-image": (both(sub(BAPI, "image: registry.example/api:1.4.2\n", ""), drop(API)), f"{BAPI}:1", "missing required field `image`"),
    "multiple-documents": (sub(API, "replicas: 3", "replicas: 3\n---\nname: x"), f"{API}:7", "more than one YAML document"),
    "merge-key": (sub(API, "replicas: 3", "x: &x {replicas: 3}\n<<: *x"), f"{API}:6", "merge keys"),
    "duplicate-host": (sub(ENV, "  - name: node-2", "  - name: node-1"), f"{ENV}:13", "declared twice"),
    "unknown-host-in-placement": (sub(API, "replicas: 3", "replicas: 3\nplacement: {hosts: [node-3]}"), f"{API}:6", "unknown host `node-3`"),
    "unknown-label-in-placement": (sub(API, "replicas: 3", "replicas: 3\nplacement: {labels: {zone: c}}"), f"{API}:6", "no host has label zone=c"),
    "spread-infeasible": (sub(API, "replicas: 3", "replicas: 3\nplacement: {spread: true}"), f"{API}:5", "spread one per host"),
    "dependency-cycle": (sub(BAPI, "registry: true", "registry: true\ndepends_on: [worker]"), f"{BAPI}:14", "dependency cycle"),
    "unknown-dependency": (sub(WORKER, "depends_on: [api]", "depends_on: [apy]"), f"{WORKER}:5", "unknown app `apy`", "did you mean `api`?"),
    "port-pool-inverted": (sub(ENV, "ports: 20000-20099\n  - name: node-2", "ports: 20099-20000\n  - name: node-2"), f"{ENV}:12", "inverted"),
    "port-pool-overlap": (sub(ENV, "address: 127.0.0.2", "address: 127.0.0.1"), f"{ENV}:17", "overlap"),
    "port-pool-too-small": (both(
        sub(ENV, "ports: 20000-20099\n  - name: node-2", "ports: 20000-20000\n  - name: node-2"),
        sub(ENV, "ports: 20000-20099\n", "ports: 20000-20000\n")), f"{API}:5", "too small"),
    "invalid-image": (sub(API, "image: registry.example/api:1.5.0", "image: Registry.example/API:1.5.0"), f"{API}:4", "invalid image reference"),
    "invalid-duration": (sub(BAPI, "interval: 1s", "interval: 1 sec"), f"{BAPI}:10", "invalid duration"),
    "invalid-lb-drain": (sub("environments/base/environment.yaml", "reload: [nginx, -s, reload]\n", "reload: [nginx, -s, reload]\n  drain: a while\n"), "environments/base/environment.yaml:16", "invalid duration"),
    "ssh-port": (sub(ENV, "docker: unix:///var/run/docker.sock", "docker: ssh://deploy@10.0.0.9:2222"), f"{ENV}:9", "ssh on port 2222", "~/.ssh/config"),
    "invalid-cpus": (sub(BAPI, "cpus: 0.5", "cpus: lots"), f"{BAPI}:11", "invalid CPU quantity"),
    "invalid-memory": (sub(BAPI, "memory: 256Mi", "memory: 256MB"), f"{BAPI}:11", "invalid memory quantity"),
    "invalid-docker-endpoint": (sub(ENV, "docker: unix:///var/run/docker.sock", "docker: unix://var/run/docker.sock"), f"{ENV}:9", "invalid Docker endpoint"),
    "template-syntax": (sub(NGINX, "{% endfor %}}", "{% endfor }}"), f"{NGINX}:", "syntax"),
    "template-undefined": (sub("environments/base/templates/worker.ini.j2", "{{ env.name }}", "{{ env.nmae }}"), "environments/base/templates/worker.ini.j2:2", "undefined"),
    "inline-template-undefined": (sub(BAPI, "{{ vars.log_level }}", "{{ vars.loglevel }}"), f"{BAPI}:5", "undefined"),
    "template-path-escapes": (sub(WORKER, "template: templates/worker.ini.j2", "template: ../../../etc/passwd"), f"{WORKER}:7", "escapes"),
    "template-missing": (sub(WORKER, "template: templates/worker.ini.j2", "template: templates/nope.j2"), f"{WORKER}:7", "not found"),
    "template-include-escapes": (sub(NGINX, "{% for app in apps %}", "{% include '../../../../etc/passwd' %}{% for app in apps %}"), f"{NGINX}:1", "escapes"),
    "extends-unknown": (sub(ENV, "extends: base", "extends: bsae"), f"{ENV}:4", "unknown environment `bsae`", "did you mean `base`?"),
    "extends-cycle": (sub("environments/base/environment.yaml", "abstract: true", "abstract: true\nextends: staging"), f"{ENV}:4", "cycle"),
    "lb-without-port": (sub(BAPI, "port: 8080\n", ""), f"{BAPI}:", "no `port`"),
    "registry-without-etcd": (sub("environments/base/environment.yaml", "etcd:\n  endpoints: [http://127.0.0.1:23790]\n", ""), f"{BAPI}:13", "no `etcd`"),
    "health-two-kinds": (sub(BAPI, "health: {http: /healthz,", "health: {tcp: true, http: /healthz,"), f"{BAPI}:10", "exactly one of"),
    "secret-bad-source": (sub("environments/base/environment.yaml", "{from_env: DB_PASSWORD}", "{from_env: DB_PASSWORD, from_file: /x}"), "environments/base/environment.yaml:8", "secrets"),
    "invalid-volume": (sub(API, "replicas: 3", "replicas: 3\nvolumes: [relative/path:/data]"), f"{API}:6", "invalid volume"),
    "null-deletes-required": (both(sub(API, "image: registry.example/api:1.5.0", "image: null"), drop(BAPI), sub(WORKER, "depends_on: [api]\n", "")), f"{API}:1", "missing required field `image`"),
    "address-not-ip": (sub(ENV, "address: 127.0.0.2", "address: node-2.local"), f"{ENV}:15", "not an IP address"),
    # etcdsec: etcd TLS/auth, age, from_age, from_command, secrets in env
    "etcd-tls-cert-without-key": (sub(BENV, "  endpoints: [http://127.0.0.1:23790]", "  endpoints: [https://127.0.0.1:23790]\n  tls: {ca: /etc/reconcile/ca.pem, cert: /etc/reconcile/etcd.pem}"), f"{BENV}:11", "etcd.tls has cert without key"),
    "etcd-tls-unknown-field": (sub(BENV, "  endpoints: [http://127.0.0.1:23790]", "  endpoints: [https://127.0.0.1:23790]\n  tls: {ca: /etc/reconcile/ca.pem, crt: /etc/reconcile/etcd.pem}"), f"{BENV}:11", "crt"),
    "etcd-tls-with-http-endpoint": (sub(BENV, "  endpoints: [http://127.0.0.1:23790]", "  endpoints: [http://127.0.0.1:23790]\n  tls: {ca: /etc/reconcile/ca.pem}"), f"{BENV}:10", "some endpoints are http://"),
    "etcd-https-without-tls": (sub(BENV, "  endpoints: [http://127.0.0.1:23790]", "  endpoints: [https://127.0.0.1:23790]"), f"{BENV}:10", "need etcd.tls"),
    "etcd-password-unknown-secret": (sub(BENV, "  endpoints: [http://127.0.0.1:23790]", "  endpoints: [http://127.0.0.1:23790]\n  username: ci-staging\n  password: etcd_pasword"), f"{BENV}:12", "names `etcd_pasword`, which is not an entry in `secrets`"),
    "etcd-username-without-password": (sub(BENV, "  endpoints: [http://127.0.0.1:23790]", "  endpoints: [http://127.0.0.1:23790]\n  username: ci-staging"), f"{BENV}:11", "without etcd.password"),
    "age-bad-recipient": (sub(BENV, "vars:", "age: {recipients: [age1notarecipient]}\nvars:"), f"{BENV}:5", "recipients"),
    "age-not-a-list": (sub(BENV, "vars:", "age: {recipients: age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq}\nvars:"), f"{BENV}:5", "is not of type"),
    "from-age-missing-file": (sub(BENV, "{from_env: DB_PASSWORD}", "{from_age: secrets/db_password.age}"), f"{BENV}:8", "age file secrets/db_password.age is in none of"),
    "from-age-not-an-age-file": (both(sub(BENV, "{from_env: DB_PASSWORD}", "{from_age: secrets/db_password.age}"), put("environments/base/secrets/db_password.age", "hunter2\n")), f"{BENV}:8", "not an age file"),
    "from-age-escapes": (sub(BENV, "{from_env: DB_PASSWORD}", "{from_age: ../../db_password.age}"), f"{BENV}:8", "leaves the environment directory"),
    "from-command-empty": (sub(BENV, "{from_env: DB_PASSWORD}", "{from_command: []}"), f"{BENV}:8", "from_command"),
    "from-command-not-a-list": (sub(BENV, "{from_env: DB_PASSWORD}", "{from_command: vault kv get secret/db}"), f"{BENV}:8", "is not of type"),
}

# --- private registries and pull policies (issue 9) ---
REG = "vars:\n  log_level: debug\n"
CASES.update({
    "registry-unknown-secret": (sub(ENV, REG, REG + "registries:\n  - {host: 'registry.example:5000', username: ci-bot, password: registry_pasword}\n"), f"{ENV}:8", "unknown secret `registry_pasword`", "known: db_password"),
    "registry-bad-host": (sub(ENV, REG, REG + "registries:\n  - {host: 'https://registry.example', username: ci-bot, password: db_password}\n"), f"{ENV}:8", "invalid registry host", "scheme"),
    "registry-missing-username": (sub(ENV, REG, REG + "registries:\n  - {host: registry.example, password: db_password}\n"), f"{ENV}:8", "username"),
    "registry-duplicate-host": (sub(ENV, REG, REG + "registries:\n  - {host: registry.example, username: a, password: db_password}\n  - {host: registry.example, username: b, password: db_password}\n"), f"{ENV}:9", "credentials twice"),
    "pull-invalid": (sub(API, "replicas: 3", "replicas: 3\npull: sometimes"), f"{API}:6", "pull"),
})

# --- canaries and LBs in containers (issue 10) ---
CANARY = "replicas: 3\nupdate: {strategy: canary, canary: 1, auto_promote: 10m, traffic: 10%}"
# The base's file LB replaced by one in the containers of app `edge` (rolled one at a time).
CONTAINER_LB = """lb:
  template: templates/nginx.conf.j2
  container: {app: edge, path: /etc/nginx/conf.d/reconcile.conf}
  check: [nginx, -t, -c, "{file}"]
  reload: [nginx, -s, reload]
"""
EDGE = "environments/base/apps/edge.yaml"
EDGE_APP = """apiVersion: reconcile/v1
kind: App
name: edge
image: registry.example/nginx:1.24
replicas: 2
placement: {spread: true}
update: {strategy: recreate, batch: 1}
"""
CONTAINER_LB_BASE = both(
    sub(BENV, "lb:\n  template: templates/nginx.conf.j2\n  path: /etc/nginx/conf.d/reconcile.conf\n  check: [nginx, -t]\n  reload: [nginx, -s, reload]\n", CONTAINER_LB),
    put(EDGE, EDGE_APP),
)
CASES.update({
    "canary-auto-promote-bad-duration": (sub(API, "replicas: 3", CANARY.replace("10m", "soon")), f"{API}:6", "invalid duration", "soon"),
    "canary-auto-promote-without-canary": (sub(API, "replicas: 3", "replicas: 3\nupdate: {strategy: rolling, auto_promote: 10m}"), f"{API}:6", "`auto_promote` applies only to strategy: canary", "set strategy: canary, or remove auto_promote"),
    "canary-traffic-zero": (sub(API, "replicas: 3", CANARY.replace("10%", "0%")), f"{API}:6", "traffic `0%` is not a share from 1% to 99%", "e.g. `traffic: 10%`"),
    "canary-traffic-over-99": (sub(API, "replicas: 3", CANARY.replace("10%", "100%")), f"{API}:6", "`traffic` has an invalid format", "10% (1-99%)"),
    "canary-traffic-without-percent": (sub(API, "replicas: 3", CANARY.replace("10%", "'10'")), f"{API}:6", "`traffic` has an invalid format", "10% (1-99%)"),
    "canary-traffic-without-canary": (sub(API, "replicas: 3", "replicas: 3\nupdate: {strategy: recreate, traffic: 10%}"), f"{API}:6", "`traffic` applies only to strategy: canary", "set strategy: canary, or remove traffic"),
    "canary-without-count": (sub(API, "replicas: 3", "replicas: 3\nupdate: {strategy: canary, traffic: 10%}"), f"{API}:6", "uses the canary strategy without `canary`", "add `canary: N`"),
    "container-lb-check-without-file": (both(CONTAINER_LB_BASE, sub(BENV, 'check: [nginx, -t, -c, "{file}"]', "check: [nginx, -t]")), f"{BENV}:14", "must name the candidate as `{file}`", "checked at a side path in every instance"),
})

# Valid variants of the base (`valid-*`): each must pass with no error and no warning.
VALID = {
    "valid-canary": sub(API, "replicas: 3", CANARY),
    "valid-container-lb": CONTAINER_LB_BASE,
}



def write(root, files):
    for rel, text in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))


def main():
    for entry in os.listdir(HERE):
        p = os.path.join(HERE, entry)
        if os.path.isdir(p):
            shutil.rmtree(p)
    write(os.path.join(HERE, "valid"), BASE)
    for name, mutate in sorted(VALID.items()):
        files = dict(BASE)
        mutate(files)
        write(os.path.join(HERE, name), files)
    for name, (mutate, where, *msgs) in sorted(CASES.items()):
        files = dict(BASE)
        mutate(files)
        root = os.path.join(HERE, name)
        write(root, files)
        with open(os.path.join(root, "EXPECT"), "w") as f:
            f.write("\n".join([where, *msgs]) + "\n")
    print(f"{len(CASES)} malformed cases + valid + {len(VALID)} valid variants")


if __name__ == "__main__":
    main()
