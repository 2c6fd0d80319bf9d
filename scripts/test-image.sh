#!/usr/bin/env bash
# Builds the local test image rustbridge-test/busybox:2 from busybox-static
# (no image can be pulled here). Idempotent.
set -euo pipefail
image=${IMAGE:-rustbridge-test/busybox:2}
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/proc" "$dir/sys" "$dir/dev"
cp /bin/busybox "$dir/bin/busybox"
# busybox has no UDP server: add a static one of our own.
root=$(cd "$(dirname "$0")/.." && pwd)
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --example udp_echo --target x86_64-unknown-linux-gnu)
cp "${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/release/examples/udp_echo" "$dir/bin/udp-echo"
for applet in $("$dir/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$dir/etc/passwd"
tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$image" >/dev/null
echo "built $image"
