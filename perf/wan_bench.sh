#!/usr/bin/env bash
# WAN link benchmark (issue 4), one run on one machine, through ferry-wan-emu:
#   1. full read of a mixed VMDK (random, text, zeros) over 100 Mbit/s, 40 ms RTT: bytes that
#      crossed the WAN vs the image's virtual and allocated size, and the copy time;
#   2. sequential read of incompressible data: WAN bytes per second vs the link rate;
#   3. latency of 4 KiB demand reads at QD 1, idle link vs while background streaming fills it.
# Writes perf/results/wan-latest.md. Usage: perf/wan_bench.sh   (FERRY=path, RATE_MBIT, RTT_MS)
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=$(readlink -f "${FERRY:-build/ferry}")
EMU=$(dirname "$FERRY")/ferry-wan-emu
RATE=${RATE_MBIT:-100}
RTT=${RTT_MS:-40}
# Kernel send buffer of the dc-edge WAN socket (--wan-sndbuf-kib). ferry-wan-emu ends TCP at the
# proxy, so here a buffer below the link's bandwidth-delay product costs no throughput; on a real
# WAN it must be >= rate x RTT (SNDBUF_KIB=bdp picks that). Default 256 KiB.
SNDBUF_KIB=${SNDBUF_KIB:-256}
if [ "$SNDBUF_KIB" = bdp ]; then
  SNDBUF_KIB=$(awk -v r="${RATE_MBIT:-100}" -v t="${RTT_MS:-40}" 'BEGIN{printf "%d", r*1e6/8*t/1000/1024}')
fi
TMP=$(mktemp -d /tmp/ferry-wanbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_log() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for '$2' in $1"; cat "$1"; exit 1; }
scripts/make-test-pki.sh "$TMP/pki" >/dev/null
PKI=$TMP/pki
IQN=iqn.2026-11.io.ferry:cloud

# Images: mixed.raw (256 MiB: 48 MiB random, 48 MiB of text/log-like data, rest zero) and
# random.raw (64 MiB incompressible).
/usr/bin/python3 - "$TMP" <<'PY'
import os, sys, random
d = sys.argv[1]
with open(f"{d}/mixed.raw", "wb") as f:
    f.truncate(256 << 20)
    f.seek(0); f.write(os.urandom(48 << 20))
    rnd = random.Random(1)
    words = [b"kernel", b"systemd", b"ext4", b"mount", b"eth0", b"disk", b"error", b"ok", b"user", b"cron"]
    lines = []
    size = 0
    while size < 48 << 20:
        l = b"2026-11-26 %02d:%02d:%02d host %s[%d]: %s %s %s\n" % (rnd.randrange(24), rnd.randrange(60), rnd.randrange(60),
            rnd.choice(words), rnd.randrange(1, 99999), rnd.choice(words), rnd.choice(words), rnd.choice(words))
        lines.append(l); size += len(l)
    f.seek(128 << 20); f.write(b"".join(lines)[:48 << 20])
with open(f"{d}/random.raw", "wb") as f:
    f.write(os.urandom(64 << 20))
PY
for img in mixed random; do qemu-img convert -f raw -O vmdk "$TMP/$img.raw" "$TMP/$img.vmdk"; done
alloc=$(qemu-img map --output=json -f vmdk "$TMP/mixed.vmdk" | /usr/bin/python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')

P_NBD=$(free_port)
qemu-nbd -f vmdk -r -b 127.0.0.1 -p "$P_NBD" -t -x mixed "$TMP/mixed.vmdk" >"$TMP/qnbd1.log" 2>&1 & PIDS+=($!)
P_NBD2=$(free_port)
qemu-nbd -f vmdk -r -b 127.0.0.1 -p "$P_NBD2" -t -x random "$TMP/random.vmdk" >"$TMP/qnbd2.log" 2>&1 & PIDS+=($!)
sleep 0.5
P_WAN=$(free_port)
"$FERRY" dc-edge --listen 127.0.0.1:$P_WAN --volume "mixed=nbd://127.0.0.1:$P_NBD/mixed" \
  --volume "random=nbd://127.0.0.1:$P_NBD2/random" --rate-limit-mbit "$(awk -v r="$RATE" 'BEGIN{print r*0.95}')" \
  --wan-sndbuf-kib "$SNDBUF_KIB" \
  --tls-cert "$PKI/dc-edge-cert.pem" \
  --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" >"$TMP/dc.log" 2>&1 & DC=$!; PIDS+=($DC)
wait_log "$TMP/dc.log" 'dc-edge listening'

run_chain() {  # run_chain NAME VOLUME [cloud-edge args]; sets EMU_PID CLOUD_PID P_ISCSI
  local name=$1 vol=$2; shift 2
  local pe; pe=$(free_port)
  "$EMU" --listen 127.0.0.1:$pe --connect 127.0.0.1:$P_WAN --rtt-ms "$RTT" --rate-mbit "$RATE" \
    --stats-file "$TMP/$name-emu.json" >"$TMP/$name-emu.log" 2>&1 & EMU_PID=$!; PIDS+=($EMU_PID)
  wait_log "$TMP/$name-emu.log" listening
  P_ISCSI=$(free_port)
  "$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --dc 127.0.0.1:$pe --volume "$vol" \
    --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" \
    --dc-name dc-edge "$@" >"$TMP/$name-cloud.log" 2>&1 & CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  wait_log "$TMP/$name-cloud.log" 'ferry: listening on'
}
stop_chain() {
  kill "$CLOUD_PID"; wait "$CLOUD_PID" 2>/dev/null || true
  sleep 0.2
  kill "$EMU_PID"; wait "$EMU_PID" 2>/dev/null || true
}
emu_down_bytes() {  # bytes the emulator delivered toward the cloud edge (dc → cloud)
  /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["target_to_client"]["bytes_delivered"])' "$1"
}
now() { date +%s.%N; }

# 1. full read of the mixed image
run_chain full mixed
t0=$(now); qemu-img convert -f raw -O raw "iscsi://127.0.0.1:$P_ISCSI/$IQN/0" "$TMP/full.out"; t1=$(now)
cmp "$TMP/full.out" "$TMP/mixed.raw" && same=yes || same=NO
stop_chain
full_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
full_wire=$(emu_down_bytes "$TMP/full-emu.json")
full_stats=$(grep '^volume mixed: read' "$TMP/full-cloud.log" || true)
full_payload=$(sed -n 's/.* for \([0-9]*\) B of payload.*/\1/p' <<<"$full_stats")

# 2. sequential read of incompressible data
run_chain seq random --compression none
t0=$(now); qemu-img convert -f raw -O raw "iscsi://127.0.0.1:$P_ISCSI/$IQN/0" "$TMP/seq.out"; t1=$(now)
stop_chain
seq_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
seq_wire=$(emu_down_bytes "$TMP/seq-emu.json")
seq_mbit=$(awk -v b="$seq_wire" -v s="$seq_s" 'BEGIN{printf "%.1f", b*8/s/1e6}')
seq_pct=$(awk -v m="$seq_mbit" -v r="$RATE" 'BEGIN{printf "%.0f", 100*m/r}')

# 3. 4 KiB demand-read latency, idle and during background streaming of the random volume
bench_lat() {  # bench_lat URL → average ms per 4 KiB read at QD 1 (40 reads, 1 MiB apart)
  local t0 t1
  t0=$(now); qemu-img bench -f raw -t none -c 40 -d 1 -s 4k -S 1M -o 8M "$1" >/dev/null 2>&1; t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)*1000/40}'
}
run_chain lat random --compression none
lat_idle=$(bench_lat "iscsi://127.0.0.1:$P_ISCSI/$IQN/0")
stop_chain
run_chain latbg random --compression none --stream
sleep 2  # streaming fills the link
lat_busy=$(bench_lat "iscsi://127.0.0.1:$P_ISCSI/$IQN/0")
sleep 1
stop_chain
frame_ms=$(awk -v r="$RATE" 'BEGIN{printf "%.1f", 65536*8/(r*1e6)*1000}')
bound_ms=$(awk -v t="$RTT" -v f="$frame_ms" 'BEGIN{printf "%.1f", 2*t+f}')

out=perf/results/wan-latest.md
mkdir -p perf/results
{
  echo "# WAN link benchmark (ferry-wan-emu: $RATE Mbit/s, $RTT ms RTT)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); machine: $(nproc) CPUs, kernel $(uname -r)"
  echo "- command: \`perf/wan_bench.sh\` (RATE_MBIT=$RATE RTT_MS=$RTT); chain: qemu-nbd (VMDK) → ferry dc-edge → ferry-wan-emu → ferry cloud-edge → iSCSI → qemu-img"
  echo "- dc-edge caps background/prefetch traffic at 95 % of the link rate (\`--rate-limit-mbit\`); demand reads are never held by the cap; WAN socket send buffer $SNDBUF_KIB KiB (\`--wan-sndbuf-kib\`)"
  echo
  echo "| measure | value |"
  echo "|---|---:|"
  echo "| mixed image: virtual size | $((256 << 20)) B |"
  echo "| mixed image: allocated in the VMDK (qemu-img map) | $alloc B |"
  echo "| full read: data frame payload over the WAN | ${full_payload:-?} B |"
  echo "| full read: bytes the emulator carried dc → cloud (TLS, headers incl.) | $full_wire B |"
  echo "| full read: WAN bytes / virtual size | $(awk -v a="$full_wire" 'BEGIN{printf "%.3f", a/(256*1048576)}') |"
  echo "| full read: WAN bytes / allocated size | $(awk -v a="$full_wire" -v b="$alloc" 'BEGIN{printf "%.3f", a/b}') |"
  echo "| full read: time, byte-identical | $full_s s, $same |"
  echo "| sequential read of 64 MiB incompressible: time | $seq_s s |"
  echo "| sequential read: WAN throughput (bytes on the link) | $seq_mbit Mbit/s = $seq_pct % of $RATE Mbit/s |"
  echo "| 4 KiB demand read, QD 1, idle link | $lat_idle ms |"
  echo "| 4 KiB demand read, QD 1, while background streaming fills the link | $lat_busy ms |"
  echo "| bound: 2 RTT + one 64 KiB frame at the link rate | $bound_ms ms |"
  echo
  echo "cloud-edge counters (full read): \`$full_stats\`"
  echo
  kill "$DC"; wait "$DC" 2>/dev/null || true
  echo "dc-edge counters: \`$(grep '^volume' "$TMP/dc.log" | tr '\n' ' ')\`"
} >"$out"
cat "$out"
