#!/usr/bin/env bash
# bench/notify.sh — what notification delivery adds to an apply, side by side in one
# run: the same cold apply (one app, one busybox container on daemon 1, no etcd, no LB)
#   1. without notifications,
#   2. with a webhook and a Slack target on a local receiver that answers 200 at once,
#   3. with a webhook on a local receiver that accepts and never answers (timeout 1s).
# Each scenario runs RUNS times (default 5) alternating with the others; medians are
# reported. Targets: (2) − (1) ≤ 50 ms; (3) − (1) ≤ the timeout (1 s).
#
# Replaces the section between the `notify:begin`/`notify:end` markers of
# bench/results.md (OUT). Needs the test environment (scripts/test-env.sh up) and python3
# (the receivers). Knobs (env): RUNS, RECONCILE (binary; default: builds
# target/release/reconcile, under nice), NO_BUILD=1, OUT, KEEP_TMP=1. The answering
# receiver counts what it got: every run of (2) must have delivered all four messages (2 targets × the app's and the environment's apply_succeeded).
# Only 127.0.0.1 is contacted. Everything it creates is removed at the end.
set -euo pipefail

RUNS=${RUNS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/results.md}
IMAGE=reconcile-test/busybox:1
DOCKER1=unix:///var/run/docker.sock
ENV_NAME=bench-notify

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"   # say, die, load_test_env, replace_section
load_test_env docker python3
docker -H "$DOCKER1" image inspect "$IMAGE" >/dev/null || die "image $IMAGE missing (scripts/test-env.sh up)"
if [ -z "${RECONCILE:-}" ]; then
  if [ -z "${NO_BUILD:-}" ]; then
    say "cargo build --release"
    (cd "$ROOT" && nice -n 19 cargo build --release --quiet --bin reconcile >&2)
  fi
  RECONCILE=$ROOT/target/release/reconcile
fi
[ -x "$RECONCILE" ] || die "no binary at $RECONCILE"

TMP=$(mktemp -d /tmp/reconcile-bench-notify.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  docker -H "$DOCKER1" ps -aq --filter "label=reconcile.env=$ENV_NAME" | xargs -r docker -H "$DOCKER1" rm -f >/dev/null
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

# ---------------------------------------------------------------- receivers
cat >"$TMP/receiver.py" <<'EOF'
import socket, sys, threading
mode, portfile, log = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(128)
open(portfile, "w").write(str(s.getsockname()[1]))
held = []
def answer(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk: return
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"): n = int(line.split(b":")[1])
    while len(body) < n:
        chunk = c.recv(65536)
        if not chunk: break
        body += chunk
    with open(log, "a") as f: f.write(head.split(b"\r\n")[0].decode() + "\n")
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"); c.close()
while True:
    c, _ = s.accept()
    if mode == "hang": held.append(c)
    else: threading.Thread(target=answer, args=(c,), daemon=True).start()
EOF
for mode in ok hang; do
  python3 "$TMP/receiver.py" "$mode" "$TMP/$mode.port" "$TMP/$mode.log" >/dev/null 2>&1 &
  PIDS+=($!)
done
for mode in ok hang; do
  for _ in $(seq 100); do [ -s "$TMP/$mode.port" ] && break; sleep 0.1; done
  [ -s "$TMP/$mode.port" ] || die "the $mode receiver did not start"
done
OK_PORT=$(cat "$TMP/ok.port")
HANG_PORT=$(cat "$TMP/hang.port")

# ---------------------------------------------------------------- repos
repo() { # name, notifications block
  local d=$TMP/$1/environments/$ENV_NAME
  mkdir -p "$d/apps"
  printf 'apiVersion: reconcile/v1\nkind: Environment\nname: %s\nsecrets:\n  hook: {from_env: BENCH_HOOK}\n  slack: {from_env: BENCH_SLACK}\n  key: {from_env: BENCH_KEY}\nhosts:\n  - {name: node-1, docker: "%s", address: 127.0.0.1, ports: 11900-11909}\n%s' \
    "$ENV_NAME" "$DOCKER1" "$2" >"$d/environment.yaml"
  printf 'apiVersion: reconcile/v1\nkind: App\nname: job\nimage: %s\ncommand: [/bin/busybox, sleep, "3600"]\nstop_timeout: 1s\n' \
    "$IMAGE" >"$d/apps/job.yaml"
}
repo none ""
repo answers $'notifications:\n  - {kind: webhook, url: hook, signing_secret: key}\n  - {kind: slack, url: slack}\n'
repo hangs $'notifications:\n  - {kind: webhook, url: hook, timeout: 1s}\n'

export BENCH_KEY=bench-signing-key
run_one() { # scenario -> seconds of one cold apply
  local hook slack
  case $1 in
    hangs) hook=http://127.0.0.1:$HANG_PORT/hook; slack=$hook ;;
    *) hook=http://127.0.0.1:$OK_PORT/hook; slack=http://127.0.0.1:$OK_PORT/slack ;;
  esac
  docker -H "$DOCKER1" ps -aq --filter "label=reconcile.env=$ENV_NAME" | xargs -r docker -H "$DOCKER1" rm -f >/dev/null
  local t0 t1
  t0=$(date +%s.%N)
  BENCH_HOOK=$hook BENCH_SLACK=$slack "$RECONCILE" apply --env "$ENV_NAME" --repo "$TMP/$1" --yes \
    >"$TMP/$1.out" 2>"$TMP/$1.err" || { cat "$TMP/$1.err" >&2; die "apply ($1) failed"; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

declare -A SAMPLES
for r in $(seq "$RUNS"); do
  for sc in none answers hangs; do
    s=$(run_one "$sc")
    SAMPLES[$sc]="${SAMPLES[$sc]:-} $s"
    say "run $r $sc: ${s}s"
  done
done
GOT=$(cat "$TMP/ok.log" 2>/dev/null | wc -l)
[ "$GOT" -eq $((4 * RUNS)) ] || die "the answering receiver got $GOT requests, not $((4 * RUNS)) (per run: 2 targets × 2 events, the app's apply_succeeded and the environment's): $(cat "$TMP/answers.err")"
grep -q "not delivered" "$TMP/hangs.err" || die "the hanging receiver's delivery did not fail: $(cat "$TMP/hangs.err")"

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk -v x="$1" 'BEGIN { printf "%.0f", x * 1000 }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a - b }'; }
M_NONE=$(echo "${SAMPLES[none]}" | median)
M_OK=$(echo "${SAMPLES[answers]}" | median)
M_HANG=$(echo "${SAMPLES[hangs]}" | median)
ADD_OK=$(ms "$(sub "$M_OK" "$M_NONE")")
ADD_HANG=$(ms "$(sub "$M_HANG" "$M_NONE")")

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src || echo -dirty)
{
  echo "<!-- notify:begin -->"
  echo "## Notifications (\`bench/notify.sh\`)"
  echo
  echo "Generated on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT, binary \`$RECONCILE\`; $RUNS runs of each scenario, alternating, medians."
  echo "Cold apply of one container on daemon 1 (no etcd, no LB). Machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
  echo
  echo "| scenario | apply (median) | added | target |"
  echo "|---|---|---|---|"
  echo "| no notifications | $(ms "$M_NONE") ms | | |"
  echo "| webhook (signed) + slack, receiver answers ($GOT requests received) | $(ms "$M_OK") ms | $ADD_OK ms | ≤ 50 ms |"
  echo "| webhook, receiver hangs (timeout 1s) | $(ms "$M_HANG") ms | $ADD_HANG ms | ≤ 1000 ms |"
  echo
  echo "Samples (s): none:${SAMPLES[none]}; answers:${SAMPLES[answers]}; hangs:${SAMPLES[hangs]}"
  echo "<!-- notify:end -->"
} | replace_section notify "$OUT"
