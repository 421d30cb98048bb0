#!/usr/bin/env bash
# bench/scale.sh — the scale figures of issue 8, measured side by side in one run:
#
#   1. floor: a no-op `reconcile plan` of 100 instances (100 apps, one Docker host,
#      etcd registry) against its physical floor, `examples/noop_floor.rs` (read the
#      repo's files, one container list call per host, one etcd range). Target ≤ 1.5×.
#   2. daemons: a no-op `reconcile plan` of 8 real dockerds × 50 containers against one
#      dockerd × 50 (each environment on its own bench daemons, started with
#      `scripts/test-env.sh bench-daemons 9`). Target ≤ 1.3×. The floor of both is
#      measured too, for context.
#   3. memory: peak RSS of `reconcile plan` for 1,000 instances (100 apps × 10 replicas
#      over the 8 daemons, nothing running yet: a plan of 1,000 creates), and of each
#      measured no-op plan. Target < 60 MB.
#   4. planner: `cargo bench --bench plan` (criterion: 10k and 100k instances; target
#      for 100k over 5,000 hosts: < 1 s). Skipped with NO_CRITERION=1.
#
# Each comparison alternates its two commands A B A B … (RUNS pairs, default 15, after
# 2 warm-up pairs) and reports medians and the median of the pair-by-pair ratios A/B,
# so a drift in machine speed hits both sides. Wall time is `date +%s%N` around each
# run; peak RSS is /usr/bin/time's %M (the command's own maximum resident set).
#
# Writes bench/scale-results.md (every sample) and replaces the section between the
# `scale:begin`/`scale:end` markers of bench/results.md. Needs the test environment
# (scripts/test-env.sh up); contacts only 127.0.0.1. Removes every container and etcd
# key it made at the end and stops the bench daemons (KEEP_DAEMONS=1 keeps them).
# Knobs: RUNS, NO_CRITERION=1, NO_BUILD=1, BIN=, FLOOR=, KEEP_TMP=1, SETUP_ONLY=1 (build the repo and
# converge the environments, print the repo's path and stop, leaving everything in
# place for profiling by hand; the next run removes it first).
set -euo pipefail

RUNS=${RUNS:-15}
WARMUP=2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RECORD=$HERE/scale-results.md
RESULTS=$HERE/results.md
IMAGE=reconcile-test/busybox:1
EPREFIX=/reconcile-bench-scale
BIN=${BIN:-$ROOT/target/release/reconcile}        # BIN=, FLOOR=: binaries built elsewhere (NO_BUILD=1)
FLOOR=${FLOOR:-$ROOT/target/release/examples/noop_floor}
DAEMONS=9                                  # 1-8: the 8-host environment, 9: the 1-host one
FLOOR_POOL=31000-31999                     # below the ephemeral range, away from test pools

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"   # say, die, load_test_env, env_file, host_line, remove_containers_on, run, replace_section
load_test_env docker etcdctl git python3 /usr/bin/time

if [ -z "${NO_BUILD:-}" ]; then
  say "building reconcile and examples/noop_floor (release)"
  (cd "$ROOT" && nice -n 19 cargo build --release --quiet --bin reconcile --example noop_floor)
fi
say "starting $DAEMONS bench daemons"
mapfile -t SOCKS < <("$ROOT/scripts/test-env.sh" bench-daemons "$DAEMONS")
((${#SOCKS[@]} == DAEMONS)) || die "scripts/test-env.sh bench-daemons $DAEMONS gave ${#SOCKS[@]} sockets"

TMP=$(mktemp -d)
REPO=$TMP/repo
ENVS=(bench-floor bench-d8 bench-d1 bench-rss)
cleanup() {
  remove_containers
  etcdctl --endpoints "$ETCD" del --prefix "$EPREFIX" >/dev/null 2>&1 || true
  [ -n "${KEEP_DAEMONS:-}" ] || "$ROOT/scripts/test-env.sh" bench-daemons-stop >&2 || true
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT
remove_containers() { remove_containers_on "$RECONCILE_TEST_DOCKER1" "${SOCKS[@]}"; }  # leftovers first
remove_containers
etcdctl --endpoints "$ETCD" del --prefix "$EPREFIX" >/dev/null 2>&1 || true

# ------------------------------------------------------------------ config repo
mkdir -p "$REPO"
# 1. floor: 100 apps on dockerd #1, httpd on a pool port, registered in etcd.
env_file bench-floor "$(host_line node-1 "$RECONCILE_TEST_DOCKER1" "$FLOOR_POOL")" \
  "etcd: {endpoints: ['$ETCD'], prefix: '$EPREFIX/floor', registry_prefix: '$EPREFIX/floor/registry'}
"
for i in $(seq -w 0 99); do
  cat >"$REPO/environments/bench-floor/apps/app-$i.yaml" <<EOF
apiVersion: reconcile/v1
kind: App
name: app-$i
image: $IMAGE
command: [/bin/busybox, httpd, -f, -p, '127.0.0.1:{{ instance.port }}']
env: {BENCH_VALUE: "1"}
port: 8080
registry: true
config: {value: "1"}
stop_timeout: 1s
EOF
done
# 2. daemons: 50 apps × 8 replicas spread over bench-docker-1..8; 50 apps on bench-docker-9.
hosts8=
for k in 1 2 3 4 5 6 7 8; do hosts8+=$(host_line "b$k" "${SOCKS[$((k - 1))]}" "$((34000 + 100 * k))-$((34099 + 100 * k))"); hosts8+=$'\n'; done
env_file bench-d8 "$hosts8" ""
env_file bench-d1 "$(host_line b9 "${SOCKS[8]}" 34000-34999)"$'\n' ""
for i in $(seq -w 0 49); do
  for e in d8 d1; do
    r=1; [ $e = d8 ] && r=8
    cat >"$REPO/environments/bench-$e/apps/app-$i.yaml" <<EOF
apiVersion: reconcile/v1
kind: App
name: app-$i
image: $IMAGE
command: [/bin/busybox, sleep, '86400']
env: {BENCH_VALUE: "1"}
replicas: $r
placement: {spread: true}
stop_timeout: 1s
EOF
  done
done
# 3. memory: 100 apps × 10 replicas over the 8 daemons, with a port, a templated env
#    var and a rendered file each (never applied).
hostsr=
for k in 1 2 3 4 5 6 7 8; do hostsr+=$(host_line "b$k" "${SOCKS[$((k - 1))]}" "$((35000 + 200 * k))-$((35199 + 200 * k))"); hostsr+=$'\n'; done
env_file bench-rss "$hostsr" ""
mkdir -p "$REPO/environments/bench-rss/templates"
printf 'app={{ app.name }}\ninstance={{ instance.name }} port={{ instance.port }}\n' \
  >"$REPO/environments/bench-rss/templates/app.conf.j2"
for i in $(seq -w 0 99); do
  cat >"$REPO/environments/bench-rss/apps/app-$i.yaml" <<EOF
apiVersion: reconcile/v1
kind: App
name: app-$i
image: $IMAGE
command: [/bin/busybox, httpd, -f, -p, '127.0.0.1:{{ instance.port }}']
env: {BENCH_VALUE: "1", INSTANCE: "{{ instance.name }}"}
replicas: 10
port: 8080
files: [{template: templates/app.conf.j2, path: /etc/app.conf}]
health: {http: /, interval: 1s}
EOF
done
git -C "$REPO" -c init.defaultBranch=main init -q
git -C "$REPO" add -A
git -C "$REPO" -c user.name=bench -c user.email=bench@localhost commit -qm "scale bench"

# ------------------------------------------------------------------ converge
for e in bench-floor bench-d8 bench-d1; do
  say "apply --env $e"
  "$BIN" apply --env "$e" --repo "$REPO" --yes --parallelism 16 >"$TMP/apply-$e.log" 2>&1 ||
    { tail -n 20 "$TMP/apply-$e.log" >&2; die "apply --env $e failed (log above)"; }
  set +e; "$BIN" plan --env "$e" --repo "$REPO" --detailed-exitcode >"$TMP/plan-$e.txt" 2>&1; rc=$?; set -e
  ((rc == 0)) || { cat "$TMP/plan-$e.txt" >&2; die "plan --env $e is not a no-op after apply (exit $rc)"; }
done
count() { docker -H "$1" ps -q --filter "label=reconcile.env=$2" | wc -l; }
(( $(count "$RECONCILE_TEST_DOCKER1" bench-floor) == 100 )) || die "bench-floor: not 100 containers running"
for k in 1 2 3 4 5 6 7 8; do
  n=$(count "${SOCKS[$((k - 1))]}" bench-d8); ((n == 50)) || die "bench-d8: bench-docker-$k runs $n containers, not 50"
done
(( $(count "${SOCKS[8]}" bench-d1) == 50 )) || die "bench-d1: not 50 containers running"
# The floor reads what plan reads: the same containers and keys.
got=$("$FLOOR" "$REPO" bench-floor "$ETCD" "$EPREFIX/floor/" "$RECONCILE_TEST_DOCKER1")
say "floor reads: $got"
[[ $got == *" containers=100 "* && $got != *etcd_keys=0 ]] || die "the floor did not see the 100 containers and their keys: $got"
if [ -n "${SETUP_ONLY:-}" ]; then
  trap - EXIT
  say "SETUP_ONLY: environments bench-floor, bench-d8, bench-d1 converged; sockets ${SOCKS[*]}"
  echo "$REPO"
  exit 0
fi

# ------------------------------------------------------------------ measure
SAMPLES=$TMP/samples.tsv   # key \t wall ms \t peak RSS KiB
: >"$SAMPLES"
pairs() { # KEY_A KEY_B 'CMD A' 'CMD B' (word-split, no globbing in the commands)
  local i
  say "$1 vs $2: $WARMUP warm-up pairs, $RUNS counted"
  for ((i = 0; i < WARMUP; i++)); do run warmup $3; run warmup $4; done
  for ((i = 0; i < RUNS; i++)); do run "$1" $3; run "$2" $4; done
}
set -f
pairs plan.floor-100 floor.floor-100 \
  "$BIN plan --env bench-floor --repo $REPO" \
  "$FLOOR $REPO bench-floor $ETCD $EPREFIX/floor/ $RECONCILE_TEST_DOCKER1"
pairs plan.d8x50 plan.d1x50 \
  "$BIN plan --env bench-d8 --repo $REPO" \
  "$BIN plan --env bench-d1 --repo $REPO"
pairs floor.d8x50 floor.d1x50 \
  "$FLOOR $REPO bench-d8 - - ${SOCKS[*]:0:8}" \
  "$FLOOR $REPO bench-d1 - - ${SOCKS[8]}"
pairs plan.rss-1000 plan.d8x50-again \
  "$BIN plan --env bench-rss --repo $REPO" \
  "$BIN plan --env bench-d8 --repo $REPO"
set +f
"$BIN" plan --env bench-rss --repo "$REPO" >"$TMP/plan-rss.txt" 2>&1 || true
grep -q '1000 to add' "$TMP/plan-rss.txt" || { tail -n 3 "$TMP/plan-rss.txt" >&2; die "bench-rss: the plan does not add 1000 instances"; }

CRITERION=
if [ -z "${NO_CRITERION:-}" ]; then
  say "cargo bench --bench plan (criterion)"
  (cd "$ROOT" && cargo bench --bench plan 2>&1) | tee "$TMP/criterion.txt" | grep -E '^plan/|time:' >&2 || true
  CRITERION=$TMP/criterion.txt
fi

# ------------------------------------------------------------------ report
STAMP=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src benches examples || echo -dirty)
MACHINE="$(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, docker server $(docker version -f '{{.Server.Version}}' 2>/dev/null), load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$SAMPLES" "$RECORD" "$STAMP" "$COMMIT" "$MACHINE" "$RUNS" "$CRITERION" <<'PY' | replace_section scale "$RESULTS"
import re, statistics as st, sys
samples, record, stamp, commit, machine, runs, criterion = sys.argv[1:]
wall, rss = {}, {}
for line in open(samples):
    k, ms, kb = line.rstrip("\n").split("\t")
    if k == "warmup":
        continue
    wall.setdefault(k, []).append(int(ms) / 1000)
    rss.setdefault(k, []).append(int(kb) / 1024)
med = lambda xs: st.median(xs)
def ratio(a, b):
    r = [x / y for x, y in zip(wall[a], wall[b])]
    return med(r), min(r), max(r)
def verdict(v, target):
    return "met" if v <= target else "**missed**"
rows = []
r, lo, hi = ratio("plan.floor-100", "floor.floor-100")
rows.append(("no-op `plan`, 100 instances (1 host, etcd registry) ÷ its floor",
             f"{med(wall['plan.floor-100']):.1f} ms ÷ {med(wall['floor.floor-100']):.1f} ms = **{r:.2f}×** ({lo:.2f}–{hi:.2f})",
             "≤ 1.5×", verdict(r, 1.5)))
r, lo, hi = ratio("plan.d8x50", "plan.d1x50")
rows.append(("no-op `plan`, 8 dockerds × 50 ÷ 1 dockerd × 50",
             f"{med(wall['plan.d8x50']):.1f} ms ÷ {med(wall['plan.d1x50']):.1f} ms = **{r:.2f}×** ({lo:.2f}–{hi:.2f})",
             "≤ 1.3×", verdict(r, 1.3)))
r, lo, hi = ratio("floor.d8x50", "floor.d1x50")
rows.append(("(context) the floor, 8 dockerds × 50 ÷ 1 dockerd × 50",
             f"{med(wall['floor.d8x50']):.1f} ms ÷ {med(wall['floor.d1x50']):.1f} ms = {r:.2f}× ({lo:.2f}–{hi:.2f})", "", ""))
m = max(rss["plan.rss-1000"])
rows.append(("peak RSS, `plan` of 1,000 instances (8 hosts, 1,000 creates)",
             f"**{m:.1f} MB** (max of {len(rss['plan.rss-1000'])} runs; {med(wall['plan.rss-1000']):.0f} ms)", "< 60 MB", verdict(m, 60)))
for k, what in [("plan.floor-100", "no-op `plan`, 100 instances + etcd"), ("plan.d8x50", "no-op `plan`, 8 × 50"), ("floor.floor-100", "the floor binary")]:
    rows.append((f"peak RSS, {what}", f"{max(rss[k]):.1f} MB", "", ""))
if criterion:
    text = open(criterion).read()
    for name, t in re.findall(r"^plan/(.+?)\n?\s+time:\s+\[([^\]]+)\]", text, re.M):
        w = t.split()
        lo_, mid, hi_ = (f"{w[0]} {w[1]}", f"{w[2]} {w[3]}", f"{w[4]} {w[5]}")
        target = "< 1 s" if "100k" in name and "no-op" in name else ("< 100 ms" if "10k" in name and "no-op" in name else "")
        secs = float(w[2]) * {"ms": 1e-3, "s": 1, "µs": 1e-6, "ns": 1e-9}[w[3]]
        v = "" if not target else verdict(secs, 1.0 if "100k" in name else 0.1)
        rows.append((f"planner (criterion): {name.strip()}", f"{mid} ({lo_} – {hi_})", target, v))
table = ["| measurement | result (median; min–max of the pair ratios) | target | |", "|---|---|---|---|"]
table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
head = f"Generated by `bench/scale.sh` on {stamp}, commit {commit}, release build; {machine}. {runs} alternating pairs per comparison after 2 warm-up pairs; wall time per whole process."
section = "\n".join(["<!-- scale:begin -->", "## Scale (`bench/scale.sh`)", "", head, "", *table, "",
                     "Every sample: [scale-results.md](scale-results.md).", "<!-- scale:end -->"])
with open(record, "w") as f:
    f.write("# scale results\n\n" + head + "\n\n" + "\n".join(table) + "\n\n## All samples (wall ms / peak RSS MB)\n\n| key | wall ms | peak RSS MB |\n|---|---|---|\n")
    for k in sorted(wall):
        f.write(f"| `{k}` | {' '.join(f'{x:.0f}' for x in wall[k])} | {' '.join(f'{x:.1f}' for x in rss[k])} |\n")
    if criterion:
        f.write("\n## criterion output\n\n```\n" + "".join(l for l in open(criterion) if l.startswith("plan/") or "time:" in l) + "```\n")
print(section)
PY
