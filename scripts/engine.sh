#!/usr/bin/env bash
# Other Docker engines, side by side with the machine's own, nothing installed
# system-wide: Debian's docker.io .deb of another suite, fetched with a private
# apt sources list and extracted under /var/cache/rustbridge-engines/SUITE.
#   scripts/engine.sh fetch SUITE        print the extracted root (trixie: 26.1.x, sid: 28.x)
#   scripts/engine.sh fetch-compose      print the path of Debian 13's docker-compose (v2) binary
#   scripts/engine.sh run SUITE CMD...   stop the running dockerd, start SUITE's with its
#                                        own data root, run CMD, then put the machine's
#                                        dockerd back (also when CMD fails)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
cache=/var/cache/rustbridge-engines

fetch() {
  local suite=$1 dir=$cache/$1
  if [ -x "$dir/root/usr/sbin/dockerd" ]; then echo "$dir/root"; return; fi
  download "$suite" docker.io
  rm -rf "$dir/root"
  dpkg-deb -x "$dir"/debs/docker.io_*.deb "$dir/root"
  echo "$dir/root"
}

# download SUITE PACKAGE: the package's .deb of SUITE into $cache/SUITE/debs,
# through a private apt sources list (nothing installed, the system's lists untouched).
download() {
  local suite=$1 pkg=$2 dir=$cache/$1
  mkdir -p "$dir/lists/partial" "$dir/debs"
  # The archive's address comes from the system's own apt configuration.
  local uri
  uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  [ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" "$suite" > "$dir/$suite.sources"
  local opts=(-oDir::Etc::SourceList=/dev/null "-oDir::Etc::SourceParts=$dir" "-oDir::State::Lists=$dir/lists"
              -oDebug::NoLocking=1)
  apt-get "${opts[@]}" update -qq >&2
  rm -f "$dir/debs/${pkg}"_*.deb
  (cd "$dir/debs" && apt-get "${opts[@]}" download "$pkg" >&2)
}

# fetch_compose: Debian 13's docker-compose (v2, a static binary that runs on
# Debian 12), extracted privately; prints the binary's path.
fetch_compose() {
  local dir=$cache/trixie/compose
  local bin=$dir/usr/libexec/docker/cli-plugins/docker-compose
  if [ ! -x "$bin" ]; then
    download trixie docker-compose
    rm -rf "$dir"
    dpkg-deb -x "$cache"/trixie/debs/docker-compose_*.deb "$dir"
  fi
  [ -x "$bin" ] || { echo "no $bin in Debian 13's docker-compose package" >&2; return 1; }
  echo "$bin"
}

# Each engine rewrites its own chains at start but not another engine's (28
# adds DOCKER-FORWARD, DOCKER-CT, DOCKER-BRIDGE and ip6tables rules that 20.10
# would never remove): drop every DOCKER* chain and jump but the user's
# DOCKER-USER before handing the host back.
forget_engine_rules() {
  local tool
  for tool in iptables ip6tables; do
    "$tool-save" 2>/dev/null | python3 -c '
import re, sys
out, table = [], None
chains = []
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("*"):
        table = line; out.append(line); chains = []
    elif line.startswith(":DOCKER") and not line.startswith(":DOCKER-USER "):
        chains.append(line[1:].split()[0])
    elif line.startswith("-A ") and re.search(r" -j DOCKER(?!-USER\b)\S*$", line) and line.split()[1] in ("INPUT","FORWARD","OUTPUT","PREROUTING","POSTROUTING"):
        out.append("-D" + line[2:])
    elif line == "COMMIT":
        out += ["-F " + c for c in chains] + ["-X " + c for c in chains] + ["COMMIT"]
print("\n".join(out))' | "$tool-restore" --noflush 2>/dev/null || true
  done
}

run() {
  local suite=$1; shift
  local root; root=$(fetch "$suite")
  # Globals, not locals: the EXIT trap runs after this function has returned.
  own_bin=""
  own_pid=$(running_dockerd)
  if [ -n "$own_pid" ]; then
    own_bin=$(readlink -f "/proc/$own_pid/exe")
    echo "stopping the machine's dockerd ($own_bin, pid $own_pid)"
    stop_pid "$own_pid"
  fi
  rm -f /run/rustbridge-test/dockerd.pid
  restore() {
    local status=$?
    "$here/dockerd.sh" stop || true
    forget_engine_rules
    if [ -n "$own_bin" ]; then
      PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH "$here/dockerd.sh" start "$own_bin" /var/lib/docker >/dev/null \
        && echo "the machine's dockerd is back"
    fi
    return $status
  }
  trap restore EXIT
  export PATH="$root/usr/sbin:$root/usr/bin:$PATH"
  "$here/dockerd.sh" start "$root/usr/sbin/dockerd" "/var/lib/docker-$suite"
  echo "running on: $(docker version -f 'dockerd {{.Server.Version}} (API {{.Server.APIVersion}})')"
  "$@"
}

cmd=${1:-}; shift || true
case "$cmd" in
  fetch) fetch "$@" ;;
  fetch-compose) fetch_compose ;;
  run) run "$@" ;;
  *) echo "usage: $0 fetch SUITE | fetch-compose | run SUITE CMD..." >&2; exit 2 ;;
esac
