#!/usr/bin/env bash
# Boot-trace replay (issue 10): the reads a real Debian 12 VM made while booting
# (../shared/traces/debian12-boot-reads.csv, 3,394 reads, 76 MiB) replayed in order at QD 1
# (perf/boot_replay.py, libnbd) against:
#   local      qemu-nbd on this machine (the VM's disk is local)
#   naive      the same qemu-nbd through ferry-wan-emu (remote block access across the WAN)
#   ferry-nc   qemu-nbd → dc-edge → WAN → cloud-edge without cache or read-ahead (--ram-cache-mib 0)
#   ferry      the default cloud edge (prefetch-map > readahead > ram-cache:256MiB): first boot,
#              then a second boot through the same edges, then a boot through a fresh cloud edge
#              (empty cache) that replays the access map the dc-edge learned during the first
# Each Ferry case starts on a fresh dc-edge (no access map yet), so "first boot" is one.
# Every replayed byte is checked against the image. The disk is a 4 GiB sparse raw image with
# random (incompressible) data wherever the trace reads. Writes perf/results/boot-latest.md.
# Usage: perf/boot_bench.sh   (FERRY=path, RATE_MBIT=100, RTT_MS=40, TRACE=..., LIMIT=N reads)
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=$(readlink -f "${FERRY:-build/ferry}")
EMU=$(dirname "$FERRY")/ferry-wan-emu
RATE=${RATE_MBIT:-100}
RTT=${RTT_MS:-40}
TRACE=$(readlink -f "${TRACE:-../shared/traces/debian12-boot-reads.csv}")
LIMIT=${LIMIT:-0}
# THINK=1: replay with the recorded think time (closest to a real boot; the naive and no-cache
# cases are skipped, they take minutes); default: back to back (worst case for latency).
THINK=${THINK:-0}
THINK_ARG=(); [ "$THINK" = 1 ] && THINK_ARG=(--think)
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/ferry-bootbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_log() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for '$2' in $1"; cat "$1"; exit 1; }
scripts/make-test-pki.sh "$TMP/pki" >/dev/null
PKI=$TMP/pki

$PY - "$TRACE" "$TMP/disk.raw" <<'PY'
import csv, os, sys
trace, path = sys.argv[1], sys.argv[2]
with open(path, "wb") as f:
    f.truncate(4 << 30)
    for row in csv.DictReader(open(trace)):
        off, n = int(row["offset"]), int(row["length"])
        f.seek(off); f.write(os.urandom(n))
PY
P_NBD=$(free_port)
qemu-nbd -f raw -r --shared=16 -b 127.0.0.1 -p "$P_NBD" -t -x disk "$TMP/disk.raw" >"$TMP/qnbd.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do $PY -c "import socket; socket.create_connection(('127.0.0.1',$P_NBD))" 2>/dev/null && break; sleep 0.1; done
start_dc() {  # a fresh dc-edge (in-memory access maps: none yet); sets P_WAN DC_PID
  P_WAN=$(free_port)
  "$FERRY" dc-edge --listen 127.0.0.1:$P_WAN --volume "disk=nbd://127.0.0.1:$P_NBD/disk" \
    --tls-cert "$PKI/dc-edge-cert.pem" --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" \
    --lease-ms 1000 >"$TMP/dc-$1.log" 2>&1 & DC_PID=$!; PIDS+=($DC_PID)
  wait_log "$TMP/dc-$1.log" 'dc-edge listening'
}
stop_dc() { kill "$DC_PID"; wait "$DC_PID" 2>/dev/null || true; }

replay() {  # replay NAME URI → JSON line in $TMP/NAME.json
  $PY perf/boot_replay.py "$TRACE" "$1" --verify "$TMP/disk.raw" --limit "$LIMIT" "${THINK_ARG[@]}" >"$TMP/$2.json"
  echo "$2: $(cat "$TMP/$2.json")" >&2
}
start_emu() {  # start_emu NAME TARGET_PORT; sets P_EMU EMU_PID
  P_EMU=$(free_port)
  "$EMU" --listen 127.0.0.1:$P_EMU --connect 127.0.0.1:$2 --rtt-ms "$RTT" --rate-mbit "$RATE" \
    --stats-file "$TMP/$1-emu.json" >"$TMP/$1-emu.log" 2>&1 & EMU_PID=$!; PIDS+=($EMU_PID)
  wait_log "$TMP/$1-emu.log" listening
}
stop_emu() { kill "$EMU_PID"; wait "$EMU_PID" 2>/dev/null || true; }
emu_down() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["target_to_client"]["bytes_delivered"])' "$TMP/$1-emu.json"; }
start_cloud() {  # start_cloud NAME [args]; sets P_CN CLOUD_PID (through the emulator at P_EMU)
  local name=$1; shift
  P_CN=$(free_port)
  "$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --nbd 127.0.0.1:$P_CN --dc 127.0.0.1:$P_EMU --volume disk \
    --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" \
    --dc-name dc-edge "$@" >"$TMP/$name-cloud.log" 2>&1 & CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  wait_log "$TMP/$name-cloud.log" 'ferry: listening on'
}
stop_cloud() { kill "$CLOUD_PID"; wait "$CLOUD_PID" 2>/dev/null || true; }

replay "nbd://127.0.0.1:$P_NBD/disk" local

if [ "$THINK" != 1 ]; then
  start_emu naive "$P_NBD"
  replay "nbd://127.0.0.1:$P_EMU/disk" naive
  stop_emu

  start_dc nc
  start_emu ferry-nc "$P_WAN"
  start_cloud ferry-nc --ram-cache-mib 0
  replay "nbd://127.0.0.1:$P_CN/disk" ferry-nc
  stop_cloud; stop_emu; stop_dc
fi

start_dc cold
start_emu ferry-cold "$P_WAN"
start_cloud ferry-cold
replay "nbd://127.0.0.1:$P_CN/disk" ferry-cold
stop_cloud; stop_emu; stop_dc
cold_stats=$(grep -E '^(readahead|ram cache) disk' "$TMP/ferry-cold-cloud.log" || true)

start_dc chain
start_emu ferry "$P_WAN"
start_cloud ferry
replay "nbd://127.0.0.1:$P_CN/disk" ferry-first
replay "nbd://127.0.0.1:$P_CN/disk" ferry-second
stop_cloud; stop_emu
warm_stats=$(grep -E '^(readahead|ram cache) disk' "$TMP/ferry-cloud.log" || true)
start_emu ferry-fresh "$P_WAN"
start_cloud ferry-fresh
replay "nbd://127.0.0.1:$P_CN/disk" ferry-fresh
stop_cloud; stop_emu; stop_dc
fresh_stats=$(grep -E '^(prefetch-map|readahead|ram cache) disk' "$TMP/ferry-fresh-cloud.log" || true)

j() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$TMP/$1.json" "$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
L=$(j local total_s)
out=perf/results/boot-latest.md
[ "$THINK" = 1 ] && out=perf/results/boot-think-${RATE}mbit-${RTT}ms.md
mkdir -p perf/results
{
  echo "# Boot-trace replay ($RATE Mbit/s, $RTT ms RTT, ferry-wan-emu)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); machine: $(nproc) CPUs, kernel $(uname -r)"
  echo "- command: \`THINK=$THINK perf/boot_bench.sh\`; trace $(basename "$TRACE") ($(j local reads) reads, $(j local bytes) B), replayed in order at QD 1$([ "$THINK" = 1 ] && echo " with the recorded think time"), every byte verified"
  echo
  echo "| case | total s | boot loader s (first 2,466 reads) | rest s | × local | WAN bytes dc → cloud |"
  echo "|---|---:|---:|---:|---:|---:|"
  cases=(local naive ferry-nc ferry-cold); [ "$THINK" = 1 ] && cases=(local ferry-cold)
  for c in "${cases[@]}"; do
    case $c in local) w="—";; *) w=$(emu_down "$c");; esac
    echo "| $c | $(j $c total_s) | $(j $c loader_s) | $(j $c rest_s) | $(ratio "$(j $c total_s)" "$L") | $w |"
  done
  echo "| ferry, first boot (same chain as below) | $(j ferry-first total_s) | $(j ferry-first loader_s) | $(j ferry-first rest_s) | $(ratio "$(j ferry-first total_s)" "$L") | |"
  echo "| ferry, second boot, same edges | $(j ferry-second total_s) | $(j ferry-second loader_s) | $(j ferry-second rest_s) | $(ratio "$(j ferry-second total_s)" "$L") | both boots: $(emu_down ferry) |"
  echo "| ferry, boot through a fresh cloud edge (access map replayed) | $(j ferry-fresh total_s) | $(j ferry-fresh loader_s) | $(j ferry-fresh rest_s) | $(ratio "$(j ferry-fresh total_s)" "$L") | $(emu_down ferry-fresh) |"
  echo
  echo "Cloud-edge counters, first boot alone:"
  echo
  echo '```'
  echo "$cold_stats"
  echo '```'
  echo
  echo "Both boots through one cloud edge:"
  echo
  echo '```'
  echo "$warm_stats"
  echo '```'
  echo
  echo "Fresh cloud edge (the dc-edge's access map replayed at attach):"
  echo
  echo '```'
  echo "$fresh_stats"
  echo '```'
} >"$out"
cat "$out"
