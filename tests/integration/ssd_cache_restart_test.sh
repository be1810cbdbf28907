#!/usr/bin/env bash
# SSD cache tier survives kill -9 (issue 10): qemu-nbd -> ferry dc-edge -> ferry cloud-edge
# --ssd-cache FILE (AES-256-XTS key file), read the whole disk over NBD (nbdcopy), kill -9 the
# cloud edge, start it again on the same cache file and read again. Both copies must be
# byte-identical to the source, and the second must come from the SSD: the cloud edge's WAN
# counters at stop show (almost) nothing read over the link. Catches: metadata not persisted
# (cold after restart), a cache that does not reopen its file after an unclean stop, stale or
# torn chunks served after the kill.
# Usage: ssd_cache_restart_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl nbdcopy
make_pki
start_nbd_source 16
start_dc_edge dc --lease-ms 500   # a killed cloud edge's lease expires quickly
head -c 64 /dev/urandom >"$TMP/ssd.key"; chmod 600 "$TMP/ssd.key"

cloud() {  # cloud NAME [ARGS...]: a cloud edge with the SSD cache, NBD export on P_NBDX; sets CLOUD_PID
  P_NBDX=$(free_port); local p_iscsi; p_iscsi=$(free_port)
  local name=$1; shift
  "$FERRY" cloud-edge --listen 127.0.0.1:$p_iscsi --nbd 127.0.0.1:$P_NBDX --dc 127.0.0.1:$P_WAN \
    --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
    --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
    --ssd-cache "$TMP/ssd.cache" --ssd-cache-mib 64 --ssd-cache-key "$TMP/ssd.key" \
    "$@" >"$TMP/$name.log" 2>&1 &
  CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  wait_listening "$TMP/$name.log" "$CLOUD_PID" || { cat "$TMP/$name.log"; echo "FAIL: cloud-edge $name did not start"; exit 1; }
}
copy() {  # copy OUT: the whole export, 64 KiB requests, 16 in flight (within the 32 fetches)
  timeout 120 nbdcopy --connections=1 --requests=16 --request-size=65536 \
    "nbd://127.0.0.1:$P_NBDX/disk" "$1"
}

cloud cold
grep -q 'ssd-cache:.*aes-xts' "$TMP/cold.log" && ok "SSD cache encrypted: $(grep -o 'ssd-cache:[^>]*' "$TMP/cold.log")" ||
  fail "no encrypted SSD cache in the stack: $(grep 'volume disk' "$TMP/cold.log")"
copy "$TMP/out1.img" && cmp -s "$TMP/out1.img" "$TMP/disk.raw" && ok "cold copy through the SSD cache is byte-identical" ||
  fail "cold copy differs or failed"
sleep 1   # let the fills and their metadata writes land
kill -9 "$CLOUD_PID"; wait "$CLOUD_PID" 2>/dev/null
sleep 1   # the dc-edge's lease of the killed edge expires (--lease-ms 500)

cloud warm
grep -o 'restored [0-9]* chunks' "$TMP/warm.log" | sed 's/^/   /'
copy "$TMP/out2.img" && cmp -s "$TMP/out2.img" "$TMP/disk.raw" && ok "copy after kill -9 and restart is byte-identical" ||
  fail "copy after restart differs or failed"
stop_pid "$CLOUD_PID"
grep -E '^(volume disk|ssd cache)' "$TMP/warm.log" | sed 's/^/   /'
wan=$(sed -n 's/^volume disk: read \([0-9]*\) B.*/\1/p' "$TMP/warm.log")
hits=$(sed -n 's/^ssd cache disk: \([0-9]*\) hits.*/\1/p' "$TMP/warm.log")
restored=$(grep -o 'restored [0-9]* chunks' "$TMP/warm.log" | head -1 | tr -dc 0-9)
[ "${restored:-0}" -ge 250 ] && ok "SSD cache came back warm: $restored chunks restored after kill -9" ||
  fail "SSD cache came back cold: ${restored:-?} chunks restored"
if [ -n "$wan" ] && [ "$wan" -lt $((1 << 20)) ] && [ "${hits:-0}" -gt 0 ]; then
  ok "second read over the WAN: $wan B for 16 MiB ($hits SSD hits)"
else fail "second read fetched ${wan:-?} B over the WAN (SSD hits ${hits:-?})"; fi

# Both tiers (ram-cache > ssd-cache > remote): still byte-identical, still served locally.
cloud both --ram-cache-mib 8
grep -q 'ram-cache:.*>ssd-cache:' "$TMP/both.log" && ok "stack: RAM cache over SSD cache" ||
  fail "RAM cache not stacked over the SSD cache: $(grep 'volume disk' "$TMP/both.log" | tr '\n' ' ')"
copy "$TMP/out3.img" && cmp -s "$TMP/out3.img" "$TMP/disk.raw" && ok "copy through RAM over SSD is byte-identical" ||
  fail "copy through RAM over SSD differs or failed"
stop_pid "$CLOUD_PID"
wan=$(sed -n 's/^volume disk: read \([0-9]*\) B.*/\1/p' "$TMP/both.log")
[ -n "$wan" ] && [ "$wan" -lt $((1 << 20)) ] && ok "RAM over SSD: $wan B over the WAN" || fail "RAM over SSD read ${wan:-?} B over the WAN"
finish
