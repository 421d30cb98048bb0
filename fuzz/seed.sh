#!/usr/bin/env bash
# Regenerate the seed inputs of the fuzz targets from the project's own specs.
#
#   fuzz/seed.sh            # writes into fuzz/corpus/{yaml,load}/
#   fuzz/seed.sh DIR        # writes into DIR/{yaml,load}/ (e.g. a scratch dir to merge with `cargo fuzz cmin`)
#
# Seeds are named by the SHA-1 of their content, as libFuzzer names the inputs it
# adds, so re-running is idempotent and never duplicates an input.
#
# yaml: every *.yaml file under tests/corpus, environments and examples.
# load: one input per case directory of tests/corpus, its files joined with the
#   separator of fuzz_targets/load.rs ("\n#--\n") in the target's file order:
#     1 environments/base/environment.yaml     <- base/environment.yaml
#     2 environments/base/apps/api.yaml        <- base/apps/api.yaml
#     3 environments/prod/environment.yaml     <- staging/environment.yaml
#     4 environments/prod/apps/api.yaml        <- staging/apps/api.yaml
#     5 environments/prod/templates/lb.j2      <- base/templates/nginx.conf.j2
#     6 environments/base/apps/web.yaml        <- base/apps/worker.yaml
#   A missing file gives an empty piece (the target then leaves that file out).
#   Each case is written twice: as is, and adapted to the target's layout
#   (staging -> prod, nginx.conf.j2 -> lb.j2, worker -> web), so that the
#   adapted copies get past the name checks and reach merging, semantic checks,
#   placement and template rendering. One hand-written input is fully valid.
set -euo pipefail

FUZZ="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$FUZZ")"
OUT="${1:-$FUZZ/corpus}"
mkdir -p "$OUT/yaml" "$OUT/load"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Move $1 to $2/<sha1 of $1>.
store() {
    local sum
    sum="$(sha1sum "$1" | cut -d' ' -f1)"
    mv "$1" "$2/$sum"
}

n_yaml=0
while IFS= read -r -d '' f; do
    cp "$f" "$tmp/y"
    store "$tmp/y" "$OUT/yaml"
    n_yaml=$((n_yaml + 1))
done < <(find "$ROOT/tests/corpus" "$ROOT/environments" "$ROOT/examples" -type f -name '*.yaml' -print0 | sort -z)

SLOTS=(
    environments/base/environment.yaml
    environments/base/apps/api.yaml
    environments/staging/environment.yaml
    environments/staging/apps/api.yaml
    environments/base/templates/nginx.conf.j2
    environments/base/apps/worker.yaml
)

n_load=0
for case in "$ROOT"/tests/corpus/*/; do
    [ -d "$case/environments" ] || continue
    : >"$tmp/raw"
    for i in "${!SLOTS[@]}"; do
        [ "$i" -gt 0 ] && printf '\n#--\n' >>"$tmp/raw"
        if [ -f "$case/${SLOTS[$i]}" ]; then
            cat "$case/${SLOTS[$i]}" >>"$tmp/raw"
        fi
    done
    LC_ALL=C sed -e 's/staging/prod/g' -e 's/nginx\.conf\.j2/lb.j2/g' -e 's/worker/web/g' "$tmp/raw" >"$tmp/adapted"
    store "$tmp/raw" "$OUT/load"
    store "$tmp/adapted" "$OUT/load"
    n_load=$((n_load + 2))
done

# A repo that loads with no diagnostic at all in the target's layout.
cat >"$tmp/clean" <<'EOF'
apiVersion: reconcile/v1
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
  template: templates/lb.j2
  path: /etc/nginx/conf.d/reconcile.conf
  check: [nginx, -t]
  reload: [nginx, -s, reload]

#--
apiVersion: reconcile/v1
kind: App
name: api
image: registry.example/api:1.4.2
command: [/app/api, --log-level, "{{ vars.log_level }}"]
env:
  DB_PASSWORD: "{{ secrets.db_password }}"
replicas: 2
port: 8080
health: {http: /healthz, interval: 1s, timeout: 2s, retries: 10}
resources: {cpus: 0.5, memory: 256Mi}
lb: {host: api.internal, path: /}
registry: true

#--
apiVersion: reconcile/v1
kind: Environment
name: prod
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

#--
apiVersion: reconcile/v1
kind: App
name: api
image: registry.example/api:1.5.0
replicas: 3
placement: {hosts: [node-1, node-2], labels: {zone: a}}

#--
{% for app in apps %}
upstream {{ app.name }} {
{% for i in app.instances %}  server {{ i.address }}:{{ i.port }};
{% endfor %}}
{% endfor %}

#--
apiVersion: reconcile/v1
kind: App
name: web
image: registry.example/web:1.4.2
depends_on: [api]
EOF
store "$tmp/clean" "$OUT/load"
n_load=$((n_load + 1))

echo "seeded $n_yaml yaml inputs into $OUT/yaml and $n_load load inputs into $OUT/load"
