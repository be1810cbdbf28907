#!/usr/bin/env bash
# The main job in one command: installs what is missing, builds, and runs `ferry demo` — the whole
# pipeline on one machine: a sample VMDK served by qemu-nbd → ferry dc-edge → WAN emulator
# (100 Mbit/s, 40 ms RTT) → ferry cloud-edge → iSCSI on 127.0.0.1:3260 (NBD on :10809), read and
# written with qemu-img/qemu-io, then what crossed the WAN. Keeps serving until Ctrl-C;
# DEMO_SECONDS=N stops it N seconds after the walkthrough.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
args=()
[ -n "${DEMO_SECONDS:-}" ] && args+=(--duration "$DEMO_SECONDS")
exec build/ferry demo "${args[@]}"
