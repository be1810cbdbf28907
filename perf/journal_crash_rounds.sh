#!/usr/bin/env bash
# Many kill -9 rounds of the cloud edge under a checksummed write load (issue 11, "must show" 1,
# the >= 100 part; tests/integration/journal_crash_test.sh runs 3 in CI and is reused here: its
# writer/verifier blocks.py). qemu-nbd (raw) → ferry dc-edge --redo-dir → ferry cloud-edge
# --journal-dir (--nbd) ← random 4 KiB writes, 16 in flight, every block carrying its number, a
# sequence number and a CRC32; the writer records what was acknowledged. Each round: restart the
# cloud edge on the same journal, verify every acknowledged block reads back (its last acknowledged
# sequence number or a later one), write for a random 0.2 .. 2.5 s, kill -9. At the end: a clean
# stop drains the journal, the raw image must equal what the initiator read and hold every
# acknowledged block. Prints the count of rounds, of acknowledged writes and of losses.
# Usage: perf/journal_crash_rounds.sh [/path/to/ferry]   (ROUNDS=100)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../tests/integration/lib.sh" "${1:-$here/../build/ferry}"
ROUNDS=${ROUNDS:-100}
need qemu-nbd openssl
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed (scripts/install-deps.sh)"
make_pki
# The writer and verifier of the CI test, unchanged.
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
start_dc_edge dc --lease-ms 500 --redo-dir "$TMP/redo" --redo-mib 64
P_NBD=$(free_port)
P_ISCSI=$(free_port)
URI="nbd://127.0.0.1:$P_NBD/disk"
lease_retries=0
start_cloud() {  # retried while the dc-edge has not yet seen the killed process's connection go
  local attempt
  for attempt in $(seq 20); do
    start_cloud_once && return 0
    grep -q 'attached by another process' "$TMP/cloud.log" || break
    lease_retries=$((lease_retries + 1))
    sleep 0.25
  done
  cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1
}
start_cloud_once() {
  : >"$TMP/cloud.log"  # (else the wait below may still read the killed process's "listening" line)
  "$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --nbd 127.0.0.1:$P_NBD --dc 127.0.0.1:$P_WAN \
    --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --journal-dir "$TMP/journals" \
    --journal-mib 32 --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
    >"$TMP/cloud.log" 2>&1 &
  CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  wait_listening "$TMP/cloud.log" "$CLOUD_PID"
}
keep_log() { echo "=== round $1" >>"$TMP/cloud-all.log"; cat "$TMP/cloud.log" >>"$TMP/cloud-all.log"; }

t0=$(date +%s)
lost_rounds=0
replayed=0
writes=0
for round in $(seq "$ROUNDS"); do
  start_cloud
  if [ "$round" -gt 1 ]; then
    n=$(grep -o 'replayed [0-9]* records' "$TMP/cloud.log" | grep -o '[0-9]*' || echo 0)
    replayed=$((replayed + n))
    if ! "$PY" "$TMP/blocks.py" verify "$URI" $BLOCKS "$TMP/acked.json" >"$TMP/verify.log" 2>&1; then
      lost_rounds=$((lost_rounds + 1))
      fail "round $round: $(tail -3 "$TMP/verify.log")"
      echo "cloud edge log:"; tail -20 "$TMP/cloud.log"
    fi
  fi
  "$PY" "$TMP/blocks.py" write "$URI" 5 $BLOCKS $((round * 1000000000)) "$TMP/acked.json" >"$TMP/writer.log" 2>&1 &
  WRITER_PID=$!; PIDS+=($WRITER_PID)
  sleep "$("$PY" -c 'import random; print(round(random.uniform(0.2, 2.5), 2))')"
  kill -9 "$CLOUD_PID"; wait "$CLOUD_PID" 2>/dev/null
  wait "$WRITER_PID"
  keep_log "$round"
  w=$(grep -o '[0-9][0-9]*' "$TMP/writer.log" | head -1)
  writes=$((writes + ${w:-0}))
  [ $((round % 10)) -eq 0 ] && echo "round $round: $(tr '\n' ' ' <"$TMP/writer.log")"
done
start_cloud
"$PY" "$TMP/blocks.py" verify "$URI" $BLOCKS "$TMP/acked.json" >"$TMP/verify.log" 2>&1 || {
  lost_rounds=$((lost_rounds + 1))
  fail "after the last kill: $(cat "$TMP/verify.log")"
}
"$PY" -c "
import nbd; h = nbd.NBD(); h.connect_uri('$URI')
open('$TMP/initiator.img', 'wb').write(b''.join(h.pread(4 << 20, o) for o in range(0, 64 << 20, 4 << 20)))
h.shutdown()"
stop_pid "$CLOUD_PID"
grep -q 'journals drained to the datacenter edge' "$TMP/cloud.log" || fail "clean stop did not drain the journal"
stop_pid "$DC_PID"
stop_pid "$SRC_PID"
cmp -s "$TMP/initiator.img" "$TMP/disk.raw" || fail "on-prem raw image differs from what the initiator read"
"$PY" "$TMP/blocks.py" verify "$TMP/disk.raw" $BLOCKS "$TMP/acked.json" >"$TMP/verify.log" 2>&1 ||
  fail "the image file: $(cat "$TMP/verify.log")"
acked=$("$PY" -c "import json; print(len(json.load(open('$TMP/acked.json'))))")
echo "result: $ROUNDS kill -9 rounds of the cloud edge in $(($(date +%s) - t0)) s; $writes writes acknowledged ($acked distinct" \
  "blocks, each one's last value checked after every restart); $replayed journal records replayed in total; rounds with a lost or" \
  "corrupt acknowledged block: $lost_rounds; after the drain the on-prem image $( [ "$FAILED" -eq 0 ] && echo equals || echo DIFFERS FROM) what the initiator reads; restarts retried because the dc-edge still saw the killed process's connection: $lease_retries"
finish
