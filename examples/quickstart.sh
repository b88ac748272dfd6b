#!/usr/bin/env bash
# The main job at this stage of lamina: set everything up, import a real root
# filesystem tarball as a layer with the automatically chosen driver, stack a
# writable layer on it, mount it, show what changed, and print `lamina info`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
lamina() { .venv/bin/lamina "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash examples/busybox-rootfs.sh "$work/rootfs.tar"

echo "== import a busybox rootfs as a layer"
base=$(lamina --trace layer apply "$work/rootfs.tar")
echo "base layer: $base"

echo "== a writable layer on top, mounted"
top=$(lamina layer create --rw --parent "$base")
path=$(lamina layer mount "$top")
echo "mounted at $path"
ls "$path"
"$path/bin/busybox" echo "busybox from the layer runs: $("$path/bin/busybox" | head -1)"
echo "written in the container layer" > "$path/root/hello.txt"
rm "$path/etc/hostname"

echo "== changes of the writable layer"
lamina layer changes "$top"
lamina layer unmount "$top"

echo "== layers"
lamina layer ls
echo "== lamina info"
lamina info
lamina layer rm "$top" "$base" >/dev/null
