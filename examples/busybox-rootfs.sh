#!/usr/bin/env bash
# Make a small real root filesystem tarball from the static busybox binary
# (Debian's busybox-static): /bin/busybox, a link per applet, /etc basics.
# Usage: examples/busybox-rootfs.sh OUT.tar
set -euo pipefail
out=${1:?usage: busybox-rootfs.sh OUT.tar}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "no static busybox at $busybox (apt-get install busybox-static)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 0755 "$dir"
mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/run,proc,sys,dev,home}
chmod 1777 "$dir/tmp"
chmod 0700 "$dir/root"
cp "$busybox" "$dir/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$dir/$(dirname "$applet")"
  ln -sf /bin/busybox "$dir/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
echo lamina > "$dir/etc/hostname"
ln -s /run "$dir/var/run-link"
tar --numeric-owner --owner=0 --group=0 -C "$dir" -cf "$out" .
