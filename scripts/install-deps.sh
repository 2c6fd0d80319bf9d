#!/usr/bin/env bash
# Installs what rustbridge's build, demo and tests need on Debian, skipping what is there.
set -euo pipefail

# nftables: the nft tool, for the tests' view of the plugin's table (the plugin itself speaks netlink).
packages=(docker.io iptables nftables iproute2 busybox-static curl iputils-ping jq kmod python3 python3-prometheus-client docker-compose)
[ "${WITH_REGISTRY:-0}" = 1 ] && packages+=(docker-registry)
# make bench: the chart (matplotlib) and the throughput test (iperf3, copied into a local image).
[ "${WITH_BENCH:-0}" = 1 ] && packages+=(python3-matplotlib iperf3)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # docker.io's postinst may try to start a service; there is no init system here, that's fine.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
modprobe br_netfilter 2>/dev/null || true
modprobe veth 2>/dev/null || true
modprobe bridge 2>/dev/null || true
