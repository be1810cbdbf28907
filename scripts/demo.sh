#!/usr/bin/env bash
# The main job in one command: installs what is missing, builds, and runs `ferry demo` (an iSCSI
# target with a 1 GiB RAM LUN on 127.0.0.1:3260, NBD export on 127.0.0.1:10809), then shows a
# real client using it: discovery, writing a disk image with qemu-img, reading it back.
# Keeps serving until Ctrl-C; DEMO_SECONDS=N stops it after N seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh

args=()
[ -n "${DEMO_SECONDS:-}" ] && args+=(--duration "$DEMO_SECONDS")
log=$(mktemp /tmp/ferry-demo.XXXXXX.log)
build/ferry demo "${args[@]}" 2> >(tee "$log" >&2) &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$log" /tmp/ferry-demo-*.img' EXIT INT TERM
for _ in $(seq 100); do grep -q 'ferry demo is serving' "$log" && break; kill -0 "$pid" || exit 1; sleep 0.1; done

url=iscsi://127.0.0.1:3260/iqn.2026-11.io.ferry:target/0
echo
echo "== discovery: iscsi-ls -s iscsi://127.0.0.1:3260"
iscsi-ls -s iscsi://127.0.0.1:3260
echo "== a 64 MiB sample image written into LUN 0 with qemu-img, then compared through iSCSI"
head -c 32M /dev/urandom >/tmp/ferry-demo-src.img
truncate -s 64M /tmp/ferry-demo-src.img
qemu-img convert -n -f raw -O raw /tmp/ferry-demo-src.img "$url"
qemu-img compare -f raw -F raw /tmp/ferry-demo-src.img "$url"
echo "== the same volume over NBD: nbdinfo nbd://127.0.0.1:10809/lun0"
nbdinfo nbd://127.0.0.1:10809/lun0 | grep -E 'export-size|block_size|can_' | head -8 || true
echo
echo "ferry demo keeps serving (PID $pid); Ctrl-C stops it."
wait "$pid"
