#!/usr/bin/env bash
# bench/dr.sh — the DR figure of issue 11, side by side in one run:
#
#   cold: `reconcile apply` of a fleet of 100 LB-backed instances (10 apps × 10
#         replicas, busybox httpd with an http health check, registered in etcd,
#         served by an nginx this script runs) onto daemon 1 from nothing at all;
#   dr:   the same fleet lost (its containers, registry entries and LB file wiped) and
#         rebuilt from the repo by `reconcile apply` of `bench-dr`, which extends the
#         fleet's environment onto a spare host (daemon 2) — the drill of the README.
#
#   floor: the Docker part of the DR alone, without reconcile: the same 100 containers
#         (same image, command, host network, init, restart policy, labels, env) made on
#         daemon 2 by a small Python client straight through the Engine API at the same
#         concurrency (16): inspect the image, create, upload the instance's index.html
#         (one tar), start, then GET / until it answers. No etcd, no LB. `floor, no files`
#         skips the upload (httpd serves / instead), to show what the upload costs.
#
# Both are timed from the start of `reconcile apply` until it exits: it exits after the
# LB reload that included the last instance, so every instance is serving through nginx
# by then (checked after each run, untimed: every instance answers through nginx). The
# `--report` RTO of each run is recorded too. Pairs alternate their order (cold dr, dr
# cold, …; RUNS pairs, default 5, after one warm-up pair; after each pair one run of each
# floor) and the ratio is the median of the pair-by-pair ratios dr/cold, so a drift in
# machine speed hits both sides.
# Target: dr under 10 s.
#
# Replaces the section between the `dr:begin`/`dr:end` markers of bench/results.md.
# Needs the test environment (scripts/test-env.sh up) and nginx; contacts only
# 127.0.0.1/127.0.0.2. Removes every container and etcd key it made at the end.
# Knobs: RUNS, NO_BUILD=1, BIN=path (default target/release/reconcile), KEEP_TMP=1 (keeps
# the temporary directory; its runs/ holds every run's `--report` JSON and stderr, e.g.
# for `RUST_LOG=reconcile=debug` timestamps).
set -euo pipefail

RUNS=${RUNS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RESULTS=$HERE/results.md
IMAGE=reconcile-test/busybox:1
EPREFIX=/reconcile-bench-dr
BIN=${BIN:-$ROOT/target/release/reconcile}
POOL=30000-30199                           # below the ephemeral range (32768+), away from the tests' pools
LB_PORT=30990
APPS=10
REPLICAS=10

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"   # say, die, load_test_env, env_file, host_line, remove_containers_on, run, replace_section
load_test_env docker etcdctl git python3 nginx curl /usr/bin/time

if [ -z "${NO_BUILD:-}" ]; then
  say "building reconcile (release)"
  (cd "$ROOT" && cargo build --release --quiet --bin reconcile)
fi
[ -x "$BIN" ] || die "$BIN is missing (build it, or set BIN)"

TMP=$(mktemp -d)
REPO=$TMP/repo
NGINX=$TMP/nginx
LB_FILE=$NGINX/reconcile.conf
ENVS=(bench-fleet bench-dr bench-dr-floor)
remove_containers() { remove_containers_on "$RECONCILE_TEST_DOCKER1" "$RECONCILE_TEST_DOCKER2"; }
wipe() { # everything of both environments: containers, etcd keys, the LB file
  remove_containers
  etcdctl --endpoints "$ETCD" del --prefix "$EPREFIX" >/dev/null 2>&1 || true
  rm -f "$LB_FILE"
}
stop_nginx() { # TERM to our master, then wait (up to 5 s) until it is gone and the port free
  local pid k
  pid=$(cat "$NGINX/nginx.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for ((k = 0; k < 50; k++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  wipe
  stop_nginx
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT
wipe

# ------------------------------------------------------------------ nginx and the repo
mkdir -p "$NGINX/tmp"
cat >"$NGINX/nginx.conf" <<EOF
pid $NGINX/nginx.pid;
error_log $NGINX/error.log;
worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $NGINX/tmp;
  proxy_temp_path $NGINX/tmp;
  include $LB_FILE;
}
EOF
printf 'server { listen 127.0.0.1:%s; return 503; }\n' "$LB_PORT" >"$LB_FILE"
nginx -c "$NGINX/nginx.conf" || die "nginx did not start (see $NGINX/error.log)"

lb="lb:
  template: templates/nginx.conf.j2
  path: '$LB_FILE'
  check: [nginx, -t, -q, -c, '$NGINX/nginx.conf']
  reload: [nginx, -s, reload, -c, '$NGINX/nginx.conf']
  drain: 0s
"
env_file bench-fleet "$(host_line node-1 "$RECONCILE_TEST_DOCKER1" "$POOL" 127.0.0.1)" \
  "etcd: {endpoints: ['$ETCD'], prefix: '$EPREFIX', registry_prefix: '$EPREFIX/fleet-registry'}
$lb"
mkdir -p "$REPO/environments/bench-fleet/templates"
cat >"$REPO/environments/bench-fleet/templates/nginx.conf.j2" <<EOF
{% for app in apps %}
upstream {{ app.name }} {
{% for i in app.instances %}  server {{ i.address }}:{{ i.port }};
{% else %}  server 127.0.0.1:1 down;
{% endfor %}}
server {
  listen 127.0.0.1:$LB_PORT;
  server_name {{ app.lb.host }};
  location / { proxy_pass http://{{ app.name }}; proxy_next_upstream off; }
}
{% endfor %}
EOF
printf 'instance={{ instance.name }} host={{ instance.host }}\n' >"$REPO/environments/bench-fleet/templates/index.html.j2"
for i in $(seq -w 0 $((APPS - 1))); do
  cat >"$REPO/environments/bench-fleet/apps/app-$i.yaml" <<EOF
apiVersion: reconcile/v1
kind: App
name: app-$i
image: $IMAGE
command: [/bin/busybox, httpd, -f, -p, '{{ instance.address }}:{{ instance.port }}', -h, /www]
replicas: $REPLICAS
port: 8080
health: {http: /, interval: 100ms, timeout: 1s, retries: 50}
files: [{template: templates/index.html.j2, path: /www/index.html}]
lb: {host: app-$i.bench}
registry: true
stop_timeout: 1s
EOF
done
# The spare site: the same fleet on daemon 2, its own registry.
env_file bench-dr "$(host_line spare-1 "$RECONCILE_TEST_DOCKER2" "$POOL" 127.0.0.2)" \
  "extends: bench-fleet
etcd: {registry_prefix: '$EPREFIX/dr-registry'}
"
rmdir "$REPO/environments/bench-dr/apps"
git -C "$REPO" -c init.defaultBranch=main init -q
git -C "$REPO" add -A
git -C "$REPO" -c user.name=bench -c user.email=bench@localhost commit -qm "dr bench"

# ------------------------------------------------------------------ measure
SAMPLES=$TMP/samples.tsv   # key \t wall µs \t peak RSS KiB (lib.sh's run)
RTOS=$TMP/rtos.tsv         # key \t rto ms \t time to serving ms
: >"$SAMPLES"
: >"$RTOS"
mkdir -p "$TMP/runs"
answers() { # APP: the distinct answers of REPLICAS requests through nginx
  local _
  for _ in $(seq "$REPLICAS"); do
    curl -fsS --max-time 2 -H "Host: $1.bench" "http://127.0.0.1:$LB_PORT/" || echo failed
  done | sort -u
}
serving() { # ENV HOST: every instance answers through nginx, from HOST (nginx's old
  # worker may answer for a moment after the reload: up to 5 s of retries)
  local i seen deadline=$(($(date +%s) + 5))
  for i in $(seq -w 0 $((APPS - 1))); do
    while seen=$(answers "app-$i"); [[ $(grep -c " host=$2\$" <<<"$seen") -ne $REPLICAS ]]; do
      (($(date +%s) < deadline)) || die "$1: app-$i does not serve its $REPLICAS instances from $2 through nginx: $seen"
      sleep 0.1
    done
  done
}
cold() { # KEY
  wipe
  run "$1" "$BIN" apply --env bench-fleet --repo "$REPO" --yes --parallelism 16 --timeout 60s --report "$TMP/report.json"
  rto "$1"
  serving bench-fleet node-1
}
dr() { # KEY: the fleet runs; lose it and rebuild it on the spare host
  wipe
  "$BIN" apply --env bench-fleet --repo "$REPO" --yes --parallelism 16 --timeout 60s >"$TMP/setup.log" 2>&1 ||
    { tail -n 20 "$TMP/setup.log" >&2; die "setting up the fleet failed"; }
  remove_containers
  etcdctl --endpoints "$ETCD" del --prefix "$EPREFIX/fleet-registry" >/dev/null
  rm -f "$LB_FILE"
  run "$1" "$BIN" apply --env bench-dr --repo "$REPO" --yes --parallelism 16 --timeout 60s --report "$TMP/report.json"
  rto "$1"
  serving bench-dr spare-1
}
rto() { # KEY: the RTO and time to serving of the last --report (kept in runs/ with its stderr)
  local n
  n=$(grep -c . "$RTOS" || true)
  cp "$TMP/report.json" "$TMP/runs/$n-$1.json"
  cp "$TMP/err" "$TMP/runs/$n-$1.log"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["outcome"]=="complete", r["outcome"]; print(sys.argv[2], r["rto_ms"], r["time_to_serving_ms"], sep="\t")' \
    "$TMP/report.json" "$1" >>"$RTOS"
}
# The floor's client: ARGS socket files(0|1); one container per instance of the fleet.
cat >"$TMP/floor.py" <<'PY'
import http.client, io, json, socket, sys, tarfile, time
from concurrent.futures import ThreadPoolExecutor
sock, files, apps, replicas, first_port, image = sys.argv[1].removeprefix("unix://"), sys.argv[2] == "1", *map(int, sys.argv[3:6]), sys.argv[6]
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock)
def call(method, path, body=None, ctype="application/json"):
    c = Unix("localhost")
    c.request(method, "/v1.41" + path, body=json.dumps(body).encode() if isinstance(body, dict) else body,
              headers={"Content-Type": ctype} if body is not None else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")
    return json.loads(data) if data else None
def one(k):
    app, i = divmod(k, replicas)
    port, name = first_port + k, f"app-{app:02d}-{i}"
    call("GET", f"/images/{image}/json")
    body = {"Image": image, "Cmd": ["/bin/busybox", "httpd", "-f", "-p", f"127.0.0.2:{port}", "-h", "/www" if files else "/"],
            "Env": [f"PORT={port}", f"RECONCILE_APP=app-{app:02d}", "RECONCILE_ENV=bench-dr-floor", f"RECONCILE_INSTANCE={name}"],
            "Labels": {"reconcile.env": "bench-dr-floor", "reconcile.app": f"app-{app:02d}", "reconcile.instance": name},
            "StopTimeout": 1,
            "HostConfig": {"NetworkMode": "host", "Init": True, "RestartPolicy": {"Name": "unless-stopped"}}}
    cid = call("POST", f"/containers/create?name=bench-dr-floor-{name}", body)["Id"]
    if files:
        buf, text = io.BytesIO(), f"instance={name} host=spare-1\n".encode()
        with tarfile.open(fileobj=buf, mode="w") as t:
            info = tarfile.TarInfo("www/index.html")
            info.size, info.mode = len(text), 0o644
            t.addfile(info, io.BytesIO(text))
        call("PUT", f"/containers/{cid}/archive?path=/", buf.getvalue(), "application/x-tar")
    call("POST", f"/containers/{cid}/start")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the health check: GET / answered
        try:
            with socket.create_connection(("127.0.0.2", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                status = s.recv(12)
                if status[9:12] == b"200" or (not files and status.startswith(b"HTTP/")):  # no files: 404 for /
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{name}: no answer on 127.0.0.2:{port} within 60 s")
with ThreadPoolExecutor(16) as pool:
    list(pool.map(one, range(apps * replicas)))
PY
floor() { # KEY FILES(0|1): the Docker part alone, on daemon 2 (see the header)
  remove_containers
  run "$1" python3 "$TMP/floor.py" "$RECONCILE_TEST_DOCKER2" "$2" "$APPS" "$REPLICAS" "${POOL%-*}" "$IMAGE"
}
say "warm-up pair"
cold warmup
dr warmup
for ((k = 0; k < RUNS; k++)); do
  say "pair $((k + 1))/$RUNS"
  if ((k % 2 == 0)); then cold cold; dr dr; else dr dr; cold cold; fi
  floor floor 1
  floor floor-nofiles 0
done

# ------------------------------------------------------------------ report
STAMP=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src || echo -dirty)
BUILD=$([[ $BIN == */release/* ]] && echo "release build" || echo "binary $BIN")
MACHINE="$(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, docker server $(docker version -f '{{.Server.Version}}' 2>/dev/null), load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$SAMPLES" "$RTOS" "$STAMP" "$COMMIT" "$BUILD" "$MACHINE" "$RUNS" "$((APPS * REPLICAS))" <<'PY' | replace_section dr "$RESULTS"
import statistics as st, sys
samples, rtos, stamp, commit, build, machine, runs, n = sys.argv[1:]
wall, rto, tts = {}, {}, {}
for line in open(samples):
    k, us, _ = line.rstrip("\n").split("\t")
    if k != "warmup":
        wall.setdefault(k, []).append(int(us) / 1e6)
for line in open(rtos):
    k, r, t = line.rstrip("\n").split("\t")
    if k != "warmup":
        rto.setdefault(k, []).append(int(r) / 1000)
        tts.setdefault(k, []).append(int(t) / 1000)
med = st.median
ratios = [d / c for d, c in zip(wall["dr"], wall["cold"])]
r = med(ratios)
dr = med(wall["dr"])
rows = [
    f"| cold apply of the fleet (nothing anywhere) | {med(wall['cold']):.2f} s | {med(rto['cold']):.2f} s | {med(tts['cold']):.2f} s | | |",
    f"| DR: fleet lost (containers, registry, LB file), `bench-dr` onto the spare host | **{dr:.2f} s** | {med(rto['dr']):.2f} s | {med(tts['dr']):.2f} s | **{r:.2f}×** ({min(ratios):.2f}–{max(ratios):.2f}) | < 10 s: {'met' if dr < 10 else '**missed**'} |",
    f"| Docker floor: the same 100 containers straight through the Engine API (no reconcile, etcd or LB), with the file upload | {med(wall['floor']):.2f} s | | | DR ÷ floor {dr / med(wall['floor']):.2f}× | |",
    f"| Docker floor without the file upload | {med(wall['floor-nofiles']):.2f} s | | | | |",
]
head = (f"Generated by `bench/dr.sh` on {stamp}, commit {commit}, {build}; {machine}. "
        f"{n} LB-backed instances ({n} = 10 apps × 10 replicas, http health check, etcd registry, nginx). "
        f"{runs} pairs in alternating order after a warm-up pair, each pair followed by one run of each Docker floor; medians. Wall = `reconcile apply` start to exit "
        "(it exits after the LB reload that included the last instance; every instance was then checked to answer through nginx). "
        "RTO and time to serving are the `--report` figures of the same runs (RTO: from the start of the command; time to serving: from the start of the changes).")
table = ["| scenario | wall | RTO (report) | time to serving (report) | DR ÷ cold (median of pair ratios; min–max) | target |",
         "|---|---|---|---|---|---|", *rows]
samples_line = "Samples (s): " + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in wall[k]) for k in ["cold", "dr", "floor", "floor-nofiles"]) + "."
section = "\n".join(["<!-- dr:begin -->", "## Disaster recovery (`bench/dr.sh`)", "", head, "", *table, "", samples_line, "<!-- dr:end -->"])
print(section)
PY
