#!/usr/bin/env bash
# bench/compose-vs-reconcile.sh — reconcile vs docker-compose (v1) vs raw `docker
# create` + `docker start`, side by side in one run, on equivalent containers:
# N (default 100) busybox httpd instances, same image, host networking, `init`,
# restart unless-stopped, 10s stop grace, each on its own 127.0.0.1 port.
#
# Scenarios (each run RUNS times, default 3; the median is reported):
#   1. cold apply of N instances: reconcile (N apps, no etcd/LB; 1 app × N replicas;
#      N apps with etcd + registry) vs `docker-compose up -d` (N services)
#   2. no-op: `reconcile plan`, `reconcile apply --yes` vs `docker-compose up -d`
#   3. one change (one service's env var): reconcile apply vs docker-compose up -d
#   4. raw floor: N × (docker create + docker start), xargs -P 8 (CLI, and the
#      Engine API through curl)
# Then one instrumented cold apply (`-v`) to see where reconcile's time goes.
#
# Writes bench/results.md (table, machine, commands, every sample). Needs: the test
# environment (scripts/test-env.sh up), docker-compose, curl, etcdctl, git.
# Knobs (env): N, RUNS, PAR (raw-floor parallelism, 8), RECONCILE (binary; default:
# builds target/release/reconcile), OUT (results file), KEEP_TMP=1, NO_BUILD=1.
# Only 127.0.0.1 is contacted. Everything it creates is removed at the end.
set -euo pipefail

N=${N:-100}
RUNS=${RUNS:-3}
PAR=${PAR:-8}
T=${CMD_TIMEOUT:-600}                 # seconds before a measured command counts as hung
# docker-compose v1 nests parallel_execute (services → containers) under one global
# semaphore of COMPOSE_PARALLEL_LIMIT (default 64): with more than 64 services every
# slot can be held by a service waiting for its container's slot, and `up` hangs
# (docker/compose#7486, #8161, #6705; it happened here). A limit above 2 × N avoids it.
export COMPOSE_PARALLEL_LIMIT=${COMPOSE_PARALLEL_LIMIT:-$((2 * N + 16))}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/results.md}
IMAGE=reconcile-test/busybox:1
SOCK=/var/run/docker.sock
DOCKER=${DOCKER:-docker}
ETCD=127.0.0.1:23790
EPREFIX=/reconcile-bench              # reconcile's keys; registry under $EPREFIX-registry
PROJECT=benchcompose
RAW_LABEL=reconcile-bench.raw=1
# Ports (P = PORT_BASE, default 11000: below Linux's ephemeral range and away from the
# 20000-29999 pools the project's tests and soak runs use on this same machine):
# reconcile pools P+0-999 (env bench), P+1000 (bench-replicas), P+2000 (bench-etcd),
# P+3000 (bench-replicas-b16); compose P+4000+i, raw CLI P+5000+i, raw API P+6000+i
# (P+6500+i at -P 16).
P=${PORT_BASE:-11000}

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
[ -f /run/reconcile-test/env ] || "$ROOT/scripts/test-env.sh" up >&2
# shellcheck disable=SC1091
. /run/reconcile-test/env
"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || { "$ROOT/scripts/test-env.sh" up >&2; }
"$DOCKER" image inspect "$IMAGE" >/dev/null || die "image $IMAGE missing (scripts/test-env.sh up)"
for tool in docker-compose curl etcdctl git; do command -v "$tool" >/dev/null || die "$tool not installed"; done
export ETCDCTL_API=3
etcdctl --endpoints "$ETCD" endpoint health >/dev/null 2>&1 || die "etcd not answering on $ETCD (scripts/test-env.sh up)"

if [ -z "${RECONCILE:-}" ]; then
  if [ -z "${NO_BUILD:-}" ]; then
    say "cargo build --release"
    (cd "$ROOT" && cargo build --release >&2)
  fi
  RECONCILE=$ROOT/target/release/reconcile
fi
[ -x "$RECONCILE" ] || die "no reconcile binary at $RECONCILE"
BUILT_FROM=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')

WORK=$(mktemp -d /tmp/reconcile-bench.XXXXXX)
# A private copy, so a rebuild by someone else during the run cannot swap it.
cp "$RECONCILE" "$WORK/reconcile"
RECONCILE=$WORK/reconcile
LOG=$WORK/commands.log
REPO=$WORK/repo
COMPOSE_FILE=$WORK/compose/docker-compose.yml
mkdir -p "$WORK/compose"

# ---------------------------------------------------------------- cleanup
rm_label() { # remove every container carrying label $1
  local ids
  ids=$("$DOCKER" ps -aq --filter "label=$1")
  # shellcheck disable=SC2086 # one id per word
  [ -z "$ids" ] || "$DOCKER" rm -f $ids >/dev/null
}
clean_all() {
  for e in $ENVS; do rm_label "reconcile.env=$e"; done
  if [ -f "$COMPOSE_FILE" ]; then
    docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" down --remove-orphans >/dev/null 2>&1 || true
  fi
  rm_label "com.docker.compose.project=$PROJECT"
  rm_label "$RAW_LABEL"
  etcdctl --endpoints "$ETCD" del --prefix "$EPREFIX" >/dev/null
  sleep 2 # let dockerd finish its cleanup before the next timed run
}
finish() {
  local rc=$?
  clean_all || true
  if [ -n "${KEEP_TMP:-}" ] || [ $rc -ne 0 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT

# ---------------------------------------------------------------- generators
pad() { printf '%03d' "$1"; }

# Each environment gets its own pool: reconcile only sees its own environment's
# containers, so two environments with overlapping pools on one address would clash.
pool() {
  case $1 in
    bench) echo "$P-$((P + 999))" ;; bench-replicas) echo "$((P + 1000))-$((P + 1999))" ;;
    bench-etcd) echo "$((P + 2000))-$((P + 2999))" ;; bench-replicas-b16) echo "$((P + 3000))-$((P + 3999))" ;;
  esac
}
ENVS="bench bench-etcd bench-replicas bench-replicas-b16"

gen_repo() {
  local e i
  mkdir -p "$REPO"
  for e in $ENVS; do
    mkdir -p "$REPO/environments/$e/apps"
    {
      echo "apiVersion: reconcile/v1"
      echo "kind: Environment"
      echo "name: $e"
      echo "hosts:"
      echo "  - name: local"
      echo "    docker: unix://$SOCK"
      echo "    address: 127.0.0.1"
      echo "    ports: $(pool "$e")"
      if [ "$e" = bench-etcd ]; then
        echo "etcd:"
        echo "  endpoints: [http://$ETCD]"
        echo "  prefix: $EPREFIX"
        echo "  registry_prefix: $EPREFIX-registry"
      fi
    } >"$REPO/environments/$e/environment.yaml"
  done
  app_yaml() { # name, replicas, registry, [batch]
    cat <<EOF
apiVersion: reconcile/v1
kind: App
name: $1
image: $IMAGE
command: [/bin/busybox, httpd, -f, -p, "{{ instance.address }}:{{ instance.port }}"]
env: {BENCH_VALUE: "1"}
port: 8080
replicas: $2
init: true
stop_timeout: 10s
EOF
    [ "$3" = yes ] && echo "registry: true"
    [ -n "${4:-}" ] && echo "update: {batch: $4}"
    true
  }
  for i in $(seq 0 $((N - 1))); do
    app_yaml "app-$(pad "$i")" 1 no >"$REPO/environments/bench/apps/app-$(pad "$i").yaml"
    app_yaml "app-$(pad "$i")" 1 yes >"$REPO/environments/bench-etcd/apps/app-$(pad "$i").yaml"
  done
  app_yaml web "$N" no >"$REPO/environments/bench-replicas/apps/web.yaml"
  app_yaml web "$N" no 16 >"$REPO/environments/bench-replicas-b16/apps/web.yaml"
  git -C "$REPO" init -q
  git -C "$REPO" add -A
  git -C "$REPO" -c user.name=bench -c user.email=bench@localhost commit -qm "bench repo"
}

gen_compose() {
  local i
  {
    echo 'version: "2.4"'
    echo "services:"
    for i in $(seq 0 $((N - 1))); do
      cat <<EOF
  svc$(pad "$i"):
    image: $IMAGE
    command: [/bin/busybox, httpd, -f, -p, "127.0.0.1:$((P + 4000 + i))"]
    environment: {BENCH_VALUE: "1"}
    network_mode: host
    init: true
    restart: unless-stopped
    stop_grace_period: 10s
EOF
    done
  } >"$COMPOSE_FILE"
}

# Raw floor helpers: one line "<name> <port>" per instance on stdin.
raw_cli_lines() { for i in $(seq 0 $((N - 1))); do echo "benchraw-$(pad "$i") $((P + 5000 + i))"; done; }
raw_api_lines() { for i in $(seq 0 $((N - 1))); do echo "benchapi-$(pad "$i") $((P + 6000 + i))"; done; }
raw_api16_lines() { for i in $(seq 0 $((N - 1))); do echo "benchapi16-$(pad "$i") $((P + 6500 + i))"; done; }
# shellcheck disable=SC2016 # expanded by the sh -c that xargs runs ($0 = name, $1 = port)
RAW_CLI_ONE='id=$('"$DOCKER"' create --name "$0" --label '"$RAW_LABEL"' --network host --init --restart unless-stopped --stop-timeout 10 -e BENCH_VALUE=1 '"$IMAGE"' /bin/busybox httpd -f -p "127.0.0.1:$1") && '"$DOCKER"' start "$id" >/dev/null'
# shellcheck disable=SC2016
RAW_API_ONE='b="{\"Image\":\"'"$IMAGE"'\",\"Cmd\":[\"/bin/busybox\",\"httpd\",\"-f\",\"-p\",\"127.0.0.1:$1\"],\"Env\":[\"BENCH_VALUE=1\"],\"Labels\":{\"reconcile-bench.raw\":\"1\"},\"StopTimeout\":10,\"HostConfig\":{\"NetworkMode\":\"host\",\"Init\":true,\"RestartPolicy\":{\"Name\":\"unless-stopped\"}}}"; curl -sf --unix-socket '"$SOCK"' -H "Content-Type: application/json" -d "$b" "http://localhost/v1.41/containers/create?name=$0" >/dev/null && curl -sf --unix-socket '"$SOCK"' -X POST "http://localhost/v1.41/containers/$0/start" >/dev/null'

# ---------------------------------------------------------------- commands measured
R() { timeout "$T" "$RECONCILE" "$@"; }
rc_apply() { R apply --env "$1" --repo "$REPO" --yes; }
rc_plan() { R plan --env "$1" --repo "$REPO"; }
compose_up() { timeout "$T" docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" up -d; }
raw_cli() { raw_cli_lines | timeout "$T" xargs -P "$PAR" -n 2 sh -c "$RAW_CLI_ONE"; }
raw_api() { raw_api_lines | timeout "$T" xargs -P "$PAR" -n 2 sh -c "$RAW_API_ONE"; }
raw_api16() { raw_api16_lines | timeout "$T" xargs -P 16 -n 2 sh -c "$RAW_API_ONE"; }

# ---------------------------------------------------------------- timing
declare -A SAMPLES=()
timeit() { # key cmd... : run once, append wall ms to SAMPLES[key]
  local key=$1 t0 t1
  shift
  echo "### [$key] $*" >>"$LOG"
  t0=$(date +%s%N)
  if ! "$@" >>"$LOG" 2>&1; then
    echo "FAILED [$key]: $*" >&2
    tail -30 "$LOG" >&2
    exit 1
  fi
  t1=$(date +%s%N)
  local ms=$(((t1 - t0) / 1000000))
  SAMPLES[$key]="${SAMPLES[$key]:-} $ms"
  printf '  %-28s %8d ms\n' "$key" "$ms" >&2
}
# shellcheck disable=SC2086 # $1 is a space-separated list
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{ if (NR==0) print ""; else print a[int((NR+1)/2)] }'; }
med() { median "${SAMPLES[$1]:-}"; }
fmt() { # ms → "123 ms" / "12.3 s"
  [ -n "$1" ] || { echo "–"; return; }
  if [ "$1" -lt 1000 ]; then echo "$1 ms"; else awk -v m="$1" 'BEGIN{printf "%.2f s", m/1000}'; fi
}
ratio() { # a/b as "1.23×"
  { [ -n "$1" ] && [ -n "$2" ] && [ "$2" -gt 0 ]; } || { echo "–"; return; }
  awk -v a="$1" -v b="$2" 'BEGIN{ r=a/b; if (r>=10) printf "%.0f×", r; else printf "%.2f×", r }'
}

running_count() { "$DOCKER" ps -q --filter "label=$1" --filter status=running | wc -l; }
expect_running() { # label, count
  local n
  n=$(running_count "$1")
  [ "$n" -eq "$2" ] || die "expected $2 running containers with $1, found $n (log: $LOG)"
}
expect_serving() { # port: busybox httpd answers (404 for / is fine: it is listening)
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/" || true)
  [ "$code" != 000 ] || die "nothing listens on 127.0.0.1:$1"
}

# ---------------------------------------------------------------- run
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "setup: $N instances, $RUNS runs per scenario, work dir $WORK"
gen_repo
gen_compose
clean_all
busy=$(ss -Hltn "( sport >= :$P and sport < :$((P + 7000)) )" 2>/dev/null | awk '{print $4}' | head -5 | tr '\n' ' ')
[ -z "$busy" ] || die "ports in $P-$((P + 6999)) already in use ($busy): pick another PORT_BASE"
R validate --repo "$REPO" >>"$LOG" 2>&1 || die "generated repo does not validate (log: $LOG)"

say "1. cold apply of $N instances (and 4. raw floor), interleaved run by run"
for r in $(seq 1 "$RUNS"); do
  echo " run $r/$RUNS" >&2
  clean_all
  timeit cold.reconcile rc_apply bench
  expect_running reconcile.env=bench "$N"
  expect_serving "$P"
  clean_all
  timeit cold.reconcile-replicas rc_apply bench-replicas
  expect_running reconcile.env=bench-replicas "$N"
  clean_all
  timeit cold.reconcile-replicas-b16 rc_apply bench-replicas-b16
  expect_running reconcile.env=bench-replicas-b16 "$N"
  clean_all
  timeit cold.reconcile-etcd rc_apply bench-etcd
  expect_running reconcile.env=bench-etcd "$N"
  clean_all
  timeit cold.compose compose_up
  expect_running "com.docker.compose.project=$PROJECT" "$N"
  expect_serving $((P + 4000))
  # The raw floor, three ways: key, command, first port.
  for raw in "raw-cli raw_cli 5000" "raw-api raw_api 6000" "raw-api16 raw_api16 6500"; do
    read -r key cmd offset <<<"$raw"
    clean_all
    timeit "cold.$key" "$cmd"
    expect_running "$RAW_LABEL" "$N"
    expect_serving $((P + offset))
  done
done

say "2. no-op and 3. one change (each side brought up once, then measured)"
clean_all
setup() { "$@" >>"$LOG" 2>&1 || { tail -30 "$LOG" >&2; die "setup step failed: $* (log: $LOG)"; }; }
setup rc_apply bench
setup rc_apply bench-etcd
setup compose_up
sleep 2
for r in $(seq 1 "$RUNS"); do
  timeit noop.plan rc_plan bench
  timeit noop.plan-etcd rc_plan bench-etcd
  timeit noop.apply rc_apply bench
  timeit noop.apply-etcd rc_apply bench-etcd
  timeit noop.compose compose_up
done
expect_running reconcile.env=bench "$N"
expect_running "com.docker.compose.project=$PROJECT" "$N"

for r in $(seq 1 "$RUNS"); do
  v=$((r + 1))
  sed -i "s/BENCH_VALUE: \"[0-9]*\"/BENCH_VALUE: \"$v\"/" \
    "$REPO/environments/bench/apps/app-000.yaml" "$REPO/environments/bench-etcd/apps/app-000.yaml"
  git -C "$REPO" -c user.name=bench -c user.email=bench@localhost commit -qam "change $v"
  # compose: only svc000's environment (the first BENCH_VALUE line of the file)
  sed -i "0,/BENCH_VALUE: \"[0-9]*\"/s//BENCH_VALUE: \"$v\"/" "$COMPOSE_FILE"
  timeit change.reconcile rc_apply bench
  timeit change.reconcile-etcd rc_apply bench-etcd
  timeit change.compose compose_up
  expect_running reconcile.env=bench "$N"
  expect_running "com.docker.compose.project=$PROJECT" "$N"
  [ "$("$DOCKER" ps -aq --filter label=reconcile.env=bench | wc -l)" -eq "$N" ] || die "old container left behind"
done

say "instrumented cold apply (-v) of env bench: where the time goes"
clean_all
VLOG=$WORK/cold-apply-v.log
t0=$(date +%s%N)
RUST_LOG=info R -v apply --env bench --repo "$REPO" --yes >"$VLOG" 2>&1 || die "instrumented apply failed: $VLOG"
t1=$(date +%s%N)
INSTR_MS=$(((t1 - t0) / 1000000))
# Per-instance "started … and healthy in X s" lines (includes reconcile's 300 ms settle wait).
PER_INSTANCE=$(grep -o 'healthy in [0-9.]*s' "$VLOG" | grep -o '[0-9.]*' | sort -n |
  awk '{a[NR]=$1; s+=$1} END{ if (NR) printf "n=%d, median %.2f s, max %.2f s, sum %.1f s", NR, a[int((NR+1)/2)], a[NR], s }')
# Phase boundaries from the log's timestamps (first token of each tracing line, RFC 3339).
phase_ts() { grep -m1 "$1" "$VLOG" | grep -oE '^[^ ]*[0-9]{2}:[0-9]{2}:[0-9.]+' | head -1; }
FIRST_CREATE=$(phase_ts 'created container' || true)
LAST_START=$(grep 'started container' "$VLOG" | tail -1 | grep -oE '^[^ ]*[0-9]{2}:[0-9]{2}:[0-9.]+' || true)
ts_ms() { [ -n "$1" ] && date -d "$1" +%s%3N 2>/dev/null || echo ""; }
T_FIRST=$(ts_ms "$FIRST_CREATE")
T_LAST=$(ts_ms "$LAST_START")
T_BEGIN=$((t0 / 1000000))
LAST_CREATE=$(grep 'created container' "$VLOG" | tail -1 | grep -oE '^[^ ]*[0-9]{2}:[0-9]{2}:[0-9.]+' || true)
T_LASTC=$(ts_ms "$LAST_CREATE")
PRE_MS=""; SPAN_MS=""; CSPAN_MS=""; POST_MS=""
[ -n "$T_FIRST" ] && PRE_MS=$((T_FIRST - T_BEGIN))
[ -n "$T_FIRST" ] && [ -n "$T_LAST" ] && SPAN_MS=$((T_LAST - T_FIRST))
[ -n "$T_FIRST" ] && [ -n "$T_LASTC" ] && CSPAN_MS=$((T_LASTC - T_FIRST))
[ -n "$T_LAST" ] && POST_MS=$((t1 / 1000000 - T_LAST))
clean_all

# ---------------------------------------------------------------- report
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
say "writing $OUT"
c_rc=$(med cold.reconcile); c_rr=$(med cold.reconcile-replicas); c_re=$(med cold.reconcile-etcd)
c_co=$(med cold.compose); c_raw=$(med cold.raw-cli); c_api=$(med cold.raw-api); c_api16=$(med cold.raw-api16)
c_rb=$(med cold.reconcile-replicas-b16)
BEST_RAW=$(printf '%s\n' "$c_raw" "$c_api" "$c_api16" | grep . | sort -n | head -1)
n_p=$(med noop.plan); n_pe=$(med noop.plan-etcd); n_a=$(med noop.apply); n_ae=$(med noop.apply-etcd); n_co=$(med noop.compose)
x_rc=$(med change.reconcile); x_re=$(med change.reconcile-etcd); x_co=$(med change.compose)

goal_le() { # value, limit → met / missed by
  { [ -n "$1" ] && [ -n "$2" ]; } || { echo "–"; return; }
  if [ "$1" -le "$2" ]; then echo "met"; else awk -v a="$1" -v b="$2" 'BEGIN{p=(a/b-1)*100; if (p<1) printf "missed by <1%% (%.2f s over)", (a-b)/1000; else printf "missed by %.0f%% (%.2f s over)", p, (a-b)/1000}'; fi
}
noop_goal() { # reconcile ms, compose ms: compose/reconcile >= 10
  { [ -n "$1" ] && [ -n "$2" ]; } || { echo "–"; return; }
  awk -v r="$1" -v c="$2" 'BEGIN{ s=c/r; if (s>=10) printf "met (%.0f× faster)", s; else printf "missed: %.1f× faster, goal 10×", s }'
}
row() { # scenario, reconcile, compose, raw, goal text
  local best=""
  [ -n "$4" ] && best=$BEST_RAW
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(fmt "$2")" "$(fmt "$3")" "$(fmt "$4")" \
    "$(ratio "$2" "$3")" "$(ratio "$2" "$4")" "$(ratio "$2" "$best")" "$5"
}
raw_limit() { [ -n "$1" ] && awk -v r="$1" 'BEGIN{printf "%d", r*1.5}'; }
cold_goal() { # reconcile, compose, raw
  local a b
  a=$(goal_le "$1" "$2"); b=$(goal_le "$1" "$(raw_limit "$3")")
  echo "≤ compose: $a; ≤ 1.5× raw: $b"
}

TABLE=$(
  echo "| scenario ($N instances) | reconcile | compose | raw floor (CLI) | reconcile ÷ compose | reconcile ÷ raw floor | reconcile ÷ fastest raw | goal |"
  echo "|---|---|---|---|---|---|---|---|"
  row "cold apply: $N apps, no etcd/LB" "$c_rc" "$c_co" "$c_raw" "$(cold_goal "$c_rc" "$c_co" "$c_raw")"
  row "cold apply: 1 app × $N replicas (default batch 1)" "$c_rr" "$c_co" "$c_raw" "$(cold_goal "$c_rr" "$c_co" "$c_raw")"
  row "cold apply: 1 app × $N replicas, \`update: {batch: 16}\`" "$c_rb" "$c_co" "$c_raw" "$(cold_goal "$c_rb" "$c_co" "$c_raw")"
  row "cold apply: $N apps + etcd registry" "$c_re" "$c_co" "$c_raw" "$(cold_goal "$c_re" "$c_co" "$c_raw")"
  row "no-op \`plan\`" "$n_p" "$n_co" "" "$(noop_goal "$n_p" "$n_co")"
  row "no-op \`plan\`, etcd env" "$n_pe" "$n_co" "" "$(noop_goal "$n_pe" "$n_co")"
  row "no-op \`apply --yes\`" "$n_a" "$n_co" "" ""
  row "no-op \`apply --yes\`, etcd env" "$n_ae" "$n_co" "" ""
  row "one env var changed: apply" "$x_rc" "$x_co" "" ""
  row "one env var changed: apply, etcd env" "$x_re" "$x_co" "" ""
  echo
  echo "Raw floor = $N × (\`docker create\` + \`docker start\`), docker CLI, \`xargs -P $PAR\`: $(fmt "$c_raw")." \
    "Same through the Engine API with curl (no CLI start-up cost): $(fmt "$c_api") at \`-P $PAR\`," \
    "$(fmt "$c_api16") at \`-P 16\` (reconcile's default parallelism); reconcile ($N apps) ÷ those:" \
    "$(ratio "$c_rc" "$c_api"), $(ratio "$c_rc" "$c_api16"). \"Fastest raw\" = the fastest of the three raw variants." \
    "The goal column checks the brief's raw floor (CLI)."
)

dockerv=$("$DOCKER" version --format 'client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '?')
composev=$(docker-compose version --short 2>/dev/null || echo '?')
mem=$(free -h | awk '/^Mem:/{print $2}')
rcv=$("$RECONCILE" --version 2>/dev/null || echo '?')
commit=$BUILT_FROM

samples() { for k in $(printf '%s\n' "${!SAMPLES[@]}" | sort); do echo "| \`$k\` |${SAMPLES[$k]} | $(med "$k") |"; done; }

{
  echo "# compose-vs-reconcile results"
  echo
  echo "Generated by \`bench/compose-vs-reconcile.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Wall-clock time" \
    "(\`date +%s%N\` around each command), median of $RUNS runs; runs of the cold scenarios interleaved."
  echo
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $mem RAM," \
    "docker $dockerv, docker-compose $composev, $rcv (commit $commit, release build)." \
    "Load average before / after: $LOAD_BEFORE / $LOAD_AFTER (other work shares the machine)."
  echo
  echo "$TABLE"
  echo
  echo "Goals (from the issue): no-op plan ≥ 10× faster than compose's no-op \`up -d\`; cold apply no slower" \
    "than compose and within 1.5× of the raw floor."
  echo
  echo "## Where reconcile's cold apply time goes (one extra run with \`-v\`, env \`bench\`)"
  echo
  echo "- total: $(fmt "$INSTR_MS") (with info logging)"
  echo "- start → first \`created container\` (load repo, validate, observe, plan): $(fmt "$PRE_MS")"
  echo "- first create → last create: $(fmt "$CSPAN_MS"); first create → last start: $(fmt "$SPAN_MS")"
  echo "- last start → exit (settle wait, inspect, report): $(fmt "$POST_MS")"
  echo "- per instance, create → started and \"healthy\" (no health check: start + a fixed 300 ms wait + inspect): $PER_INSTANCE"
  echo
  echo "## Equivalent containers"
  echo
  echo "Image \`$IMAGE\`, \`/bin/busybox httpd -f -p 127.0.0.1:PORT\`, host networking, init, restart" \
    "unless-stopped, 10 s stop grace, env \`BENCH_VALUE\`. Ports: reconcile pool $(pool bench) for env \`bench\` (\`{{ instance.port }}\`;" \
    "the other environments get their own pools, $((P + 1000))-$((P + 3999))), compose $((P + 4000))+i, raw CLI $((P + 5000))+i," \
    "raw API $((P + 6000))+i / $((P + 6500))+i. Each side is verified after each run ($N running, port answers)."
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "# reconcile (config repo generated in a temp dir, a Git repo: environments/{bench,bench-etcd,bench-replicas})"
  echo "reconcile apply --env bench --repo \$REPO --yes            # $N apps (app-000…), no etcd, no LB"
  echo "reconcile apply --env bench-replicas --repo \$REPO --yes   # 1 app, replicas: $N"
  echo "reconcile apply --env bench-replicas-b16 --repo \$REPO --yes  # 1 app, replicas: $N, update: {batch: 16}"
  echo "reconcile apply --env bench-etcd --repo \$REPO --yes       # $N apps, etcd $ETCD, registry: true"
  echo "reconcile plan  --env bench --repo \$REPO                  # no-op"
  echo "# compose ($N services svc000…, version 2.4, network_mode: host, init: true)"
  echo "export COMPOSE_PARALLEL_LIMIT=$COMPOSE_PARALLEL_LIMIT   # the default 64 deadlocks with > 64 services (see README)"
  echo "docker-compose -p $PROJECT -f docker-compose.yml up -d"
  echo "# raw floor (CLI)"
  echo "... | xargs -P $PAR -n 2 sh -c '$RAW_CLI_ONE'"
  echo "# raw floor (API; also run with -P 16)"
  echo "... | xargs -P $PAR -n 2 sh -c '$RAW_API_ONE'"
  echo "# between runs: docker rm -f (by label), docker-compose down, etcdctl del --prefix $EPREFIX, sleep 2"
  echo '```'
  echo
  echo "One change = \`BENCH_VALUE\` of app-000 / svc000 edited (and committed in the config repo)."
  echo
  echo "## All samples (ms)"
  echo
  echo "| key | samples | median |"
  echo "|---|---|---|"
  samples
  echo
  echo "Example app file (\`environments/bench/apps/app-000.yaml\`, as first generated):"
  echo
  echo '```yaml'
  git -C "$REPO" show "$(git -C "$REPO" rev-list --max-parents=0 HEAD):environments/bench/apps/app-000.yaml"
  echo '```'
} >"$OUT"

echo
echo "$TABLE"
echo
echo "results: $OUT"
