#!/usr/bin/env bash
# Journal policy changed at runtime under I/O (issue 13 must-show 2, issue 11 policies): qemu-nbd
# -> dc-edge (redo log) -> cloud-edge (journal) with a checksummed writer on the cloud edge's NBD
# export. `ferry ctl set-policy disk cloud-persist` mid-load: the on-prem image must then stop
# changing while the writer goes on; back to write-back it catches up, and after the drain at a
# clean stop it is byte-identical to what the initiator read and holds every acknowledged block.
# Then write-back pause (image unchanged), flush refused while paused, resume, flush. The writer
# must see no error. Then the RAM cache's budget under the writer and a reader: shrunk to 4 MiB
# (what it holds stays within it), dropped, grown back, above its ceiling 409; no read or write
# error. Then the write-back rate cap (8 Mbit/s: what is written back stays near it) and the RPO
# target (1 s: the lag is past it, counted, logged, and the cap is lifted). Also the endpoint's refusals (409 test-clone, 400, 404, 401) and its answers against
# mgmt/openapi.yaml.
# Usage: policy_runtime_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl nbdcopy curl md5sum
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"
make_pki
BLOCKS=2048  # 8 MiB
dd if=/dev/urandom of="$TMP/disk.raw" bs=1M count=8 status=none
P_SRC=$(free_port)
qemu-nbd -f raw --shared=8 -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
PIDS+=($!)
for i in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break; sleep 0.1; done
head -c 24 /dev/urandom | base64 | tr -d '=/+' >"$TMP/token"; chmod 600 "$TMP/token"
token=$(cat "$TMP/token")
mkdir -p "$TMP/redo"
start_dc_edge dc --redo-dir "$TMP/redo" --redo-mib 64
p_nbd=$(free_port); p_iscsi=$(free_port); m_cloud=$(free_port)
mkdir -p "$TMP/j"
"$FERRY" cloud-edge --listen 127.0.0.1:$p_iscsi --nbd 127.0.0.1:$p_nbd --dc 127.0.0.1:$P_WAN \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
  --ram-cache-mib 32 --journal-dir "$TMP/j" --journal-mib 1024 --journal-drain-s 60 \
  --mgmt-listen 127.0.0.1:$m_cloud --mgmt-token-file "$TMP/token" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
ctl() { "$FERRY" ctl --mgmt 127.0.0.1:$m_cloud --mgmt-token-file "$TMP/token" "$@"; }
api() { curl -s -o "$TMP/body.json" -w '%{http_code}' -H "Authorization: Bearer $token" "$@"; }
journal_field() { ctl --json volume disk | "$PY" -c "import json,sys; print(json.load(sys.stdin)['journal']['$1'])"; }

# 4000 writes/s: the journal (1 GiB, 8 KiB a record) holds the cloud-persist part with room.
"$PY" "$here/blocks.py" write "nbd://127.0.0.1:$p_nbd" 24 $BLOCKS "$TMP/acked.json" 4000 >"$TMP/writer.log" 2>&1 &
WRITER=$!
sleep 2
out=$(ctl set-policy disk cloud-persist 2>&1) && ok "ctl set-policy disk cloud-persist: $out" || fail "set-policy: $out"
[ "$(journal_field policy)" = cloud-persist ] && ok "the volume shows policy cloud-persist" || fail "policy not shown"
sleep 2  # the epoch in flight at the change commits (epochs close within 1 s)
before=$(md5sum <"$TMP/disk.raw"); used0=$(journal_field used_bytes)
sleep 3
after=$(md5sum <"$TMP/disk.raw"); used1=$(journal_field used_bytes)
[ "$before" = "$after" ] && ok "cloud-persist: the on-prem image did not change for 3 s under writes" ||
  fail "the on-prem image changed under cloud-persist"
[ "$used1" -gt "$used0" ] 2>/dev/null && ok "cloud-persist: the journal keeps the writes (used $used0 -> $used1 B)" ||
  fail "journal use did not grow ($used0 -> $used1)"
kill -0 $WRITER 2>/dev/null || fail "the writer ended early: $(cat "$TMP/writer.log")"

# Refusals while the writer runs (none of them may change anything).
code=$(api -X PUT --data '{"policy": "test-clone"}' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/policy")
cp "$TMP/body.json" "$TMP/409.json"
[ "$code" = 409 ] && ok "cloud-persist -> test-clone refused: 409 $(cat "$TMP/body.json")" || fail "test-clone: $code"
code=$(api -X PUT --data '{"policy": "writeback"}' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/policy")
cp "$TMP/body.json" "$TMP/400.json"
[ "$code" = 400 ] && ok "unknown policy: 400" || fail "unknown policy: $code"
code=$(api -X PUT --data '{"policy": ' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/policy")
[ "$code" = 400 ] && ok "malformed JSON: 400" || fail "malformed JSON: $code"
code=$(api -X PUT --data '{"policy": "write-back"}' "http://127.0.0.1:$m_cloud/api/v1/volumes/nope/policy")
cp "$TMP/body.json" "$TMP/404.json"
[ "$code" = 404 ] && ok "unknown volume: 404" || fail "unknown volume: $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data '{"policy": "write-back"}' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/policy")
[ "$code" = 401 ] && ok "no token: 401" || fail "no token: $code"
[ "$(journal_field policy)" = cloud-persist ] || fail "a refused request changed the policy"
ctl set-policy disk test-clone >"$TMP/ctl409.log" 2>&1 && fail "ctl set-policy test-clone succeeded" ||
  ok "ctl set-policy disk test-clone fails: $(cat "$TMP/ctl409.log")"

code=$(api -X PUT --data '{"policy": "write-back"}' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/policy")
cp "$TMP/body.json" "$TMP/200.json"
[ "$code" = 200 ] && ok "back to write-back: 200" || fail "back to write-back: $code $(cat "$TMP/body.json")"
sleep 2
[ "$(md5sum <"$TMP/disk.raw")" != "$after" ] && ok "write-back: the on-prem image changes again" ||
  fail "write-back did not resume"
# Pause / resume / flush of write-back under the same load.
out=$(ctl write-back disk pause 2>&1) && ok "ctl write-back disk pause: $out" || fail "pause: $out"
[ "$(journal_field write_back_paused)" = True ] && ok "the volume shows write-back paused" || fail "pause not shown"
sleep 1.5
paused0=$(md5sum <"$TMP/disk.raw"); sleep 2; paused1=$(md5sum <"$TMP/disk.raw")
[ "$paused0" = "$paused1" ] && ok "paused: the on-prem image did not change for 2 s under writes" ||
  fail "the on-prem image changed while paused"
code=$(api -X POST --data "" "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/write-back/flush")
[ "$code" = 409 ] && ok "flush while paused: 409 $(cat "$TMP/body.json")" || fail "flush while paused: $code"
code=$(api -X POST --data "" "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/write-back/resume")
cp "$TMP/body.json" "$TMP/post200.json"
[ "$code" = 200 ] && ok "resume: 200" || fail "resume: $code"
out=$(ctl write-back disk flush 2>&1) && ok "ctl write-back disk flush: $out" || fail "flush: $out"
sleep 1
[ "$(md5sum <"$TMP/disk.raw")" != "$paused1" ] && ok "resumed: the on-prem image changes again" ||
  fail "write-back did not resume after pause"
# Write-back rate cap and RPO target under the same writer (about 16 MB/s of writes).
out=$(ctl write-back-limits disk --rate-mbit 8 --rpo-s 0 2>&1) &&
  [ "$(journal_field write_back_rate_bytes_per_s)" = 1000000 ] && [ "$(journal_field rpo_target_ms)" = 0 ] &&
  ok "ctl write-back-limits disk --rate-mbit 8 --rpo-s 0: $out" || fail "write-back-limits: $out"
sleep 1  # what was in flight at the change completes
wb0=$(journal_field written_back_bytes); sleep 3; wb1=$(journal_field written_back_bytes)
lag=$(journal_field write_back_lag_ms)
shipped=$((wb1 - wb0))
# 3 s at 1 MB/s, the bucket (100 ms of the cap, or one 64 KiB piece) and the pieces in flight.
[ "$shipped" -le $((3 * 1000000 * 3 / 2 + (1 << 20))) ] && [ "$lag" -gt 1000 ] &&
  ok "capped at 8 Mbit/s: $shipped B written back in 3 s, lag ${lag} ms and growing" ||
  fail "rate cap: $shipped B in 3 s, lag $lag ms"
code=$(api -X PUT --data '{"rpo_s": 1}' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/write-back")
cp "$TMP/body.json" "$TMP/limits200.json"
[ "$code" = 200 ] && ok "RPO target 1 s: 200" || fail "rpo: $code $(cat "$TMP/body.json")"
sleep 2
misses=$(journal_field rpo_misses)
wb2=$(journal_field written_back_bytes)
[ "$misses" -ge 1 ] && [ $((wb2 - wb1)) -gt "$shipped" ] &&
  ok "lag past the 1 s target: counted ($misses), cap lifted ($((wb2 - wb1)) B written back in about 2 s)" ||
  fail "RPO target: misses $misses, $((wb2 - wb1)) B after the target"
grep -q 'write-back lag past the RPO target (1000 ms): the write-back rate cap is lifted' "$TMP/cloud.log" &&
  ok "logged: $(grep -m1 'past the RPO target' "$TMP/cloud.log")" || fail "no RPO log line"
for body in '{"rate_mbit": -1}' '{"bogus": 1}' '{}' '{"rpo_s": "x"}'; do
  code=$(api -X PUT --data "$body" "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/write-back")
  [ "$code" = 400 ] || fail "write-back limits $body: $code (want 400)"
done
cp "$TMP/body.json" "$TMP/limits400.json"
ok "write-back limits: malformed bodies are 400"
code=$(api -X PUT --data '{"rpo_s": 1}' "http://127.0.0.1:$m_cloud/api/v1/volumes/nope/write-back")
[ "$code" = 404 ] && ok "write-back limits of an unknown volume: 404" || fail "limits unknown volume: $code"
out=$(ctl write-back-limits disk --rate-mbit 0 --rpo-s 30 2>&1) && [ "$(journal_field write_back_rate_bytes_per_s)" = 0 ] &&
  ok "back to no cap, 30 s target: $out" || fail "limits reset: $out"
# The RAM cache's budget changed under the same writer plus a reader of the whole disk.
(for i in $(seq 100); do
   timeout 30 nbdcopy --connections=1 --requests=8 "nbd://127.0.0.1:$p_nbd" null: 2>>"$TMP/reader.err" || echo "round $i: $?" >>"$TMP/reader.fail"
 done) &
READER=$!; PIDS+=($READER)
sleep 0.5
ram_field() { ctl --json volume disk | "$PY" -c "import json,sys; t=json.load(sys.stdin)['cache'][0]; assert t['tier']=='ram'; print(t['$1'])"; }
out=$(ctl cache disk --ram-mib 4 2>&1) && [ "$(ram_field capacity_bytes)" = $((4 << 20)) ] &&
  ok "ctl cache disk --ram-mib 4 under I/O: $out; resident $(ram_field resident_bytes) B" || fail "shrink: $out"
sleep 0.5
resident=$(ram_field resident_bytes)
[ "$resident" -le $((4 << 20)) ] 2>/dev/null && ok "the RAM tier holds $resident B, within the 4 MiB budget under reads" ||
  fail "RAM tier holds $resident B over a 4 MiB budget"
out=$(ctl cache disk --drop-clean 2>&1) && ok "ctl cache disk --drop-clean under I/O: $out" || fail "drop-clean: $out"
code=$(api -X PUT --data '{"ram_mib": 32}' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/cache")
cp "$TMP/body.json" "$TMP/cache200.json"
[ "$code" = 200 ] && ok "back to 32 MiB: 200 $(cat "$TMP/body.json" | tr -d ' \n')" || fail "grow: $code $(cat "$TMP/body.json")"
code=$(api -X PUT --data '{"ram_mib": 64}' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/cache")
cp "$TMP/body.json" "$TMP/cache409.json"
[ "$code" = 409 ] && ok "above the ceiling: 409 $(cat "$TMP/body.json" | tr -d '\n')" || fail "above the ceiling: $code"
code=$(api -X PUT --data '{"ram_mib": -1}' "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/cache")
cp "$TMP/body.json" "$TMP/cache400.json"
[ "$code" = 400 ] && ok "negative size: 400" || fail "negative size: $code"
code=$(api -X POST --data "" "http://127.0.0.1:$m_cloud/api/v1/volumes/nope/cache/drop-clean")
[ "$code" = 404 ] && ok "drop-clean of an unknown volume: 404" || fail "drop-clean unknown volume: $code"
code=$(api -X POST --data "" "http://127.0.0.1:$m_cloud/api/v1/volumes/disk/cache/drop-clean")
cp "$TMP/body.json" "$TMP/drop200.json"
[ "$code" = 200 ] || fail "drop-clean: $code"
kill -0 $WRITER 2>/dev/null && ok "the writer was still running through the cache changes" ||
  fail "the writer ended before the cache changes were done (make it longer)"
kill "$READER" 2>/dev/null; wait "$READER" 2>/dev/null
[ ! -s "$TMP/reader.fail" ] && ok "reader: no error through the resizes" || fail "reader: $(cat "$TMP/reader.fail") $(tail -3 "$TMP/reader.err")"
wait $WRITER && ok "writer: no error ($(tail -1 "$TMP/writer.log"))" || fail "writer: $(cat "$TMP/writer.log")"
timeout 120 nbdcopy "nbd://127.0.0.1:$p_nbd" "$TMP/initiator.raw" || fail "read through the cloud edge"
ctl --json volume disk >"$TMP/vol.json"
if "$PY" -c 'import yaml' 2>/dev/null; then
  "$PY" "$here/openapi_check.py" "${FERRY_SOURCE_DIR:-$here/../..}/mgmt/openapi.yaml" \
    put:/api/v1/volumes/{name}/policy 200 "$TMP/200.json" put:/api/v1/volumes/{name}/policy 409 "$TMP/409.json" \
    put:/api/v1/volumes/{name}/policy 400 "$TMP/400.json" put:/api/v1/volumes/{name}/policy 404 "$TMP/404.json" \
    post:/api/v1/volumes/{name}/write-back/{action} 200 "$TMP/post200.json" /api/v1/volumes/{name} 200 "$TMP/vol.json" \
    put:/api/v1/volumes/{name}/cache 200 "$TMP/cache200.json" put:/api/v1/volumes/{name}/cache 409 "$TMP/cache409.json" \
    put:/api/v1/volumes/{name}/cache 400 "$TMP/cache400.json" post:/api/v1/volumes/{name}/cache/drop-clean 200 "$TMP/drop200.json" \
    put:/api/v1/volumes/{name}/write-back 200 "$TMP/limits200.json" put:/api/v1/volumes/{name}/write-back 400 "$TMP/limits400.json" \
    >"$TMP/openapi.log" 2>&1 && ok "PUT policy answers match mgmt/openapi.yaml" || fail "openapi: $(cat "$TMP/openapi.log")"
fi
stop_pid "$CLOUD_PID" >/dev/null  # clean stop: drains the journal to on-prem
grep -q 'journals drained to the datacenter edge' "$TMP/cloud.log" && ok "journal drained at stop" ||
  fail "no drain: $(grep -i journal "$TMP/cloud.log" | tail -5)"
stop_pid "$DC_PID" >/dev/null
cmp -s "$TMP/disk.raw" "$TMP/initiator.raw" && ok "after the drain the on-prem image equals what the initiator read" ||
  fail "on-prem image differs from the initiator's read"
"$PY" "$here/blocks.py" verify "$TMP/disk.raw" $BLOCKS "$TMP/acked.json" >"$TMP/verify.log" 2>&1 &&
  ok "$(cat "$TMP/verify.log")" || fail "$(cat "$TMP/verify.log")"
finish
