#!/usr/bin/env bash
# The WAN link over the management API (issue 13): qemu-nbd -> dc-edge (--rate-limit-all) ->
# ferry-wan-emu (40 ms RTT, 100 Mbit/s) -> cloud-edge, --mgmt-listen on both edges.
# GET /api/v1/wan on the cloud edge: state up, the datacenter edge it dials, the link's TCP RTT
# (PING to PONG: must be the emulator's 40 ms; TCP_INFO sees only the hop to the emulator), wire bytes and raw vs sent bytes that count a read of the disk;
# on the dc-edge: one connection up and its rate cap. PUT /api/v1/wan {"cap_mbit": 16} on the
# dc-edge caps the link at runtime (a read of 4 MiB of fresh data then takes >= 1.5 s, at least
# 2x slower than uncapped), 0 lifts it; the cloud edge refuses with 409, malformed bodies are 400,
# no token 401, a daemon without a link 404; answers match mgmt/openapi.yaml.
# Usage: mgmt_wan_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl nbdcopy curl
EMU=$(dirname "$FERRY")/ferry-wan-emu
[ -x "$EMU" ] || skip "ferry-wan-emu not built"
make_pki
dd if=/dev/urandom of="$TMP/disk.raw" bs=1M count=12 status=none
P_SRC=$(free_port)
qemu-nbd -f raw -r --shared=8 -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
PIDS+=($!)
for i in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break; sleep 0.1; done
head -c 24 /dev/urandom | base64 | tr -d '=/+' >"$TMP/token"; chmod 600 "$TMP/token"
token=$(cat "$TMP/token")
AUTH=(-H "Authorization: Bearer $token")
m_dc=$(free_port); m_cloud=$(free_port)
start_dc_edge dc --rate-limit-all --mgmt-listen 127.0.0.1:$m_dc --mgmt-token-file "$TMP/token"
P_EMU=$(free_port)
"$EMU" --listen 127.0.0.1:$P_EMU --connect 127.0.0.1:$P_WAN --rtt-ms 40 --rate-mbit 100 >"$TMP/emu.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q 'listening' "$TMP/emu.log" && break; sleep 0.05; done
p_nbd=$(free_port); p_iscsi=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$p_iscsi --nbd 127.0.0.1:$p_nbd --dc 127.0.0.1:$P_EMU \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
  --mgmt-listen 127.0.0.1:$m_cloud --mgmt-token-file "$TMP/token" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
cloud=http://127.0.0.1:$m_cloud; dc=http://127.0.0.1:$m_dc

# read BYTES at OFFSET through the cloud edge's NBD export (fresh data: no cache, no dedup hit);
# prints the seconds it took.
read_range() {
  /usr/bin/python3 - "$p_nbd" "$1" "$2" <<'PY'
import nbd, sys, time
h = nbd.NBD(); h.connect_tcp("127.0.0.1", sys.argv[1])
off, n = int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
for o in range(off, off + n, 1 << 20):
    h.pread(1 << 20, o)
print(f"{time.monotonic() - t0:.2f}")
PY
}
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

t_free=$(read_range 0 $((4 << 20))) || fail "uncapped read"
for _ in $(seq 50); do  # the first keepalive PONG comes about 1 s after the link is up
  curl -s "${AUTH[@]}" "$cloud/api/v1/wan" >"$TMP/wan.json"
  grep -q '"rtt_ms"' "$TMP/wan.json" && break
  sleep 0.1
done
if "$PY" - "$TMP/wan.json" "$P_EMU" >"$TMP/check.log" 2>&1 <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))
assert w["daemon"] == "cloud-edge" and w["state"] == "up" and w["connections"] == 1, w
assert w["peer"] == "127.0.0.1:" + sys.argv[2] and w["down_for_ms"] == 0, w
assert 35 <= w["rtt_ms"] <= 200, w  # the emulator's 40 ms plus queueing
assert w["tcp_rtt_ms"] >= 0, w     # the socket's first hop (the emulator on loopback)
assert w["raw_bytes_in"] >= 4 << 20 and w["sent_bytes_in"] > 0, w
assert w["wire_bytes_in"] >= w["sent_bytes_in"] and w["wire_bytes_out"] > 0, w
print(f"state {w['state']}, peer {w['peer']}, rtt {w['rtt_ms']:.1f} ms (TCP to the first hop {w['tcp_rtt_ms']:.2f} ms), "
      f"raw in {w['raw_bytes_in']} B, sent in {w['sent_bytes_in']} B, wire in {w['wire_bytes_in']} B")
PY
then ok "cloud-edge GET /api/v1/wan: $(cat "$TMP/check.log")"; else fail "cloud-edge wan: $(cat "$TMP/check.log")"; fi
curl -s "${AUTH[@]}" "$dc/api/v1/wan" >"$TMP/dcwan.json"
"$PY" -c 'import json,sys; w=json.load(open(sys.argv[1])); assert w["daemon"]=="dc-edge" and w["state"]=="up" and w["connections"]==1 and w["cap_bytes_per_s"]==0, w' "$TMP/dcwan.json" &&
  ok "dc-edge GET /api/v1/wan: up, 1 connection, no cap" || fail "dc-edge wan: $(cat "$TMP/dcwan.json")"

expect_code() {  # WANT DESCRIPTION CURL-ARGS...
  local want=$1 what=$2; shift 2
  local code
  code=$(curl -s -o "$TMP/body" -w '%{http_code}' "$@")
  [ "$code" = "$want" ] && ok "$what: HTTP $code $(head -c 100 "$TMP/body" | tr '\n' ' ')" ||
    fail "$what: HTTP $code (want $want): $(cat "$TMP/body")"
}
expect_code 200 "dc-edge cap 16 Mbit/s" "${AUTH[@]}" -X PUT --data '{"cap_mbit": 16}' "$dc/api/v1/wan"
cp "$TMP/body" "$TMP/put200.json"
curl -s "${AUTH[@]}" "$dc/api/v1/wan" >"$TMP/dcwan2.json"
"$PY" -c 'import json,sys; assert json.load(open(sys.argv[1]))["cap_bytes_per_s"] == 2000000' "$TMP/dcwan2.json" &&
  ok "the dc-edge shows the cap: 2000000 B/s" || fail "cap not shown: $(cat "$TMP/dcwan2.json")"
t_capped=$(read_range $((4 << 20)) $((4 << 20))) || fail "capped read"
"$PY" -c "import sys; f, c = $t_free, $t_capped; sys.exit(0 if c >= 1.5 and c >= 2 * f else 1)" &&
  ok "4 MiB read: ${t_free} s uncapped, ${t_capped} s at 16 Mbit/s" || fail "cap had no effect: ${t_free} s vs ${t_capped} s"
expect_code 200 "dc-edge cap lifted (0)" "${AUTH[@]}" -X PUT --data '{"cap_mbit": 0}' "$dc/api/v1/wan"
t_again=$(read_range $((8 << 20)) $((4 << 20))) || fail "read after lifting the cap"
"$PY" -c "import sys; sys.exit(0 if $t_again < $t_capped / 2 else 1)" &&
  ok "cap lifted: 4 MiB in ${t_again} s" || fail "after lifting the cap: ${t_again} s (capped ${t_capped} s)"
grep -q 'WAN rate cap 16.0 Mbit/s (0: none), set over the API' "$TMP/dc.log" && ok "the dc-edge logged the change" ||
  fail "no log line for the cap: $(tail -3 "$TMP/dc.log")"

ctlw() { "$FERRY" ctl --mgmt "127.0.0.1:$1" --mgmt-token-file "$TMP/token" wan "${@:2}"; }
out=$(ctlw $m_cloud 2>&1) && grep -q '^cloud-edge: link up, 1 connection(s), 0 reconnect(s), to 127.0.0.1:[0-9]*, RTT [0-9.]* ms' <<<"$out" &&
  ok "ferry ctl wan: $(tr '\n' ' ' <<<"$out")" || fail "ferry ctl wan: $out"
out=$(ctlw $m_dc --cap-mbit 24 2>&1) && grep -q 'WAN rate cap 24 Mbit/s' <<<"$out" && out2=$(ctlw $m_dc 2>&1) &&
  grep -q 'cap 2.9 MiB/s' <<<"$out2" && ok "ferry ctl wan --cap-mbit 24 on the dc-edge: $out; $(tail -1 <<<"$out2")" ||
  fail "ferry ctl wan --cap-mbit: $out $out2"
ctlw $m_dc --cap-mbit 0 >/dev/null 2>&1 || fail "ferry ctl wan --cap-mbit 0"
expect_code 409 "cap on the cloud edge" "${AUTH[@]}" -X PUT --data '{"cap_mbit": 16}' "$cloud/api/v1/wan"
cp "$TMP/body" "$TMP/put409.json"
for body in '{"cap_mbit": -1}' '{"cap": 1}' '[]' 'x' '{"cap_mbit": 1, "x": 2}'; do
  code=$(curl -s -o "$TMP/body" -w '%{http_code}' "${AUTH[@]}" -X PUT --data "$body" "$dc/api/v1/wan")
  [ "$code" = 400 ] || fail "PUT /api/v1/wan $body: $code (want 400)"
done
cp "$TMP/body" "$TMP/put400.json"
ok "malformed caps are 400"
expect_code 401 "GET /api/v1/wan without a token" "$cloud/api/v1/wan"
if "$PY" -c 'import yaml' 2>/dev/null; then
  "$PY" "$here/openapi_check.py" "${FERRY_SOURCE_DIR:-$here/../..}/mgmt/openapi.yaml" \
    /api/v1/wan 200 "$TMP/wan.json" /api/v1/wan 200 "$TMP/dcwan2.json" put:/api/v1/wan 200 "$TMP/put200.json" \
    put:/api/v1/wan 409 "$TMP/put409.json" put:/api/v1/wan 400 "$TMP/put400.json" >"$TMP/openapi.log" 2>&1 &&
    ok "answers match mgmt/openapi.yaml" || fail "openapi: $(cat "$TMP/openapi.log")"
fi

# A daemon without a WAN link.
port=$(free_port); mt=$(free_port)
start_ferry t --lun ram:16MiB --listen 127.0.0.1:$port --mgmt-listen 127.0.0.1:$mt --mgmt-token-file "$TMP/token"
expect_code 404 "GET /api/v1/wan on ferry target" "${AUTH[@]}" "http://127.0.0.1:$mt/api/v1/wan"
stop_pid "$FERRY_PID" >/dev/null
finish
