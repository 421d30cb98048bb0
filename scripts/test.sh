#!/usr/bin/env bash
# scripts/test.sh — the README's test command: installs and starts what the tests
# need (scripts/test-env.sh: Debian packages, two Docker daemons, etcd, nginx,
# haproxy, the local test images), then runs every test of the workspace.
# Run as root on Debian bookworm. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install a Rust toolchain (1.89 or newer, e.g. with rustup) and re-run" >&2
  exit 1
fi

scripts/test-env.sh up
# shellcheck disable=SC1091
. /run/reconcile-test/env

# Snapshots must match what is committed; never write new ones in a test run.
export INSTA_UPDATE=no
export CI="${CI:-}"
cargo test --all-targets "$@"
# Doc tests are not part of --all-targets.
cargo test --doc "$@"
