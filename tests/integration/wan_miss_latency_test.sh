#!/usr/bin/env bash
# Cold-read latency through the cloud edge: a 4 KiB read of ALLOCATED data at queue depth 1
# (fio's nbd engine against the cloud edge's NBD export) over ferry-wan-emu with a 40 ms RTT
# must cost one WAN round trip plus transfer, not two. Regression test for the NBD front end
# asking the device for BLOCK_STATUS before every structured READ: on a RemoteDevice that is a
# second WAN exchange (84 ms per miss instead of ~42 ms). Asserts mean completion latency
# < 1.5 RTT (60 ms). Then the same through --ram-cache-mib: byte-identical copy, warm reads local.
# Usage: wan_miss_latency_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl fio
EMU=$(dirname "$FERRY")/ferry-wan-emu
[ -x "$EMU" ] || skip "ferry-wan-emu not built"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio lacks the nbd engine"
SRC=${FERRY_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
"$SRC/scripts/make-test-pki.sh" "$TMP/pki" >/dev/null || { echo "FAIL: make-test-pki"; exit 1; }
PKI=$TMP/pki
RTT_MS=40

# 16 MiB of random bytes: every 4 KiB block is allocated, none is zero or repeats.
head -c $((16 << 20)) /dev/urandom >"$TMP/raw.img"
P_NBD=$(free_port)
qemu-nbd -f raw -r --shared=4 -b 127.0.0.1 -p "$P_NBD" -t -x disk "$TMP/raw.img" >"$TMP/qemu-nbd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_NBD))" 2>/dev/null && break; sleep 0.1; done

P_WAN=$(free_port)
"$FERRY" dc-edge --listen 127.0.0.1:$P_WAN --volume "disk=nbd://127.0.0.1:$P_NBD/disk" \
  --tls-cert "$PKI/dc-edge-cert.pem" --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" \
  >"$TMP/dc.log" 2>&1 &
DC_PID=$!; PIDS+=($DC_PID)
for _ in $(seq 100); do grep -q 'dc-edge listening' "$TMP/dc.log" && break; sleep 0.05; done
grep -q 'dc-edge listening' "$TMP/dc.log" || { cat "$TMP/dc.log"; echo "FAIL: dc-edge did not start"; exit 1; }

P_EMU=$(free_port)
"$EMU" --listen 127.0.0.1:$P_EMU --connect 127.0.0.1:$P_WAN --rtt-ms $RTT_MS --rate-mbit 100 >"$TMP/emu.log" 2>&1 &
EMU_PID=$!; PIDS+=($EMU_PID)
for _ in $(seq 100); do grep -q 'listening' "$TMP/emu.log" && break; sleep 0.05; done

P_ISCSI=$(free_port)
P_NBDX=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --nbd 127.0.0.1:$P_NBDX --dc 127.0.0.1:$P_EMU --volume disk \
  --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
sleep 0.5

fio --name=r --ioengine=nbd --uri="nbd://127.0.0.1:$P_NBDX/disk" --rw=randread --bs=4k --iodepth=1 \
  --runtime=5 --time_based --output-format=json --output="$TMP/fio.json" >"$TMP/fio.log" 2>&1 ||
  { cat "$TMP/fio.log"; fail "fio failed"; }
read -r n mean_ms p99_ms < <("$PY" - "$TMP/fio.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["read"]
c = j["clat_ns"]
print(j["total_ios"], "%.1f" % (c["mean"] / 1e6), "%.1f" % (c["percentile"].get("99.000000", 0) / 1e6))
PY
)
echo "   $n cold 4 KiB reads at QD 1 over a ${RTT_MS} ms RTT: mean ${mean_ms} ms, p99 ${p99_ms} ms"
if [ "${n:-0}" -gt 10 ] && "$PY" -c "import sys; sys.exit(0 if $mean_ms < 1.5 * $RTT_MS else 1)"; then
  ok "a cold read costs one WAN round trip (mean ${mean_ms} ms < 1.5 x ${RTT_MS} ms)"
else fail "cold read mean ${mean_ms} ms over ${n:-0} reads: more than one WAN round trip"; fi
stop_pid "$CLOUD_PID"

# The same with the RAM cache tier (--ram-cache-mib): a full copy through it (64 KiB requests, 16
# in flight, within the cache's 32 fetches: more would bypass it and not fill it) is byte-identical,
# and afterwards every 4 KiB read is served from memory (far below one RTT).
if command -v nbdcopy >/dev/null; then
  P_NBDX=$(free_port); P_ISCSI=$(free_port)
  "$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --nbd 127.0.0.1:$P_NBDX --dc 127.0.0.1:$P_EMU --volume disk \
    --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --ram-cache-mib 32 \
    --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud2.log" 2>&1 &
  CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  wait_listening "$TMP/cloud2.log" "$CLOUD_PID" || { cat "$TMP/cloud2.log"; echo "FAIL: cloud-edge --ram-cache-mib did not start"; exit 1; }
  if timeout 120 nbdcopy --connections=1 --requests=16 --request-size=65536 "nbd://127.0.0.1:$P_NBDX/disk" "$TMP/out.img" && cmp "$TMP/out.img" "$TMP/raw.img"; then
    ok "copy through the RAM cache is byte-identical"
  else fail "copy through the RAM cache differs or failed"; fi
  fio --name=r --ioengine=nbd --uri="nbd://127.0.0.1:$P_NBDX/disk" --rw=randread --bs=4k --iodepth=1 \
    --runtime=3 --time_based --output-format=json --output="$TMP/fio2.json" >"$TMP/fio2.log" 2>&1 ||
    { cat "$TMP/fio2.log"; fail "fio failed"; }
  read -r n mean_ms p99_ms < <("$PY" - "$TMP/fio2.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["read"]
c = j["clat_ns"]
print(j["total_ios"], "%.3f" % (c["mean"] / 1e6), "%.3f" % (c["percentile"].get("99.000000", 0) / 1e6))
PY
)
  echo "   $n warm 4 KiB reads through the RAM cache: mean ${mean_ms} ms, p99 ${p99_ms} ms"
  if "$PY" -c "import sys; sys.exit(0 if $mean_ms < 0.25 * $RTT_MS else 1)"; then
    ok "warm reads are served by the RAM cache (mean ${mean_ms} ms)"
  else fail "warm reads through the RAM cache still cost a WAN round trip (${mean_ms} ms)"; fi
  stop_pid "$CLOUD_PID"
  grep '^ram cache' "$TMP/cloud2.log" | sed 's/^/   /'
else echo "   nbdcopy not installed: RAM cache phase skipped"; fi
finish
