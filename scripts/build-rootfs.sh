#!/usr/bin/env bash
# Builds the managed plugin's directory: plugin/build/{config.json,rootfs/}.
# The rootfs holds the statically linked rustbridge binary, and the iptables
# tools (nft and legacy flavours) with exactly the libraries they load.
#   scripts/build-rootfs.sh BINARY OUTDIR
set -euo pipefail
bin=$1
out=$2
root=$out/rootfs
rm -rf "$out"
mkdir -p "$root"/{usr/bin,usr/sbin,etc,run,tmp,var/lib/rustbridge,proc,sys,dev}
install -m 0755 "$bin" "$root/usr/bin/rustbridge"

copy_with_libs() {
  local file=$1
  mkdir -p "$root$(dirname "$file")"
  cp -L "$file" "$root$file"
  ldd "$file" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
  done
}

for multi in /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi; do
  copy_with_libs "$multi"
done
xt=/usr/lib/x86_64-linux-gnu/xtables
mkdir -p "$root$xt"
for ext in "$xt"/*.so; do
  copy_with_libs "$ext"
done
for fam in iptables ip6tables; do
  for tool in "" -save -restore; do
    ln -sf xtables-nft-multi "$root/usr/sbin/$fam-nft$tool"
    ln -sf xtables-legacy-multi "$root/usr/sbin/$fam-legacy$tool"
    # Unsuffixed names: nft, Debian's default since 10.
    ln -sf xtables-nft-multi "$root/usr/sbin/$fam$tool"
  done
done
cp /etc/protocols "$root/etc/protocols"
[ -f /etc/ethertypes ] && cp /etc/ethertypes "$root/etc/ethertypes"
echo "hosts: files" > "$root/etc/nsswitch.conf"
cp "$(dirname "$0")/../plugin/config.json" "$out/config.json"
du -sh "$root" | awk '{print "rootfs size: " $1}'
