#!/usr/bin/env bash
# Certificate roles and volume leases (issue 15, failure 4): any certificate from the CA worked in
# any role (the dc-edge's own server certificate as a client) and two cloud edges served one
# volume at once. Now the role (extended key usage + SAN URI urn:ferry:ROLE:NAME) is checked by
# both ends and the dc-edge leases each volume to one cloud edge; a second one is refused with the
# holder's name until the lease is released (clean stop) or expires.
# Certificate failures of the WAN link end clearly (issue 15, failure 5): a cloud edge whose
# certificate the dc-edge refuses used to retry every 2 s forever, log only "peer closed the
# connection" and ignore SIGTERM. Now it logs the dc-edge's reason, gives up after 5 tries with a
# non-zero exit, and SIGTERM stops it meanwhile; an edge with an expired certificate of its own
# refuses to start.
# Usage: wan_auth_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl iscsi-inq
make_pki
start_nbd_source 4
start_dc_edge dc --lease-ms 3000

cloud() {  # cloud NAME CERT KEY : starts a cloud edge in the background; sets CPID
  "$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --dc 127.0.0.1:$P_WAN --volume disk \
    --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --tls-cert "$2" --tls-key "$3" >"$TMP/$1.log" 2>&1 &
  CPID=$!; PIDS+=($CPID)
}
wait_exit() {  # wait_exit PID SECONDS : 0 if it exited within that time
  local i
  for i in $(seq $(( $2 * 10 ))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}

# A certificate from another CA: refused by the dc-edge, reason logged, bounded tries, exit != 0.
t0=$(date +%s.%N)
cloud rogue "$PKI/rogue-cert.pem" "$PKI/rogue-key.pem"
if wait_exit "$CPID" 30; then
  wait "$CPID"; rc=$?
  t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  if [ "$rc" -ne 0 ] && grep -q 'refused our certificate' "$TMP/rogue.log"; then
    ok "rogue certificate: exit $rc after $t s: $(grep -m1 'refused our certificate' "$TMP/rogue.log")"
  else fail "rogue certificate: rc $rc, log: $(tail -3 "$TMP/rogue.log" | tr '\n' ' ')"; fi
  n=$(grep -c 'tries)' "$TMP/rogue.log")
  [ "$n" -eq 5 ] && ok "gave up after $n tries" || fail "$n tries logged (want 5)"
else
  fail "rogue certificate: cloud edge still retrying after 30 s"; stop_pid "$CPID"
fi

# SIGTERM while it retries stops it within 2 s.
cloud rogue2 "$PKI/rogue-cert.pem" "$PKI/rogue-key.pem"
sleep 1
kill -TERM "$CPID"
if wait_exit "$CPID" 2; then ok "SIGTERM during certificate retries stopped the cloud edge within 2 s"
else fail "SIGTERM ignored during certificate retries"; stop_pid "$CPID"; fi

# An expired certificate of its own: refused at start, before any connection.
cloud expired "$PKI/expired-cert.pem" "$PKI/expired-key.pem"
if wait_exit "$CPID" 5; then
  wait "$CPID"; rc=$?
  [ "$rc" -ne 0 ] && grep -q 'expired on' "$TMP/expired.log" &&
    ok "expired own certificate refused at start (rc $rc): $(grep -m1 'expired on' "$TMP/expired.log")" ||
    fail "expired own certificate: rc $rc, log: $(tr '\n' ' ' <"$TMP/expired.log")"
else fail "cloud edge started with an expired certificate"; stop_pid "$CPID"; fi
"$FERRY" dc-edge --listen 127.0.0.1:$(free_port) --volume "disk=nbd://127.0.0.1:$P_SRC/disk" \
  --tls-cert "$PKI/expired-cert.pem" --tls-key "$PKI/expired-key.pem" --tls-ca "$PKI/ca-cert.pem" \
  >"$TMP/dc-expired.log" 2>&1 &
pid=$!; PIDS+=($pid)
if wait_exit "$pid" 5; then
  wait "$pid"; rc=$?
  [ "$rc" -ne 0 ] && grep -q 'expired on' "$TMP/dc-expired.log" && ok "dc-edge with an expired certificate refused to start (rc $rc)" ||
    fail "dc-edge expired certificate: rc $rc"
else fail "dc-edge started with an expired certificate"; stop_pid "$pid"; fi

# And the right certificate still works, with no warning for a certificate valid 365 days.
cloud good "$PKI/cloud-edge-cert.pem" "$PKI/cloud-edge-key.pem"
if wait_listening "$TMP/good.log" "$CPID"; then ok "the right certificate connects"
else fail "right certificate: $(tail -3 "$TMP/good.log" | tr '\n' ' ')"; fi
grep -q 'WARNING' "$TMP/good.log" && fail "unexpected warning: $(grep -m1 WARNING "$TMP/good.log")"
FIRST=$CPID

# Roles. The dc-edge's own certificate presented by a client: refused by the dc-edge in the
# handshake, with the reason in its log.
"$PY" - "$PKI" "$P_WAN" >"$TMP/role-client.log" 2>&1 <<'PYEOF' && fail "dc-edge certificate accepted as a cloud edge" || ok "dc-edge's own certificate refused as a client by the dc-edge"
import socket, ssl, sys
pki, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(f"{pki}/ca-cert.pem")
ctx.check_hostname = False
ctx.load_cert_chain(f"{pki}/dc-edge-cert.pem", f"{pki}/dc-edge-key.pem")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
s.sendall(b"x" * 64)   # TLS 1.3: the server's verdict on our certificate arrives after the handshake
s.settimeout(5)
sys.exit(0 if s.recv(1) else 1)
PYEOF
for _ in $(seq 20); do grep -q 'refused as cloud-edge' "$TMP/dc.log" && break; sleep 0.1; done
grep -q 'refused as cloud-edge' "$TMP/dc.log" && ok "dc-edge log: $(grep -m1 -o 'refused as cloud-edge.*' "$TMP/dc.log")" ||
  fail "no role refusal in the dc-edge log"
# Our own certificate in the wrong role (or without a role) is refused at start (exit 2).
cloud wrongrole "$PKI/dc-edge-cert.pem" "$PKI/dc-edge-key.pem"
if wait_exit "$CPID" 5; then wait "$CPID"; rc=$?
  [ "$rc" -eq 2 ] && grep -q 'cannot serve as this cloud-edge' "$TMP/wrongrole.log" &&
    ok "cloud edge with a dc-edge certificate refused at start (rc 2)" || fail "wrong role: rc $rc: $(tr '\n' ' ' <"$TMP/wrongrole.log")"
else fail "cloud edge started with a dc-edge certificate"; stop_pid "$CPID"; fi
cloud norole "$PKI/norole-cert.pem" "$PKI/norole-key.pem"
if wait_exit "$CPID" 5; then wait "$CPID"; rc=$?
  [ "$rc" -eq 2 ] && grep -q 'urn:ferry:cloud-edge' "$TMP/norole.log" &&
    ok "certificate without a role URI refused at start (rc 2)" || fail "no role: rc $rc"
else fail "cloud edge started with a certificate without a role"; stop_pid "$CPID"; fi

# Leases. "good" (cloud-edge) holds the volume: a second cloud edge is refused, naming the holder.
cloud second "$PKI/cloud-edge-2-cert.pem" "$PKI/cloud-edge-2-key.pem"
if wait_exit "$CPID" 10; then wait "$CPID"; rc=$?
  [ "$rc" -ne 0 ] && grep -q "attached by cloud edge 'cloud-edge'" "$TMP/second.log" &&
    ok "second cloud edge refused (rc $rc): $(grep -m1 -o "volume 'disk' is attached.*" "$TMP/second.log")" ||
    fail "second cloud edge: rc $rc: $(tail -2 "$TMP/second.log" | tr '\n' ' ')"
else fail "a second cloud edge attached a volume that another one serves"; stop_pid "$CPID"; fi
# A clean stop of the holder releases the lease: the second edge gets in at once.
stop_pid "$FIRST"
grep -q "lease of volume 'disk' released" "$TMP/dc.log" && ok "clean stop released the lease" ||
  fail "lease not released by a clean stop: $(grep -m2 lease "$TMP/dc.log" | tr '\n' ' ')"
cloud second2 "$PKI/cloud-edge-2-cert.pem" "$PKI/cloud-edge-2-key.pem"
if wait_listening "$TMP/second2.log" "$CPID"; then ok "after the release the second cloud edge attaches"
else fail "second cloud edge after release: $(tail -3 "$TMP/second2.log" | tr '\n' ' ')"; fi
# Killed (no release): its lease is kept for --lease-ms (3 s here): the first edge is refused
# meanwhile, and gets in once it expired (the ACL cloud edges below).
kill -9 "$CPID"; wait "$CPID" 2>/dev/null
cloud first-again "$PKI/cloud-edge-cert.pem" "$PKI/cloud-edge-key.pem"
if wait_exit "$CPID" 10; then wait "$CPID"; rc=$?
  [ "$rc" -ne 0 ] && grep -q "leased to cloud edge 'cloud-edge-2', disconnected" "$TMP/first-again.log" &&
    ok "lease of a killed cloud edge kept: $(grep -m1 -o "leased to.*" "$TMP/first-again.log")" ||
    fail "after kill -9: rc $rc: $(tail -2 "$TMP/first-again.log" | tr '\n' ' ')"
else fail "another cloud edge attached while a killed edge's lease was live"; stop_pid "$CPID"; fi
sleep 3.2

# The cloud edge's portal has the same access model as ferry target: CHAP and an initiator ACL
# (before, any IQN logged in without credentials; issue 15, failure 3).
ALLOWED=iqn.2026-12.io.ferry.test:allowed
P_CI=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$P_CI --dc 127.0.0.1:$P_WAN --volume disk \
  --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --tls-cert "$PKI/cloud-edge-cert.pem" \
  --tls-key "$PKI/cloud-edge-key.pem" --chap vmuser:vmsecret123 --allow-initiator "$ALLOWED" \
  >"$TMP/acl.log" 2>&1 &
CPID=$!; PIDS+=($CPID)
if wait_listening "$TMP/acl.log" "$CPID"; then
  CURL="iqn.2026-11.io.ferry:cloud/0"
  iscsi-inq -i "$ALLOWED" "iscsi://vmuser%vmsecret123@127.0.0.1:$P_CI/$CURL" >/dev/null 2>&1 &&
    ok "cloud edge: allowed initiator with the right CHAP secret logs in" || fail "cloud edge: allowed initiator refused"
  iscsi-inq -i iqn.2026-12.io.ferry.test:intruder "iscsi://vmuser%vmsecret123@127.0.0.1:$P_CI/$CURL" >/dev/null 2>&1 &&
    fail "cloud edge: an initiator outside the ACL logged in" || ok "cloud edge: unknown IQN refused by the ACL"
  iscsi-inq -i "$ALLOWED" "iscsi://vmuser%wrongsecret@127.0.0.1:$P_CI/$CURL" >/dev/null 2>&1 &&
    fail "cloud edge: wrong CHAP secret accepted" || ok "cloud edge: wrong CHAP secret refused"
  iscsi-inq -i "$ALLOWED" "iscsi://127.0.0.1:$P_CI/$CURL" >/dev/null 2>&1 &&
    fail "cloud edge: login without CHAP accepted" || ok "cloud edge: login without credentials refused"
  grep -q 'allow-initiator' "$TMP/acl.log" && ok "ACL refusal logged: $(grep -m1 'allow-initiator' "$TMP/acl.log")" ||
    fail "no ACL refusal in the log"
else
  fail "cloud edge with CHAP and ACL did not start: $(tail -3 "$TMP/acl.log" | tr '\n' ' ')"
fi
stop_pid "$CPID"
"$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --dc 127.0.0.1:$P_WAN --volume disk \
  --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --tls-cert "$PKI/cloud-edge-cert.pem" \
  --tls-key "$PKI/cloud-edge-key.pem" --chap vmuser:vmsecret123 --nbd 127.0.0.1:$(free_port) \
  >"$TMP/acl-nbd.log" 2>&1 &
pid=$!; PIDS+=($pid)
if wait_exit "$pid" 5; then
  wait "$pid"; rc=$?
  [ "$rc" -ne 0 ] && grep -q 'CHAP-protected' "$TMP/acl-nbd.log" &&
    ok "cloud edge: CHAP volumes with an unauthenticated NBD export refused (rc $rc)" || fail "cloud edge CHAP+NBD: rc $rc"
else fail "cloud edge started CHAP volumes with a plaintext NBD export"; stop_pid "$pid"; fi
stop_pid "$DC_PID"
finish
