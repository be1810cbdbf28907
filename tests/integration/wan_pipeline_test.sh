#!/usr/bin/env bash
# The WAN pipeline end to end: a VMDK (made from a raw image with random, zero and text regions)
# served by qemu-nbd → ferry dc-edge → ferry-wan-emu (100 Mbit/s, 40 ms RTT) → ferry cloud-edge
# → iSCSI → qemu-img convert, byte-identical to the raw image; only in-use blocks cross the WAN;
# a 5 s link cut during a copy is survived (no I/O error, identical data); a wrong certificate,
# an unknown volume and a malformed frame are refused with a clear log line.
# Usage: wan_pipeline_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-img qemu-nbd openssl cmp
qemu-img --help 2>/dev/null | grep -q iscsi || skip "qemu-img lacks the iscsi driver (qemu-block-extra)"
EMU=$(dirname "$FERRY")/ferry-wan-emu
[ -x "$EMU" ] || skip "ferry-wan-emu not built"
SRC=${FERRY_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
"$SRC/scripts/make-test-pki.sh" "$TMP/pki" >/dev/null || { echo "FAIL: make-test-pki"; exit 1; }
PKI=$TMP/pki
CLOUD_IQN=iqn.2026-11.io.ferry:cloud

# 48 MiB image: 8 MiB random, 8 MiB zero, 8 MiB text, 16 MiB zero, 4 MiB random, 4 MiB zero.
"$PY" - "$TMP/raw.img" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(48 << 20)
    f.seek(0); f.write(os.urandom(8 << 20))
    text = b"".join(b"line %08d: the quick brown fox jumps over the lazy dog\n" % i for i in range(200000))
    f.seek(16 << 20); f.write(text[:8 << 20])
    f.seek(40 << 20); f.write(os.urandom(4 << 20))
PY
qemu-img convert -f raw -O vmdk "$TMP/raw.img" "$TMP/disk.vmdk" || { echo "FAIL: qemu-img vmdk"; exit 1; }
P_NBD=$(free_port)
qemu-nbd -f vmdk -r --shared=16 -b 127.0.0.1 -p "$P_NBD" -t -x disk "$TMP/disk.vmdk" >"$TMP/qemu-nbd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_NBD))" 2>/dev/null && break; sleep 0.1; done

start_dc() {  # start_dc NAME ; sets DC_PID, P_WAN
  P_WAN=$(free_port)
  "$FERRY" dc-edge --listen 127.0.0.1:$P_WAN --volume "disk=nbd://127.0.0.1:$P_NBD/disk" \
    --tls-cert "$PKI/dc-edge-cert.pem" --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" \
    >"$TMP/$1.log" 2>&1 &
  DC_PID=$!; PIDS+=($DC_PID)
  for _ in $(seq 100); do grep -q 'dc-edge listening' "$TMP/$1.log" && return 0; sleep 0.05; done
  cat "$TMP/$1.log"; echo "FAIL: dc-edge did not start"; exit 1
}
start_emu() {  # start_emu NAME TARGET_PORT ARGS... ; sets EMU_PID, P_EMU
  local name=$1 target=$2; shift 2
  P_EMU=$(free_port)
  "$EMU" --listen 127.0.0.1:$P_EMU --connect 127.0.0.1:$target "$@" >"$TMP/$name.log" 2>&1 &
  EMU_PID=$!; PIDS+=($EMU_PID)
  for _ in $(seq 100); do grep -q 'listening' "$TMP/$name.log" && return 0; sleep 0.05; done
  cat "$TMP/$name.log"; echo "FAIL: wan emulator did not start"; exit 1
}
start_cloud() {  # start_cloud NAME DC_PORT [extra args] ; sets CLOUD_PID, P_ISCSI; returns 1 on failure
  local name=$1 dcport=$2; shift 2
  P_ISCSI=$(free_port)
  "$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --dc 127.0.0.1:$dcport --volume disk \
    --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge "$@" >"$TMP/$name.log" 2>&1 &
  CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  for _ in $(seq 300); do
    grep -q 'ferry: listening on' "$TMP/$name.log" && return 0
    kill -0 $CLOUD_PID 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
CLOUD_CERT=(--tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem")

# ---------------------------------------------------------------- full read over the emulated WAN
start_dc dc1
start_emu emu1 "$P_WAN" --rtt-ms 40 --rate-mbit 100
start_cloud cloud1 "$P_EMU" "${CLOUD_CERT[@]}" || { cat "$TMP/cloud1.log"; echo "FAIL: cloud-edge"; exit 1; }
t0=$(date +%s.%N)
if timeout 300 qemu-img convert -f raw -O raw "iscsi://127.0.0.1:$P_ISCSI/$CLOUD_IQN/0" "$TMP/out.img" &&
   cmp "$TMP/out.img" "$TMP/raw.img"; then
  ok "VMDK read through qemu-nbd → dc-edge → WAN (100 Mbit/s, 40 ms) → cloud-edge → iSCSI: byte-identical"
else fail "pipeline read differs or failed"; fi
t1=$(date +%s.%N)
stop_pid "$CLOUD_PID"; stop_pid "$EMU_PID"
stats=$(grep '^volume disk: read' "$TMP/cloud1.log")
payload=$(sed -n 's/.* for \([0-9]*\) B of payload.*/\1/p' <<<"$stats")
echo "   $stats"
echo "   copy took $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s; WAN payload $payload B for a 48 MiB disk with 20 MiB in use"
if [ -n "$payload" ] && [ "$payload" -lt $((20 << 20)) ]; then
  ok "only in-use blocks crossed the WAN, compressed: $payload B < 20 MiB allocated"
else fail "WAN payload $payload not below the allocated size"; fi

# ---------------------------------------------------------------- 5 s link cut during a copy
start_emu emu2 "$P_WAN" --rtt-ms 40 --rate-mbit 20 --cut-at-s 2.5 --cut-for-s 5
start_cloud cloud2 "$P_EMU" "${CLOUD_CERT[@]}" --compression none || { cat "$TMP/cloud2.log"; fail "cloud-edge 2"; }
# A fresh cloud edge has an empty content store: the copy takes several seconds at 20 Mbit/s.
if timeout 300 qemu-img convert -f raw -O raw "iscsi://127.0.0.1:$P_ISCSI/$CLOUD_IQN/0" "$TMP/out2.img" &&
   cmp "$TMP/out2.img" "$TMP/raw.img"; then
  ok "copy with a 5 s link cut completed byte-identical, no I/O error"
else fail "copy across a link cut failed or differs"; fi
grep -q 'cut' "$TMP/emu2.log" && ok "the emulator did cut the link" || fail "no cut happened"
grep -E 'link .* lost|link back' "$TMP/cloud2.log" | head -3
stop_pid "$CLOUD_PID"; stop_pid "$EMU_PID"

# ---------------------------------------------------------------- the same content never crosses twice
# Two volumes backed by the same VMDK: reading the second after the first sends only references.
P_WAN2=$(free_port)
"$FERRY" dc-edge --listen 127.0.0.1:$P_WAN2 --volume "a=nbd://127.0.0.1:$P_NBD/disk" \
  --volume "b=nbd://127.0.0.1:$P_NBD/disk" --tls-cert "$PKI/dc-edge-cert.pem" \
  --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem" >"$TMP/dc2.log" 2>&1 &
DC2_PID=$!; PIDS+=($DC2_PID)
for _ in $(seq 100); do grep -q 'dc-edge listening' "$TMP/dc2.log" && break; sleep 0.05; done
P_ISCSI=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --dc 127.0.0.1:$P_WAN2 --volume a --volume b \
  --tls-ca "$PKI/ca-cert.pem" "${CLOUD_CERT[@]}" >"$TMP/cloud3.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
for _ in $(seq 200); do grep -q 'ferry: listening on' "$TMP/cloud3.log" && break; sleep 0.05; done
timeout 120 qemu-img convert -f raw -O raw "iscsi://127.0.0.1:$P_ISCSI/$CLOUD_IQN/0" "$TMP/a.img" &&
  timeout 120 qemu-img convert -f raw -O raw "iscsi://127.0.0.1:$P_ISCSI/$CLOUD_IQN/1" "$TMP/b.img" &&
  cmp "$TMP/a.img" "$TMP/raw.img" && cmp "$TMP/b.img" "$TMP/raw.img" || fail "two-volume read"
stop_pid "$CLOUD_PID"
pa=$(sed -n 's/^volume a: read .* for \([0-9]*\) B of payload.*/\1/p' "$TMP/cloud3.log")
pb=$(sed -n 's/^volume b: read .* for \([0-9]*\) B of payload.*/\1/p' "$TMP/cloud3.log")
if [ -n "$pa" ] && [ -n "$pb" ] && [ "$pb" -lt $((pa / 20)) ]; then
  ok "identical content on a second volume crossed as references: $pb B vs $pa B"
else fail "dedup across volumes: a=$pa b=$pb"; fi
stop_pid "$DC2_PID"

# ---------------------------------------------------------------- allocation map over the NBD export
# nbdinfo --map of the cloud edge's NBD export asks BLOCK_STATUS for the whole 48 MiB, more than
# one WAN request (32 MiB): it failed with EINVAL before. The map must show the image's layout.
if command -v nbdinfo >/dev/null; then
  P_NBDX=$(free_port)
  start_cloud cloud5 "$P_WAN" "${CLOUD_CERT[@]}" --nbd 127.0.0.1:$P_NBDX ||
    { cat "$TMP/cloud5.log"; fail "cloud-edge 5"; }
  if timeout 60 nbdinfo --map "nbd://127.0.0.1:$P_NBDX" >"$TMP/map.txt" 2>"$TMP/map.err"; then
    # The 8 MiB at 8 MiB and the 4 MiB at 44 MiB are zero in the image: each must read as zero.
    if "$PY" - "$TMP/map.txt" <<'PY'
import sys
runs = []
for line in open(sys.argv[1]):
    f = line.split()
    runs.append((int(f[0]), int(f[1]), int(f[2])))
covered = sum(r[1] for r in runs)
assert covered == 48 << 20, covered
def zero(lo, hi):
    return all(t & 2 for (o, n, t) in runs if o < hi and o + n > lo)
assert zero(8 << 20, 16 << 20) and zero(44 << 20, 48 << 20), runs
assert not zero(0, 8 << 20), runs
PY
    then ok "nbdinfo --map of the cloud-edge export (48 MiB): $(wc -l <"$TMP/map.txt") runs, zero regions reported"
    else fail "map of the cloud-edge export is wrong: $(head -c 400 "$TMP/map.txt")"; fi
  else fail "nbdinfo --map of the cloud-edge export: $(head -c 200 "$TMP/map.err")"; fi
  stop_pid "$CLOUD_PID"
fi

# ---------------------------------------------------------------- give-up: a long outage is a clear error
start_emu emu3 "$P_WAN" --rtt-ms 10 --cut-at-s 1 --cut-for-s 30 --cut-mode reset
start_cloud cloud4 "$P_EMU" "${CLOUD_CERT[@]}" --give-up-s 3 || { cat "$TMP/cloud4.log"; fail "cloud-edge 4"; }
sleep 1.5  # the link is cut now
t0=$(date +%s)
if timeout 60 qemu-img convert -f raw -O raw "iscsi://127.0.0.1:$P_ISCSI/$CLOUD_IQN/0" "$TMP/out4.img" 2>"$TMP/giveup.err"; then
  fail "a read succeeded during a 30 s outage"
else
  ok "outage longer than --give-up-s: the read failed after $(( $(date +%s) - t0 )) s: $(head -c 120 "$TMP/giveup.err")"
fi
grep -q 'link down for more than' "$TMP/cloud4.log" && ok "give-up logged: $(grep -m1 'link down for more' "$TMP/cloud4.log")" ||
  fail "no give-up log line"
stop_pid "$CLOUD_PID"; stop_pid "$EMU_PID"

# ---------------------------------------------------------------- refusals
if start_cloud rogue "$P_WAN" --tls-cert "$PKI/rogue-cert.pem" --tls-key "$PKI/rogue-key.pem"; then
  fail "a cloud edge with a certificate from another CA was accepted"
else ok "wrong client certificate refused"; fi
stop_pid "$CLOUD_PID"
sleep 0.3
grep -qi 'certificate' "$TMP/dc1.log" && ok "dc-edge logged the certificate refusal" ||
  fail "no log line for the wrong certificate: $(tail -3 "$TMP/dc1.log")"

P_ISCSI=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --dc 127.0.0.1:$P_WAN --volume nosuchdisk \
  --tls-ca "$PKI/ca-cert.pem" "${CLOUD_CERT[@]}" >"$TMP/unknown.log" 2>&1 &
UPID=$!; PIDS+=($UPID)
for _ in $(seq 100); do kill -0 $UPID 2>/dev/null || break; sleep 0.1; done
if ! kill -0 $UPID 2>/dev/null && grep -q 'unknown volume nosuchdisk' "$TMP/unknown.log"; then
  ok "unknown volume refused: $(grep -m1 'unknown volume' "$TMP/unknown.log")"
else fail "unknown volume: $(cat "$TMP/unknown.log")"; fi
stop_pid $UPID

"$PY" - "$P_WAN" "$PKI" <<'PY'
import socket, ssl, sys, os
port, pki = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(f"{pki}/cloud-edge-cert.pem", f"{pki}/cloud-edge-key.pem")
ctx.load_verify_locations(f"{pki}/ca-cert.pem")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="dc-edge")
s.sendall(os.urandom(40) + b"\0" * 100)
s.settimeout(5)
try:
    while s.recv(4096):
        pass
    print("closed")
except Exception as e:
    print("closed:", type(e).__name__)
PY
"$PY" - "$P_WAN" "$PKI" <<'PY'
import socket, ssl, struct, sys
port, pki = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_cert_chain(f"{pki}/cloud-edge-cert.pem", f"{pki}/cloud-edge-key.pem")
ctx.load_verify_locations(f"{pki}/ca-cert.pem")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="dc-edge")
# A HELLO-shaped header with the right magic and a wrong header CRC32C.
h = bytearray(40)
struct.pack_into(">HBB", h, 0, 0xFE77, 0x01, 0)
struct.pack_into(">I", h, 28, 32)
struct.pack_into(">I", h, 36, 0xDEADBEEF)
s.sendall(bytes(h) + b"\0" * 32)
s.settimeout(5)
try:
    while s.recv(4096):
        pass
except Exception:
    pass
PY
sleep 0.3
grep -q 'header CRC' "$TMP/dc1.log" && ok "bad CRC: dropped, logged ($(grep -m1 'header CRC' "$TMP/dc1.log"))" ||
  fail "no log line for a bad CRC: $(grep 'wan:' "$TMP/dc1.log" | tail -2)"
grep -q 'malformed frame' "$TMP/dc1.log" && ok "malformed frame: connection dropped, logged ($(grep -m1 'malformed frame' "$TMP/dc1.log"))" ||
  fail "no log line for a malformed frame"
kill -0 "$DC_PID" && ok "dc-edge still running" || fail "dc-edge died"
stop_pid "$DC_PID"
grep '^volume disk: requested' "$TMP/dc1.log" | sed 's/^/   dc-edge: /'
finish
