#!/usr/bin/env bash
# Starts or stops a dockerd for the demo and the tests.
#   scripts/dockerd.sh start [DOCKERD_BIN] [DATA_ROOT] [FLAG...]
#   scripts/dockerd.sh stop            (stops only a dockerd this script started)
#   scripts/dockerd.sh restart [FLAG...]
#       restarts the dockerd this script started (or any running one) with its
#       binary and data root, and with these extra flags only (e.g. --live-restore:
#       the fault suite turns it on for one restart; a plain restart turns it off)
# DOCKERD_BIN defaults to `dockerd` on PATH, DATA_ROOT to /var/lib/docker.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

state_dir=/run/rustbridge-test
pidfile=$state_dir/dockerd.pid
argsfile=$state_dir/dockerd.args
mkdir -p "$state_dir"

# Closes every descriptor above stderr in this (sub)shell.
close_inherited_fds() {
  local fd
  for fd in $(ls /proc/"$BASHPID"/fd); do
    [ "$fd" -gt 2 ] && eval "exec $fd>&-"
  done
  return 0
}

wait_ready() {
  wait_for 120 0.5 docker_ready && return 0
  echo "dockerd did not become ready; last log lines:" >&2
  tail -n 30 "${1:-/var/log/dockerd.log}" >&2 || true
  return 1
}

start() {
  local bin=${1:-dockerd} root=${2:-/var/lib/docker}
  shift 2 || shift $#
  if docker_ready; then
    echo "dockerd already running"
    return 0
  fi
  local log=/var/log/dockerd-rustbridge.log
  echo "$bin" > "$argsfile"; echo "$root" >> "$argsfile"
  # setsid: dockerd must outlive the shell that started it. It must not keep
  # this shell's other descriptors either: under `flock /tmp/rb-host.lock`
  # one of them holds the host lock, which dockerd and containerd would then
  # hold for as long as they run, blocking every later user of the lock.
  (close_inherited_fds && exec setsid "$bin" --data-root "$root" "$@" >"$log" 2>&1 </dev/null) &
  echo $! > "$pidfile"
  wait_ready "$log"
  echo "dockerd started ($bin, data root $root${*:+, $*})"
}

stop() {
  [ -f "$pidfile" ] || { echo "no dockerd started by this script"; return 0; }
  stop_pid "$(cat "$pidfile")"
  rm -f "$pidfile"
  echo "dockerd stopped"
}

restart() {
  local pid bin root
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile"); bin=$(sed -n 1p "$argsfile"); root=$(sed -n 2p "$argsfile")
  else
    pid=$(running_dockerd); bin=$(readlink -f "/proc/$pid/exe"); root=/var/lib/docker
  fi
  stop_pid "$pid"
  rm -f "$pidfile"
  start "$bin" "$root" "$@"
}

cmd=${1:-}; shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  restart) restart "$@" ;;
  *) echo "usage: $0 start [DOCKERD_BIN] [DATA_ROOT] [FLAG...] | stop | restart [FLAG...]" >&2; exit 2 ;;
esac
