#!/usr/bin/env bash
# scripts/demo.sh — the quick-start demo against the embedded environments/local.
# Installs and starts what it needs (the same script the tests use: Docker,
# etcd and nginx on loopback, the local busybox image), builds reconcile, and
# runs it on this repo's own environments/: validate, plan, apply, status, history.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install a Rust toolchain (1.89 or newer, e.g. with rustup) and re-run" >&2
  exit 1
fi
scripts/test-env.sh up >/dev/null
cargo build --release --quiet
bin=target/release/reconcile

echo "== reconcile validate --env local"
"$bin" validate --env local
echo
echo "== reconcile validate (every example repo)"
for repo in examples/*/; do
  "$bin" validate --repo "${repo%/}"
done
echo
echo "== reconcile schema app (first lines)"
"$bin" schema app | head -n 12

# environments/local's LB is an nginx whose whole config reconcile renders. Start it
# once with a placeholder config (same pid file and port) if it is not running yet.
lbdir=/var/lib/reconcile/local
mkdir -p "$lbdir/tmp"
if ! { [ -f "$lbdir/nginx.pid" ] && kill -0 "$(cat "$lbdir/nginx.pid")" 2>/dev/null; }; then
  if [ ! -f "$lbdir/nginx.conf" ]; then
    cat >"$lbdir/nginx.conf" <<EOF
worker_processes 1;
pid $lbdir/nginx.pid;
error_log $lbdir/nginx-error.log;
events { worker_connections 64; }
http { access_log off; client_body_temp_path $lbdir/tmp; proxy_temp_path $lbdir/tmp;
  server { listen 127.0.0.1:28080 default_server; return 503; } }
EOF
  fi
  nginx -c "$lbdir/nginx.conf"
fi

echo
echo "== reconcile plan --env local"
"$bin" plan --env local
echo
echo "== reconcile apply --env local --yes"
"$bin" apply --env local --yes
echo
echo "== reconcile status --env local"
"$bin" status --env local
echo
echo "== through nginx: curl -H 'Host: hello.localhost' http://127.0.0.1:28080/"
curl -s --max-time 5 -H 'Host: hello.localhost' http://127.0.0.1:28080/
echo
echo "== reconcile plan --env local (again: nothing to do)"
"$bin" plan --env local
echo
echo "== reconcile history --env local"
"$bin" history --env local --limit 5
echo
echo "Next: edit environments/local (e.g. vars.greeting), then plan and apply again, or"
echo "keep it converged with: $bin watch --env local"
