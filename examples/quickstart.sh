#!/usr/bin/env bash
# The main job: set everything up, start a real OCI registry (Debian's docker-registry)
# on 127.0.0.1, build a small image locally from the static busybox and put it in that
# registry, pull it with the automatically chosen driver, list it and its layers, build
# an image on it from a Dockerfile and run that, then run containers from it:
# `lamina run --rm IMAGE echo hello`, an interactive shell (its input piped here; add -t
# on a terminal for a real one), and a detached container to list, exec into, read the
# logs of and remove.
#
# QUICKSTART_ROOT=DIR keeps the store in DIR (default: a temporary store, removed at
# the end with the registry). Containers get the default bridge network, lamina0.
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

echo "== lamina build: an image of our own on it, from a Dockerfile"
mkdir -p "$work/app"
echo "a file from the build context" > "$work/app/message.txt"
cat > "$work/app/Dockerfile" <<EOF
FROM $image
WORKDIR /app
COPY message.txt .
RUN echo "built by lamina on \$(uname -m)" > built.txt
CMD ["cat", "/app/message.txt", "/app/built.txt"]
EOF
lamina --root "$root" build -t demo/app:1 "$work/app"
lamina --root "$root" run --rm demo/app:1

echo "== lamina run --rm $image echo hello"
lamina --root "$root" run --rm "$image" echo "hello from $image"

echo "== an interactive shell: lamina run -i --rm $image sh (on a terminal, add -t)"
status=0
lamina --root "$root" run -i --rm --hostname demo "$image" sh <<'EOF' || status=$?
echo "I am $(hostname), pid $$, user $(id -u), in $(pwd)"
ip -4 -o addr show eth0 | awk '{print "my address on the bridge:", $4}'
ps -o pid,comm
exit 3
EOF
echo "the shell's exit status came back: $status"

echo "== a detached container: run -d, ps, exec, logs, rm -f"
lamina --root "$root" run -d --name web "$image" sh -c 'echo "web started"; exec sleep 600'
lamina --root "$root" ps
lamina --root "$root" exec web ps -o pid,comm
lamina --root "$root" logs web
lamina --root "$root" rm -f web

echo "== lamina info"
lamina --root "$root" info
