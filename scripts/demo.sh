#!/usr/bin/env bash
# scripts/demo.sh — the quick-start demo against the embedded environments/local.
# Installs and starts what it needs (the same script the tests use: Docker,
# etcd and nginx on loopback, the local busybox image), builds reconcile, and
# runs it on this repo's own environments/.
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
