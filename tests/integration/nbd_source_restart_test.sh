#!/usr/bin/env bash
# The dc-edge's NBD source restarts under write load (issue 15 item 6): qemu-nbd (raw file,
# default writeback cache) → ferry dc-edge → ferry cloud-edge (its --nbd export) ← a writer
# doing random 4 KiB writes, 16 in flight, each block carrying its block number, a sequence
# number and a CRC32. While it runs, qemu-nbd is killed (-9 once, SIGTERM once; only the PID
# this test started) and restarted on the same port after ~1.5 s. Must hold: the writer sees no
# error, the dc-edge logs the outage and the reconnect, and afterwards every acknowledged block
# is present and intact with its last acknowledged sequence number — read back through the
# pipeline, and in the image file itself once everything has stopped. Catches: a dc-edge that
# never reconnects (all I/O failing until it is restarted), requests lost or failed across the
# restart, a write acknowledged but never re-sent. About 30 s.
# Usage: nbd_source_restart_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed (scripts/install-deps.sh)"
make_pki

BLOCKS=4096  # 16 MiB of 4 KiB blocks
truncate -s 64M "$TMP/disk.raw"
P_SRC=$(free_port)
start_source() {  # start_source N: qemu-nbd on $P_SRC (same port every time); sets SRC_PID
  qemu-nbd -f raw -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd$1.log" 2>&1 &
  SRC_PID=$!; PIDS+=($SRC_PID)
  local i
  for i in $(seq 100); do
    "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && return 0
    sleep 0.05
  done
  cat "$TMP/qemu-nbd$1.log"; echo "FAIL: qemu-nbd did not start"; exit 1
}
start_source 1
start_dc_edge dc
P_NBD=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --nbd 127.0.0.1:$P_NBD --dc 127.0.0.1:$P_WAN \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
URI="nbd://127.0.0.1:$P_NBD/disk"


"$PY" "$here/blocks.py" write "$URI" 14 $BLOCKS "$TMP/acked.json" >"$TMP/writer.log" 2>&1 &
WRITER_PID=$!; PIDS+=($WRITER_PID)

sleep 3
kill -9 "$SRC_PID"; wait "$SRC_PID" 2>/dev/null
ok "qemu-nbd killed -9 under the writer"
sleep 1.5
start_source 2
sleep 3
kill -TERM "$SRC_PID"; wait "$SRC_PID" 2>/dev/null
ok "qemu-nbd stopped with SIGTERM under the writer"
sleep 1.5
start_source 3

wait "$WRITER_PID"; rc=$?
cat "$TMP/writer.log"
[ $rc -eq 0 ] && ok "the writer saw no error across two source restarts" ||
  fail "the writer saw an error (exit $rc)"
n_up=$(grep -c 'source up again' "$TMP/dc.log")
[ "$n_up" -eq 2 ] && ok "dc-edge reconnected twice: $(grep 'source up again' "$TMP/dc.log" | sed 's/.*: source/source/' | tr '\n' ' ')" ||
  { fail "dc-edge logged $n_up reconnects, want 2"; tail -20 "$TMP/dc.log"; }
n_state=$(grep -cE 'source down|reconnecting|source up again' "$TMP/dc.log")
[ "$n_state" -eq 6 ] && ok "one log line per state change (down, reconnecting, up) × 2" ||
  fail "$n_state state-change lines, want 6 (one per change, none per attempt)"
grep -q 'fail with' "$TMP/cloud.log" && fail "cloud-edge failed requests: $(grep -m1 'fail with' "$TMP/cloud.log")"

"$PY" "$here/blocks.py" verify "$URI" $BLOCKS "$TMP/acked.json" && ok "read back through the pipeline" ||
  fail "read back through the pipeline"
stop_pid "$CLOUD_PID"
stop_pid "$DC_PID"
stop_pid "$SRC_PID"
"$PY" "$here/blocks.py" verify "$TMP/disk.raw" $BLOCKS "$TMP/acked.json" && ok "the image file holds every acknowledged block" ||
  fail "the image file lost acknowledged blocks"
finish
