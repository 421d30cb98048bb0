# bench/lib.sh — helpers the bench scripts share (sourced, not run): messages, the test
# environment, config-repo writers and the sample timer. Scripts set ROOT, and REPO,
# TMP and SAMPLES before calling the writers and `run`.

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# Source the test environment (starting it when absent) and check the tools: ETCD is
# its etcd; ETCDCTL_API=3.
load_test_env() { # TOOL...
  [ -f /run/reconcile-test/env ] || "$ROOT/scripts/test-env.sh" up >&2
  # shellcheck disable=SC1091
  . /run/reconcile-test/env
  ETCD=$RECONCILE_TEST_ETCD
  local tool
  for tool in "$@"; do command -v "$tool" >/dev/null || die "$tool not installed"; done
  export ETCDCTL_API=3
}

env_file() { # NAME HOSTS_YAML EXTRA
  mkdir -p "$REPO/environments/$1/apps"
  printf 'apiVersion: reconcile/v1\nkind: Environment\nname: %s\nhosts:\n%s\n%s' "$1" "$2" "$3" \
    >"$REPO/environments/$1/environment.yaml"
}
host_line() { # NAME SOCKET [PORTS] [ADDRESS]
  printf '  - {name: %s, docker: "%s", address: %s%s}\n' "$1" "$2" "${4:-127.0.0.1}" "${3:+, ports: $3}"
}

# Remove every container of the environments in ENVS on each SOCKET (leftovers of an
# interrupted run too: a dead one is "marked for removal").
remove_containers_on() { # SOCKET...
  local s e
  for s in "$@"; do
    for e in "${ENVS[@]}"; do
      docker -H "$s" ps -aq --filter "label=reconcile.env=$e" | xargs -r docker -H "$s" rm -f >/dev/null 2>&1 || true
    done
  done
}

# One sample: KEY, wall µs and peak RSS KiB of CMD (stdout discarded) appended to $SAMPLES.
run() { # KEY CMD...
  local key=$1 t0 t1; shift
  t0=$(date +%s%N)
  /usr/bin/time -f %M -o "$TMP/rss" "$@" >/dev/null 2>"$TMP/err" || { cat "$TMP/err" >&2; die "$key: $* failed"; }
  t1=$(date +%s%N)
  printf '%s\t%s\t%s\n' "$key" "$(( (t1 - t0) / 1000 ))" "$(tail -n 1 "$TMP/rss")" >>"$SAMPLES"
}

# Put stdin (a section that starts with `<!-- NAME:begin -->` and ends with
# `<!-- NAME:end -->`) in place of that section of FILE, or append it; echo it.
replace_section() { # NAME FILE < SECTION
  python3 -c '
import re, sys
name, path = sys.argv[1:]
section = sys.stdin.read().rstrip("\n")
try:
    old = open(path).read()
except FileNotFoundError:
    old = ""
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
if begin in old:
    new = re.sub(re.escape(begin) + ".*" + re.escape(end), lambda _: section, old, flags=re.S)
else:
    new = old.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(new)
print(section)
' "$1" "$2"
}
