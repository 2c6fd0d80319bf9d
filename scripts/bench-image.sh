#!/usr/bin/env bash
# Builds the local image rustbridge-bench/iperf3:1 for `make bench` (no image
# can be pulled here): busybox-static plus Debian's iperf3 and the libraries it
# loads (found with ldd). Idempotent.
set -euo pipefail
image=${IPERF_IMAGE:-rustbridge-bench/iperf3:1}
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
iperf=$(command -v iperf3) || { echo "bench-image: iperf3 is not installed (WITH_BENCH=1 scripts/install-deps.sh)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/proc" "$dir/sys" "$dir/dev"
cp /bin/busybox "$dir/bin/busybox"
for applet in $("$dir/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
done
cp "$iperf" "$dir/bin/iperf3"
# Every library iperf3 loads, and the dynamic loader, at the paths ldd names.
for lib in $(ldd "$iperf" | grep -o '/[^ ]*'); do
  mkdir -p "$dir$(dirname "$lib")"
  cp -L "$lib" "$dir$lib"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$dir/etc/passwd"
chmod 1777 "$dir/tmp"
tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$image" >/dev/null
echo "built $image"
