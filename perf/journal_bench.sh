#!/usr/bin/env bash
# Write-back journal benchmark (issue 11, "must show" 4, first part), one machine:
#   qemu-nbd (raw, writable) → ferry dc-edge → ferry-wan-emu (RATE_MBIT, RTT_MS) → ferry cloud-edge
#   (--nbd) ← a python3/libnbd writer: 4 KiB random writes over a 256 MiB volume,
#   QD 1 for SECONDS (latency p50/p99) and QD 32 for SECONDS (IOPS),
# once with the cloud edge's default stack (each write crosses the WAN before it is acknowledged)
# and once with --journal-dir (acknowledged once durable in the local journal). The journal's
# write-back lag and drain time at the clean stop are printed from the cloud edge's log.
# Usage: perf/journal_bench.sh   (FERRY=path, RATE_MBIT=100, RTT_MS=40, SECONDS_EACH=8)
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=$(readlink -f "${FERRY:-build/ferry}")
EMU=$(dirname "$FERRY")/ferry-wan-emu
RATE=${RATE_MBIT:-100}
RTT=${RTT_MS:-40}
SECS=${SECONDS_EACH:-8}
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/ferry-jbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_log() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for '$2' in $1"; cat "$1"; exit 1; }
scripts/make-test-pki.sh "$TMP/pki" >/dev/null
PKI=$TMP/pki
truncate -s 256M "$TMP/disk.raw"
P_SRC=$(free_port)
qemu-nbd -f raw -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qnbd.log" 2>&1 & PIDS+=($!)
sleep 0.5
P_WAN=$(free_port)
"$FERRY" dc-edge --listen 127.0.0.1:$P_WAN --volume "disk=nbd://127.0.0.1:$P_SRC/disk" \
  --tls-cert "$PKI/dc-edge-cert.pem" --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" \
  --lease-ms 500 --redo-dir "$TMP" >"$TMP/dc.log" 2>&1 & PIDS+=($!)
wait_log "$TMP/dc.log" 'dc-edge listening'
P_EMU=$(free_port)
"$EMU" --listen 127.0.0.1:$P_EMU --connect 127.0.0.1:$P_WAN --rtt-ms "$RTT" --rate-mbit "$RATE" \
  >"$TMP/emu.log" 2>&1 & PIDS+=($!)
wait_log "$TMP/emu.log" listening

cat >"$TMP/w.py" <<'PY'
import random, sys, time
import nbd
uri, qd, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
h = nbd.NBD(); h.connect_uri(uri)
blocks = h.get_size() // 4096
rnd = random.Random(qd)
buf = nbd.Buffer.from_bytearray(bytearray(random.randbytes(4096)))
lat, inflight = [], {}
t0 = time.time(); end = t0 + secs
while time.time() < end or inflight:
    while len(inflight) < qd and time.time() < end:
        inflight[h.aio_pwrite(buf, rnd.randrange(blocks) * 4096)] = time.perf_counter()
    h.poll(1000)
    for c in list(inflight):
        if h.aio_command_completed(c):
            lat.append(time.perf_counter() - inflight.pop(c))
el = time.time() - t0
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
print(f"QD {qd}: {len(lat)} writes in {el:.1f} s = {len(lat)/el:.0f} IOPS, latency p50 {p(.5):.2f} ms p99 {p(.99):.2f} ms")
h.shutdown()
PY

for mode in plain journal; do
  P_NBD=$(free_port)
  extra=()
  [ $mode = journal ] && extra=(--journal-dir "$TMP" --journal-mib 1024)
  "$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --nbd 127.0.0.1:$P_NBD --dc 127.0.0.1:$P_EMU \
    --volume disk --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
    --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge "${extra[@]}" >"$TMP/cloud-$mode.log" 2>&1 & CLOUD=$!; PIDS+=($CLOUD)
  wait_log "$TMP/cloud-$mode.log" 'ferry: listening on'
  echo "== $mode ($([ $mode = journal ] && echo 'journal > readahead > ram-cache' || echo 'readahead > ram-cache'), WAN ${RATE} Mbit/s ${RTT} ms)"
  for qd in 1 32; do $PY "$TMP/w.py" "nbd://127.0.0.1:$P_NBD/disk" $qd "$SECS"; done
  t0=$(date +%s.%N)
  kill "$CLOUD"; wait "$CLOUD" 2>/dev/null || true
  if [ $mode = journal ]; then
    echo "clean stop with drain took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
    grep -E 'draining journals|drained|journal disk' "$TMP/cloud-$mode.log" | sed 's/^ferry: //' | head -3
  fi
done
