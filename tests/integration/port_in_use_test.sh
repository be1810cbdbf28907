#!/usr/bin/env bash
# A second daemon on a port in use must exit non-zero with a clear error, never share the port:
# with SO_REUSEPORT a second process bound it with rc 0, connections alternated between the two
# and a cloud edge reconnected to the wrong dc-edge (issue 15, failure 1). Covers ferry target
# (iSCSI and NBD ports), dc-edge (WAN port) and cloud-edge (iSCSI port), and checks that the
# first instance still serves every new connection afterwards.
# Usage: port_in_use_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl iscsi-inq
make_pki

# second_exits NAME CMD... : the command must exit non-zero within 10 s, saying the address is in use.
second_exits() {
  local name=$1; shift
  "$@" >"$TMP/$name.log" 2>&1 &
  local pid=$! i rc
  PIDS+=("$pid")
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    fail "$name still running on a port in use"; stop_pid "$pid"; return
  fi
  wait "$pid"; rc=$?
  if [ "$rc" -ne 0 ] && grep -q 'in use' "$TMP/$name.log"; then
    ok "$name refused the port in use (rc $rc): $(grep -m1 'in use' "$TMP/$name.log")"
  else
    fail "$name: rc $rc, log: $(tr '\n' ' ' <"$TMP/$name.log")"
  fi
}

# ---------------------------------------------------------------- ferry target, iSCSI and NBD
P1=$(free_port); P_NBD1=$(free_port)
start_ferry target1 --listen 127.0.0.1:$P1 --lun ram:16MiB --threads 2 --nbd 127.0.0.1:$P_NBD1
FIRST=$FERRY_PID
second_exits target-same-iscsi "$FERRY" target --listen 127.0.0.1:$P1 --lun ram:16MiB
P2=$(free_port)
second_exits target-same-nbd "$FERRY" target --listen 127.0.0.1:$P2 --lun ram:16MiB --nbd 127.0.0.1:$P_NBD1
# Every new connection still reaches the first instance (with a shared port half went elsewhere).
good=0
for i in $(seq 8); do iscsi-inq "iscsi://127.0.0.1:$P1/$IQN/0" >/dev/null 2>&1 && good=$((good + 1)); done
[ "$good" -eq 8 ] && ok "8 of 8 logins after the refused start reached the first target" ||
  fail "only $good of 8 logins reached the first target"
kill -0 "$FIRST" 2>/dev/null && ok "first target still running" || fail "first target died"

# ---------------------------------------------------------------- dc-edge (WAN) and cloud-edge
start_nbd_source 4
start_dc_edge dc1 --nbd-connections 1 --volume "disk2=nbd://127.0.0.1:$P_SRC/disk"  # a second volume for the second cloud edge (one edge per volume)
second_exits dc-edge-same-port "$FERRY" dc-edge --listen 127.0.0.1:$P_WAN "${DC_ARGS[@]}"

P_ISCSI=$(free_port)
CLOUD_ARGS=(--dc 127.0.0.1:$P_WAN --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge
            --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem")
"$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI "${CLOUD_ARGS[@]}" >"$TMP/cloud1.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud1.log" "$CLOUD_PID" || { cat "$TMP/cloud1.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
CLOUD_ARGS[3]=disk2
second_exits cloud-edge-same-port "$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI "${CLOUD_ARGS[@]}"
good=0
for i in $(seq 4); do
  iscsi-inq "iscsi://127.0.0.1:$P_ISCSI/iqn.2026-11.io.ferry:cloud/0" >/dev/null 2>&1 && good=$((good + 1))
done
[ "$good" -eq 4 ] && ok "4 of 4 logins reached the first cloud edge" || fail "only $good of 4 logins reached the first cloud edge"
stop_pid "$CLOUD_PID"; stop_pid "$DC_PID"; stop_pid "$FIRST"
finish
