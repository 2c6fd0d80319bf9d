# Shared helpers for the end-to-end tests (sourced, not run).
# Every check counts as passed or failed; cleanups registered with `cleanup`
# run on exit, also after a failure or an interrupt.

PASSED=0
FAILED=0
FAILURES=()
CLEANUPS=()
DEMO=${DEMO:-0}
PLUGIN=${PLUGIN:-rustbridge/rustbridge:latest}
IMAGE=${IMAGE:-rustbridge-test/busybox:2}
PREFIX=${PREFIX:-rbe2e$$}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/scripts/lib.sh"
# dockerd's API version as a number (1.41 -> 141), to run what an engine supports.
api_version() { docker version -f '{{.Server.APIVersion}}' | awk -F. '{print $1 * 100 + $2}'; }

cleanup() { CLEANUPS+=("$*"); }

# Everything a suite names starts with $PREFIX-: remove those containers and
# networks at exit whatever happened (names set inside `expect` live in a subshell).
# One container at a time: the docker CLI removes several in parallel, and
# dockerd 20.10 can then miscount a network's endpoints ("has active
# endpoints" with none left) — its race, not the plugin's.
# rm_each NAME...: remove the containers that exist, one at a time (see below).
rm_each() {
  local c
  for c in "$@"; do
    docker inspect "$c" >/dev/null 2>&1 || continue
    docker rm -f "$c" >/dev/null || return 1
  done
}

remove_prefixed() {
  local id n
  for id in $(docker ps -aq --filter "name=^$PREFIX-"); do docker rm -f "$id" >/dev/null; done
  for n in $(docker network ls -q --filter "name=^$PREFIX-"); do docker network rm "$n" >/dev/null; done
  return 0
}
CLEANUPS+=("remove_prefixed")

run_cleanups() {
  local i
  for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUPS[$i]}" >/dev/null 2>&1 || true
  done
  CLEANUPS=()
}
trap run_cleanups EXIT
trap 'exit 130' INT TERM

step() {
  if [ "$DEMO" = 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else echo "-- $*"; fi
}

# show CMD...: in demo mode, print the command and its output.
show() { show_as "\$ $*" "$@"; }

# show_as LINE CMD...: `show`, printing LINE for the command (what a user
# types, where CMD is a suite's wrapper, e.g. a command on one host of a lab).
show_as() {
  local line=$1; shift
  if [ "$DEMO" = 1 ]; then
    printf '%s\n' "$line"
    "$@" 2>&1 | sed 's/^/  /'
    return "${PIPESTATUS[0]}"
  fi
  "$@" >/dev/null 2>&1
}

# told DESC LINE CMD...: a check (`expect`) that is also a step of the demo's
# story: in demo mode printed as LINE with its output (`show_as`).
told() {
  local desc=$1 line=$2; shift 2
  if [ "$DEMO" != 1 ]; then expect "$desc" "$@"; return; fi
  if show_as "$line" "$@"; then pass "$desc"; else fail "$desc"; fi
}

pass() { PASSED=$((PASSED + 1)); echo "  ok   $1"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$1"); echo "  FAIL $1${2:+: $2}"; }

# expect DESC CMD...: CMD must succeed.
expect() {
  local desc=$1 out; shift
  if out=$("$@" 2>&1); then pass "$desc"; else fail "$desc" "$(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
}

# refuse DESC CMD...: CMD must fail.
refuse() {
  local desc=$1; shift
  if "$@" >/dev/null 2>&1; then fail "$desc" "succeeded but should not have"; else pass "$desc"; fi
}

# eventually DESC SECONDS CMD...: CMD must succeed within SECONDS.
eventually() {
  local desc=$1 secs=$2 deadline; shift 2
  deadline=$((SECONDS + secs))
  while ! "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then fail "$desc" "not within ${secs}s"; return 1; fi
    sleep 0.5
  done
  pass "$desc"
}

# equal DESC EXPECTED ACTUAL
equal() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "expected [$2], got [$3]"; fi
}

summary() {
  echo
  if [ "$FAILED" -gt 0 ]; then
    printf 'failed: %s\n' "${FAILURES[@]}"
  fi
  echo "$(basename "$0" .sh): $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

ping_ok() { docker exec "$1" ping -c 1 -W 2 "$2"; }
ping_blocked() { ! docker exec "$1" ping -c 1 -W 1 "$2"; }
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$2\").IPAddress}}" "$1"; }
plugin_pid() { pgrep -f '^/usr/bin/rustbridge serve' | head -n 1; }
# plugin_restarted OLD_PID: another plugin process runs and serves the socket.
plugin_restarted() { local p; p=$(plugin_pid); [ -n "$p" ] && [ "$p" != "$1" ] && plugin_socket_ready; }
# plugin_call METHOD BODY: one protocol call straight to the plugin's socket (5 s at most).
plugin_call() { curl -s --max-time 5 --unix-socket "$RB_SOCKET" -X POST "http://plugin/$1" -d "$2"; }
# endpoint_info_has ENDPOINT_ID TEXT: the plugin's EndpointOperInfo for it contains TEXT.
endpoint_info_has() { plugin_call NetworkDriver.EndpointOperInfo "{\"EndpointID\":\"$1\"}" | grep -qF -- "$2"; }
network_id() { docker network inspect -f '{{.Id}}' "$1"; }
# plugin_mounts REF: the plugin's host mounts, "source:destination" sorted, one line.
plugin_mounts() { docker plugin inspect -f '{{range .Config.Mounts}}{{.Source}}:{{.Destination}}{{println}}{{end}}' "$1" | sed '/^$/d' | sort | tr '\n' ' '; }
# The mounts plugin/config.json must ask for: only what the plugin needs (README, Privileges and mounts);
# dockerd's API socket is not among them: the docker-api mount is /dev/null unless a swarm node sets it.
RB_EXPECTED_MOUNTS="/dev/null:/host/run/docker.sock /proc/sys/net/ipv6/conf/all/forwarding:/host/proc-sys-net-ipv6-conf-all/forwarding /run/docker/plugins:/run/host-plugins /var/lib/rustbridge:/host/var/lib/rustbridge "
# The plugin's device names (src/names.rs; its unit test checks these lines).
RB_BRIDGE_PREFIX=rb-
RB_HOST_VETH_PREFIX=rbh-
RB_PEER_VETH_PREFIX=rbc-
RB_ID_CHARS_IN_BRIDGE=12
RB_ID_CHARS_IN_VETH=11
bridge_of() { echo "$RB_BRIDGE_PREFIX$(network_id "$1" | cut -c1-$RB_ID_CHARS_IN_BRIDGE)"; }
# host_veth_of ENDPOINT_ID: the host end of the endpoint's veth pair.
host_veth_of() { echo "$RB_HOST_VETH_PREFIX$(echo "$1" | cut -c1-$RB_ID_CHARS_IN_VETH)"; }
host_veth_count() { ip -br link | grep -c "^$RB_HOST_VETH_PREFIX"; }
# Lines of the plugin's firewall: its iptables chains and jumps, and its nftables table (src/firewall).
rustbridge_rule_count() {
  echo $(($({ iptables-save; ip6tables-save; } 2>/dev/null | grep -c RUSTBRIDGE) + $(rustbridge_table | wc -l)))
}
# rustbridge_table: the plugin's nftables table as nft prints it (empty when there is none).
rustbridge_table() { nft list table inet rustbridge 2>/dev/null; }

# fake_host NS HOST_IP NS_IP [HOST_IP6 NS_IP6]: a network namespace of the
# test's own, wired to the host by a veth pair (/24, and /64 for IPv6), routed
# via the host. With IPv6 the host must route IPv6 (as a user's host does):
# forwarding is switched on for the test and put back after.
fake_host() {
  local ns=$1 host_ip=$2 ns_ip=$3 host_ip6=${4:-} ns_ip6=${5:-} veth=${1:0:10}h
  ip netns add "$ns"
  cleanup "ip netns del $ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip addr add "$host_ip/24" dev "$veth"
  ip link set "$veth" up
  ip -n "$ns" addr add "$ns_ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "$host_ip"
  if [ -n "$host_ip6" ]; then
    local was; was=$(sysctl -n net.ipv6.conf.all.forwarding)
    cleanup "sysctl -qw net.ipv6.conf.all.forwarding=$was"
    sysctl -qw net.ipv6.conf.all.forwarding=1
    ip addr add "$host_ip6/64" dev "$veth" nodad
    ip -n "$ns" addr add "$ns_ip6/64" dev eth0 nodad
    ip -n "$ns" -6 route add default via "$host_ip6"
  fi
}

# published_ports: every port rustbridge publishes, one "PROTO HOST_PORT CONTAINER_IP CONTAINER_PORT"
# line each, from its DNAT maps (nftables table inet rustbridge).
published_ports() {
  local map
  for map in dnat4-any dnat4-addr dnat6-any dnat6-addr; do nft -j list map inet rustbridge "$map" 2>/dev/null; done |
    jq -r '.nftables[] | .map? // empty | .elem[]? | "\(.[0].concat[0]) \(.[0].concat[-1]) \(.[1].concat[0]) \(.[1].concat[1])"'
}
# published_port CONTAINER_IP PORT PROTO: the host port rustbridge DNATs to it.
published_port() { published_ports | awk -v ip="$1" -v port="$2" -v proto="$3" '$1 == proto && $3 == ip && $4 == port {print $2; exit}'; }
# For checks run as `bash -c "…"`.
export -f rustbridge_table published_ports published_port

# source_echo_server NS IPV4 [IPV6]: in the fake host NS, answer every TCP
# connection on port 7000 with the source address it arrived from (to see NAT).
source_echo_server() {
  local ns=$1
  ip netns exec "$ns" python3 -c '
import socket, sys, threading
def serve(addr):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 7000)); s.listen(16)
    while True:
        c, a = s.accept(); c.sendall(a[0].encode() + b"\n"); c.close()
for addr in sys.argv[2:]:
    threading.Thread(target=serve, args=(addr,), daemon=True).start()
serve(sys.argv[1])' "${@:2}" >/dev/null 2>&1 &
  cleanup "kill $!"
}
