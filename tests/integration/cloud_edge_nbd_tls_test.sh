#!/usr/bin/env bash
# TLS on the cloud edge's NBD export (issue 15: it had none, so CHAP-protected volumes could be
# exported over NBD only with --nbd-insecure). `ferry cloud-edge --chap-file ... --nbd ...
# --nbd-tls-cert/--nbd-tls-key/--nbd-tls-ca` (the flags of `ferry target`): nbdinfo/nbdcopy with a
# client certificate read the volume byte-identical to its source; a client without a
# certificate, one with a certificate from another CA and a plaintext client are refused; two
# refused certificates back the address off (STARTTLS refused even with a good certificate)
# until the back-off is over; the iSCSI portal takes the CHAP secret from the file; without
# client certificates a CHAP cloud edge refuses to start, --nbd-insecure is logged.
# Usage: cloud_edge_nbd_tls_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl nbdinfo nbdcopy cmp iscsi-inq

make_pki
# An NBD server certificate for 127.0.0.1 (make-test-pki.sh has none with an IP SAN).
(
  cd "$PKI"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=nbd-export" \
    -keyout nbd-server-key.pem -out nbd-server.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >nbd-server.ext
  openssl x509 -req -in nbd-server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
    -extfile nbd-server.ext -out nbd-server-cert.pem 2>/dev/null
) || { echo "FAIL: making the NBD server certificate"; exit 1; }
# libnbd's --tls-certificates directories: ca-cert.pem [client-cert.pem client-key.pem].
mkdir -p "$TMP/good" "$TMP/nocert" "$TMP/rogue"
cp "$PKI/ca-cert.pem" "$TMP/good/"; cp "$PKI/ca-cert.pem" "$TMP/nocert/"; cp "$PKI/ca-cert.pem" "$TMP/rogue/"
cp "$PKI/cloud-edge-cert.pem" "$TMP/good/client-cert.pem"; cp "$PKI/cloud-edge-key.pem" "$TMP/good/client-key.pem"
cp "$PKI/rogue-cert.pem" "$TMP/rogue/client-cert.pem"; cp "$PKI/rogue-key.pem" "$TMP/rogue/client-key.pem"

start_nbd_source 8
start_dc_edge dc
umask 077
printf 'vmuser:vmsecret1234\n' >"$TMP/chap"
CLOUD=(--dc 127.0.0.1:$P_WAN --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge
       --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem")
P_ISCSI=$(free_port); P_NBD=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI "${CLOUD[@]}" --chap-file "$TMP/chap" \
  --nbd 127.0.0.1:$P_NBD --nbd-tls-cert "$PKI/nbd-server-cert.pem" --nbd-tls-key "$PKI/nbd-server-key.pem" \
  --nbd-tls-ca "$PKI/ca-cert.pem" >"$TMP/cloud.log" 2>&1 &
CPID=$!; PIDS+=($CPID)
wait_listening "$TMP/cloud.log" "$CPID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge with NBD TLS did not start"; exit 1; }
ok "cloud edge with --chap-file and --nbd-tls-* started"

good() { nbdinfo --size "nbds://127.0.0.1:$P_NBD/disk?tls-certificates=$TMP/good" 2>"$TMP/good.err"; }
size=$(good)
[ "$size" = $((8 << 20)) ] && ok "nbdinfo with a client certificate reads the export ($size bytes)" ||
  fail "nbdinfo with a client certificate: '$size' $(cat "$TMP/good.err")"
timeout 120 nbdcopy "nbds://127.0.0.1:$P_NBD/disk?tls-certificates=$TMP/good" "$TMP/copy.raw" &&
  cmp "$TMP/copy.raw" "$TMP/disk.raw" && ok "nbdcopy over TLS reads the volume byte-identical to its source" ||
  fail "nbdcopy over TLS read"
timeout 30 iscsi-inq "iscsi://vmuser%vmsecret1234@127.0.0.1:$P_ISCSI/iqn.2026-11.io.ferry:cloud/0" 2>&1 |
  grep -q 'Vendor:FERRY' && ok "iSCSI login with the CHAP secret from --chap-file" || fail "cloud edge --chap-file login"

nbdinfo --size "nbd://127.0.0.1:$P_NBD/disk" >/dev/null 2>&1 &&
  fail "plaintext client read a CHAP-protected volume" || ok "plaintext client refused"
nbdinfo --size "nbds://127.0.0.1:$P_NBD/disk?tls-certificates=$TMP/nocert" >/dev/null 2>&1 &&
  fail "a client without a certificate was accepted" || ok "a client without a certificate is refused"
grep -q 'TLS handshake failed' "$TMP/cloud.log" && ok "refusal logged: $(grep -m1 'TLS handshake failed' "$TMP/cloud.log")" ||
  fail "certificate refusal not logged"
nbdinfo --size "nbds://127.0.0.1:$P_NBD/disk?tls-certificates=$TMP/rogue" >/dev/null 2>&1 &&
  fail "a certificate from another CA was accepted" || ok "a client certificate from another CA is refused"
t_backoff=$(date +%s.%N)
# Two refused certificates: the address is backed off for 1 s, even a good certificate waits.
[ -z "$(good)" ] && ok "after two refused certificates STARTTLS is refused for the back-off" ||
  fail "no back-off after two refused certificates"
grep -q 'ferry: nbd 127.0.0.1: 2 failed authentications: refusing it for 1 s' "$TMP/cloud.log" &&
  ok "NBD back-off logged" || fail "NBD back-off not logged"
for i in $(seq 50); do [ -n "$(good)" ] && break; sleep 0.1; done
elapsed=$("$PY" -c "print(round($(date +%s.%N) - $t_backoff, 2))")
[ -n "$(good)" ] && ok "the good certificate reads again once the back-off is over (${elapsed} s)" ||
  fail "good certificate still refused after ${elapsed} s"
stop_pid "$CPID"

# Without client certificates a CHAP cloud edge does not start; --nbd-insecure starts, logged.
"$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) "${CLOUD[@]}" --chap-file "$TMP/chap" \
  --nbd 127.0.0.1:$(free_port) --nbd-tls-cert "$PKI/nbd-server-cert.pem" --nbd-tls-key "$PKI/nbd-server-key.pem" \
  >"$TMP/nocerts.log" 2>&1
rc=$?
[ "$rc" = 2 ] && grep -q 'CHAP-protected.*--nbd-tls-ca' "$TMP/nocerts.log" &&
  ok "CHAP volumes with NBD TLS but no client CA refused (exit 2)" || fail "no client CA: rc $rc $(head -1 "$TMP/nocerts.log")"
"$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) "${CLOUD[@]}" --chap-file "$TMP/chap" \
  --nbd 127.0.0.1:$(free_port) --nbd-insecure >"$TMP/insecure.log" 2>&1 &
IPID=$!; PIDS+=($IPID)
wait_listening "$TMP/insecure.log" "$IPID" && grep -q 'WARNING: --nbd-insecure' "$TMP/insecure.log" &&
  ok "--nbd-insecure starts and says so" || fail "--nbd-insecure: $(tail -2 "$TMP/insecure.log" | tr '\n' ' ')"
stop_pid "$IPID"
stop_pid "$DC_PID"
finish
