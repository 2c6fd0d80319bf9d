# Shared by scripts/ and tests/e2e/ (sourced, not run): where the plugin
# listens, which e2e suites run where, and the waits every script needs.

# The legacy socket the plugin serves on the host so that `-d rustbridge`
# resolves (plugin/config.json: RUSTBRIDGE_SOCKET, through a mount of this directory).
RB_SOCKET=${RB_SOCKET:-/run/docker/plugins/rustbridge.sock}

# The one plugin setting of swarm nodes (README, "Multi-host"): dockerd's API
# socket mounted into the plugin (plugin/config.json, mount docker-api; its
# default is /dev/null), which makes RUSTBRIDGE_SCOPE=auto global. The swarm
# suite and bench/m_swarm.py give it to lab nodes (swarm-lab.sh plugin-install,
# LAB_PLUGIN_SETTINGS).
RB_SWARM_SETTING=docker-api.source=/var/run/docker.sock

# The e2e suites (tests/e2e/NAME.sh), run by tests/e2e/run.sh on the machine's dockerd.
E2E_SUITES="user_story firewall options docker28 compose operator publish restart faults swarm"
# On the other engines (make test-engines, scripts/e2e-on-engine.sh) publish
# is left out: it tests distribution (make publish to a local registry,
# docker plugin install/upgrade, which no engine version changes) and takes
# over the plain name `rustbridge`, so it runs once, on the machine's dockerd;
# compose (two compose versions against one engine) and operator (plugin settings
# and metrics) run there too, before publish.
# The fault suite (faults, about 6 minutes) runs on the machine's dockerd
# only: it has not been run on 26.1/28.5 yet.
# The swarm suite (tests/e2e/swarm.sh) runs on its own lab of three daemons of
# the same engine (about 5 minutes), not on the machine's dockerd.
ENGINE_E2E_SUITES="user_story firewall options docker28 restart swarm"

# wait_for TRIES INTERVAL CMD...: runs CMD until it succeeds, at most TRIES
# times, INTERVAL seconds apart; fails when it never did.
wait_for() {
  local tries=$1 interval=$2 i
  shift 2
  for ((i = 0; i < tries; i++)); do
    "$@" && return 0
    sleep "$interval"
  done
  return 1
}

docker_ready() { timeout 5 docker info >/dev/null 2>&1; }
plugin_socket_ready() { [ -S "$RB_SOCKET" ]; }
process_gone() { ! kill -0 "$1" 2>/dev/null; }

# The machine's running dockerd's pid, from its pidfile (`pidof dockerd` would
# also find the swarm lab's daemons, scripts/swarm-lab.sh); empty when none runs.
running_dockerd() {
  local p
  p=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then echo "$p"; fi
}

# stop_pid PID: SIGTERM, up to 30 s to exit, then SIGKILL.
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  wait_for 60 0.5 process_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
}
