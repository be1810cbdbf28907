#!/usr/bin/env bash
# Each daemon stopped with SIGTERM under write load (issue 14: shutdown waited on fixed sleeps —
# "in-flight I/O drains" — instead of counting in-flight I/O to zero). A writer (blocks.py:
# 16 checksummed 4 KiB writes in flight) runs against
#   1. ferry target (file LUN behind a 20 ms delay layer, so writes are in flight at the stop),
#      through its NBD export, and the target gets SIGTERM;
#   2. ferry cloud-edge (NBD export) → dc-edge → qemu-nbd, and the cloud-edge gets SIGTERM;
#   3. the same pipeline, and the dc-edge gets SIGTERM (the cloud edge gives up after 2 s).
# Must hold each time: the daemon exits 0 within the bound (its drain timeout, 10 s, + 2 s), logs
# no connection left undrained, and every write the writer saw acknowledged is in the image (read
# from the source after a cloud-edge stop, from the file once everything has stopped; a write
# still in flight at the stop may be there or not).
# Usage: shutdown_under_load_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed (scripts/install-deps.sh)"
BOUND_MS=12000
BLOCKS=4096  # 16 MiB of 4 KiB blocks

# term_and_time NAME PID LOG: SIGTERM, wait (bounded), check exit 0 within BOUND_MS.
term_and_time() {
  local name=$1 pid=$2 log=$3 t0 ms rc=0 i
  t0=$(date +%s%N)
  kill -TERM "$pid"
  for i in $(seq $((BOUND_MS / 50 + 20))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  if kill -0 "$pid" 2>/dev/null; then
    fail "$name still running ${ms} ms after SIGTERM"; kill -9 "$pid"; wait "$pid" 2>/dev/null; return
  fi
  wait "$pid"; rc=$?
  [ $rc -eq 0 ] && [ $ms -le $BOUND_MS ] && ok "$name exited 0 ${ms} ms after SIGTERM under load (bound ${BOUND_MS} ms)" ||
    { fail "$name: exit $rc after ${ms} ms"; tail -5 "$log"; }
  grep -q 'still open after' "$log" && fail "$name left I/O undrained: $(grep -m1 'still open after' "$log")"
}
writer_start() {  # writer_start URI TAG: sets WRITER_PID
  "$PY" "$here/blocks.py" write "$1" 30 $BLOCKS "$TMP/acked-$2.json" >"$TMP/writer-$2.log" 2>&1 &
  WRITER_PID=$!; PIDS+=($WRITER_PID)
  local i
  for i in $(seq 100); do [ -s "$TMP/writer-$2.log" ] && break; sleep 0.05; done  # bounded
}
writer_wait() {  # writer_wait TAG: the writer ends on the stopped daemon's error (bounded)
  local i
  for i in $(seq 300); do kill -0 "$WRITER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$WRITER_PID" 2>/dev/null && { fail "$1: writer still running 30 s after the stop"; kill -9 "$WRITER_PID"; }
  wait "$WRITER_PID" 2>/dev/null
  n=$("$PY" -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$TMP/acked-$1.json" 2>/dev/null)
  [ -n "$n" ] && [ "$n" -gt 0 ] && ok "$1: the writer had $n blocks acknowledged before the stop" ||
    { fail "$1: no acknowledged writes recorded"; cat "$TMP/writer-$1.log"; }
}
verify_file() {  # verify_file TAG FILE
  "$PY" "$here/blocks.py" verify "$2" $BLOCKS "$TMP/acked-$1.json" && ok "$1: every acknowledged block is in the image" ||
    fail "$1: acknowledged blocks missing or wrong in the image"
}

# ---------------------------------------------------------------- 1. ferry target
truncate -s 64M "$TMP/target.raw"
P_NBD=$(free_port)
start_ferry target --listen 127.0.0.1:$(free_port) --lun "file:$TMP/target.raw" --nbd 127.0.0.1:$P_NBD \
  --layers delay:20ms --threads 2
writer_start "nbd://127.0.0.1:$P_NBD/lun0" target
sleep 2  # load for a while (test pacing)
term_and_time "ferry target" "$FERRY_PID" "$TMP/target.log"
writer_wait target
verify_file target "$TMP/target.raw"

# ---------------------------------------------------------------- 2./3. the edges
make_pki
truncate -s 64M "$TMP/disk.raw"
P_SRC=$(free_port)
qemu-nbd -f raw --shared=8 -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
SRC_PID=$!; PIDS+=($SRC_PID)
for _ in $(seq 100); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break; sleep 0.05; done
start_dc_edge dc
start_cloud() {  # start_cloud TAG: sets CLOUD_PID, URI
  local p=$(free_port)
  "$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --nbd 127.0.0.1:$p --dc 127.0.0.1:$P_WAN \
    --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --give-up-s 2 \
    --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud-$1.log" 2>&1 &
  CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  wait_listening "$TMP/cloud-$1.log" "$CLOUD_PID" || { cat "$TMP/cloud-$1.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
  URI="nbd://127.0.0.1:$p/disk"
}

start_cloud c1
writer_start "$URI" cloud
sleep 2
term_and_time "ferry cloud-edge" "$CLOUD_PID" "$TMP/cloud-c1.log"
writer_wait cloud
verify_file cloud "nbd://127.0.0.1:$P_SRC/disk"  # at the source, before run 3 rewrites the disk

start_cloud c2
writer_start "$URI" dc
sleep 2
term_and_time "ferry dc-edge" "$DC_PID" "$TMP/dc.log"
writer_wait dc
stop_pid "$CLOUD_PID"
stop_pid "$SRC_PID"  # qemu-nbd writes its cache back on SIGTERM
verify_file dc "$TMP/disk.raw"
finish
