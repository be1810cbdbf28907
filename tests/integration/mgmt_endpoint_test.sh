#!/usr/bin/env bash
# Management endpoint (issue 13): `ferry target --mgmt-listen` under iSCSI load. /metrics must be
# valid Prometheus text (Python prometheus_client parser, and `promtool check metrics` when
# installed) and count the I/O the initiator did (per-volume ops, bytes, latency histogram);
# /api/v1/volumes and /api/v1/volumes/NAME answer JSON; a missing or wrong bearer token gets
# 401, an unknown volume 404; --mgmt-listen without a token file, and a token file readable by
# others, are refused at start.
# Usage: mgmt_endpoint_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need curl qemu-img
"$PY" -c 'import prometheus_client.parser' 2>/dev/null || skip "python3-prometheus-client not installed"

port=$(free_port)
mport=$(free_port)
head -c 24 /dev/urandom | base64 | tr -d '=/+' >"$TMP/token"
chmod 600 "$TMP/token"
token=$(cat "$TMP/token")
url=http://127.0.0.1:$mport

# Refusals at start (exit 2 before serving anything).
"$FERRY" target --lun ram:64MiB --listen 127.0.0.1:$port --mgmt-listen 127.0.0.1:$mport --check-config >"$TMP/out" 2>&1
[ $? -eq 2 ] && grep -q 'needs --mgmt-token-file' "$TMP/out" && ok "--mgmt-listen without a token file refused" ||
  fail "--mgmt-listen without token: $(cat "$TMP/out")"

start_ferry t --lun ram:64MiB --lun ram:32MiB --listen 127.0.0.1:$port --threads 1 \
  --mgmt-listen 127.0.0.1:$mport --mgmt-token-file "$TMP/token"
grep -q "management endpoint on $url" "$TMP/t.log" || fail "no management endpoint line: $(cat "$TMP/t.log")"

lun0=iscsi://127.0.0.1:$port/$IQN/0
qemu-img bench -f raw -t none -c 400 -d 8 -s 4k -w "$lun0" >"$TMP/bench-w.log" 2>&1 || fail "write bench: $(cat "$TMP/bench-w.log")"
qemu-img bench -f raw -t none -c 600 -d 8 -s 4k "$lun0" >"$TMP/bench-r.log" 2>&1 || fail "read bench: $(cat "$TMP/bench-r.log")"

code=$(curl -s -o "$TMP/metrics" -w '%{http_code}' -H "Authorization: Bearer $token" "$url/metrics")
[ "$code" = 200 ] || fail "/metrics: HTTP $code"
"$PY" - "$TMP/metrics" <<'PY' && ok "/metrics parsed by prometheus_client: $(cat "$TMP/summary" 2>/dev/null)" || fail "/metrics did not parse or count the I/O"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
samples = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
def get(name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))
reads = get("ferry_volume_ops_total", volume="lun0", op="read")
writes = get("ferry_volume_ops_total", volume="lun0", op="write")
bytes_read = get("ferry_volume_bytes_total", volume="lun0", op="read")
count = get("ferry_volume_latency_seconds_count", volume="lun0")
inf = get("ferry_volume_latency_seconds_bucket", volume="lun0", le="+Inf")
other_reads = get("ferry_volume_ops_total", volume="lun1", op="read")
sessions = get("ferry_iscsi_sessions", daemon="target")
ok = (reads is not None and reads >= 600 and writes >= 400 and bytes_read >= 600 * 4096 and
      count == inf and count >= 1000 and other_reads == 0 and sessions is not None)
open(sys.argv[1].replace("metrics", "summary"), "w").write(
    f"lun0 reads {reads:.0f} writes {writes:.0f} bytes_read {bytes_read:.0f} latency count {count:.0f}; lun1 reads {other_reads:.0f}")
print(f"reads={reads} writes={writes} bytes_read={bytes_read} count={count} inf={inf} lun1={other_reads} sessions={sessions}")
sys.exit(0 if ok else 1)
PY
if command -v promtool >/dev/null; then
  promtool check metrics <"$TMP/metrics" >"$TMP/promtool.log" 2>&1 && ok "promtool check metrics: clean" ||
    fail "promtool: $(cat "$TMP/promtool.log")"
else
  echo "note: promtool not installed (Debian prometheus); skipped that check"
fi

expect_code() {  # WANT DESCRIPTION CURL-ARGS...
  local want=$1 what=$2; shift 2
  local code
  code=$(curl -s -o "$TMP/body" -w '%{http_code}' "$@")
  [ "$code" = "$want" ] && ok "$what: HTTP $code $(head -c 80 "$TMP/body" | tr '\n' ' ')" || fail "$what: HTTP $code (want $want): $(cat "$TMP/body")"
}
expect_code 401 "/metrics without a token" "$url/metrics"
expect_code 401 "/metrics with a wrong token" -H "Authorization: Bearer ${token}x" "$url/metrics"
expect_code 401 "/api/v1/volumes with a wrong scheme" -H "Authorization: Basic $token" "$url/api/v1/volumes"
expect_code 404 "unknown volume" -H "Authorization: Bearer $token" "$url/api/v1/volumes/no-such-volume"
expect_code 200 "volume lun0" -H "Authorization: Bearer $token" "$url/api/v1/volumes/lun0"
"$PY" -c 'import json,sys; v=json.load(open(sys.argv[1])); assert v["name"]=="lun0" and v["io"]["reads"]>=600 and v["size_bytes"]==64<<20, v' "$TMP/body" &&
  ok "lun0 JSON: reads counted, size right" || fail "lun0 JSON: $(cat "$TMP/body")"
expect_code 200 "volume list" -H "Authorization: Bearer $token" "$url/api/v1/volumes"
"$PY" -c 'import json,sys; v=json.load(open(sys.argv[1])); assert [x["name"] for x in v["volumes"]]==["lun0","lun1"], v' "$TMP/body" &&
  ok "volume list: lun0, lun1" || fail "volume list: $(cat "$TMP/body")"

# The answers match mgmt/openapi.yaml (required fields, types, enums; a small checker over the
# schema, so the file cannot drift from the server).
curl -s -H "Authorization: Bearer $token" "$url/api/v1/volumes" >"$TMP/list.json"
curl -s -H "Authorization: Bearer $token" "$url/api/v1/volumes/nope" >"$TMP/404.json"
curl -s "$url/api/v1/volumes" >"$TMP/401.json"
if "$PY" -c 'import yaml' 2>/dev/null; then
  "$PY" "$here/openapi_check.py" "${FERRY_SOURCE_DIR:-$here/../..}/mgmt/openapi.yaml" \
    /api/v1/volumes 200 "$TMP/list.json" /api/v1/volumes/{name} 404 "$TMP/404.json" \
    /api/v1/volumes 401 "$TMP/401.json" >"$TMP/openapi.log" 2>&1 &&
    ok "answers match mgmt/openapi.yaml: $(cat "$TMP/openapi.log")" || fail "openapi: $(cat "$TMP/openapi.log")"
else
  echo "note: python3-yaml missing; OpenAPI check skipped"
fi

# ferry ctl over the same API: a table for people, --json for scripts, exit 1 when refused.
"$FERRY" ctl --mgmt 127.0.0.1:$mport --mgmt-token-file "$TMP/token" volumes >"$TMP/ctl.txt" 2>&1 &&
  grep -qE '^VOLUME +SIZE +READS' "$TMP/ctl.txt" && grep -qE '^lun0 +64.0 MiB +600 +400 ' "$TMP/ctl.txt" &&
  grep -qE '^lun1 +32.0 MiB +0 +0 ' "$TMP/ctl.txt" && ok "ferry ctl volumes: $(sed -n 2p "$TMP/ctl.txt" | tr -s ' ')" ||
  fail "ferry ctl volumes: $(cat "$TMP/ctl.txt")"
"$FERRY" ctl --mgmt 127.0.0.1:$mport --mgmt-token-file "$TMP/token" volume lun0 --json >"$TMP/ctl.json" 2>&1 &&
  "$PY" -c 'import json,sys; assert json.load(open(sys.argv[1]))["io"]["writes"] == 400' "$TMP/ctl.json" &&
  ok "ferry ctl volume lun0 --json" || fail "ferry ctl --json: $(cat "$TMP/ctl.json")"
"$FERRY" ctl --mgmt 127.0.0.1:$mport --mgmt-token-file "$TMP/token" volume nope >"$TMP/ctl.err" 2>&1
[ $? -eq 1 ] && grep -q 'HTTP 404' "$TMP/ctl.err" && ok "ferry ctl volume nope: $(cat "$TMP/ctl.err")" ||
  fail "ferry ctl unknown volume: $(cat "$TMP/ctl.err")"
head -c 24 /dev/urandom | base64 | tr -d '=/+' >"$TMP/other-token"; chmod 600 "$TMP/other-token"
"$FERRY" ctl --mgmt 127.0.0.1:$mport --mgmt-token-file "$TMP/other-token" volumes >"$TMP/ctl.err" 2>&1
[ $? -eq 1 ] && grep -q 'HTTP 401' "$TMP/ctl.err" && ok "ferry ctl with a wrong token: $(cat "$TMP/ctl.err")" ||
  fail "ferry ctl wrong token: $(cat "$TMP/ctl.err")"
stop_pid "$FERRY_PID" >/dev/null

# A token file others can read is refused (the daemon starts without the endpoint and says why).
chmod 644 "$TMP/token"
port=$(free_port)
start_ferry t2 --lun ram:16MiB --listen 127.0.0.1:$port --mgmt-listen 127.0.0.1:$mport --mgmt-token-file "$TMP/token"
grep -q 'must not be readable by others' "$TMP/t2.log" && ok "world-readable token file refused" ||
  fail "token file mode: $(cat "$TMP/t2.log")"
finish
