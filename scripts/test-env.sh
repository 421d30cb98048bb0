#!/usr/bin/env bash
# scripts/test-env.sh — install and start what the reconcile test suite needs.
#
#   scripts/test-env.sh [up]   install missing Debian packages, start (when not
#                              already answering) dockerd #1, a second dockerd
#                              for multi-host tests, etcd on 127.0.0.1:23790,
#                              an sshd on 127.0.0.1:24022 (ssh alias
#                              reconcile-test-ssh, for the ssh:// transport);
#                              a TLS-only dockerd #3 on tcp://127.0.0.1:23761,
#                              docker-registry (TLS + htpasswd) on 127.0.0.1:25000;
#                              cmark-gfm and yaml-language-server (npm, cached);
#                              import the test images; write /run/reconcile-test/env
#   scripts/test-env.sh check  up + smoke tests (host-network httpd on both daemons
#                              at once, --init, nginx -t / haproxy -c on temp configs)
#   scripts/test-env.sh stop   stop the second dockerd, etcd, our sshd, the bench
#                              daemons, and dockerd #1 if this script started it
#   scripts/test-env.sh bench-daemons N
#                              (benchmarks only, never part of `up`) start N extra
#                              dockerds bench-docker-1..N on
#                              unix:///run/reconcile-test/bench-docker-K.sock with
#                              the test images; needs `up` first
#   scripts/test-env.sh bench-daemons-stop   stop only the bench daemons
#
# Idempotent: a second `up` changes nothing and takes about a second. Nothing is
# pulled from any registry (there is none reachable): images are `docker import`s
# of a rootfs built from Debian's busybox-static. All test traffic stays on
# 127.0.0.0/8. Needs root on Debian bookworm. Logs: /var/log/reconcile-test/.
# Then: `. /run/reconcile-test/env` (it exports the RECONCILE_TEST_* variables).
set -euo pipefail

# --- constants ---------------------------------------------------------------
RUN_DIR=/run/reconcile-test
LOG_DIR=/var/log/reconcile-test
LIB_DIR=/var/lib/reconcile-test
ENV_FILE=$RUN_DIR/env

DOCKER1=unix:///var/run/docker.sock
DOCKER1_PIDFILE=/var/run/docker.pid          # dockerd's own pidfile (default path)
DOCKER1_OURS=$RUN_DIR/docker1.pid            # exists only if *we* started dockerd #1
DOCKER2_SOCK=$RUN_DIR/docker2.sock
DOCKER2=unix://$DOCKER2_SOCK
DOCKER2_PIDFILE=$RUN_DIR/docker2.pid
DOCKER2_CONFIG=$LIB_DIR/docker2-daemon.json
DOCKER2_BRIDGE=rt-docker2                    # dockerd #2's own bridge (not docker0)
DOCKER2_BRIDGE_ADDR=172.31.254.1/24          # no traffic goes there; host networking is used
ETCD=http://127.0.0.1:23790
ETCD_PEER=http://127.0.0.1:23800
ETCD_PIDFILE=$RUN_DIR/etcd.pid
ETCD_DATADIR_FILE=$RUN_DIR/etcd.datadir
SSH_PORT=24022                               # outside every test's port pool (tests/it)
SSH_DIR=$LIB_DIR/ssh                         # keys + config, kept across runs (stable host key)
SSH_CONFIG=$SSH_DIR/sshd_config
SSH_PIDFILE=$RUN_DIR/sshd.pid
SSH_ALIAS=reconcile-test-ssh                 # Host entry in the system-wide client config
SSH_CLIENT_CONFIG=/etc/ssh/ssh_config.d/reconcile-test.conf
SSH=ssh://$SSH_ALIAS
SSH_API=                                     # the daemon's API version as seen through ssh
IMAGE_REPO=reconcile-test/busybox
IMAGE_VERSIONS=(1 2)
WAIT_SECS=30
# TLS dockerd #3 and the private registry (issue 9): one test CA for both.
TLS_DIR=$LIB_DIR/tls                         # ca, server, client certs (made once)
DOCKER3=tcp://127.0.0.1:23761
DOCKER3_PIDFILE=$RUN_DIR/docker3.pid
DOCKER3_CONFIG=$LIB_DIR/docker3-daemon.json
DOCKER3_BRIDGE=rt-docker3
DOCKER3_BRIDGE_ADDR=172.31.253.1/24
REGISTRY=127.0.0.1:25000
REGISTRY_DIR=$LIB_DIR/registry               # config, htpasswd, password, data
REGISTRY_PIDFILE=$RUN_DIR/registry.pid
REGISTRY_USER=reconcile-test

PACKAGES=(
  protobuf-compiler libprotobuf-dev pkg-config libssl-dev   # etcd-client / git2 builds
  git curl busybox-static iproute2 procps ca-certificates openssl
  docker.io                     # dockerd 20.10 + containerd + runc + docker-init (tini)
  etcd-server etcd-client       # etcd 3.4 + etcdctl
  nginx-light haproxy           # the load balancers the tests drive
  docker-registry docker-compose  # the TLS + htpasswd registry on :25000 (registry section)
  apache2-utils                   # htpasswd (bcrypt) for that registry
  openssh-server openssh-client   # our own sshd on $SSH_PORT (tests/it/ssh.rs), not Debian's
  age                             # etcdsec: age/age-keygen, interop with from_age (tests/it/secrets.rs)
)

# /usr/sbin holds dockerd, nginx, haproxy; append so that a newer docker client
# in /usr/local/bin (if any) keeps precedence over Debian's /usr/bin/docker.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

say() { echo "test-env: $*" >&2; }   # progress on stderr; stdout = summary
die() { echo "test-env: ERROR: $*" >&2; exit 1; }
CHANGED=0   # set to 1 whenever this run installs/starts/imports anything

# pid_alive PID COMM: true if PID runs and its command name is COMM (guards
# against acting on a pid that was recycled for an unrelated process), and it is not a
# zombie (a killed daemon reparented to a PID 1 that reaps late keeps its /proc entry and
# comm for a while; it must count as dead, or a killed etcd member is never restarted).
pid_alive() {
  [[ -n ${1:-} && -r /proc/$1/comm ]] && [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
  local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}
pid_from() { [[ -r $1 ]] && tr -dc 0-9 <"$1" || true; }

# --- 1. packages -------------------------------------------------------------
ensure_packages() {
  local missing=() p installed
  # one dpkg-query call for all packages (fast on re-runs); "ii" = installed
  installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
  for p in "${PACKAGES[@]}"; do
    grep -qE "^$p ii" <<<"$installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing: ${missing[*]}"
  CHANGED=1
  # Forbid the packages' postinst from starting services (dockerd on the default
  # socket, nginx on :80, etcd on :2379, haproxy): we start our own, on our own
  # ports. Debian's standard mechanism is /usr/sbin/policy-rc.d exiting 101.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  { apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$LOG_DIR/apt.log" 2>&1 || rc=$?
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || { tail -n 30 "$LOG_DIR/apt.log" >&2; die "apt-get failed (full log: $LOG_DIR/apt.log)"; }
}

# --- 1b. tools the schema and Markdown tests drive (tests/it/schemas.rs, markdown.rs)
# cmark-gfm (Debian) renders each Markdown part as GitHub does; yaml-language-server
# (npm, pinned, cached under $LIB_DIR) checks files against the editor schemas.
YAML_LS_VERSION=1.25.0
YAML_LS_DIR=$LIB_DIR/yaml-language-server
ensure_doc_tools() {
  local need=()
  command -v cmark-gfm >/dev/null || need+=(cmark-gfm)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  if ((${#need[@]})); then
    say "installing: ${need[*]}"
    CHANGED=1
    { apt-get update -qq &&
      apt-get install -y -qq --no-install-recommends "${need[@]}"; } >>"$LOG_DIR/apt.log" 2>&1 ||
      { tail -n 30 "$LOG_DIR/apt.log" >&2; die "apt-get failed (full log: $LOG_DIR/apt.log)"; }
  fi
  local pkg=$YAML_LS_DIR/node_modules/yaml-language-server/package.json
  if [[ ! -f $pkg ]] || ! grep -q "\"version\": \"$YAML_LS_VERSION\"" "$pkg"; then
    say "installing yaml-language-server $YAML_LS_VERSION into $YAML_LS_DIR"
    CHANGED=1
    mkdir -p "$YAML_LS_DIR"
    npm install --no-audit --no-fund --prefix "$YAML_LS_DIR" "yaml-language-server@$YAML_LS_VERSION" \
      >"$LOG_DIR/npm.log" 2>&1 || { tail -n 30 "$LOG_DIR/npm.log" >&2; die "npm install failed (full log: $LOG_DIR/npm.log)"; }
  fi
}

# --- helpers for daemons -----------------------------------------------------
# docker_api HOST: print the daemon's API version, fail if it does not answer.
docker_api() {
  timeout 5 docker -H "$1" version --format '{{.Server.APIVersion}}' 2>/dev/null
}

# wait_for NAME PID LOG CHECK...: poll CHECK until it succeeds; fail early if
# PID dies, or after WAIT_SECS, printing the log tail.
wait_for() {
  local name=$1 pid=$2 log=$3; shift 3
  local deadline=$((SECONDS + WAIT_SECS))
  until "$@" >/dev/null 2>&1; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      echo "--- last lines of $log ---" >&2; tail -n 25 "$log" >&2
      die "$name exited during startup (log: $log)"
    fi
    if ((SECONDS >= deadline)); then
      echo "--- last lines of $log ---" >&2; tail -n 25 "$log" >&2
      die "$name did not answer within ${WAIT_SECS}s (log: $log)"
    fi
    sleep 0.2
  done
}

# spawn LOG CMD...: start CMD detached (own session, no stdin, fd 9 = our lock
# closed so the daemon does not hold it), print its pid.
spawn() {
  local log=$1; shift
  echo "=== $(date -Is) starting: $*" >>"$log"
  nohup setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
  echo $!
}

# start_dockerd NAME HOST LOG ARGS...: start a dockerd and wait until it answers.
# overlay2 works on this kind of machine (ext4 root, overlay in the kernel); if
# the daemon dies with "error initializing graphdriver" (e.g. a filesystem or
# kernel without overlay support), retry once with --storage-driver=vfs (slow,
# copies every layer, but works everywhere).
start_dockerd() {
  local name=$1 host=$2 log=$3; shift 3
  local pid
  pid=$(spawn "$log" dockerd "$@")
  local deadline=$((SECONDS + WAIT_SECS))
  while ! docker_api "$host" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      if tail -n 25 "$log" | grep -q 'error initializing graphdriver'; then
        say "$name: overlay2 failed, retrying with --storage-driver=vfs (see $log)"
        pid=$(spawn "$log" dockerd --storage-driver=vfs "$@")
        wait_for "$name" "$pid" "$log" docker_api "$host"
        echo "$pid"; return 0
      fi
      echo "--- last lines of $log ---" >&2; tail -n 25 "$log" >&2
      die "$name exited during startup (log: $log)"
    fi
    if ((SECONDS >= deadline)); then
      echo "--- last lines of $log ---" >&2; tail -n 25 "$log" >&2
      die "$name did not answer within ${WAIT_SECS}s (log: $log)"
    fi
    sleep 0.2
  done
  echo "$pid"
}

# --- 2. dockerd #1 (default socket) ------------------------------------------
ensure_docker1() {
  docker_api "$DOCKER1" >/dev/null && return 0
  # No systemd here (PID 1 is not systemd on these machines); if it is, use it.
  if [[ -d /run/systemd/system ]] && systemctl start docker >/dev/null 2>&1; then
    wait_for "dockerd #1 (systemd)" "" "$LOG_DIR/dockerd.log" docker_api "$DOCKER1"
    CHANGED=1; return 0
  fi
  # A dockerd that exists but does not answer yet (still starting): wait for it
  # rather than starting a second one on the same socket.
  local pid; pid=$(pid_from "$DOCKER1_PIDFILE")
  if pid_alive "$pid" dockerd; then
    say "dockerd #1 (pid $pid) is running but not answering yet; waiting"
    wait_for "dockerd #1" "$pid" "$LOG_DIR/dockerd.log" docker_api "$DOCKER1"
    return 0
  fi
  say "starting dockerd #1 on $DOCKER1"
  CHANGED=1
  # Default everything (overlay2, docker0 bridge, iptables via Debian's default
  # iptables-nft, which works on this kernel). Only the socket is spelled out.
  pid=$(start_dockerd "dockerd #1" "$DOCKER1" "$LOG_DIR/dockerd.log" \
        --host "$DOCKER1" --pidfile "$DOCKER1_PIDFILE")
  echo "$pid" >"$DOCKER1_OURS"
}

# --- 3. dockerd #2 (second "host" for multi-host tests) ----------------------
ensure_docker2_bridge() {
  ip link show "$DOCKER2_BRIDGE" >/dev/null 2>&1 && return 0
  ip link add "$DOCKER2_BRIDGE" type bridge
  ip addr add "$DOCKER2_BRIDGE_ADDR" dev "$DOCKER2_BRIDGE"
  ip link set "$DOCKER2_BRIDGE" up
}

ensure_docker2() {
  docker_api "$DOCKER2" >/dev/null && return 0
  local pid; pid=$(pid_from "$DOCKER2_PIDFILE")
  if pid_alive "$pid" dockerd; then
    say "dockerd #2 (pid $pid) is running but not answering yet; waiting"
    wait_for "dockerd #2" "$pid" "$LOG_DIR/docker2.log" docker_api "$DOCKER2"
    return 0
  fi
  say "starting dockerd #2 on $DOCKER2"
  CHANGED=1
  mkdir -p "$LIB_DIR/docker2"
  ensure_docker2_bridge
  # dockerd 20.10 derives the engine ID (`docker info` .ID) from a trust key it
  # keeps in /etc/docker/key.json whatever --data-root says, so both daemons
  # would report the SAME ID. The key path can only be moved through the config
  # file ("deprecated-key-path"; there is no command-line flag for it).
  local want="{\"deprecated-key-path\": \"$LIB_DIR/docker2/key.json\"}"
  [[ -f $DOCKER2_CONFIG && $(cat "$DOCKER2_CONFIG") == "$want" ]] || echo "$want" >"$DOCKER2_CONFIG"
  # Flags:
  #  --data-root/--exec-root/--pidfile: own state; with its own exec-root the
  #      daemon also runs its own managed containerd (socket, state and shims
  #      under docker2-exec/containerd, content under docker2/containerd), so the
  #      two daemons share no containerd.
  #  --bridge=$DOCKER2_BRIDGE: the default bridge network of this daemon sits
  #      on its own bridge, created above. NOT --bridge=none: dockerd 20.10 with
  #      bridge=none *deletes the host's docker0 interface* at startup
  #      (removeDefaultBridgeInterface), which breaks bridge networking on
  #      dockerd #1 (seen here). Tests use --network host anyway.
  #  --iptables=false --ip-masq=false: do not create or flush the DOCKER
  #      chains / NAT rules that dockerd #1 manages.
  #  --ip-forward=false: leave the host's net.ipv4.ip_forward to dockerd #1.
  pid=$(start_dockerd "dockerd #2" "$DOCKER2" "$LOG_DIR/docker2.log" \
        --config-file "$DOCKER2_CONFIG" \
        --host "$DOCKER2" \
        --data-root "$LIB_DIR/docker2" \
        --exec-root "$RUN_DIR/docker2-exec" \
        --pidfile "$DOCKER2_PIDFILE" \
        --bridge="$DOCKER2_BRIDGE" --iptables=false --ip-masq=false --ip-forward=false)
  : "$pid"
}

# --- 4. test images ----------------------------------------------------------
# make_rootfs_tar VERSION OUT.tar: a minimal busybox rootfs.
make_rootfs_tar() {
  local version=$1 out=$2 root bb applet
  root=$(mktemp -d "$LIB_DIR/rootfs-XXXX")
  bb=/bin/busybox   # from busybox-static: statically linked, runs in an empty rootfs
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,proc,sys,dev,run,var/www,var/log}
  install -d -m 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  while read -r applet; do
    [[ $applet == bin/busybox || -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
  done < <("$bb" --list-full)
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
  echo "$version" >"$root/VERSION"
  echo "reconcile-test busybox $version" >"$root/var/www/index.html"
  tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$out" .
  rm -rf "$root"
}

image_id() { docker -H "$1" image inspect -f '{{.Id}}' "$2" 2>/dev/null || true; }

ensure_images() {
  local v tag id1 id2 tmp
  for v in "${IMAGE_VERSIONS[@]}"; do
    tag=$IMAGE_REPO:$v
    id1=$(image_id "$DOCKER1" "$tag")
    if [[ -z $id1 ]]; then
      rm -rf "$LIB_DIR"/rootfs-*   # leftovers of an interrupted build
      say "building $tag on dockerd #1 (docker import of a busybox rootfs)"
      CHANGED=1
      tmp=$(mktemp "$LIB_DIR/rootfs-$v-XXXX.tar")
      make_rootfs_tar "$v" "$tmp"
      docker -H "$DOCKER1" import \
        --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' \
        --change "LABEL org.reconcile.test.version=$v" \
        --message "reconcile test image, version $v" \
        "$tmp" "$tag" >/dev/null || { rm -f "$tmp"; die "docker import of $tag failed"; }
      rm -f "$tmp"
      id1=$(image_id "$DOCKER1" "$tag")
    fi
    # copy to dockerd #2 with save|load so both hosts have the same image ID
    id2=$(image_id "$DOCKER2" "$tag")
    if [[ $id2 != "$id1" ]]; then
      say "loading $tag into dockerd #2"
      CHANGED=1
      docker -H "$DOCKER1" save "$tag" | docker -H "$DOCKER2" load >/dev/null ||
        die "copying $tag to dockerd #2 failed"
    fi
  done
  [[ $(image_id "$DOCKER1" "$IMAGE_REPO:1") != "$(image_id "$DOCKER1" "$IMAGE_REPO:2")" ]] ||
    die "$IMAGE_REPO:1 and :2 have the same image ID"
}

# --- 4b. LB images (tests/it/lb_multi.rs: an LB inside managed containers) ------
# reconcile-test/nginx:1 and reconcile-test/haproxy:1: `debootstrap --variant=minbase`
# rootfs with the package (Debian's mirror, as configured in /etc/apt), docs, man pages
# and locales stripped, then `docker import`ed on dockerd #1 and copied to #2
# with save|load (same image ID everywhere). The rootfs tarballs are cached under
# $LB_IMAGES_DIR, so a second run only checks the image IDs.
LB_IMAGES_DIR=$LIB_DIR/images
LB_IMAGES=(nginx haproxy)
lb_image_package() { case $1 in nginx) echo nginx-light ;; haproxy) echo haproxy ;; esac; }
lb_image_cmd() {
  case $1 in
    nginx) echo '["nginx", "-g", "daemon off;"]' ;;
    haproxy) echo '["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]' ;;
  esac
}

make_lb_rootfs() {  # make_lb_rootfs NAME OUT.tar
  local name=$1 out=$2 root pkg
  pkg=$(lb_image_package "$name")
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    apt-get install -y -qq --no-install-recommends debootstrap >>"$LOG_DIR/apt.log" 2>&1 ||
      die "apt-get install debootstrap failed (log: $LOG_DIR/apt.log)"
  }
  root=$(mktemp -d "$LB_IMAGES_DIR/rootfs-$name-XXXX")
  mkdir -p "$LB_IMAGES_DIR/debs"
  debootstrap --variant=minbase --include="$pkg,procps" --cache-dir="$LB_IMAGES_DIR/debs" \
    bookworm "$root" http://deb.debian.org/debian >"$LOG_DIR/debootstrap-$name.log" 2>&1 ||
    { rm -rf "$root"; die "debootstrap of $name failed (log: $LOG_DIR/debootstrap-$name.log)"; }
  rm -rf "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/etc/nginx/sites-enabled/default
  # the LB is configured by the rendered file alone (host networking: no default :80)
  tar --numeric-owner -C "$root" -cf "$out.tmp" . && mv "$out.tmp" "$out"
  rm -rf "$root"
}

ensure_lb_images() {
  local name tag tar id1 id
  mkdir -p "$LB_IMAGES_DIR"
  rm -rf "$LB_IMAGES_DIR"/rootfs-*   # leftovers of an interrupted build
  for name in "${LB_IMAGES[@]}"; do
    tag=reconcile-test/$name:1
    tar=$LB_IMAGES_DIR/$name.tar
    id1=$(image_id "$DOCKER1" "$tag")
    if [[ -z $id1 ]]; then
      CHANGED=1
      [[ -s $tar ]] || { say "building the $name rootfs (debootstrap, once; cached in $tar)"; make_lb_rootfs "$name" "$tar"; }
      say "importing $tag on dockerd #1"
      docker -H "$DOCKER1" import --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "CMD $(lb_image_cmd "$name")" --message "reconcile test LB image ($name)" \
        "$tar" "$tag" >/dev/null || die "docker import of $tag failed"
      id1=$(image_id "$DOCKER1" "$tag")
    fi
    id=$(image_id "$DOCKER2" "$tag")
    if [[ $id != "$id1" ]]; then
      say "loading $tag into dockerd #2"
      CHANGED=1
      docker -H "$DOCKER1" save "$tag" | docker -H "$DOCKER2" load >/dev/null || die "copying $tag to dockerd #2 failed"
    fi
  done
}

# --- 5. etcd -----------------------------------------------------------------
etcd_healthy() { curl -fsS --max-time 2 "$ETCD/health" 2>/dev/null | grep -q '"health":"true"'; }

# spawn_etcd LOG ARGS...: start etcd detached without the caller's ETCD_* variables
# (etcd reads them as flags), print its pid.
spawn_etcd() {
  local log=$1; shift
  local unset=() v
  for v in $(compgen -e); do [[ $v == ETCD_* ]] && unset+=(-u "$v"); done
  spawn "$log" env "${unset[@]}" etcd "$@"
}

ensure_etcd() {
  etcd_healthy && return 0
  local pid; pid=$(pid_from "$ETCD_PIDFILE")
  if pid_alive "$pid" etcd; then
    say "etcd (pid $pid) is running but not healthy yet; waiting"
    wait_for etcd "$pid" "$LOG_DIR/etcd.log" etcd_healthy
    return 0
  fi
  say "starting etcd on $ETCD"
  CHANGED=1
  # throw-away data dirs of etcds that are gone (e.g. after a reboot)
  rm -rf "$LIB_DIR"/etcd-*
  local data; data=$(mktemp -d "$LIB_DIR/etcd-XXXX")
  echo "$data" >"$ETCD_DATADIR_FILE"
  # Not 2379/2380: a package-started etcd could be there. Metrics stay on the
  # client port.
  pid=$(spawn_etcd "$LOG_DIR/etcd.log" --name reconcile-test --data-dir "$data" \
        --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
        --listen-peer-urls "$ETCD_PEER" --initial-advertise-peer-urls "$ETCD_PEER" \
        --initial-cluster "reconcile-test=$ETCD_PEER" --initial-cluster-state new)
  echo "$pid" >"$ETCD_PIDFILE"
  wait_for etcd "$pid" "$LOG_DIR/etcd.log" etcd_healthy
}

# --- 5b. etcdsec: a secured etcd (TLS, client-cert auth, RBAC) and a 3-member cluster
# Secured etcd on https://127.0.0.1:23791 (peer 23801): --client-cert-auth, auth
# enabled, users `root` and `reconcile-ci` (role reconcile-ci: readwrite on
# /reconcile/sec-ci/ and /services/sleeper_sec-ci/ only). Certificates from a CA made
# once with openssl, cached in $ETCD_TLS (server, root, reconcile-ci, reconcile-nobody
# and a client of another CA). Passwords are generated once and kept beside them.
ETCD_TLS=$LIB_DIR/etcd-tls
ETCD_SECURE=https://127.0.0.1:23791
ETCD_SECURE_PEER=http://127.0.0.1:23801
ETCD_SECURE_PIDFILE=$RUN_DIR/etcd-secure.pid
ETCD_SECURE_DATA=$LIB_DIR/etcd-secure-data
ETCD_CLUSTER_DIR=$LIB_DIR/etcd-cluster

etcd_tls_cert() { # NAME CN CA: key + cert signed by CA (both usages, SAN 127.0.0.1)
  local name=$1 cn=$2 ca=$3
  [[ -s $ETCD_TLS/$name.pem ]] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$ETCD_TLS/$name-key.pem" -subj "/CN=$cn" \
    -out "$ETCD_TLS/$name.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ETCD_TLS/$name.ext"
  openssl x509 -req -in "$ETCD_TLS/$name.csr" -CA "$ETCD_TLS/$ca.pem" -CAkey "$ETCD_TLS/$ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$ETCD_TLS/$name.ext" -out "$ETCD_TLS/$name.pem" 2>/dev/null
  rm -f "$ETCD_TLS/$name.csr" "$ETCD_TLS/$name.ext"
}

ensure_etcd_tls() {
  mkdir -p "$ETCD_TLS"; chmod 700 "$ETCD_TLS"
  local ca
  for ca in ca other-ca; do
    [[ -s $ETCD_TLS/$ca.pem ]] && continue
    CHANGED=1
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=reconcile-test-etcd-$ca" \
      -keyout "$ETCD_TLS/$ca-key.pem" -out "$ETCD_TLS/$ca.pem" 2>/dev/null
  done
  etcd_tls_cert server reconcile-test-etcd ca
  etcd_tls_cert root root ca
  etcd_tls_cert reconcile-ci reconcile-ci ca
  etcd_tls_cert reconcile-nobody reconcile-nobody ca
  etcd_tls_cert other-client reconcile-ci other-ca
  local u
  for u in root reconcile-ci; do
    [[ -s $ETCD_TLS/$u.password ]] || { openssl rand -hex 16 >"$ETCD_TLS/$u.password"; }
  done
}

# etcdctl as root on the secured etcd
etcdctl_secure() {
  ETCDCTL_API=3 etcdctl --endpoints="$ETCD_SECURE" --cacert "$ETCD_TLS/ca.pem" \
    --cert "$ETCD_TLS/root.pem" --key "$ETCD_TLS/root-key.pem" "$@"
}
etcd_secure_healthy() { etcdctl_secure --command-timeout=2s endpoint health; }

ensure_etcd_secure() {
  ensure_etcd_tls
  ensure_etcd_password
  etcd_secure_healthy >/dev/null 2>&1 && return 0
  local pid; pid=$(pid_from "$ETCD_SECURE_PIDFILE")
  if pid_alive "$pid" etcd; then
    wait_for "secured etcd" "$pid" "$LOG_DIR/etcd-secure.log" etcd_secure_healthy
    return 0
  fi
  say "starting the secured etcd on $ETCD_SECURE"
  CHANGED=1
  rm -rf "$ETCD_SECURE_DATA"   # fresh each start: users and roles are made below
  pid=$(spawn_etcd "$LOG_DIR/etcd-secure.log" --name reconcile-secure --data-dir "$ETCD_SECURE_DATA" \
        --listen-client-urls "$ETCD_SECURE" --advertise-client-urls "$ETCD_SECURE" \
        --listen-peer-urls "$ETCD_SECURE_PEER" --initial-advertise-peer-urls "$ETCD_SECURE_PEER" \
        --initial-cluster "reconcile-secure=$ETCD_SECURE_PEER" --initial-cluster-state new \
        --client-cert-auth --trusted-ca-file "$ETCD_TLS/ca.pem" \
        --cert-file "$ETCD_TLS/server.pem" --key-file "$ETCD_TLS/server-key.pem")
  echo "$pid" >"$ETCD_SECURE_PIDFILE"
  wait_for "secured etcd" "$pid" "$LOG_DIR/etcd-secure.log" etcd_secure_healthy
  {
    etcdctl_secure user add "root:$(cat "$ETCD_TLS/root.password")"
    etcdctl_secure user grant-role root root
    etcdctl_secure role add reconcile-ci
    etcdctl_secure role grant-permission --prefix reconcile-ci readwrite /reconcile/sec-ci/
    etcdctl_secure role grant-permission --prefix reconcile-ci readwrite /services/sleeper_sec-ci/
    etcdctl_secure user add "reconcile-ci:$(cat "$ETCD_TLS/reconcile-ci.password")"
    etcdctl_secure user grant-role reconcile-ci reconcile-ci
    etcdctl_secure auth enable
  } >>"$LOG_DIR/etcd-secure.log" 2>&1 || die "cannot set up users on the secured etcd (log: $LOG_DIR/etcd-secure.log)"
}

# Password-only etcd on https://127.0.0.1:23795 (peer 23805): TLS with the server
# certificate only (clients verify it with the CA; no client certificates asked for),
# JWT auth tokens (as production setups use; a token carries the auth-store revision it
# was issued at, so any user/role change makes older tokens fail), auth enabled, users `root` and `reconcile-pw` (role reconcile-pw: readwrite on
# /reconcile/pw-ci/ and /services/sleeper_pw-ci/ only), passwords beside the TLS files.
# Tests that change roles mid-apply make their own users here (tests/it/etcd_secure.rs).
ETCD_PASSWORD=https://127.0.0.1:23795
ETCD_PASSWORD_PEER=http://127.0.0.1:23805
ETCD_PASSWORD_PIDFILE=$RUN_DIR/etcd-password.pid
ETCD_PASSWORD_DATA=$LIB_DIR/etcd-password-data
# etcdctl without a user, for the setup before auth is enabled; the health check is
# etcd's /health, which answers without a user.
etcdctl_password() { ETCDCTL_API=3 etcdctl --endpoints="$ETCD_PASSWORD" --cacert "$ETCD_TLS/ca.pem" "$@"; }
etcd_password_healthy() {
  curl -fsS --max-time 2 --cacert "$ETCD_TLS/ca.pem" "$ETCD_PASSWORD/health" 2>/dev/null | grep -q '"health":"true"'
}

ensure_etcd_password() {
  [[ -s $ETCD_TLS/reconcile-pw.password ]] || openssl rand -hex 16 >"$ETCD_TLS/reconcile-pw.password"
  if [[ ! -s $ETCD_TLS/jwt-pub.pem ]]; then
    openssl genrsa -out "$ETCD_TLS/jwt-key.pem" 2048 2>/dev/null
    openssl rsa -in "$ETCD_TLS/jwt-key.pem" -pubout -out "$ETCD_TLS/jwt-pub.pem" 2>/dev/null
  fi
  etcd_password_healthy >/dev/null 2>&1 && return 0
  local pid; pid=$(pid_from "$ETCD_PASSWORD_PIDFILE")
  if pid_alive "$pid" etcd; then
    wait_for "password-only etcd" "$pid" "$LOG_DIR/etcd-password.log" etcd_password_healthy
    return 0
  fi
  say "starting the password-only etcd on $ETCD_PASSWORD"
  CHANGED=1
  rm -rf "$ETCD_PASSWORD_DATA"   # fresh each start: users and roles are made below
  pid=$(spawn_etcd "$LOG_DIR/etcd-password.log" --name reconcile-password --data-dir "$ETCD_PASSWORD_DATA" \
        --listen-client-urls "$ETCD_PASSWORD" --advertise-client-urls "$ETCD_PASSWORD" \
        --listen-peer-urls "$ETCD_PASSWORD_PEER" --initial-advertise-peer-urls "$ETCD_PASSWORD_PEER" \
        --initial-cluster "reconcile-password=$ETCD_PASSWORD_PEER" --initial-cluster-state new \
        --cert-file "$ETCD_TLS/server.pem" --key-file "$ETCD_TLS/server-key.pem" \
        --auth-token "jwt,pub-key=$ETCD_TLS/jwt-pub.pem,priv-key=$ETCD_TLS/jwt-key.pem,sign-method=RS256,ttl=10m")
  echo "$pid" >"$ETCD_PASSWORD_PIDFILE"
  wait_for "password-only etcd" "$pid" "$LOG_DIR/etcd-password.log" etcd_password_healthy
  {
    etcdctl_password user add "root:$(cat "$ETCD_TLS/root.password")"
    etcdctl_password user grant-role root root
    etcdctl_password role add reconcile-pw
    etcdctl_password role grant-permission --prefix reconcile-pw readwrite /reconcile/pw-ci/
    etcdctl_password role grant-permission --prefix reconcile-pw readwrite /services/sleeper_pw-ci/
    etcdctl_password user add "reconcile-pw:$(cat "$ETCD_TLS/reconcile-pw.password")"
    etcdctl_password user grant-role reconcile-pw reconcile-pw
    etcdctl_password auth enable
  } >>"$LOG_DIR/etcd-password.log" 2>&1 || die "cannot set up users on the password-only etcd (log: $LOG_DIR/etcd-password.log)"
}

# Three members on loopback: clients 23792-23794, peers 23802-23804, persistent data
# dirs (a killed member rejoins with its data). `etcd-cluster` (re)starts missing ones.
ETCD_CLUSTER_INITIAL=m1=http://127.0.0.1:23802,m2=http://127.0.0.1:23803,m3=http://127.0.0.1:23804
etcd_member_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$((23791 + $1))/health" 2>/dev/null | grep -q '"health":"true"'; }

ensure_etcd_cluster() {
  local i pid started=()
  mkdir -p "$ETCD_CLUSTER_DIR"
  for i in 1 2 3; do
    pid=$(pid_from "$RUN_DIR/etcd-m$i.pid")
    pid_alive "$pid" etcd && continue
    CHANGED=1
    say "starting etcd cluster member m$i on 127.0.0.1:$((23791 + i))"
    pid=$(spawn_etcd "$LOG_DIR/etcd-m$i.log" --name "m$i" --data-dir "$ETCD_CLUSTER_DIR/m$i" \
          --listen-client-urls "http://127.0.0.1:$((23791 + i))" --advertise-client-urls "http://127.0.0.1:$((23791 + i))" \
          --listen-peer-urls "http://127.0.0.1:$((23801 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((23801 + i))" \
          --initial-cluster "$ETCD_CLUSTER_INITIAL" --initial-cluster-state new --initial-cluster-token reconcile-test \
          --heartbeat-interval 100 --election-timeout 1000)
    echo "$pid" >"$RUN_DIR/etcd-m$i.pid"
    started+=("$i:$pid")
  done
  local e
  for e in "${started[@]}"; do
    wait_for "etcd member m${e%%:*}" "${e#*:}" "$LOG_DIR/etcd-m${e%%:*}.log" etcd_member_healthy "${e%%:*}"
  done
}

stop_etcdsec() {
  local i
  for i in 1 2 3; do stop_pid "etcd m$i" "$(pid_from "$RUN_DIR/etcd-m$i.pid")" etcd; rm -f "$RUN_DIR/etcd-m$i.pid"; done
  stop_pid "secured etcd" "$(pid_from "$ETCD_SECURE_PIDFILE")" etcd
  rm -rf "$ETCD_SECURE_DATA"; rm -f "$ETCD_SECURE_PIDFILE"
  stop_pid "password-only etcd" "$(pid_from "$ETCD_PASSWORD_PIDFILE")" etcd
  rm -rf "$ETCD_PASSWORD_DATA"; rm -f "$ETCD_PASSWORD_PIDFILE"
}

write_env_etcdsec() {
  echo "export RECONCILE_TEST_ETCD_SECURE=$ETCD_SECURE"
  echo "export RECONCILE_TEST_ETCD_TLS=$ETCD_TLS"
  echo "export RECONCILE_TEST_ETCD_PASSWORD=$ETCD_PASSWORD"
  echo "export RECONCILE_TEST_ETCD_CLUSTER=http://127.0.0.1:23792,http://127.0.0.1:23793,http://127.0.0.1:23794"
}

# --- 6. nginx / haproxy: binaries only, no package-started default instance --
ensure_no_default_nginx() {
  command -v nginx >/dev/null || die "nginx not on PATH"
  command -v haproxy >/dev/null || die "haproxy not on PATH"
  # Only the packaged config uses /run/nginx.pid; test instances use their own.
  local pid; pid=$(pid_from /run/nginx.pid)
  if pid_alive "$pid" nginx; then
    say "stopping the package-started nginx (pid $pid, default config, port 80)"
    CHANGED=1
    kill -QUIT "$pid" 2>/dev/null || true
    local i; for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
  fi
}

# --- 7. sshd for the ssh:// transport (tests/it/ssh.rs) ---------------------
# Our own sshd instance on 127.0.0.1:$SSH_PORT (Debian's service is never started:
# ensure_packages installs under policy-rc.d), root logs in with a key of its own.
# The Docker client library cannot take a port in ssh://HOST:PORT, so clients reach it
# through the alias $SSH_ALIAS in the system-wide ssh config (OpenSSH reads the
# user's config from the passwd home, not $HOME; root's ~/.ssh is left alone).
# Keys, known_hosts and config live in $SSH_DIR and are created once.

# ensure_file PATH MODE CONTENT: write PATH (with a final newline) only when its
# content differs; returns 0 if it wrote.
ensure_file() {
  local path=$1 mode=$2 want=$3
  if [[ -f $path && $(cat "$path") == "$want" ]]; then chmod "$mode" "$path"; return 1; fi
  say "writing $path"
  printf '%s\n' "$want" >"$path.tmp" && chmod "$mode" "$path.tmp" && mv "$path.tmp" "$path"
  CHANGED=1
}

# sshd_answers: something on the port speaks SSH (reads the server's banner).
sshd_answers() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT && head -c 4 <&3" 2>/dev/null | grep -q '^SSH-'
}

# ssh_docker_api: the API version of dockerd #1 (the remote side's default socket),
# asked through the alias, as the ssh transport's `docker system dial-stdio` reaches it.
ssh_docker_api() {
  timeout 15 ssh "$SSH_ALIAS" docker version --format "'{{.Server.APIVersion}}'"
}

ensure_ssh() {
  [[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd missing (package openssh-server)"
  install -d -m 700 "$SSH_DIR"
  install -d -m 755 /run/sshd                  # privilege separation directory
  local key
  for key in ssh_host_ed25519_key id_ed25519; do
    [[ -f $SSH_DIR/$key && -f $SSH_DIR/$key.pub ]] && continue
    say "generating $SSH_DIR/$key"
    CHANGED=1
    rm -f "$SSH_DIR/$key" "$SSH_DIR/$key.pub"
    ssh-keygen -q -t ed25519 -N '' -C "reconcile-test-$key" -f "$SSH_DIR/$key" >/dev/null
  done
  ensure_file "$SSH_DIR/authorized_keys" 600 "$(cat "$SSH_DIR/id_ed25519.pub")" || true
  # Pre-seeded, so the client checks the host key strictly from the first connection.
  ensure_file "$SSH_DIR/known_hosts" 600 \
    "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")" || true
  local config_changed=0
  ensure_file "$SSH_CONFIG" 600 "# written by scripts/test-env.sh: the test environment's own sshd
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $SSH_DIR/ssh_host_ed25519_key
AuthorizedKeysFile $SSH_DIR/authorized_keys
PidFile $SSH_PIDFILE
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
X11Forwarding no
PrintMotd no
PrintLastLog no" && config_changed=1
  ensure_file "$SSH_CLIENT_CONFIG" 644 "# written by scripts/test-env.sh: the test environment's sshd (ssh://$SSH_ALIAS)
Host $SSH_ALIAS
  HostName 127.0.0.1
  Port $SSH_PORT
  User root
  IdentityFile $SSH_DIR/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SSH_DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes" || true
  grep -qsE '^[[:space:]]*Include[[:space:]]+/etc/ssh/ssh_config\.d/\*\.conf' /etc/ssh/ssh_config ||
    die "/etc/ssh/ssh_config does not include /etc/ssh/ssh_config.d/*.conf (needed for $SSH_ALIAS)"
  /usr/sbin/sshd -t -f "$SSH_CONFIG" || die "sshd -t -f $SSH_CONFIG failed"

  local pid; pid=$(pid_from "$SSH_PIDFILE")
  if sshd_answers; then
    if ((config_changed)) && pid_alive "$pid" sshd; then
      say "sshd config changed; reloading sshd (pid $pid)"
      kill -HUP "$pid"
      sleep 0.5
      wait_for sshd "" "$LOG_DIR/sshd.log" sshd_answers
    fi
  elif pid_alive "$pid" sshd; then
    say "sshd (pid $pid) is running but not answering yet; waiting"
    wait_for sshd "$pid" "$LOG_DIR/sshd.log" sshd_answers
  else
    say "starting sshd on 127.0.0.1:$SSH_PORT"
    CHANGED=1
    # -D: stay in the foreground (spawn detaches it); -e: log to stderr = the log file.
    pid=$(spawn "$LOG_DIR/sshd.log" /usr/sbin/sshd -D -e -f "$SSH_CONFIG")
    wait_for sshd "$pid" "$LOG_DIR/sshd.log" sshd_answers
  fi
  if ! SSH_API=$(ssh_docker_api 2>"$RUN_DIR/ssh-check.err"); then
    echo "--- ssh $SSH_ALIAS docker version ---" >&2; cat "$RUN_DIR/ssh-check.err" >&2
    echo "--- last lines of $LOG_DIR/sshd.log ---" >&2; tail -n 25 "$LOG_DIR/sshd.log" >&2
    die "ssh $SSH_ALIAS docker version failed (sshd log: $LOG_DIR/sshd.log)"
  fi
  rm -f "$RUN_DIR/ssh-check.err"
}

# --- 7b. test CA, TLS dockerd #3, private registry ---------------------------
# ensure_tls: a test CA, a server cert for 127.0.0.1 (dockerd #3 and the registry)
# and a client cert; plus a SECOND CA with its own client cert, which dockerd #3
# must refuse. Made once with openssl, kept under $TLS_DIR.
tls_cert() {  # tls_cert DIR NAME CA_DIR EXT: key + cert signed by CA_DIR's ca
  local dir=$1 name=$2 ca=$3 ext=$4
  openssl genrsa -out "$dir/$name-key.pem" 2048 2>/dev/null
  openssl req -new -key "$dir/$name-key.pem" -subj "/CN=reconcile-test-$name" -out "$dir/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca-key.pem" -CAcreateserial \
    -days 3650 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}
tls_ca() {  # tls_ca DIR CN
  mkdir -p "$1"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj "/CN=$2" \
    -keyout "$1/ca-key.pem" -out "$1/ca.pem" 2>/dev/null
}
ensure_tls() {
  [[ -s $TLS_DIR/client.pem && -s $TLS_DIR/other/client.pem ]] && return 0
  say "making the test CA and certificates in $TLS_DIR"
  CHANGED=1
  rm -rf "$TLS_DIR"; mkdir -p "$TLS_DIR"
  tls_ca "$TLS_DIR" reconcile-test-ca
  tls_cert "$TLS_DIR" server "$TLS_DIR" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
  tls_cert "$TLS_DIR" client "$TLS_DIR" "extendedKeyUsage=clientAuth"
  tls_ca "$TLS_DIR/other" reconcile-test-other-ca
  tls_cert "$TLS_DIR/other" client "$TLS_DIR/other" "extendedKeyUsage=clientAuth"
  # the docker CLI's DOCKER_CERT_PATH layout, for this script's own calls
  mkdir -p "$TLS_DIR/cli"
  cp "$TLS_DIR/ca.pem" "$TLS_DIR/cli/ca.pem"
  cp "$TLS_DIR/client.pem" "$TLS_DIR/cli/cert.pem"
  cp "$TLS_DIR/client-key.pem" "$TLS_DIR/cli/key.pem"
  chmod 600 "$TLS_DIR"/*-key.pem "$TLS_DIR"/other/*-key.pem "$TLS_DIR/cli/key.pem"
}

docker3() { DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$TLS_DIR/cli docker -H "$DOCKER3" "$@"; }
docker3_api() {
  DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$TLS_DIR/cli timeout 5 docker -H "$DOCKER3" version --format '{{.Server.APIVersion}}' 2>/dev/null
}

# ensure_docker3: a third dockerd that listens ONLY on tcp://127.0.0.1:23761 with
# --tlsverify (client certificates of the test CA); state, bridge and containerd
# of its own, as dockerd #2.
ensure_docker3() {
  if ! docker3_api >/dev/null; then
    local pid; pid=$(pid_from "$DOCKER3_PIDFILE")
    if pid_alive "$pid" dockerd; then
      wait_for "dockerd #3" "$pid" "$LOG_DIR/docker3.log" docker3_api
    else
      say "starting dockerd #3 (TLS) on $DOCKER3"
      CHANGED=1
      mkdir -p "$LIB_DIR/docker3"
      if ! ip link show "$DOCKER3_BRIDGE" >/dev/null 2>&1; then
        ip link add "$DOCKER3_BRIDGE" type bridge
        ip addr add "$DOCKER3_BRIDGE_ADDR" dev "$DOCKER3_BRIDGE"
        ip link set "$DOCKER3_BRIDGE" up
      fi
      local want="{\"deprecated-key-path\": \"$LIB_DIR/docker3/key.json\"}"
      [[ -f $DOCKER3_CONFIG && $(cat "$DOCKER3_CONFIG") == "$want" ]] || echo "$want" >"$DOCKER3_CONFIG"
      pid=$(spawn "$LOG_DIR/docker3.log" dockerd \
            --config-file "$DOCKER3_CONFIG" \
            --host "$DOCKER3" --tlsverify \
            --tlscacert "$TLS_DIR/ca.pem" --tlscert "$TLS_DIR/server.pem" --tlskey "$TLS_DIR/server-key.pem" \
            --data-root "$LIB_DIR/docker3" \
            --exec-root "$RUN_DIR/docker3-exec" \
            --pidfile "$DOCKER3_PIDFILE" \
            --bridge="$DOCKER3_BRIDGE" --iptables=false --ip-masq=false --ip-forward=false)
      wait_for "dockerd #3" "$pid" "$LOG_DIR/docker3.log" docker3_api
    fi
  fi
  local v tag
  for v in "${IMAGE_VERSIONS[@]}"; do
    tag=$IMAGE_REPO:$v
    [[ $(docker3 image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true) == "$(image_id "$DOCKER1" "$tag")" ]] && continue
    say "loading $tag into dockerd #3"
    CHANGED=1
    docker -H "$DOCKER1" save "$tag" | docker3 load >/dev/null || die "copying $tag to dockerd #3 failed"
  done
}

registry_answers() { curl -s -o /dev/null -w '%{http_code}' --cacert "$TLS_DIR/ca.pem" "https://$REGISTRY/v2/" | grep -q 401; }

# ensure_registry: Debian's docker-registry on $REGISTRY with TLS (the test CA's
# server cert) and htpasswd (bcrypt) auth; every daemon trusts the CA through
# /etc/docker/certs.d/$REGISTRY/ca.crt (read per pull, no restart needed). The
# test images are pushed as $REGISTRY/$IMAGE_REPO:1 and :2 after a `docker login`
# into a throwaway DOCKER_CONFIG.
ensure_registry() {
  mkdir -p "$REGISTRY_DIR/data" "/etc/docker/certs.d/$REGISTRY"
  cmp -s "$TLS_DIR/ca.pem" "/etc/docker/certs.d/$REGISTRY/ca.crt" ||
    cp "$TLS_DIR/ca.pem" "/etc/docker/certs.d/$REGISTRY/ca.crt"
  if [[ ! -s $REGISTRY_DIR/password ]]; then
    CHANGED=1
    openssl rand -hex 16 >"$REGISTRY_DIR/password"
    chmod 600 "$REGISTRY_DIR/password"
    rm -f "$REGISTRY_DIR/htpasswd"
  fi
  [[ -s $REGISTRY_DIR/htpasswd ]] ||
    htpasswd -Bbc "$REGISTRY_DIR/htpasswd" "$REGISTRY_USER" "$(cat "$REGISTRY_DIR/password")" 2>/dev/null
  cat >"$REGISTRY_DIR/config.yml.tmp" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $REGISTRY_DIR/data}
  delete: {enabled: true}
http:
  addr: $REGISTRY
  tls: {certificate: $TLS_DIR/server.pem, key: $TLS_DIR/server-key.pem}
auth:
  htpasswd: {realm: reconcile-test, path: $REGISTRY_DIR/htpasswd}
EOF
  mv "$REGISTRY_DIR/config.yml.tmp" "$REGISTRY_DIR/config.yml"
  if ! registry_answers; then
    local pid; pid=$(pid_from "$REGISTRY_PIDFILE")
    pid_alive "$pid" docker-registry && kill -TERM "$pid" && sleep 0.5
    say "starting docker-registry on $REGISTRY (TLS, htpasswd)"
    CHANGED=1
    pid=$(spawn "$LOG_DIR/registry.log" docker-registry serve "$REGISTRY_DIR/config.yml")
    echo "$pid" >"$REGISTRY_PIDFILE"
    wait_for docker-registry "$pid" "$LOG_DIR/registry.log" registry_answers
  fi
  local cfg v pushed=1
  for v in "${IMAGE_VERSIONS[@]}"; do
    curl -fs -o /dev/null --cacert "$TLS_DIR/ca.pem" -u "$REGISTRY_USER:$(cat "$REGISTRY_DIR/password")" \
      "https://$REGISTRY/v2/$IMAGE_REPO/manifests/$v" \
      -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' || pushed=0
  done
  ((pushed)) && return 0
  say "pushing $IMAGE_REPO:1 and :2 to $REGISTRY"
  CHANGED=1
  cfg=$(mktemp -d)
  docker --config "$cfg" -H "$DOCKER1" login -u "$REGISTRY_USER" --password-stdin "$REGISTRY" \
    <"$REGISTRY_DIR/password" >/dev/null 2>"$LOG_DIR/registry-push.log" || { rm -rf "$cfg"; die "docker login $REGISTRY failed (log: $LOG_DIR/registry-push.log)"; }
  for v in "${IMAGE_VERSIONS[@]}"; do
    docker -H "$DOCKER1" tag "$IMAGE_REPO:$v" "$REGISTRY/$IMAGE_REPO:$v"
    docker --config "$cfg" -H "$DOCKER1" push "$REGISTRY/$IMAGE_REPO:$v" >>"$LOG_DIR/registry-push.log" 2>&1 ||
      { rm -rf "$cfg"; die "docker push $REGISTRY/$IMAGE_REPO:$v failed (log: $LOG_DIR/registry-push.log)"; }
    docker -H "$DOCKER1" rmi "$REGISTRY/$IMAGE_REPO:$v" >/dev/null
  done
  rm -rf "$cfg"
}

# --- 7c. check-jsonschema (tests/it/ci_examples.rs) ---------------------------
# The examples/ci/ pipelines are checked against the public workflow schemas that
# check-jsonschema ships (--builtin-schema vendor.github-workflows / vendor.gitlab-ci),
# so no schema is fetched at test time. Installed from PyPI into a venv under
# $LIB_DIR, once: a re-run only reads the .installed marker.
CHECK_JSONSCHEMA_VENV=$LIB_DIR/check-jsonschema
CHECK_JSONSCHEMA=$CHECK_JSONSCHEMA_VENV/bin/check-jsonschema
CHECK_JSONSCHEMA_VERSION=0.39.0
ensure_check_jsonschema() {
  # .installed is written last, so an interrupted install is redone from scratch
  if [[ -f $CHECK_JSONSCHEMA_VENV/.installed && $(cat "$CHECK_JSONSCHEMA_VENV/.installed") == "$CHECK_JSONSCHEMA_VERSION" ]]; then
    return 0
  fi
  say "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION (PyPI) into $CHECK_JSONSCHEMA_VENV"
  CHANGED=1
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv; } \
      >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get install python3-venv failed (log: $LOG_DIR/apt.log)"
  fi
  rm -rf "$CHECK_JSONSCHEMA_VENV"
  { python3 -m venv "$CHECK_JSONSCHEMA_VENV" &&
    "$CHECK_JSONSCHEMA_VENV/bin/pip" install -q --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"; } \
    >"$LOG_DIR/check-jsonschema.log" 2>&1 ||
    { tail -n 20 "$LOG_DIR/check-jsonschema.log" >&2; die "pip install check-jsonschema failed (log: $LOG_DIR/check-jsonschema.log)"; }
  "$CHECK_JSONSCHEMA" --version >/dev/null || die "$CHECK_JSONSCHEMA does not run"
  echo "$CHECK_JSONSCHEMA_VERSION" >"$CHECK_JSONSCHEMA_VENV/.installed"
}

# `man -l` renders `reconcile man` (tests/it/completions.rs); node runs the GitHub
# workflow's comment step (tests/it/ci_examples.rs). Debian packages, when missing.
ensure_man_and_node() {
  local need=()
  command -v man >/dev/null || need+=(man-db)
  command -v node >/dev/null || need+=(nodejs)
  ((${#need[@]})) || return 0
  say "installing ${need[*]}"
  CHANGED=1
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
    >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get install ${need[*]} failed (log: $LOG_DIR/apt.log)"
}

# Headless Chromium renders the status page in tests/it/status_page.rs (--dump-dom and
# --screenshot; no chromium-driver). Debian's package, when missing.
ensure_chromium() {
  command -v chromium >/dev/null && return 0
  say "installing chromium"
  CHANGED=1
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } \
    >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get install chromium failed (log: $LOG_DIR/apt.log)"
}

# --- 8. env file + summary ---------------------------------------------------
write_env() {
  local want
  want=$(cat <<EOF
# written by scripts/test-env.sh; source it: . $ENV_FILE
export RECONCILE_TEST_DOCKER1=$DOCKER1
export RECONCILE_TEST_DOCKER2=$DOCKER2
export RECONCILE_TEST_ETCD=$ETCD
export RECONCILE_TEST_SSH=$SSH
export RECONCILE_TEST_IMAGE=$IMAGE_REPO:1
export RECONCILE_TEST_IMAGE2=$IMAGE_REPO:2
$(write_env_etcdsec)
export RECONCILE_TEST_DOCKER_TLS=$DOCKER3
export RECONCILE_TEST_TLS_CA=$TLS_DIR/ca.pem
export RECONCILE_TEST_TLS_CERT=$TLS_DIR/client.pem
export RECONCILE_TEST_TLS_KEY=$TLS_DIR/client-key.pem
export RECONCILE_TEST_TLS_OTHER_CERT=$TLS_DIR/other/client.pem
export RECONCILE_TEST_TLS_OTHER_KEY=$TLS_DIR/other/client-key.pem
export RECONCILE_TEST_REGISTRY=$REGISTRY
export RECONCILE_TEST_REGISTRY_USER=$REGISTRY_USER
export RECONCILE_TEST_REGISTRY_PASSWORD_FILE=$REGISTRY_DIR/password
export RECONCILE_TEST_CHECK_JSONSCHEMA=$CHECK_JSONSCHEMA
EOF
)
  if [[ ! -f $ENV_FILE || $(cat "$ENV_FILE") != "$want" ]]; then
    printf '%s\n' "$want" >"$ENV_FILE.tmp" && mv "$ENV_FILE.tmp" "$ENV_FILE"
  fi
}

summary() {
  say "ready$( ((CHANGED)) && echo ' (changed something)' || echo ' (nothing changed)')"
  echo "  dockerd:  $(dockerd --version)"
  echo "  docker1:  $DOCKER1  API $(docker_api "$DOCKER1")"
  echo "  docker2:  $DOCKER2  API $(docker_api "$DOCKER2")"
  echo "  etcd:     $(etcd --version | head -n1)  at $ETCD"
  echo "  ssh:      $SSH  (sshd on 127.0.0.1:$SSH_PORT, docker1 through it: API $SSH_API)"
  echo "  nginx:    $(nginx -v 2>&1)"
  echo "  haproxy:  $(haproxy -v | head -n1)"
  echo "  images:   $IMAGE_REPO:1 $IMAGE_REPO:2 (on all three daemons)"
  echo "  docker3:  $DOCKER3 (--tlsverify, test CA in $TLS_DIR)  API $(docker3_api)"
  echo "  registry: $REGISTRY (TLS, htpasswd user $REGISTRY_USER): $IMAGE_REPO:1 :2"
  echo "  docs:     $(cmark-gfm --version | head -n1), yaml-language-server $YAML_LS_VERSION in $YAML_LS_DIR"
  echo "  env:      . $ENV_FILE"
}

# --- smoke tests (`check`, and automatically after a run that changed things) -
smoke() {
  local tmp port1=18471 port2=18472 c1 c2 ok=1
  tmp=$(mktemp -d)
  # both daemons serve HTTP with host networking at the same time, under --init
  c1=$(docker -H "$DOCKER1" run -d --init --network host "$IMAGE_REPO:1" \
        httpd -f -p 127.0.0.1:$port1 -h /var/www)
  c2=$(docker -H "$DOCKER2" run -d --init --network host "$IMAGE_REPO:2" \
        httpd -f -p 127.0.0.1:$port2 -h /var/www)
  local i; for i in $(seq 50); do
    curl -fs "http://127.0.0.1:$port1/" >/dev/null && curl -fs "http://127.0.0.1:$port2/" >/dev/null && break
    sleep 0.1
  done
  [[ $(curl -fsS "http://127.0.0.1:$port1/") == "reconcile-test busybox 1" ]] || { ok=0; echo "smoke: docker1 httpd failed" >&2; }
  [[ $(curl -fsS "http://127.0.0.1:$port2/") == "reconcile-test busybox 2" ]] || { ok=0; echo "smoke: docker2 httpd failed" >&2; }
  [[ $(docker -H "$DOCKER1" exec "$c1" ps -o comm | sed -n 2p) == docker-init ]] || { ok=0; echo "smoke: --init: pid 1 is not docker-init" >&2; }
  docker -H "$DOCKER1" rm -f "$c1" >/dev/null; docker -H "$DOCKER2" rm -f "$c2" >/dev/null
  # nginx and haproxy with configs outside their default paths
  cat >"$tmp/nginx.conf" <<EOF
pid $tmp/nginx.pid;
error_log stderr;
events {}
http { access_log off; server { listen 127.0.0.1:18473; return 200 "ok\n"; } }
EOF
  nginx -t -q -e stderr -c "$tmp/nginx.conf" || { ok=0; echo "smoke: nginx -t failed" >&2; }
  cat >"$tmp/haproxy.cfg" <<EOF
global
  pidfile $tmp/haproxy.pid
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend fe
  bind 127.0.0.1:18474
  default_backend be
backend be
  server s1 127.0.0.1:18471
EOF
  haproxy -c -q -f "$tmp/haproxy.cfg" || { ok=0; echo "smoke: haproxy -c failed" >&2; }
  # etcd read/write
  local got=
  if ETCDCTL_API=3 etcdctl --endpoints="$ETCD" put /reconcile-test/smoke ok >/dev/null; then
    got=$(ETCDCTL_API=3 etcdctl --endpoints="$ETCD" get --print-value-only /reconcile-test/smoke)
    ETCDCTL_API=3 etcdctl --endpoints="$ETCD" del /reconcile-test/smoke >/dev/null
  fi
  [[ $got == ok ]] || { ok=0; echo "smoke: etcdctl put/get failed" >&2; }
  # dockerd #3 answers over TLS and refuses another CA's client cert; the registry
  # wants credentials and takes the test user's
  docker3_api >/dev/null || { ok=0; echo "smoke: dockerd #3 over TLS failed" >&2; }
  if DOCKER_TLS_VERIFY=1 timeout 5 docker -H "$DOCKER3" --tlscacert "$TLS_DIR/ca.pem" \
       --tlscert "$TLS_DIR/other/client.pem" --tlskey "$TLS_DIR/other/client-key.pem" version >/dev/null 2>&1; then
    ok=0; echo "smoke: dockerd #3 accepted a client cert of another CA" >&2
  fi
  registry_answers || { ok=0; echo "smoke: the registry does not ask for credentials" >&2; }
  curl -fs -o /dev/null --cacert "$TLS_DIR/ca.pem" -u "$REGISTRY_USER:$(cat "$REGISTRY_DIR/password")" \
    "https://$REGISTRY/v2/" || { ok=0; echo "smoke: the registry refused the test user" >&2; }
  rm -rf "$tmp"
  ((ok)) || die "smoke tests failed"
  say "smoke tests passed (host-network httpd on both daemons, --init, nginx -t, haproxy -c, etcd, TLS dockerd, registry)"
}

# --- bench daemons (`bench-daemons N`; benchmarks only, never started by `up`) ---
# bench-docker-K: own socket, data-root, exec-root (so its own containerd), pidfile,
# engine-ID key, and bridge rt-bench-K on 172.30.K.0/24 with iptables, masquerading
# and ip_forward left alone (as dockerd #2; benchmarks use host networking). The
# images are copied from dockerd #1 with save | load (same IDs everywhere).
BENCH_MAX=32
bench_sock() { echo "$RUN_DIR/bench-docker-$1.sock"; }
bench_pidfile() { echo "$RUN_DIR/bench-docker-$1.pid"; }

ensure_bench_daemon() {
  local k=$1 host sock pidfile dir cfg want bridge pid tag
  sock=$(bench_sock "$k"); host=unix://$sock; pidfile=$(bench_pidfile "$k")
  dir=$LIB_DIR/bench-docker-$k; cfg=$LIB_DIR/bench-docker-$k.json; bridge=rt-bench-$k
  if ! docker_api "$host" >/dev/null; then
    pid=$(pid_from "$pidfile")
    if pid_alive "$pid" dockerd; then
      wait_for "bench-docker-$k" "$pid" "$LOG_DIR/bench-docker-$k.log" docker_api "$host"
    else
      say "starting bench-docker-$k on $host"
      mkdir -p "$dir"
      ip link show "$bridge" >/dev/null 2>&1 || {
        ip link add "$bridge" type bridge
        ip addr add "172.30.$k.1/24" dev "$bridge"
        ip link set "$bridge" up
      }
      want="{\"deprecated-key-path\": \"$dir/key.json\"}"
      [[ -f $cfg && $(cat "$cfg") == "$want" ]] || echo "$want" >"$cfg"
      start_dockerd "bench-docker-$k" "$host" "$LOG_DIR/bench-docker-$k.log" \
        --config-file "$cfg" --host "$host" --data-root "$dir" \
        --exec-root "$RUN_DIR/bench-docker-$k-exec" --pidfile "$pidfile" \
        --bridge="$bridge" --iptables=false --ip-masq=false --ip-forward=false >/dev/null
    fi
  fi
  for tag in "${IMAGE_VERSIONS[@]/#/$IMAGE_REPO:}"; do
    [[ $(image_id "$host" "$tag") == "$(image_id "$DOCKER1" "$tag")" ]] && continue
    say "loading $tag into bench-docker-$k"
    docker -H "$DOCKER1" save "$tag" | docker -H "$host" load >/dev/null ||
      die "copying $tag to bench-docker-$k failed"
  done
}

do_bench_daemons() {
  local n=${1:-} k
  [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= BENCH_MAX)) ||
    die "usage: $0 bench-daemons N (N from 1 to $BENCH_MAX, e.g. 8)"
  [[ -n $(image_id "$DOCKER1" "$IMAGE_REPO:1") ]] || die "no $IMAGE_REPO:1 on dockerd #1: run $0 up first"
  for ((k = 1; k <= n; k++)); do ensure_bench_daemon "$k"; done
  for ((k = 1; k <= n; k++)); do echo "unix://$(bench_sock "$k")"; done
}

stop_bench_daemons() {
  local f k
  for f in "$RUN_DIR"/bench-docker-*.pid; do
    [[ -e $f ]] || continue
    k=${f##*/bench-docker-}; k=${k%.pid}
    stop_pid "bench-docker-$k" "$(pid_from "$f")" dockerd
    unmount_leftovers "$RUN_DIR/bench-docker-$k-exec/netns/default" "$LIB_DIR/bench-docker-$k"
    ip link del "rt-bench-$k" 2>/dev/null || true
    rm -f "$f"
  done
}

# --- stop --------------------------------------------------------------------
# stop_pid NAME PID COMM: SIGTERM and wait (dockerd stops its containers and
# its managed containerd first, hence the generous wait).
stop_pid() {
  local name=$1 pid=$2 comm=$3 i
  pid_alive "$pid" "$comm" || return 0
  say "stopping $name (pid $pid)"
  kill -TERM "$pid"
  for ((i = 0; i < 300; i++)); do pid_alive "$pid" "$comm" || return 0; sleep 0.1; done
  die "$name (pid $pid) did not stop within 30 s"
}

# unmount_leftovers DIR...: dockerd bind-mounts its data-root onto itself and
# mounts <exec-root>/netns/default, and leaves both behind when it exits; undo
# that for daemons we stopped, so their directories can be removed.
unmount_leftovers() {
  local d
  for d in "$@"; do
    if grep -q " $d " /proc/mounts; then umount "$d" 2>/dev/null || umount -l "$d" || true; fi
  done
}

do_stop() {
  stop_pid docker-registry "$(pid_from "$REGISTRY_PIDFILE")" docker-registry
  rm -f "$REGISTRY_PIDFILE"
  stop_pid "dockerd #3" "$(pid_from "$DOCKER3_PIDFILE")" dockerd
  unmount_leftovers "$RUN_DIR/docker3-exec/netns/default" "$LIB_DIR/docker3"
  ip link del "$DOCKER3_BRIDGE" 2>/dev/null || true
  stop_bench_daemons
  stop_pid "dockerd #2" "$(pid_from "$DOCKER2_PIDFILE")" dockerd
  unmount_leftovers "$RUN_DIR/docker2-exec/netns/default" "$LIB_DIR/docker2"
  ip link del "$DOCKER2_BRIDGE" 2>/dev/null || true
  stop_pid etcd "$(pid_from "$ETCD_PIDFILE")" etcd
  stop_etcdsec
  if [[ -f $ETCD_DATADIR_FILE ]]; then
    rm -rf "$(cat "$ETCD_DATADIR_FILE")"; rm -f "$ETCD_DATADIR_FILE"
  fi
  rm -f "$ETCD_PIDFILE"
  # keys, configs and the client alias stay (stable host key across runs)
  stop_pid sshd "$(pid_from "$SSH_PIDFILE")" sshd
  rm -f "$SSH_PIDFILE"
  if [[ -f $DOCKER1_OURS ]]; then
    stop_pid "dockerd #1" "$(pid_from "$DOCKER1_OURS")" dockerd
    unmount_leftovers /run/docker/netns/default /var/lib/docker
    rm -f "$DOCKER1_OURS"
  else
    say "dockerd #1 was not started by this script; leaving it alone"
  fi
  rm -f "$ENV_FILE"
  say "stopped"
}

# --- main --------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "must run as root"
mkdir -p "$RUN_DIR" "$LOG_DIR" "$LIB_DIR"
# serialise concurrent runs (e.g. several test binaries calling this at once)
exec 9>>"$RUN_DIR/.lock"
flock -w 120 9 || die "another test-env.sh run holds $RUN_DIR/.lock"

case ${1:-up} in
  up|check)
    ensure_packages
    ensure_doc_tools
    ensure_no_default_nginx
    ensure_docker1
    ensure_docker2
    ensure_etcd
    ensure_etcd_secure
    ensure_etcd_cluster
    ensure_images
    ensure_lb_images
    ensure_ssh
    ensure_tls
    ensure_docker3
    ensure_registry
    ensure_check_jsonschema
    ensure_man_and_node
    ensure_chromium
    write_env
    if [[ ${1:-up} == check ]] || ((CHANGED)); then smoke; fi
    summary
    ;;
  stop) do_stop ;;
  etcd-cluster) ensure_etcd_cluster ;;   # restart killed members (tests/it/etcd_cluster.rs)
  etcdsec) ensure_packages; ensure_etcd_secure; ensure_etcd_cluster ;;   # only these, env file untouched
  lb-images) ensure_lb_images ;;   # only the LB images (tests/it/lb_multi.rs)
  bench-daemons) do_bench_daemons "${2:-}" ;;
  bench-daemons-stop) stop_bench_daemons ;;
  *) die "usage: $0 [up|check|stop|etcd-cluster|etcdsec|bench-daemons N|bench-daemons-stop]" ;;
esac
