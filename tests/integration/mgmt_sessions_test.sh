#!/usr/bin/env bash
# Sessions over the management API (issue 13): `ferry target --mgmt-listen` with an iSCSI session
# (libiscsi's iscsi-perf, a named initiator) and an NBD client (libnbd's Python binding) doing
# I/O. GET /api/v1/sessions lists both with peer, initiator / export, target and I/O counters that
# match what each client did; DELETE /api/v1/sessions/ID closes exactly that one (the other keeps
# working), the closed client sees its connection end, and the session leaves the list;
# `ferry ctl sessions` prints the table and `ferry ctl disconnect` closes one; a malformed id is
# 400, an unknown one 404, no token 401; the answers match mgmt/openapi.yaml.
# Usage: mgmt_sessions_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need curl iscsi-perf
NBDPY=/usr/bin/python3
"$NBDPY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

port=$(free_port); nport=$(free_port); mport=$(free_port)
head -c 24 /dev/urandom | base64 | tr -d '=/+' >"$TMP/token"; chmod 600 "$TMP/token"
token=$(cat "$TMP/token")
url=http://127.0.0.1:$mport
AUTH=(-H "Authorization: Bearer $token")
start_ferry t --lun ram:64MiB --lun ram:16MiB --listen 127.0.0.1:$port --nbd 127.0.0.1:$nport \
  --threads 2 --mgmt-listen 127.0.0.1:$mport --mgmt-token-file "$TMP/token"
INITIATOR=iqn.2026-12.io.ferry.test:sessions-perf

# The iSCSI session: reads until the test ends (bounded by timeout).
timeout 60 iscsi-perf -i "$INITIATOR" -m 4 "iscsi://127.0.0.1:$port/$IQN/0" >"$TMP/perf.log" 2>&1 &
PERF_PID=$!; PIDS+=($PERF_PID)

# The NBD client (export lun1): 3 reads of 64 KiB and 2 writes of 4 KiB, then it waits for the
# test's word on a FIFO before trying again, and reports whether its connection was still usable.
mkfifo "$TMP/go"
"$NBDPY" - "$nport" "$TMP/go" >"$TMP/nbd.log" 2>&1 <<'PY' &
import nbd, sys
h = nbd.NBD()
h.set_export_name("lun1")
h.connect_tcp("127.0.0.1", sys.argv[1])
for i in range(3):
    h.pread(65536, i * 65536)
for i in range(2):
    h.pwrite(b"x" * 4096, (1 << 20) + i * 4096)
print("io done", flush=True)
with open(sys.argv[2]) as go:
    word = go.readline().strip()
try:
    h.pread(4096, 0)
    print("after", word, ": read ok", flush=True)
except nbd.Error as e:
    print("after", word, ": read failed:", e, flush=True)
PY
NBD_PID=$!; PIDS+=($NBD_PID)
exec 7>"$TMP/go"  # held open: the client waits on readline, not on end of file
for _ in $(seq 100); do grep -q "io done" "$TMP/nbd.log" && break; sleep 0.05; done
grep -q "io done" "$TMP/nbd.log" || fail "the NBD client did no I/O: $(cat "$TMP/nbd.log")"

sessions() { curl -s "${AUTH[@]}" "$url/api/v1/sessions"; }
# Wait until the iSCSI session has done some reads (iscsi-perf logs in and starts at once).
for _ in $(seq 100); do
  sessions >"$TMP/s.json"
  "$PY" -c 'import json,sys; s=json.load(open(sys.argv[1]))["sessions"]; sys.exit(0 if any(x["protocol"]=="iscsi" and x["bytes_read"]>0 for x in s) else 1)' "$TMP/s.json" && break
  sleep 0.1
done
if "$PY" - "$TMP/s.json" "$INITIATOR" "$IQN" >"$TMP/check.log" 2>&1 <<'PY'
import json, sys
body = json.load(open(sys.argv[1]))
s = body["sessions"]
assert body["daemon"] == "target", body
iscsi = [x for x in s if x["protocol"] == "iscsi"]
nbd = [x for x in s if x["protocol"] == "nbd"]
assert len(iscsi) == 1 and len(nbd) == 1, s
i, n = iscsi[0], nbd[0]
assert i["client"] == sys.argv[2] and i["target"] == sys.argv[3], i
assert i["peer"].startswith("127.0.0.1:") and "isid=" in i["detail"] and "tsih=" in i["detail"], i
assert i["commands"] > 0 and i["bytes_read"] > 0 and i["bytes_written"] == 0, i
assert n["target"] == "lun1" and n["peer"].startswith("127.0.0.1:") and n["detail"] == "plain", n
# the NBD client's own I/O: 3 x 64 KiB read, 2 x 4 KiB written (and its handshake's options
# are not commands)
assert n["bytes_read"] == 3 * 65536 and n["bytes_written"] == 2 * 4096 and n["commands"] == 5, n
assert i["id"] != n["id"] and i["since_ms"] > 0, s
print(f"iscsi id {i['id']} {i['peer']} {i['client']} commands {i['commands']} read {i['bytes_read']}; "
      f"nbd id {n['id']} export {n['target']} commands {n['commands']}")
open(sys.argv[1] + ".ids", "w").write(f"{i['id']} {n['id']}\n")
PY
then ok "sessions listed: $(cat "$TMP/check.log")"; else fail "session list: $(cat "$TMP/check.log")"; fi
read -r ISCSI_ID NBD_ID <"$TMP/s.json.ids" 2>/dev/null || { ISCSI_ID=0; NBD_ID=0; }
cp "$TMP/s.json" "$TMP/list.json"

expect_code() {  # WANT DESCRIPTION CURL-ARGS...
  local want=$1 what=$2; shift 2
  local code
  code=$(curl -s -o "$TMP/body" -w '%{http_code}' "$@")
  [ "$code" = "$want" ] && ok "$what: HTTP $code $(head -c 80 "$TMP/body" | tr '\n' ' ')" ||
    fail "$what: HTTP $code (want $want): $(cat "$TMP/body")"
}
expect_code 401 "sessions without a token" "$url/api/v1/sessions"
expect_code 401 "disconnect without a token" -X DELETE "$url/api/v1/sessions/$NBD_ID"
expect_code 400 "disconnect of a malformed id" "${AUTH[@]}" -X DELETE "$url/api/v1/sessions/12x"
cp "$TMP/body" "$TMP/400.json"
expect_code 404 "disconnect of an unknown id" "${AUTH[@]}" -X DELETE "$url/api/v1/sessions/999999"
cp "$TMP/body" "$TMP/404.json"

# ferry ctl sessions: the table names both.
"$FERRY" ctl --mgmt 127.0.0.1:$mport --mgmt-token-file "$TMP/token" sessions >"$TMP/ctl.txt" 2>&1 &&
  grep -qE '^ID +PROTO +PEER' "$TMP/ctl.txt" && grep -qE "^$ISCSI_ID +iscsi +127\.0\.0\.1:[0-9]+ +$INITIATOR " "$TMP/ctl.txt" &&
  grep -qE "^$NBD_ID +nbd +127\.0\.0\.1:[0-9]+ +- +lun1 +5 " "$TMP/ctl.txt" &&
  ok "ferry ctl sessions: $(sed -n 2p "$TMP/ctl.txt" | tr -s ' ')" || fail "ferry ctl sessions: $(cat "$TMP/ctl.txt")"

# Disconnect the NBD client over the API: it sees its connection gone; the iSCSI session is not
# touched (its reads go on).
expect_code 202 "disconnect the NBD client" "${AUTH[@]}" -X DELETE "$url/api/v1/sessions/$NBD_ID"
cp "$TMP/body" "$TMP/202.json"
for _ in $(seq 100); do grep -q "nbd connection $NBD_ID: closing: disconnected by the management API" "$TMP/t.log" && break; sleep 0.05; done
grep -q "nbd connection $NBD_ID: closing: disconnected by the management API" "$TMP/t.log" &&
  ok "the target logged: $(grep -m1 "nbd connection $NBD_ID: closing" "$TMP/t.log")" || fail "no disconnect log line for NBD $NBD_ID"
echo disconnected >&7
for _ in $(seq 100); do grep -q "^after" "$TMP/nbd.log" && break; sleep 0.05; done
grep -q "after disconnected : read failed" "$TMP/nbd.log" && ok "the NBD client saw it: $(grep '^after' "$TMP/nbd.log")" ||
  fail "the NBD client after the disconnect: $(cat "$TMP/nbd.log")"
sessions >"$TMP/s2.json"
"$PY" -c 'import json,sys; s=json.load(open(sys.argv[1]))["sessions"]; ids=[x["id"] for x in s]; assert int(sys.argv[2]) not in ids and int(sys.argv[3]) in ids, s' \
  "$TMP/s2.json" "$NBD_ID" "$ISCSI_ID" && ok "the NBD session left the list; the iSCSI one is still there" ||
  fail "list after the NBD disconnect: $(cat "$TMP/s2.json")"
kill -0 "$PERF_PID" 2>/dev/null && ok "iscsi-perf still running" || fail "iscsi-perf ended with the NBD disconnect: $(tail -3 "$TMP/perf.log")"

# Disconnect the iSCSI session with ferry ctl.
"$FERRY" ctl --mgmt 127.0.0.1:$mport --mgmt-token-file "$TMP/token" disconnect "$ISCSI_ID" >"$TMP/ctl2.txt" 2>&1 &&
  grep -q "session $ISCSI_ID: disconnecting" "$TMP/ctl2.txt" && ok "ferry ctl disconnect $ISCSI_ID" ||
  fail "ferry ctl disconnect: $(cat "$TMP/ctl2.txt")"
grep -q "closing connection: disconnected by the management API" "$TMP/t.log" &&
  ok "the target logged the iSCSI disconnect" || fail "no iSCSI disconnect log line"
# libiscsi reconnects on its own (iscsi-perf -x does not stop that): the closed session is gone
# from the list and the initiator, if it came back, is a new session (new id, new TSIH).
sleep 1
sessions >"$TMP/s3.json"
"$PY" - "$TMP/s3.json" "$ISCSI_ID" "$INITIATOR" >"$TMP/check3.log" 2>&1 <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["sessions"]
assert all(x["id"] != int(sys.argv[2]) for x in s), s
assert all(x["protocol"] == "iscsi" and x["client"] == sys.argv[3] for x in s), s
print("closed session gone;", f"the initiator logged in again as session {s[0]['id']} ({s[0]['detail']})" if s else "no session left")
PY
[ $? -eq 0 ] && ok "$(cat "$TMP/check3.log")" || fail "sessions after the iSCSI disconnect: $(cat "$TMP/check3.log")"
"$FERRY" ctl --mgmt 127.0.0.1:$mport --mgmt-token-file "$TMP/token" disconnect "$ISCSI_ID" >"$TMP/ctl3.txt" 2>&1
[ $? -eq 1 ] && grep -q 'HTTP 404' "$TMP/ctl3.txt" && ok "ferry ctl disconnect of a closed session: $(cat "$TMP/ctl3.txt")" ||
  fail "ferry ctl disconnect again: $(cat "$TMP/ctl3.txt")"

if "$PY" -c 'import yaml' 2>/dev/null; then
  "$PY" "$here/openapi_check.py" "${FERRY_SOURCE_DIR:-$here/../..}/mgmt/openapi.yaml" \
    /api/v1/sessions 200 "$TMP/list.json" delete:/api/v1/sessions/{id} 202 "$TMP/202.json" \
    delete:/api/v1/sessions/{id} 400 "$TMP/400.json" delete:/api/v1/sessions/{id} 404 "$TMP/404.json" \
    >"$TMP/openapi.log" 2>&1 &&
    ok "answers match mgmt/openapi.yaml: $(cat "$TMP/openapi.log")" || fail "openapi: $(cat "$TMP/openapi.log")"
else
  echo "note: python3-yaml missing; OpenAPI check skipped"
fi
exec 7>&-
stop_pid "$FERRY_PID" >/dev/null
finish
