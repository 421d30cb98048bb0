#!/usr/bin/env bash
# bench/soak-kill.sh — the SIGKILL test of tests/it/apply_chaos.rs, at length, for
# manual runs: N times (default 50) change the app's version, start
# `reconcile apply --yes`, SIGKILL it after a random delay, run a normal apply and
# check the contract's crash invariants:
#   - the recovery apply exits 0, and `plan` afterwards has no actions;
#   - exactly one container per instance (web-0, web-1, worker-0), all running;
#   - the etcd registry holds exactly the running web instances, each answering 200
#     with the new version;
#   - the LB file's upstreams are exactly the running web instances, and the LB
#     serves the new version;
#   - the lock is free (one more apply with --lock-timeout 1s does not wait).
# Prints one row per trial and a summary; exits 1 if any invariant was violated.
#
# Same set-up as the tests' Stack: a temp config repo (env `soak-<pid>`, two hosts =
# the two test Docker daemons, etcd, an nginx of its own on 127.0.0.1:$LB_PORT).
# Only 127.0.0.1/127.0.0.2 are contacted. Everything it creates is removed at the end.
#
# Knobs (env): N (50), MAX_DELAY_MS (kill delays are 50 ms .. this, default 5000),
# SEED (1: the delays are reproducible), LOCK_TTL (2s: RECONCILE_LOCK_TTL, so a killed
# apply's lock expires quickly), RELEASE=1 (build and use target/release),
# RECONCILE (a binary to use instead of building), KEEP_TMP=1.
set -euo pipefail

N=${N:-50}
MAX_DELAY_MS=${MAX_DELAY_MS:-5000}
SEED=${SEED:-1}
LOCK_TTL=${LOCK_TTL:-2s}
LB_PORT=${LB_PORT:-28190}
POOL_FROM=26000 POOL_TO=26049   # tests use 22000-22999, bench/compose-vs-reconcile.sh 20000-25999
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

say() { printf '== %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# ---------------------------------------------------------------- prerequisites
"$ROOT/scripts/test-env.sh" up >&2
# shellcheck disable=SC1091
. /run/reconcile-test/env
for tool in docker etcdctl nginx curl jq; do command -v "$tool" >/dev/null || die "$tool not installed"; done
export ETCDCTL_API=3
D1=$RECONCILE_TEST_DOCKER1 D2=$RECONCILE_TEST_DOCKER2 ETCD=$RECONCILE_TEST_ETCD
if [ -z "${RECONCILE:-}" ]; then
  if [ -n "${RELEASE:-}" ]; then
    say "cargo build --release --bin reconcile"
    (cd "$ROOT" && cargo build --release --bin reconcile >&2)
    RECONCILE=$ROOT/target/release/reconcile
  else
    say "cargo build --bin reconcile"
    (cd "$ROOT" && cargo build --bin reconcile >&2)
    RECONCILE=$ROOT/target/debug/reconcile
  fi
fi
[ -x "$RECONCILE" ] || die "no reconcile binary at $RECONCILE"

# ---------------------------------------------------------------- set-up / clean-up
TMP=$(mktemp -d)
ENV_NAME=soak-$$
PREFIX=/soak-kill-$$
REPO=$TMP/repo
ENV_DIR=$REPO/environments/$ENV_NAME
NGINX_DIR=$TMP/nginx
NGINX_CONF=$NGINX_DIR/nginx.conf
LB_FILE=$NGINX_DIR/reconcile.conf

cleanup() {
  nginx -s stop -c "$NGINX_CONF" >/dev/null 2>&1 || true
  for d in "$D1" "$D2"; do
    docker -H "$d" ps -aq --filter "label=reconcile.env=$ENV_NAME" 2>/dev/null |
      xargs -r docker -H "$d" rm -f >/dev/null 2>&1 || true
  done
  etcdctl --endpoints "$ETCD" del --prefix "$PREFIX" >/dev/null 2>&1 || true
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

mkdir -p "$NGINX_DIR/tmp" "$ENV_DIR/apps" "$ENV_DIR/templates"
cat >"$NGINX_CONF" <<EOF
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/error.log;
worker_processes 1;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $NGINX_DIR/tmp;
  proxy_temp_path $NGINX_DIR/tmp;
  include $LB_FILE;
}
EOF
echo "server { listen 127.0.0.1:$LB_PORT; return 503; }" >"$LB_FILE"
nginx -c "$NGINX_CONF"

# The repo at `version` (the tests' Stack::write_repo with 2 replicas, health `/`).
write_repo() {
  local version=$1
  cat >"$ENV_DIR/environment.yaml" <<EOF
apiVersion: reconcile/v1
kind: Environment
name: $ENV_NAME
vars: {version: '$version'}
hosts:
  - {name: node-1, docker: '$D1', address: 127.0.0.1, ports: $POOL_FROM-$POOL_TO}
  - {name: node-2, docker: '$D2', address: 127.0.0.2, ports: $POOL_FROM-$POOL_TO}
etcd: {endpoints: ['$ETCD'], prefix: '$PREFIX', registry_prefix: '$PREFIX-reg'}
lb:
  template: templates/lb.j2
  path: '$LB_FILE'
  check: [nginx, -t, -q, -c, '$NGINX_CONF']
  reload: [nginx, -s, reload, -c, '$NGINX_CONF']
EOF
  cat >"$ENV_DIR/templates/lb.j2" <<EOF
{% for app in apps %}
upstream {{ app.name }} {
{% for i in app.instances %}
  server {{ i.address }}:{{ i.port }};
{% else %}
  server 127.0.0.1:1 down;
{% endfor %}
}
server {
  listen 127.0.0.1:$LB_PORT;
  location / { proxy_pass http://{{ app.name }}; proxy_next_upstream off; }
}
{% endfor %}
EOF
  echo 'version={{ vars.version }} instance={{ instance.name }}' >"$ENV_DIR/templates/index.html.j2"
  cat >"$ENV_DIR/apps/web.yaml" <<EOF
apiVersion: reconcile/v1
kind: App
name: web
image: $RECONCILE_TEST_IMAGE
command: [/bin/busybox, httpd, -f, -p, '{{ instance.address }}:{{ instance.port }}', -h, /www]
env: {VERSION: '{{ vars.version }}'}
replicas: 2
port: 8080
health: {http: /, interval: 200ms, timeout: 1s, retries: 10}
files: [{template: templates/index.html.j2, path: /www/index.html}]
lb: {host: web.test}
registry: true
config: {version: '$version'}
stop_timeout: 2s
EOF
  cat >"$ENV_DIR/apps/worker.yaml" <<EOF
apiVersion: reconcile/v1
kind: App
name: worker
image: $RECONCILE_TEST_IMAGE2
command: [/bin/busybox, sleep, '3600']
depends_on: [web]
stop_timeout: 1s
EOF
}

rc() { RECONCILE_LOCK_TTL=$LOCK_TTL NO_COLOR=1 "$RECONCILE" "$@"; }
apply_args=(apply --env "$ENV_NAME" --repo "$REPO" --yes --timeout 10s)

# Managed containers: "<address> <instance> <state> <port>" per line.
containers() {
  local d addr
  for d in "$D1" "$D2"; do
    if [ "$d" = "$D1" ]; then addr=127.0.0.1; else addr=127.0.0.2; fi
    docker -H "$d" ps -a --filter "label=reconcile.env=$ENV_NAME" \
      --format "$addr {{.Label \"reconcile.instance\"}} {{.State}} {{.Label \"reconcile.port\"}}"
  done
}

# What a killed apply left: web containers per instance (states), registry entries,
# LB upstreams — e.g. `web-0[running,running] web-1[running] reg=3 ups=2`.
left_behind() {
  local per reg ups
  per=$(containers | awk '$2 ~ /^web-/ { s[$2] = s[$2] (s[$2] ? "," : "") $3 }
    END { for (i in s) printf "%s[%s] ", i, s[i] }' | tr ' ' '\n' | sort | tr '\n' ' ')
  reg=$(etcdctl --endpoints "$ETCD" get --prefix --keys-only "$PREFIX-reg/" | grep -c . || true)
  ups=$(grep -cE '^\s*server [0-9.]+:[0-9]+;' "$LB_FILE" || true)
  echo "${per}reg=$reg ups=$ups"
}

# Print one line per violated invariant (nothing when all hold).
violations() {
  local version=$1 plan n want running reg ups v body out
  plan=$(rc plan --env "$ENV_NAME" --repo "$REPO" --format json 2>&1) || { echo "plan failed: $plan"; return; }
  n=$(jq '.actions | length' <<<"$plan")
  [ "$n" = 0 ] || echo "plan after apply has $n actions: $(jq -r .summary <<<"$plan" | tr -d '\n')"
  for want in web-0 web-1 worker-0; do
    n=$(containers | awk -v i="$want" '$2 == i' | wc -l)
    [ "$n" = 1 ] || echo "$want: $n containers"
  done
  n=$(containers | awk '$2 !~ /^(web-0|web-1|worker-0)$/' | wc -l)
  [ "$n" = 0 ] || echo "unexpected containers: $(containers | awk '$2 !~ /^(web-0|web-1|worker-0)$/' | tr '\n' ';')"
  n=$(containers | awk '$3 != "running"' | wc -l)
  [ "$n" = 0 ] || echo "not running: $(containers | awk '$3 != "running"' | tr '\n' ';')"
  running=$(containers | awk '$2 ~ /^web-/ && $3 == "running" { print $1 ":" $4 }' | sort | tr '\n' ' ')
  reg=$(etcdctl --endpoints "$ETCD" get --prefix --print-value-only "$PREFIX-reg/" | grep . | sort | tr '\n' ' ' || true)
  [ "$reg" = "$running" ] || echo "registry [$reg] != running web [$running]"
  for v in $reg; do
    body=$(curl -s --max-time 2 "http://$v/" || true)
    [[ "$body" == "version=$version "* ]] || echo "registry entry $v answers '${body:0:60}'"
  done
  ups=$(grep -E '^\s*server [0-9.]+:[0-9]+;' "$LB_FILE" | sed -E 's/^\s*server ([^;]+);.*/\1/' | sort | tr '\n' ' ' || true)
  [ "$ups" = "$running" ] || echo "LB upstreams [$ups] != running web [$running]"
  body=$(curl -s --max-time 2 -H 'Host: web.test' "http://127.0.0.1:$LB_PORT/" || true)
  [[ "$body" == "version=$version "* ]] || echo "through the LB: '${body:0:60}'"
  out=$(rc "${apply_args[@]}" --lock-timeout 1s 2>&1) || echo "apply with --lock-timeout 1s failed: ${out:0:200}"
  if grep -q 'waiting for the apply lock' <<<"$out"; then echo "the lock was still held"; fi
}

# ---------------------------------------------------------------- trials
say "initial apply ($ENV_NAME, nginx on 127.0.0.1:$LB_PORT, $N trials, seed $SEED)"
write_repo 0
rc "${apply_args[@]}" >/dev/null 2>"$TMP/initial.err" || { cat "$TMP/initial.err" >&2; die "initial apply failed"; }

RANDOM=$SEED
bad_trials=0 killed=0
printf '%-5s %-8s %-9s %-9s %-8s %-46s %s\n' trial delay_ms outcome recover_s result "left by the killed apply" \
  "its last step / violations"
for ((t = 1; t <= N; t++)); do
  version=s$t
  write_repo "$version"
  delay_ms=$((50 + (RANDOM * 32768 + RANDOM) % (MAX_DELAY_MS - 49)))
  # Started directly (not through `rc`), so that $! is reconcile itself, not a subshell.
  RECONCILE_LOCK_TTL=$LOCK_TTL NO_COLOR=1 "$RECONCILE" "${apply_args[@]}" --lock-timeout 30s \
    >/dev/null 2>"$TMP/killed.err" &
  pid=$!
  sleep "$(awk -v ms="$delay_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    outcome=SIGKILL killed=$((killed + 1))
  else
    outcome=finished
  fi
  wait "$pid" 2>/dev/null || true
  last=$(grep . "$TMP/killed.err" | tail -n 1 | cut -c1-70 || true)
  left=$(left_behind)
  start=$(now)
  if rc "${apply_args[@]}" --lock-timeout 30s >/dev/null 2>"$TMP/recover.err"; then
    recover=$(since "$start")
    problems=$(violations "$version")
  else
    recover=$(since "$start")
    problems="recovery apply failed: $(tail -n 3 "$TMP/recover.err" | tr '\n' ' ')"
  fi
  if [ -z "$problems" ]; then
    printf '%-5s %-8s %-9s %-9s %-8s %-46s %s\n' "$t" "$delay_ms" "$outcome" "$recover" ok "$left" "${last:-(no output yet)}"
  else
    bad_trials=$((bad_trials + 1))
    printf '%-5s %-8s %-9s %-9s %-8s %-46s %s\n' "$t" "$delay_ms" "$outcome" "$recover" VIOLATED "$left" \
      "${last:-(no output yet)}"
    while IFS= read -r line; do printf '        - %s\n' "$line"; done <<<"$problems"
  fi
done

echo
echo "summary: $N trials, $killed killed mid-apply, $bad_trials with invariant violations (seed $SEED, lock TTL $LOCK_TTL)"
[ "$bad_trials" = 0 ]
