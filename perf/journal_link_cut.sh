#!/usr/bin/env bash
# A long WAN link cut during writes through the cloud edge's journal (issue 11, "must show" 4,
# the link-cut part): qemu-nbd (raw) → ferry dc-edge --redo-dir → ferry-wan-emu (RATE_MBIT 100,
# RTT_MS 40; the link is cut CUT_S = 60 s from CUT_AT_S = 8 s, connections reset) → ferry
# cloud-edge --journal-dir (--nbd) ← the checksummed writer of journal_crash_test.sh (random
# 4 KiB writes, 16 in flight, WRITE_S seconds). Must hold: the writer sees no error (writes go on
# into the journal while it has space, then wait, never fail), the journal ships everything once
# the link is back, every acknowledged block is on the on-prem image after the drain, and the
# image equals what the initiator reads. Prints the writer's count, the write-back lag and the
# epoch counters at the clean stop.
# Usage: perf/journal_link_cut.sh [/path/to/ferry]   (CUT_AT_S=8 CUT_S=60 WRITE_S=80)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../tests/integration/lib.sh" "${1:-$here/../build/ferry}"
EMU=$(dirname "$FERRY")/ferry-wan-emu
[ -x "$EMU" ] || { echo "FAIL: $EMU not built"; exit 1; }
RATE=${RATE_MBIT:-100}
RTT=${RTT_MS:-40}
CUT_AT=${CUT_AT_S:-8}
CUT=${CUT_S:-60}
WRITE_S=${WRITE_S:-80}
need qemu-nbd openssl
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed (scripts/install-deps.sh)"
make_pki
sed -n "/^cat >\"\$TMP\/blocks.py\" <<'PY'$/,/^PY$/p" "$here/../tests/integration/journal_crash_test.sh" | sed '1d;$d' >"$TMP/blocks.py"
grep -q 'def verify' "$TMP/blocks.py" || { echo "cannot extract blocks.py from journal_crash_test.sh"; exit 1; }

BLOCKS=4096
truncate -s 64M "$TMP/disk.raw"
P_SRC=$(free_port)
qemu-nbd -f raw -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
SRC_PID=$!; PIDS+=($SRC_PID)
for i in $(seq 100); do
  "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break
  sleep 0.05
done
mkdir -p "$TMP/redo" "$TMP/journals"
start_dc_edge dc --redo-dir "$TMP/redo" --redo-mib 128 --lease-ms $(((CUT + 30) * 1000)) --idle-timeout-ms 600000
P_EMU=$(free_port)
"$EMU" --listen 127.0.0.1:$P_EMU --connect 127.0.0.1:$P_WAN --rtt-ms "$RTT" --rate-mbit "$RATE" \
  --cut-at-s "$CUT_AT" --cut-for-s "$CUT" --cut-mode reset >"$TMP/emu.log" 2>&1 &
EMU_PID=$!; PIDS+=($EMU_PID)
for i in $(seq 100); do grep -q listening "$TMP/emu.log" && break; sleep 0.05; done
P_NBD=$(free_port)
URI="nbd://127.0.0.1:$P_NBD/disk"
"$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --nbd 127.0.0.1:$P_NBD --dc 127.0.0.1:$P_EMU \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --journal-dir "$TMP/journals" \
  --journal-mib 256 --journal-drain-s 120 --tls-cert "$PKI/cloud-edge-cert.pem" \
  --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
t0=$(date +%s)
"$PY" "$TMP/blocks.py" write "$URI" "$WRITE_S" $BLOCKS 1000000000 "$TMP/acked.json" >"$TMP/writer.log" 2>&1
rc=$?
t1=$(date +%s)
[ $rc -eq 0 ] && ok "writer ran $((t1 - t0)) s across a ${CUT} s link cut without an error: $(cat "$TMP/writer.log")" ||
  fail "the writer saw an error during the link cut: $(tail -2 "$TMP/writer.log")"
"$PY" -c "
import nbd; h = nbd.NBD(); h.connect_uri('$URI')
open('$TMP/initiator.img', 'wb').write(b''.join(h.pread(4 << 20, o) for o in range(0, 64 << 20, 4 << 20)))
h.shutdown()"
stop_pid "$CLOUD_PID"
grep -q 'journals drained to the datacenter edge' "$TMP/cloud.log" && ok "drained: $(grep 'journal disk' "$TMP/cloud.log")" ||
  { fail "the journal did not drain"; tail -5 "$TMP/cloud.log"; }
grep -E 'link (down|back)|failing|retrying|works again' "$TMP/cloud.log" | head -6 | sed 's/^/  cloud-edge: /'
stop_pid "$EMU_PID"
stop_pid "$DC_PID"
stop_pid "$SRC_PID"
cmp -s "$TMP/initiator.img" "$TMP/disk.raw" && ok "on-prem raw image equals what the initiator read" ||
  fail "on-prem raw image differs from what the initiator read"
"$PY" "$TMP/blocks.py" verify "$TMP/disk.raw" $BLOCKS "$TMP/acked.json" && ok "every acknowledged block is on-prem" ||
  fail "acknowledged blocks missing on-prem"
finish
