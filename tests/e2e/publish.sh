#!/usr/bin/env bash
# `docker plugin install` from a registry: start Debian's docker-registry on
# 127.0.0.1, `make publish` to it, remove the local copy, install it back and
# use it with the plain name. Needs the plugin built (make plugin) and no
# rustbridge network in use (the installed copy takes over the plain name).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

WITH_REGISTRY=1 "$ROOT/scripts/install-deps.sh"
if [ -n "$(docker network ls -q --filter driver=rustbridge)" ]; then
  fail "precondition: no rustbridge network in use" "$(docker network ls --filter driver=rustbridge --format '{{.Name}}' | tr '\n' ' ')"
  summary; exit 1
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
registry=127.0.0.1:$port
ref=$registry/rustbridge/rustbridge:latest
dir=$(mktemp -d)
net=$PREFIX-pubnet
a=$PREFIX-pa b=$PREFIX-pb
cat > "$dir/config.yml" <<CONF
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: $registry
CONF
step "Start a registry on $registry"
docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
registry_pid=$!
cleanup "rm -rf $dir"
cleanup "kill $registry_pid"
eventually "registry answers" 20 curl -sf "http://$registry/v2/"

step "make publish REGISTRY=$registry"
expect "make publish" make -C "$ROOT" publish "REGISTRY=$registry"
expect "remove the local copy of $ref" docker plugin rm -f "$ref"

step "docker plugin install from the registry"
main_enabled=$(docker plugin inspect -f '{{.Enabled}}' "$PLUGIN" 2>/dev/null || echo absent)
if [ "$main_enabled" = true ]; then
  # One process serves the plain name and owns the state at a time.
  expect "disable $PLUGIN while the installed copy runs" docker plugin disable "$PLUGIN"
  cleanup "$ROOT/scripts/plugin.sh enable $PLUGIN"
fi
cleanup "$ROOT/scripts/plugin.sh remove $ref"
expect "docker plugin install --grant-all-permissions $ref" docker plugin install --grant-all-permissions "$ref"
eventually "the installed plugin serves rustbridge.sock" 10 plugin_socket_ready

step "Use it with the plain name"
cleanup "docker network rm $net"
cleanup "docker rm -f $a $b"
expect "network create -d rustbridge --ipam-driver rustbridge" docker network create -d rustbridge --ipam-driver rustbridge "$net"
equal "IPAM driver is rustbridge" rustbridge "$(docker network inspect -f '{{.IPAM.Driver}}' "$net")"
expect "run $a" docker run -d --name "$a" --network "$net" "$IMAGE" sleep 3600
expect "run $b" docker run -d --name "$b" --network "$net" "$IMAGE" sleep 3600
expect "$a pings $b by name" ping_ok "$a" "$b"
a_ip=$(ip_of "$a" "$net")

step "State survives docker plugin disable, upgrade and enable"
ref2=$registry/rustbridge/rustbridge:v2
expect "publish a second version as $ref2" "$ROOT/scripts/plugin.sh" publish "$ref2" "$ROOT/plugin/build"
expect "remove the local copy of $ref2" docker plugin rm -f "$ref2"
expect "docker plugin disable -f (a network uses it)" docker plugin disable -f "$ref"
expect "docker plugin upgrade $ref $ref2" docker plugin upgrade --grant-all-permissions "$ref" "$ref2"
expect "docker plugin enable" docker plugin enable "$ref"
eventually "the upgraded plugin serves rustbridge.sock" 10 plugin_socket_ready
expect "$a still reaches $b (traffic never left the kernel)" ping_ok "$a" "$b"
equal "the upgraded plugin mounts only what it needs" "$RB_EXPECTED_MOUNTS" "$(plugin_mounts "$ref")"
expect "a new container joins the same network" docker run -d --name "$PREFIX-pc" --network "$net" "$IMAGE" sleep 3600
c_ip=$(ip_of "$PREFIX-pc" "$net")
expect "with a new address ($c_ip, not $a_ip's or $b's)" sh -c "[ '$c_ip' != '$a_ip' ] && [ '$c_ip' != '$(ip_of "$b" "$net")' ]"
expect "and reaches $a by name" ping_ok "$PREFIX-pc" "$a"
expect "remove containers" rm_each "$a" "$b" "$PREFIX-pc"
expect "remove network" docker network rm "$net"

summary
