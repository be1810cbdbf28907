#!/usr/bin/env bash
# Pre-authentication bounds on ferry target's iSCSI and NBD ports: 200 silent connections from
# one source keep at most --pre-auth-per-source of them open; 100 more from 100 other sources
# fill the pool, whose oldest members are evicted; meanwhile real clients (iscsi-inq, nbdinfo,
# a qemu-img write) log in and work. Before the bounds every silent connection stayed open until
# its login deadline (issue 15, failure 2).
# Usage: pre_auth_limits_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need iscsi-inq nbdinfo
P_ISCSI=$(free_port); P_NBD=$(free_port)
start_ferry target --listen 127.0.0.1:$P_ISCSI --nbd 127.0.0.1:$P_NBD --lun ram:16MiB --threads 2 \
  --pre-auth-per-source 16 --pre-auth-max 64 --login-timeout-ms 60000

# silent.py PORT: holds 200 connections from 127.0.0.2 and one each from 127.0.1.1..100, then
# reports how many the server still keeps open (a closed one reads EOF), then waits for a line
# on stdin before closing them all.
cat >"$TMP/silent.py" <<'PY'
import socket, sys, time, select
port = int(sys.argv[1])
def conn(src):
    s = socket.socket()
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s
same = [conn("127.0.0.2") for _ in range(200)]
others = [conn("127.0.1.%d" % i) for i in range(1, 101)]
time.sleep(1.0)
def open_count(socks):
    # Drains what the server sent (the NBD greeting): EOF after it means the server closed it.
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                if s.recv(65536) == b"":
                    break
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n
print("same-source-open %d others-open %d" % (open_count(same), open_count(others)), flush=True)
sys.stdin.readline()
PY

check_port() {  # check_port NAME PORT CLIENT-COMMAND...
  local name=$1 port=$2; shift 2
  coproc SILENT { "$PY" "$TMP/silent.py" "$port"; }
  local line
  read -r -t 30 line <&"${SILENT[0]}"
  echo "   $name: $line"
  local same others
  read -r _ same _ others <<<"$line"
  if [ -n "$same" ] && [ "$same" -le 16 ]; then ok "$name: 200 silent connections from one source: $same kept (limit 16)"
  else fail "$name: $same of 200 silent connections from one source kept open (limit 16)"; fi
  if [ -n "$others" ] && [ "$others" -le 64 ]; then ok "$name: pool bounded: $others of 100 other silent sources kept (limit 64)"
  else fail "$name: $others of 100 other silent connections kept (limit 64)"; fi
  if "$@" >"$TMP/$name-client.log" 2>&1; then ok "$name: a real client got in while the silent ones were held"
  else fail "$name: real client failed: $(tail -3 "$TMP/$name-client.log")"; fi
  echo >&"${SILENT[1]}"
  wait "$SILENT_PID" 2>/dev/null
}
check_port iscsi "$P_ISCSI" iscsi-inq "iscsi://127.0.0.1:$P_ISCSI/$IQN/0"
check_port nbd "$P_NBD" nbdinfo "nbd://127.0.0.1:$P_NBD/lun0"
grep -q 'iscsi 127.0.0.2: connection refused: 16 connections from it not yet authenticated' "$TMP/target.log" &&
  ok "refusals are logged: $(grep -m1 'not yet authenticated' "$TMP/target.log")" || fail "no refusal log line"
grep -q 'evicted: too many connections not yet authenticated' "$TMP/target.log" && ok "evictions are logged" ||
  fail "no eviction log line"
kill -0 "$FERRY_PID" 2>/dev/null && ok "target alive" || fail "target died"
stop_pid "$FERRY_PID"

# ---------------------------------------------------------------- dc-edge WAN port
# The reported failure: 63 silent TCP connections kept every real cloud edge out of the
# dc-edge (64 connections, never dropped). Now 300 silent ones (200 from one source, 100 from
# 100 others) are held while a real cloud edge connects and reads.
if command -v qemu-nbd >/dev/null && command -v openssl >/dev/null; then
  make_pki
  start_nbd_source 4
  start_dc_edge dc
  coproc SILENT { "$PY" "$TMP/silent.py" "$P_WAN"; }
  read -r -t 30 line <&"${SILENT[0]}"
  echo "   wan: $line"
  read -r _ same _ others <<<"$line"
  [ -n "$same" ] && [ "$same" -le 8 ] && [ -n "$others" ] && [ "$others" -le 32 ] &&
    ok "wan: silent connections bounded: $same of 200 from one source (8), $others of 100 others (32)" ||
    fail "wan: silent connections kept: $same from one source, $others from others"
  P_ISCSI=$(free_port)
  "$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --dc 127.0.0.1:$P_WAN --volume disk \
    --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --tls-cert "$PKI/cloud-edge-cert.pem" \
    --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud.log" 2>&1 &
  CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  if wait_listening "$TMP/cloud.log" "$CLOUD_PID" && need_qemu=1 &&
     iscsi-inq "iscsi://127.0.0.1:$P_ISCSI/iqn.2026-11.io.ferry:cloud/0" >/dev/null 2>&1 &&
     grep -q "from cloud edge" "$TMP/dc.log"; then
    ok "wan: a real cloud edge got in past 300 silent connections"
  else
    fail "wan: cloud edge kept out: $(tail -3 "$TMP/cloud.log" | tr '\n' ' ') / $(grep -m2 'refused' "$TMP/dc.log" | tr '\n' ' ')"
  fi
  echo >&"${SILENT[1]}"
  wait "$SILENT_PID" 2>/dev/null
  stop_pid "$CLOUD_PID"; stop_pid "$DC_PID"
else
  echo "SKIP (part): qemu-nbd or openssl missing: dc-edge WAN port not checked"
fi
finish
