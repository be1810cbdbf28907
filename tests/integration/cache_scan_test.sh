#!/usr/bin/env bash
# The scan test (issue 10, must-show 3): a full-disk sequential read while a hot set is being
# read at random through the cloud edge's cache across the WAN emulator (40 ms RTT, 100 Mbit/s).
#   hot:   4 KiB random reads at QD 1, 100 per second, over the first 24 MiB (384 chunks of
#          64 KiB) of a 128 MiB volume of random bytes; the RAM tier holds 32 MiB (512 chunks)
#   scan:  one sequential pass over the whole volume in 16 KiB reads at QD 1 (so each chunk is
#          read 4 times in a row, and read-ahead recognises the stream and prefetches it)
#   probe: 4 KiB random reads at QD 1, 5 per second, of the last 16 MiB (cold: demand misses)
# Asserts: the hot set's hit ratio while the scan runs stays within 10 % of its ratio before;
# the probe's demand misses are not queued behind the scan's traffic (mean < 1.5 RTT: read-ahead
# keeps about one bandwidth-delay product in flight, so the scan leaves no standing queue in the
# link; with the former 8 MiB window cap a miss cost 2 RTT, 81 ms). A
# hit is a read served in under 10 ms (a miss costs at least one 40 ms RTT); fio's per-I/O
# latency log gives the ratio for the hot reads alone; the cache counters printed at stop give
# the totals. Prints the WAN bytes per direction (ferry-wan-emu --stats-file).
# With LRU, or with S3-FIFO counting a scan's consecutive reads of one chunk as reuse, the hot
# ratio falls by 40-50 points here (perf/cache_sim.cc; cache/DESIGN.md "Scan resistance").
# Usage: cache_scan_test.sh /path/to/ferry   (STACK="readahead:512KiB > ram-cache:32MiB" tries
# another cloud-edge stack instead of the default one with --ram-cache-mib 32)
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
RATE_MBIT=100
SIZE_MIB=128
HOT_MIB=24
CACHE_MIB=32

head -c $((SIZE_MIB << 20)) /dev/urandom >"$TMP/raw.img"  # incompressible: the scan costs the link
P_NBD=$(free_port)
qemu-nbd -f raw -r --shared=8 -b 127.0.0.1 -p "$P_NBD" -t -x disk "$TMP/raw.img" >"$TMP/qemu-nbd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_NBD))" 2>/dev/null && break; sleep 0.1; done

P_WAN=$(free_port)
"$FERRY" dc-edge --listen 127.0.0.1:$P_WAN --volume "disk=nbd://127.0.0.1:$P_NBD/disk" \
  --rate-limit-mbit $((RATE_MBIT * 95 / 100)) --wan-sndbuf-kib 256 \
  --tls-cert "$PKI/dc-edge-cert.pem" --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" \
  >"$TMP/dc.log" 2>&1 &
DC_PID=$!; PIDS+=($DC_PID)
for _ in $(seq 100); do grep -q 'dc-edge listening' "$TMP/dc.log" && break; sleep 0.05; done
grep -q 'dc-edge listening' "$TMP/dc.log" || { cat "$TMP/dc.log"; echo "FAIL: dc-edge did not start"; exit 1; }

P_EMU=$(free_port)
"$EMU" --listen 127.0.0.1:$P_EMU --connect 127.0.0.1:$P_WAN --rtt-ms $RTT_MS --rate-mbit $RATE_MBIT \
  --stats-file "$TMP/emu.json" >"$TMP/emu.log" 2>&1 &
EMU_PID=$!; PIDS+=($EMU_PID)
for _ in $(seq 100); do grep -q 'listening' "$TMP/emu.log" && break; sleep 0.05; done

if [ -n "${STACK:-}" ]; then CACHE_ARGS=(--layers "$STACK"); else CACHE_ARGS=(--ram-cache-mib $CACHE_MIB); fi
P_ISCSI=$(free_port)
P_NBDX=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --nbd 127.0.0.1:$P_NBDX --dc 127.0.0.1:$P_EMU --volume disk \
  --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge "${CACHE_ARGS[@]}" \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
URI="nbd://127.0.0.1:$P_NBDX/disk"

hot() {  # hot NAME SECONDS: the hot-set reader, per-I/O latency log in $TMP/NAME_clat.1.log
  fio --name="$1" --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=1 --size=${HOT_MIB}m \
    --rate_iops=100 --runtime="$2" --time_based --write_lat_log="$TMP/$1" --log_avg_msec=0 \
    --output-format=json --output="$TMP/$1.json" >"$TMP/$1.log" 2>&1
}
# hit_ratio NAME: "hits reads ratio mean_ms" of a latency log (hit = served in under 10 ms).
hit_ratio() {
  "$PY" - "$TMP/${1}_clat.1.log" <<'PY'
import sys
lat = [int(l.split(",")[1]) / 1e6 for l in open(sys.argv[1]) if l.strip()]
hits = sum(1 for x in lat if x < 10)
print(hits, len(lat), "%.3f" % (hits / max(len(lat), 1)), "%.1f" % (sum(lat) / max(len(lat), 1)))
PY
}

# Warm: the hot set once sequentially (read-ahead fills it), then a minute's worth of hot reads at
# full speed so every hot chunk has been reused.
fio --name=warm --ioengine=nbd --uri="$URI" --rw=read --bs=64k --iodepth=4 --size=${HOT_MIB}m \
  --output-format=json >"$TMP/warm.log" 2>&1 || { cat "$TMP/warm.log"; fail "warm-up read failed"; }
fio --name=warm2 --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=4 --size=${HOT_MIB}m \
  --runtime=3 --time_based --output-format=json >"$TMP/warm2.log" 2>&1 || fail "warm-up hot reads failed"

hot before 5 || fail "hot reader (before) failed"
read -r h0 n0 r0 m0 < <(hit_ratio before)
echo "   before the scan: $h0 of $n0 hot reads were hits ($r0), mean ${m0} ms"

# The scan, and while it runs the hot reader and the cold probe.
t0=$(date +%s.%N)
fio --name=scan --ioengine=nbd --uri="$URI" --rw=read --bs=16k --iodepth=1 --runtime=120 \
  --output-format=json --output="$TMP/scan.json" >"$TMP/scan.log" 2>&1 &
SCAN_PID=$!; PIDS+=($SCAN_PID)
sleep 1
fio --name=probe --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=1 \
  --offset=$(((SIZE_MIB - 16) << 20)) --size=16m --rate_iops=5 --runtime=6 --time_based \
  --output-format=json --output="$TMP/probe.json" >"$TMP/probe.log" 2>&1 &
PROBE_PID=$!; PIDS+=($PROBE_PID)
hot during 6 || fail "hot reader (during) failed"
wait "$PROBE_PID" || fail "probe failed"
kill -0 "$SCAN_PID" 2>/dev/null && scan_running=yes || scan_running=no
wait "$SCAN_PID" || fail "scan failed"
t1=$(date +%s.%N)
read -r h1 n1 r1 m1 < <(hit_ratio during)
echo "   during the scan: $h1 of $n1 hot reads were hits ($r1), mean ${m1} ms (scan still running at the end: $scan_running)"
read -r scan_mb scan_s probe_n probe_mean probe_p99 < <("$PY" - "$TMP/scan.json" "$TMP/probe.json" <<'PY'
import json, sys
def job(p):
    t = open(p).read(); return json.loads(t[t.index("{"):])["jobs"][0]["read"]
s, p = job(sys.argv[1]), job(sys.argv[2])
print("%.1f" % (s["io_bytes"] / 1e6), "%.1f" % (s["runtime"] / 1e3), p["total_ios"],
      "%.1f" % (p["clat_ns"]["mean"] / 1e6), "%.1f" % (p["clat_ns"]["percentile"]["99.000000"] / 1e6))
PY
)
echo "   scan: $scan_mb MB in $scan_s s; cold probe during the scan: $probe_n reads, mean ${probe_mean} ms, p99 ${probe_p99} ms"
[ "$scan_running" = yes ] || echo "   note: the scan ended before the hot reader: part of 'during' ran after it"

if "$PY" -c "import sys; sys.exit(0 if $n0 > 100 and $n1 > 100 and $r1 >= 0.9 * $r0 else 1)"; then
  ok "the hot set's hit ratio stays within 10 % during the scan ($r0 -> $r1)"
else fail "the scan displaced the hot set: hit ratio $r0 before, $r1 during"; fi
if "$PY" -c "import sys; sys.exit(0 if $probe_n >= 10 and $probe_mean < 1.5 * $RTT_MS else 1)"; then
  ok "demand misses are not pushed behind the scan (mean ${probe_mean} ms < 1.5 x ${RTT_MS} ms)"
else fail "demand misses waited behind the scan: mean ${probe_mean} ms over $probe_n reads"; fi

stop_pid "$CLOUD_PID"
stop_pid "$EMU_PID"
grep -E '^(ram cache|readahead)' "$TMP/cloud.log" | sed 's/^/   /'
# How much of the link the scan took: bytes it read that were not cached (the hot region was).
"$PY" - "$TMP/emu.json" "$scan_mb" "$scan_s" "$HOT_MIB" "$RATE_MBIT" <<'PY' | sed 's/^/   /'
import json, sys
d = json.load(open(sys.argv[1]))
scan_mb, scan_s, hot_mib, rate = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
wan_mb = scan_mb - hot_mib * 1.048576
print("WAN dc->cloud %.1f MB in all; the scan's uncached %.1f MB in %.1f s = %.1f Mbit/s, %.0f %% of the link"
      % (d["target_to_client"]["bytes_delivered"] / 1e6, wan_mb, scan_s, wan_mb * 8 / scan_s, 100 * wan_mb * 8 / scan_s / rate))
PY
finish
