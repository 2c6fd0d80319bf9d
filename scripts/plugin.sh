#!/usr/bin/env bash
# Managed-plugin chores, so the Makefile and the tests share one way to do them.
#   scripts/plugin.sh create  NAME DIR   (re)create NAME from DIR (config.json + rootfs/)
#   scripts/plugin.sh enable  NAME       create the state directory, enable NAME and wait
#                                        until -d rustbridge answers
#   scripts/plugin.sh remove  NAME       disable and remove NAME if present
#   scripts/plugin.sh publish REF DIR    create REF (a registry reference) from DIR and push it
set -euo pipefail
source "$(dirname "$0")/lib.sh"

exists() { docker plugin inspect "$1" >/dev/null 2>&1; }
enabled() { [ "$(docker plugin inspect -f '{{.Enabled}}' "$1" 2>/dev/null)" = true ]; }

remove() {
  local name=$1
  exists "$name" || return 0
  enabled "$name" && docker plugin disable -f "$name" >/dev/null
  docker plugin rm -f "$name" >/dev/null
  echo "removed plugin $name"
}

create() {
  local name=$1 dir=$2
  remove "$name"
  docker plugin create "$name" "$dir" >/dev/null
  echo "created plugin $name ($(du -sh "$dir/rootfs" | cut -f1) rootfs)"
}

# The legacy socket the plugin serves appears once the plugin runs.
wait_for_socket() {
  wait_for 100 0.1 plugin_socket_ready && return 0
  echo "plugin enabled but $RB_SOCKET did not appear" >&2
  return 1
}

# The plugin mounts the host's /var/lib/rustbridge alone, and dockerd does not
# create bind-mount sources: without it `docker plugin enable` fails.
STATE_DIR=/var/lib/rustbridge
ensure_state_dir() {
  [ -d "$STATE_DIR" ] && return 0
  mkdir -p -m 0700 "$STATE_DIR"
  echo "created $STATE_DIR (the plugin's state, mounted into it)"
}

enable() {
  local name=$1
  ensure_state_dir
  enabled "$name" || docker plugin enable "$name" >/dev/null
  wait_for_socket
  echo "enabled plugin $name"
}

publish() {
  local ref=$1 dir=$2
  # dockerd refuses a rootfs byte-identical to an installed plugin's: mark this one.
  echo "$ref" > "$dir/rootfs/etc/rustbridge-reference"
  remove "$ref"
  docker plugin create "$ref" "$dir" >/dev/null
  docker plugin push "$ref"
  echo "pushed $ref"
}

cmd=${1:-}; shift || true
case "$cmd" in
  create|enable|remove|publish) "$cmd" "$@" ;;
  *) echo "usage: $0 create NAME DIR | enable NAME | remove NAME | publish REF DIR" >&2; exit 2 ;;
esac
