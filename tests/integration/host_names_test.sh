#!/usr/bin/env bash
# Host names and IPv6 literals everywhere an address is given (issue 14: --dc, --listen and NBD
# URIs took IPv4 literals only, so the README's own `dc = "dc.example:9111"` was refused). The
# whole pipeline — qemu-nbd → dc-edge → cloud-edge → NBD export and iSCSI portal — runs once with
# every address spelled `localhost`, once with `[::1]` (skipped without an IPv6 loopback), and
# reads byte-identical data; a name that does not resolve is refused with a clear line.
# Usage: host_names_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl nbdcopy cmp iscsi-inq
make_pki
dd if=/dev/urandom of="$TMP/disk.raw" bs=1M count=8 status=none

# pipeline FORM BIND: FORM is how the address is written in flags and URIs ("localhost",
# "[::1]"), BIND the literal qemu-nbd binds.
pipeline() {
  local form=$1 bind=$2 tag=$3
  local p_src p_wan p_iscsi p_nbd src_pid dc_pid cloud_pid i
  p_src=$(free_port); p_wan=$(free_port); p_iscsi=$(free_port); p_nbd=$(free_port)
  qemu-nbd -f raw -r --shared=8 -b "$bind" -p "$p_src" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd-$tag.log" 2>&1 &
  src_pid=$!; PIDS+=($src_pid)
  for i in $(seq 50); do nbdinfo --size "nbd://$form:$p_src/disk" >/dev/null 2>&1 && break; sleep 0.1; done
  "$FERRY" dc-edge --listen "$form:$p_wan" --volume "disk=nbd://$form:$p_src/disk" \
    --tls-cert "$PKI/dc-edge-cert.pem" --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" \
    >"$TMP/dc-$tag.log" 2>&1 &
  dc_pid=$!; PIDS+=($dc_pid)
  for i in $(seq 100); do grep -q 'dc-edge listening' "$TMP/dc-$tag.log" && break; sleep 0.05; done
  grep -q 'dc-edge listening' "$TMP/dc-$tag.log" && ok "$form: dc-edge --listen $form:PORT, source nbd://$form:PORT/disk" ||
    { cat "$TMP/dc-$tag.log"; fail "$form: dc-edge did not start"; return; }
  "$FERRY" cloud-edge --listen "$form:$p_iscsi" --dc "$form:$p_wan" --nbd "$form:$p_nbd" --volume disk \
    --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --tls-cert "$PKI/cloud-edge-cert.pem" \
    --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud-$tag.log" 2>&1 &
  cloud_pid=$!; PIDS+=($cloud_pid)
  wait_listening "$TMP/cloud-$tag.log" "$cloud_pid" && ok "$form: cloud-edge --dc $form:PORT --listen $form:PORT" ||
    { cat "$TMP/cloud-$tag.log"; fail "$form: cloud-edge did not start"; return; }
  rm -f "$TMP/copy.raw"
  timeout 120 nbdcopy "nbd://$form:$p_nbd/disk" "$TMP/copy.raw" && cmp "$TMP/copy.raw" "$TMP/disk.raw" &&
    ok "$form: nbdcopy through the cloud edge's NBD export reads the source byte-identical" ||
    fail "$form: read through the pipeline failed or differs"
  timeout 30 iscsi-inq "iscsi://$form:$p_iscsi/iqn.2026-11.io.ferry:cloud/0" 2>&1 | grep -q 'Vendor:FERRY' &&
    ok "$form: iSCSI portal answers on $form" || fail "$form: iscsi-inq on the portal"
  stop_pid "$cloud_pid"; stop_pid "$dc_pid"; stop_pid "$src_pid"
}

pipeline localhost 127.0.0.1 v4name
if "$PY" -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::1",0))' 2>/dev/null; then
  pipeline "[::1]" ::1 v6
else
  echo "note: no IPv6 loopback on this machine: the [::1] run is skipped"
fi

# A name that does not resolve (RFC 6761 .invalid) is refused at start, naming it; so is an IPv6
# literal without brackets (which colon would be the port's?).
timeout 30 "$FERRY" target --listen no-such-host.invalid:3260 --lun ram:16MiB >"$TMP/bad.log" 2>&1; rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'no-such-host.invalid' "$TMP/bad.log" &&
  ok "unresolvable listen name refused (exit $rc): $(grep -m1 'no-such-host' "$TMP/bad.log")" ||
  { cat "$TMP/bad.log"; fail "unresolvable name: exit $rc"; }
timeout 30 "$FERRY" cloud-edge --listen 127.0.0.1:0 --dc "::1:9111" --volume disk --tls-ca "$PKI/ca-cert.pem" \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/bad2.log" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q 'brackets' "$TMP/bad2.log" && ok "IPv6 without brackets refused (exit 2): $(grep -m1 brackets "$TMP/bad2.log")" ||
  { cat "$TMP/bad2.log"; fail "unbracketed IPv6 --dc: exit $rc"; }
finish
