#!/usr/bin/env bash
# swarm-lab.sh -- three (LAB_NODES) Docker daemons on this one machine, each in
# its own network, mount and UTS namespace with its own containerd, joined into
# one Docker Swarm (node 1 manager, the others workers), for end-to-end tests of
# multi-host network drivers. Nothing of the machine's own Docker is used or
# touched: not its dockerd, containerd, /var/lib/docker, /run/docker,
# /etc/docker, nor the root namespace's iptables.
#
#   swarm-lab.sh up              build the lab (prints how long it took)
#   swarm-lab.sh down            remove everything; safe to run twice
#   swarm-lab.sh exec N CMD...   docker CLI against daemon N  (exec 2 ps -a)
#   swarm-lab.sh nsexec N CMD... any command inside node N's namespaces (ip addr)
#   swarm-lab.sh restart-dockerd N   SIGTERM node N's dockerd, start it again
#   swarm-lab.sh plugin-install DIR [N...]  create the managed plugin from DIR
#                                (config.json + rootfs/, e.g. plugin/build) on every
#                                node (or nodes N...), apply LAB_PLUGIN_SETTINGS, enable
#                                it (nodes in parallel)
#   swarm-lab.sh plugin-remove [N...]  disable and remove it on every node (or nodes N...)
#   swarm-lab.sh outside CMD...  a command in the outside host's namespace (lab-x)
#   swarm-lab.sh selftest        (down, then) up; Docker's own overlay across the nodes
#                                (attachable network + global service, ping by
#                                name); down. Exit 0 only if all checks pass.
#   swarm-lab.sh status
#
# Layout (all of it under $LAB, default /tmp/swarm-lab, and namespaces lab-*):
#   lab-u              underlay netns: bridge labbr0, loopback
#   lab-nN             node netns: lo + eth0 10.99.0.1N/24 (veth to labbr0); no
#                      route anywhere else, so nothing leaves the lab
#   lab-x              a host outside the swarm on the underlay (10.99.0.100), for
#                      NAT and published-port tests and as a non-member sender
#   $LAB/nN/           data/ (data-root), x/ (exec-root), run/ (the node's /run),
#                      etc-docker/ (the node's /etc/docker), var-lib/ (the node's
#                      /var/lib), containerd/,
#                      docker.sock, containerd.sock, *.pid, log/
#   cgroups            /sys/fs/cgroup/*/swarm-lab/nN: daemons/ (containerd,
#                      dockerd, shims, plugins) and one per container; `down`
#                      kills whatever is left in them, by pid, then removes them
# Each node runs in a private mount namespace in which every mount inherited from
# the host except /, /dev, /proc, /sys (and the mounts holding $LAB) is detached
# (so the lab holds no reference to the host's container netns or rootfs), /sys
# is this netns's sysfs (cgroups kept), /run is $LAB/nN/run (so /run/docker/plugins,
# hard-coded in dockerd, /run/containerd shim sockets and runc state, and the
# xtables lock are the node's own), /etc/docker is $LAB/nN/etc-docker (legacy
# plugin specs, 20.10's key.json) and /var/lib is $LAB/nN/var-lib (a managed
# plugin mounting the host's /var/lib, as rustbridge does, keeps per-node state).
#
# Settings (environment):
#   LAB_DIR=/tmp/swarm-lab  LAB_NODES=3 (1..9)  LAB_MANAGERS=1
#   LAB_SWARM_NODES=N       only nodes 1..N join the swarm (default all); the
#                           others stay standalone daemons
#   LAB_ENGINE_ROOT=DIR     an extracted docker.io .deb (DIR/usr/sbin/dockerd),
#                           e.g. /var/cache/rustbridge-engines/sid/root (28.5.2)
#                           or .../trixie/root (26.1.5), made by the project's
#                           `scripts/engine.sh fetch SUITE`;
#                           default: the machine's /usr/sbin/dockerd (20.10)
#   LAB_DOCKERD, LAB_CONTAINERD, LAB_DOCKER (CLI), LAB_LOG_LEVEL=info
#   LAB_SAVE_LOGS=DIR       `down` first copies every daemon log into DIR
#   LAB_KEEP=1              selftest leaves the lab up
#   LAB_PLUGIN=rustbridge/rustbridge:latest, LAB_PLUGIN_SETTINGS="K=V ..." (plugin-install)
# Each dockerd also listens on its node's /var/run/docker.sock (the node's own
# /run), where a managed plugin given the host's docker.sock finds it (rustbridge:
# LAB_PLUGIN_SETTINGS=docker-api.source=/var/run/docker.sock).
set -euo pipefail

LAB=${LAB_DIR:-/tmp/swarm-lab}
NODES=${LAB_NODES:-3}
MANAGERS=${LAB_MANAGERS:-1}
SWARM_NODES=${LAB_SWARM_NODES:-}
SELF=$(readlink -f "$0")
IMAGE=lab/busybox:1
NET=10.99.0
UNDERLAY_NS=lab-u
OUTSIDE_NS=lab-x
OUTSIDE_ADDR=$NET.100
PLUGIN=${LAB_PLUGIN:-rustbridge/rustbridge:latest}
BR=labbr0
CG=swarm-lab

die() { echo "swarm-lab: $*" >&2; exit 1; }
say() { echo "[swarm-lab $(date +%T)] $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
nodedir() { echo "$LAB/n$1"; }
ns() { echo "lab-n$1"; }
addr() { echo "$NET.$((10 + $1))"; }

# --- engine: chosen at `up`, remembered in $LAB/lab.env for exec/down ---------
load_env() {
  if [ -f "$LAB/lab.env" ]; then
    # shellcheck disable=SC1091
    . "$LAB/lab.env"
  fi
  ENGINE_ROOT=${ENGINE_ROOT:-${LAB_ENGINE_ROOT:-}}
  if [ -n "$ENGINE_ROOT" ]; then
    DOCKERD=${DOCKERD:-${LAB_DOCKERD:-$ENGINE_ROOT/usr/sbin/dockerd}}
    ENGINE_PATH=$ENGINE_ROOT/usr/sbin:$ENGINE_ROOT/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  else
    DOCKERD=${DOCKERD:-${LAB_DOCKERD:-/usr/sbin/dockerd}}
    ENGINE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  fi
  CONTAINERD=${CONTAINERD:-${LAB_CONTAINERD:-$(command -v containerd || echo /usr/bin/containerd)}}
  DOCKER=${DOCKER:-${LAB_DOCKER:-$(command -v docker || echo /usr/bin/docker)}}
  NODES=${LAB_NODES_UP:-$NODES}
  SWARM_NODES=${LAB_SWARM_NODES_UP:-${SWARM_NODES:-$NODES}}
}

dk() { local n=$1; shift; DOCKER_CONFIG="$LAB/cli" "$DOCKER" -H "unix://$(nodedir "$n")/docker.sock" "$@"; }

# --- cgroups (v1 hierarchies and the unified one) ------------------------------
cg_dirs() { # every hierarchy's $CG directory that exists
  local h
  for h in /sys/fs/cgroup/*/; do [ -d "$h$CG" ] && echo "${h%/}/$CG"; done
  return 0
}
cg_join() { # cg_join REL: move this shell into $CG/REL in every hierarchy
  local rel=$1 h p part
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ -f "$h/cgroup.procs" ] || continue
    p=$h
    for part in $CG ${rel//\// }; do
      p=$p/$part
      mkdir -p "$p"
      if [ -f "$p/cpuset.cpus" ] && [ -z "$(cat "$p/cpuset.cpus")" ]; then
        cat "$(dirname "$p")/cpuset.cpus" >"$p/cpuset.cpus"
        cat "$(dirname "$p")/cpuset.mems" >"$p/cpuset.mems"
      fi
    done
    echo $$ >"$p/cgroup.procs"
  done
}
cg_pids() { # pids in the lab's cgroups (optionally one node's)
  local sub=${1:-} d
  for d in $(cg_dirs); do
    [ -d "$d$sub" ] && find "$d$sub" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
  return 0
}
cg_container_pids() { # pids in the containers' cgroups (swarm-lab/nN/<id>), not the daemons'
  local d c
  for d in $(cg_dirs); do
    for c in "$d"/n*/*/; do
      [ -d "$c" ] && [ "$(basename "$c")" != daemons ] && find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
  done | sort -un
  return 0
}
cg_remove() {
  local d
  for d in $(cg_dirs); do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
  return 0
}

# --- inside a node's namespaces: mounts, then containerd and dockerd ------------
node_main() { # runs as: nsenter --net=lab-nN unshare --mount --uts -- $SELF _node N
  local n=$1 d; d=$(nodedir "$n")
  cg_join "n$n/daemons"
  hostname "lab-n$n"
  # Detach every inherited mount but /, /dev*, /proc*, /sys* and those holding $LAB:
  # otherwise this namespace would pin the host's container netns and rootfs.
  local mp keep
  while read -r mp; do
    mp=$(printf '%b' "$mp")
    case "$mp" in /|/dev|/dev/*|/proc|/proc/*|/sys|/sys/*) continue ;; esac
    keep=0
    case "$LAB/" in "$mp"/*) keep=1 ;; esac
    [ $keep = 1 ] || umount -l "$mp" 2>/dev/null || true
  done < <(awk '{print $5}' /proc/self/mountinfo | awk '{print length($0) " " $0}' | sort -rn | cut -d' ' -f2-)
  # sysfs of this netns, keeping the cgroup hierarchies
  mkdir -p "$d/mnt/cg"
  mount --rbind /sys/fs/cgroup "$d/mnt/cg"
  mount -t sysfs sysfs /sys
  mount --rbind "$d/mnt/cg" /sys/fs/cgroup
  umount -l "$d/mnt/cg"
  # the node's own /run (hence /var/run) and /etc/docker
  mount --bind "$d/run" /run
  mkdir -p /run/docker/plugins /run/containerd
  if [ -d /etc/docker ]; then mount --bind "$d/etc-docker" /etc/docker; fi
  # and its own /var/lib: a managed plugin that mounts the host's /var/lib for its
  # state (rustbridge: /var/lib/rustbridge) gets the node's, not the machine's
  case "$LAB/ ${ENGINE_PATH%%:*}/" in /var/lib/*|*" /var/lib/"*) echo "node $n: /var/lib not made private (the lab or the engine lives there)" ;;
    *) mount --bind "$d/var-lib" /var/lib ;; esac

  export PATH=$ENGINE_PATH
  "$CONTAINERD" --config "$d/containerd.toml" >>"$d/log/containerd.log" 2>&1 </dev/null &
  echo $! >"$d/containerd.pid"
  local i
  for i in $(seq 1 100); do [ -S "$d/containerd.sock" ] && break; sleep 0.1; done
  [ -S "$d/containerd.sock" ] || { echo "containerd of node $n did not start"; exit 1; }
  start_dockerd "$n"
}

start_dockerd() { # inside node N's namespaces and cgroup
  local n=$1 d; d=$(nodedir "$n")
  export PATH=$ENGINE_PATH
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 \
  "$DOCKERD" --data-root "$d/data" --exec-root "$d/x" --pidfile "$d/dockerd.pid" \
    -H "unix://$d/docker.sock" -H unix:///var/run/docker.sock --containerd "$d/containerd.sock" \
    --config-file "$d/daemon.json" --cgroup-parent "/$CG/n$n" \
    --log-level "${LAB_LOG_LEVEL:-info}" >>"$d/log/dockerd.log" 2>&1 </dev/null &
  echo $! >"$d/dockerd.launch.pid"
}

restart_dockerd() { # stop node N's dockerd (SIGTERM) and start it again in the same namespaces
  local n=$1 d p c t; d=$(nodedir "$n")
  c=$(lab_pid "$d/containerd.pid") || die "containerd of node $n is not running"
  p=$(lab_pid "$d/dockerd.pid" || lab_pid "$d/dockerd.launch.pid" || true)
  t=$(now)
  [ -n "$p" ] && stop_pids 30 "$p"
  say "dockerd $n stopped in $(since "$t") s"
  t=$(now)
  ENGINE_PATH=$ENGINE_PATH DOCKERD=$DOCKERD LAB_DIR=$LAB \
    setsid nsenter -t "$c" -n -m -u -- "$SELF" _dockerd "$n" >>"$d/log/node.log" 2>&1 </dev/null &
  wait
  wait_for 90 dk "$n" version || die "dockerd $n does not answer after the restart"
  say "dockerd $n answers again after $(since "$t") s"
}

write_configs() {
  local n=$1 d; d=$(nodedir "$n")
  mkdir -p "$d"/{data,x,run,etc-docker,var-lib,log,mnt,containerd/root,containerd/state,containerd/opt}
  echo '{}' >"$d/daemon.json"
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "${LAB_LOG_LEVEL:-info}"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$d/containerd/opt"
EOF
}

netns_up() {
  ip netns add $UNDERLAY_NS
  ip -n $UNDERLAY_NS link set lo up
  ip -n $UNDERLAY_NS link add $BR type bridge
  ip -n $UNDERLAY_NS link set $BR up
  local n
  for n in $(seq 1 "$NODES"); do
    ip netns add "$(ns "$n")"
    ip -n "$(ns "$n")" link set lo up
    # both ends are created in lab namespaces: nothing appears in the root netns
    ip -n $UNDERLAY_NS link add "lab-v$n" type veth peer name eth0 netns "$(ns "$n")"
    ip -n $UNDERLAY_NS link set "lab-v$n" master $BR up
    ip -n "$(ns "$n")" addr add "$(addr "$n")/24" dev eth0
    ip -n "$(ns "$n")" link set eth0 up
  done
  ip netns add $OUTSIDE_NS
  ip -n $OUTSIDE_NS link set lo up
  ip -n $UNDERLAY_NS link add lab-vx type veth peer name eth0 netns $OUTSIDE_NS
  ip -n $UNDERLAY_NS link set lab-vx master $BR up
  ip -n $OUTSIDE_NS addr add "$OUTSIDE_ADDR/24" dev eth0
  ip -n $OUTSIDE_NS link set eth0 up
}

build_image_dir() {
  local r=$LAB/img
  rm -rf "$r"; mkdir -p "$r"/{bin,etc,tmp,proc,sys,dev,root}
  cp /bin/busybox "$r/bin/busybox"
  local a
  for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
  echo 'root:x:0:' >"$r/etc/group"
}

wait_for() { # wait_for SECONDS CMD...: retry CMD every 0.2 s
  local limit=$1; shift
  local end; end=$(awk -v a="$(now)" -v l="$limit" 'BEGIN{printf "%f", a+l}')
  until "$@" >/dev/null 2>&1; do
    awk -v e="$end" -v t="$(now)" 'BEGIN{exit !(t>e)}' && return 1
    sleep 0.2
  done
}

nodes_ready() { [ "$(dk 1 node ls --format '{{.Status}}' 2>/dev/null | grep -c '^Ready$')" -eq "$SWARM_NODES" ]; }

up() {
  [ "$(id -u)" = 0 ] || die "run as root"
  [ ! -e "$LAB/lab.env" ] || die "the lab is already up ($LAB/lab.env); run: $0 down"
  case "$NODES" in [1-9]) ;; *) die "LAB_NODES must be 1..9" ;; esac
  [ "$SWARM_NODES" -ge 1 ] && [ "$SWARM_NODES" -le "$NODES" ] || die "LAB_SWARM_NODES must be 1..LAB_NODES"
  local c; for c in ip nsenter unshare mount umount hostname; do command -v $c >/dev/null || die "$c missing"; done
  ip netns list | grep -E "^(lab-u|lab-x|lab-n[0-9])( |$)" >/dev/null && die "lab namespaces exist already; run: $0 down"
  load_env
  [ -x "$DOCKERD" ] || die "no dockerd at $DOCKERD"
  [ -x "$CONTAINERD" ] || die "no containerd at $CONTAINERD"
  # ldd fails on a static binary (and needs no package of its own, unlike `file`).
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "/bin/busybox is not static (apt-get install busybox-static)"
  local t0 t; t0=$(now)
  mkdir -p "$LAB/cli"
  { echo "ENGINE_ROOT='${ENGINE_ROOT}'"; echo "DOCKERD='$DOCKERD'"; echo "CONTAINERD='$CONTAINERD'"
    echo "DOCKER='$DOCKER'"; echo "LAB_NODES_UP=$NODES"; echo "LAB_SWARM_NODES_UP=$SWARM_NODES"; } >"$LAB/lab.env"
  t=$(now); netns_up; local t_ns; t_ns=$(since "$t")
  build_image_dir
  t=$(now)
  local n
  for n in $(seq 1 "$NODES"); do
    write_configs "$n"
    ENGINE_PATH=$ENGINE_PATH DOCKERD=$DOCKERD CONTAINERD=$CONTAINERD LAB_DIR=$LAB \
      setsid nsenter --net="/run/netns/$(ns "$n")" unshare --mount --uts --propagation private -- \
      "$SELF" _node "$n" >>"$(nodedir "$n")/log/node.log" 2>&1 </dev/null &
  done
  wait
  for n in $(seq 1 "$NODES"); do
    wait_for 90 dk "$n" version || { tail -n 20 "$(nodedir "$n")"/log/*.log >&2; die "dockerd $n does not answer"; }
  done
  local t_d; t_d=$(since "$t")
  say "daemons up: $(dk 1 version -f 'dockerd {{.Server.Version}} (API {{.Server.APIVersion}})') x$NODES"
  t=$(now)
  local pids=()
  for n in $(seq 1 "$NODES"); do
    (tar -C "$LAB/img" -c . | dk "$n" import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - $IMAGE >/dev/null) &
    pids+=($!)
  done
  for c in "${pids[@]}"; do wait "$c" || die "image import failed"; done
  local t_i; t_i=$(since "$t")
  t=$(now)
  dk 1 swarm init --advertise-addr "$(addr 1)" --listen-addr "$(addr 1):2377" >/dev/null
  local wtok mtok
  wtok=$(dk 1 swarm join-token -q worker); mtok=$(dk 1 swarm join-token -q manager)
  for n in $(seq 2 "$SWARM_NODES"); do
    local tok=$wtok; [ "$n" -le "$MANAGERS" ] && tok=$mtok
    dk "$n" swarm join --advertise-addr "$(addr "$n")" --listen-addr "$(addr "$n"):2377" \
      --token "$tok" "$(addr 1):2377" >/dev/null
  done
  wait_for 60 nodes_ready || { dk 1 node ls >&2; die "swarm nodes not ready"; }
  local t_s; t_s=$(since "$t")
  dk 1 node ls
  say "up in $(since "$t0") s (netns $t_ns s, daemons $t_d s, image $t_i s, swarm $t_s s)"
  echo "up_seconds=$(since "$t0") netns=$t_ns daemons=$t_d image=$t_i swarm=$t_s" >"$LAB/up-times"
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
lab_pid() { # the pid in FILE if that process is still one of the lab's (its cgroup says so)
  local f=$1 p
  [ -f "$f" ] || return 1
  p=$(tr -dc 0-9 <"$f")
  alive "$p" && grep -q "/$CG/" "/proc/$p/cgroup" 2>/dev/null && echo "$p"
}
stop_pids() { # stop_pids SECONDS PID...: TERM, wait, KILL
  local limit=$1; shift
  local p i
  [ $# -gt 0 ] || return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 1 $((limit * 5))); do
    local any=0
    for p in "$@"; do alive "$p" && any=1; done
    [ $any = 0 ] && return 0
    sleep 0.2
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}

down() {
  [ "$(id -u)" = 0 ] || die "run as root"
  local n d p pids=()
  if [ -n "${LAB_SAVE_LOGS:-}" ] && [ -d "$LAB" ]; then
    mkdir -p "$LAB_SAVE_LOGS"
    for d in "$LAB"/n[0-9]*; do
      [ -d "$d/log" ] || continue
      for p in "$d"/log/*.log; do [ -f "$p" ] && cp "$p" "$LAB_SAVE_LOGS/$(basename "$d")-$(basename "$p")"; done
    done
  fi
  # 1. containers (SIGKILL: they are thrown away anyway, and a `sleep` would make
  #    dockerd wait 10 s for each), dockerd (it stops its plugins), containerd
  local cp; cp=$(cg_container_pids)
  # shellcheck disable=SC2086
  [ -z "$cp" ] || kill -KILL $cp 2>/dev/null || true
  for d in "$LAB"/n[0-9]*; do
    [ -d "$d" ] || continue
    p=$(lab_pid "$d/dockerd.pid" || lab_pid "$d/dockerd.launch.pid" || true)
    [ -n "$p" ] && pids+=("$p")
  done
  stop_pids 20 "${pids[@]}"
  pids=()
  for d in "$LAB"/n[0-9]*; do
    [ -d "$d" ] || continue
    p=$(lab_pid "$d/containerd.pid" || true)
    [ -n "$p" ] && pids+=("$p")
  done
  stop_pids 5 "${pids[@]}"
  # 2. whatever is left in the lab's cgroups (shims, containers, plugins)
  local i left
  for i in $(seq 1 50); do
    left=$(cg_pids)
    [ -z "$left" ] && break
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.2
  done
  [ -z "$(cg_pids)" ] || echo "swarm-lab: processes still in the lab's cgroups: $(cg_pids | tr '\n' ' ')" >&2
  cg_remove
  # 3. namespaces (the veths and the bridge go with them)
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(lab-u|lab-x|lab-n[0-9]+)$' || true); do
    ip netns del "$n" 2>/dev/null || true
  done
  # 4. files (nothing of the lab is mounted in this mount namespace; check anyway)
  if [ -d "$LAB" ]; then
    awk -v L="$LAB" '$5 == L || index($5, L "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$LAB"
  fi
  echo "swarm-lab: down"
}

status() {
  load_env
  local n d p
  [ -f "$LAB/lab.env" ] || { echo "lab is down"; ip netns list | grep -E '^lab-' || true; return 0; }
  for n in $(seq 1 "$NODES"); do
    d=$(nodedir "$n")
    echo "node $n ($(ns "$n"), $(addr "$n")): containerd $(lab_pid "$d/containerd.pid" || echo dead), dockerd $(lab_pid "$d/dockerd.pid" || echo dead)"
  done
  dk 1 node ls 2>&1 || true
  [ -f "$LAB/up-times" ] && cat "$LAB/up-times"
  return 0
}

nsexec() {
  local n=$1; shift
  load_env
  local p; p=$(lab_pid "$(nodedir "$n")/dockerd.pid" || lab_pid "$(nodedir "$n")/containerd.pid") || die "node $n is not running"
  nsenter -t "$p" -n -m -u -- "$@"
}

# --- the managed plugin on every node ----------------------------------------------
nodes_or_all() { if [ $# -gt 0 ]; then echo "$@"; else seq 1 "$NODES"; fi; }

plugin_install() {
  local dir=$1 n pids=() p nodes; shift
  [ -f "$dir/config.json" ] && [ -d "$dir/rootfs" ] || die "$dir has no config.json and rootfs/ (make rootfs)"
  nodes=$(nodes_or_all "$@")
  for n in $nodes; do
    (
      # The plugin mounts the host's /var/lib/rustbridge: the node's own (its private /var/lib).
      mkdir -p -m 0700 "$(nodedir "$n")/var-lib/rustbridge"
      dk "$n" plugin rm -f "$PLUGIN" >/dev/null 2>&1 || true
      dk "$n" plugin create "$PLUGIN" "$dir" >/dev/null
      local kv
      for kv in ${LAB_PLUGIN_SETTINGS:-}; do dk "$n" plugin set "$PLUGIN" "$kv"; done
      dk "$n" plugin enable "$PLUGIN" >/dev/null
    ) >"$LAB/plugin-install.n$n.log" 2>&1 &
    pids+=($!)
  done
  set -- $nodes
  for p in "${pids[@]}"; do
    n=$1; shift
    wait "$p" || { cat "$LAB/plugin-install.n$n.log" >&2; die "plugin $PLUGIN not installed on node $n"; }
  done
  say "plugin $PLUGIN enabled on node(s) $(echo $nodes)${LAB_PLUGIN_SETTINGS:+ ($LAB_PLUGIN_SETTINGS)}"
}

plugin_remove() {
  local n
  for n in $(nodes_or_all "$@"); do
    dk "$n" plugin disable -f "$PLUGIN" >/dev/null 2>&1 || true
    dk "$n" plugin rm -f "$PLUGIN" >/dev/null 2>&1 || true
  done
}

# --- selftest -------------------------------------------------------------------
ST_FAIL=0
check() { # check DESCRIPTION CMD...
  local desc=$1; shift
  if "$@" >/tmp/swarm-lab-check.$$ 2>&1; then echo "ok   - $desc"
  else echo "FAIL - $desc"; sed 's/^/       /' /tmp/swarm-lab-check.$$ | tail -n 15; ST_FAIL=$((ST_FAIL + 1)); fi
  rm -f /tmp/swarm-lab-check.$$
}
task_running_on_all() { [ "$(dk 1 service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running')" -eq "$SWARM_NODES" ]; }
svc_container() { dk "$1" ps -q --filter "label=com.docker.swarm.service.name=$2" | head -n 1; }
ping_name() { local n=$1 c=$2 target=$3; dk "$n" exec "$c" ping -c 2 -W 2 "$target"; }
resolves_to_n() { # resolves_to_n NODE CONTAINER NAME COUNT
  local got; got=$(dk "$1" exec "$2" nslookup "$3" 127.0.0.11 2>/dev/null | awk '/^Address/ && !/127.0.0.11/ {print $NF}' | sort -u | wc -l)
  echo "$3 -> $got addresses"; [ "$got" -eq "$4" ]
}

selftest() {
  local t0 n m; t0=$(now)
  down >/dev/null 2>&1 || true
  if [ "${LAB_KEEP:-0}" != 1 ]; then trap 'down >/dev/null 2>&1 || true' EXIT; fi
  up
  echo "# attachable overlay network, one container per daemon (docker run)"
  check "docker network create -d overlay --attachable lab-ov (manager)" dk 1 network create -d overlay --attachable lab-ov
  for n in $(seq 1 "$SWARM_NODES"); do
    check "docker run --network lab-ov --name c$n on daemon $n" dk "$n" run -d --name "c$n" --network lab-ov $IMAGE sleep 3600
  done
  for n in $(seq 1 "$SWARM_NODES"); do
    echo "  c$n: $(dk "$n" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "c$n" 2>&1)"
  done
  for n in $(seq 1 "$SWARM_NODES"); do
    for m in $(seq 1 "$SWARM_NODES"); do
      [ "$n" = "$m" ] && continue
      check "c$n (daemon $n) pings c$m (daemon $m) by name" ping_name "$n" "c$n" "c$m"
    done
  done
  echo "# global service on an overlay network (endpoint mode dnsrr: this kernel has no IPVS)"
  check "docker network create -d overlay lab-svc (manager)" dk 1 network create -d overlay lab-svc
  check "docker service create --mode global --network lab-svc gsvc" \
    dk 1 service create --detach --no-resolve-image --name gsvc --mode global --network lab-svc \
      --endpoint-mode dnsrr $IMAGE sleep 3600
  check "a gsvc task runs on every node (<= 60 s)" wait_for 60 task_running_on_all gsvc
  dk 1 service ps gsvc --format '  {{.Name}} {{.Node}} {{.CurrentState}}' 2>&1 || true
  local c1; c1=$(svc_container 1 gsvc)
  check "DNS: tasks.gsvc has $SWARM_NODES addresses (seen from the task on daemon 1)" resolves_to_n 1 "$c1" tasks.gsvc "$SWARM_NODES"
  for n in $(seq 2 "$SWARM_NODES"); do
    local cn ip; cn=$(svc_container "$n" gsvc)
    ip=$(dk "$n" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cn" 2>/dev/null)
    check "gsvc task on daemon 1 pings the task on daemon $n ($ip)" dk 1 exec "$c1" ping -c 2 -W 2 "$ip"
  done
  local td; td=$(now)
  if [ "${LAB_KEEP:-0}" = 1 ]; then echo "LAB_KEEP=1: the lab stays up"; else trap - EXIT; down; echo "down in $(since "$td") s"; fi
  echo "selftest: $ST_FAIL failed, $(since "$t0") s in all"
  [ "$ST_FAIL" = 0 ]
}

cmd=${1:-}; shift || true
case "$cmd" in
  up) load_env; up ;;
  down) load_env; down ;;
  exec) [ $# -ge 2 ] || die "usage: $0 exec N CMD..."; load_env; n=$1; shift; dk "$n" "$@" ;;
  nsexec) [ $# -ge 2 ] || die "usage: $0 nsexec N CMD..."; nsexec "$@" ;;
  status) status ;;
  selftest) load_env; selftest ;;
  restart-dockerd) [ $# -ge 1 ] || die "usage: $0 restart-dockerd N"; load_env; restart_dockerd "$1" ;;
  plugin-install) [ $# -ge 1 ] || die "usage: $0 plugin-install DIR [N...]"; load_env; plugin_install "$@" ;;
  plugin-remove) load_env; plugin_remove "$@" ;;
  outside) [ $# -ge 1 ] || die "usage: $0 outside CMD..."; nsenter --net=/run/netns/$OUTSIDE_NS -- "$@" ;;
  _node) node_main "$1" ;;
  _dockerd) cg_join "n$1/daemons"; start_dockerd "$1" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
