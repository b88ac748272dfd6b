#!/usr/bin/env bash
# The main job at this stage of lamina: set everything up, start a real OCI registry
# (Debian's docker-registry) on 127.0.0.1, build a small image locally from the static
# busybox and put it in that registry, then pull it with the automatically chosen
# driver, list it, show its layers and the space it takes, and run a binary from it.
#
# QUICKSTART_ROOT=DIR keeps the pulled image in DIR (default: a temporary store,
# removed at the end with the registry).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
lamina() { .venv/bin/lamina "$@"; }

work=$(mktemp -d)
registry_pid=
cleanup() {
  status=$?
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
  if [ -z "${QUICKSTART_ROOT:-}" ]; then lamina --root "$work/store" system reset --force >/dev/null || true; fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
root=${QUICKSTART_ROOT:-$work/store}

echo "== a registry on 127.0.0.1"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "docker-registry listening on 127.0.0.1:$port"
image=127.0.0.1:$port/demo/busybox:latest

echo "== build a small image from busybox-static and put it in the registry"
bash examples/busybox-rootfs.sh "$work/rootfs.tar"
# a build store of its own: the image is made there, saved as an OCI layout, copied up
lamina --root "$work/build" import -m "busybox-static" -c 'CMD ["sh"]' "$work/rootfs.tar" "$image"
lamina --root "$work/build" save --format oci-dir -o "$work/oci" "$image"
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$work/oci" "docker://$image"

echo "== lamina pull $image"
lamina --root "$root" pull "$image"
echo "== lamina images"
lamina --root "$root" images --digests
echo "== its layers"
lamina --root "$root" history "$image"
lamina --root "$root" layer ls
echo "== lamina system df -v"
lamina --root "$root" system df -v

echo "== a binary from the image, through a mount of its top layer"
top=$(lamina --root "$root" inspect "$image" | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)[0]["GraphDriver"]["Data"]["Layers"][-1])')
path=$(lamina --root "$root" layer mount "$top")
"$path/bin/busybox" echo "hello from $image"
lamina --root "$root" layer unmount "$top"
echo "== lamina info"
lamina --root "$root" info
