#!/usr/bin/env bash
# A test clone end to end (issue 11 policies): cloud-edge --policy disk=test-clone over qemu-nbd ->
# dc-edge (redo log). Writes through the clone are read back through it, the on-prem image never
# changes (also not at the clean stop), and the next start (write-back) discards the clone's
# writes: the volume reads as the untouched on-prem image again and nothing is shipped.
# Usage: policy_test_clone_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl nbdcopy md5sum
make_pki
dd if=/dev/urandom of="$TMP/disk.raw" bs=1M count=8 status=none
cp "$TMP/disk.raw" "$TMP/source.raw"
P_SRC=$(free_port)
qemu-nbd -f raw --shared=8 -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
PIDS+=($!)
for i in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break; sleep 0.1; done
mkdir -p "$TMP/redo" "$TMP/j"
start_dc_edge dc --redo-dir "$TMP/redo" --redo-mib 64
p_nbd=$(free_port); p_iscsi=$(free_port)
start_cloud() {  # start_cloud LOG [--policy ...]
  local log=$1; shift
  "$FERRY" cloud-edge --listen 127.0.0.1:$p_iscsi --nbd 127.0.0.1:$p_nbd --dc 127.0.0.1:$P_WAN \
    --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
    --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
    --ram-cache-mib 0 --journal-dir "$TMP/j" --journal-mib 64 --journal-drain-s 10 "$@" >"$TMP/$log" 2>&1 &
  CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  wait_listening "$TMP/$log" "$CLOUD_PID" || { cat "$TMP/$log"; echo "FAIL: cloud-edge did not start"; exit 1; }
}
start_cloud clone.log --policy disk=test-clone
[ -e "$TMP/j/disk.journal.clone" ] && ok "clone marker written" || fail "no clone marker"
head -c 4194304 /dev/urandom >"$TMP/w.raw"
timeout 60 nbdcopy "$TMP/w.raw" "nbd://127.0.0.1:$p_nbd" || fail "write through the clone"
timeout 60 nbdcopy "nbd://127.0.0.1:$p_nbd" "$TMP/clone_read.raw" || fail "read through the clone"
cmp -s <(head -c 4194304 "$TMP/clone_read.raw") "$TMP/w.raw" &&
  cmp -s <(tail -c +4194305 "$TMP/clone_read.raw") <(tail -c +4194305 "$TMP/source.raw") &&
  ok "the clone reads its own writes over the on-prem data" || fail "the clone's read differs"
sleep 2  # several epoch time bounds
cmp -s "$TMP/disk.raw" "$TMP/source.raw" && ok "on-prem image untouched while the clone runs" || fail "on-prem changed"
stop_pid "$CLOUD_PID" >/dev/null
cmp -s "$TMP/disk.raw" "$TMP/source.raw" && ok "on-prem image untouched after the clone's stop" || fail "on-prem changed at stop"
start_cloud after.log
grep -q 'discarding the writes of the test clone that ended' "$TMP/after.log" && ok "the next start discards the clone's writes" ||
  fail "no discard: $(grep journal "$TMP/after.log")"
[ -e "$TMP/j/disk.journal.clone" ] && fail "clone marker left" || ok "clone marker removed"
timeout 60 nbdcopy "nbd://127.0.0.1:$p_nbd" "$TMP/after_read.raw" || fail "read after the clone"
cmp -s "$TMP/after_read.raw" "$TMP/source.raw" && ok "after the clone the volume reads as the on-prem image" ||
  fail "the clone's writes are still seen"
stop_pid "$CLOUD_PID" >/dev/null
stop_pid "$DC_PID" >/dev/null
cmp -s "$TMP/disk.raw" "$TMP/source.raw" && ok "on-prem image still untouched (nothing of the clone shipped)" ||
  fail "the clone's writes reached on-prem"
finish
