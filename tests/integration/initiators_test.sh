#!/usr/bin/env bash
# Real initiators against `ferry target`: qemu-img (qemu-block-extra's iSCSI driver) reads a file
# LUN byte-identical to its file and writes into a LUN; libiscsi's iscsi-ls / iscsi-inq /
# iscsi-readcapacity16 work; header/data digests (CRC32C) work; a 4096-byte-block LUN round
# trips; CHAP refuses a wrong secret and accepts the right one; mutual CHAP too.
# Usage: initiators_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-img iscsi-ls iscsi-inq iscsi-readcapacity16 cmp
qemu-img --help 2>/dev/null | grep -q iscsi || skip "qemu-img lacks the iscsi driver (apt-get install qemu-block-extra)"

# ---------------------------------------------------------------- read and write a file LUN
head -c 48M /dev/urandom >"$TMP/disk.img"
cp "$TMP/disk.img" "$TMP/original.img"
P=$(free_port)
start_ferry files --listen 127.0.0.1:$P --lun "file:$TMP/disk.img" --lun ram:64MiB:4096
URL0="iscsi://127.0.0.1:$P/$IQN/0"
URL1="iscsi://127.0.0.1:$P/$IQN/1"

out=$(timeout 30 iscsi-ls -s "iscsi://127.0.0.1:$P" 2>&1)
if grep -q "Target:$IQN Portal:127.0.0.1:$P,1" <<<"$out" && grep -q 'Lun:0 .*DIRECT_ACCESS' <<<"$out" &&
   grep -q 'Lun:1 .*DIRECT_ACCESS' <<<"$out"; then ok "iscsi-ls -s lists the target and both LUNs"
else fail "iscsi-ls: $out"; fi

out=$(timeout 30 iscsi-inq "$URL0" 2>&1)
if grep -q 'Vendor:FERRY' <<<"$out" && grep -q 'Product:FILE DISK' <<<"$out"; then ok "iscsi-inq standard INQUIRY"
else fail "iscsi-inq: $out"; fi
out=$(timeout 30 iscsi-inq -e 1 -c 131 "$URL0" 2>&1)
grep -qi 'naa\|designator' <<<"$out" && ok "iscsi-inq VPD 0x83" || fail "iscsi-inq VPD 83: $out"

out=$(timeout 30 iscsi-readcapacity16 "$URL0" 2>&1)
if grep -q 'LOGICAL BLOCK LENGTH IN BYTES:512' <<<"$out" && grep -q "Total size:$((48 << 20))" <<<"$out"; then
  ok "iscsi-readcapacity16 (512-byte blocks, 48 MiB)"
else fail "iscsi-readcapacity16: $out"; fi
out=$(timeout 30 iscsi-readcapacity16 "$URL1" 2>&1)
grep -q 'LOGICAL BLOCK LENGTH IN BYTES:4096' <<<"$out" && ok "iscsi-readcapacity16 (4096-byte blocks)" ||
  fail "iscsi-readcapacity16 LUN 1: $out"

if timeout 120 qemu-img convert -f raw -O raw "$URL0" "$TMP/read.img" && cmp "$TMP/read.img" "$TMP/original.img"; then
  ok "qemu-img convert from iscsi:// is byte-identical to the file"
else fail "qemu-img convert from iscsi:// differs from the file"; fi

head -c 48M /dev/urandom >"$TMP/new.img"
if timeout 120 qemu-img convert -n -f raw -O raw "$TMP/new.img" "$URL0" && cmp "$TMP/new.img" "$TMP/disk.img"; then
  ok "qemu-img convert into the LUN: the backing file holds the new image"
else fail "qemu-img convert into the LUN did not land in the file"; fi

# 4096-byte logical blocks: write then read back through qemu.
head -c 64M /dev/urandom >"$TMP/lun1-src.img"
if timeout 120 qemu-img convert -n -f raw -O raw "$TMP/lun1-src.img" "$URL1" &&
   timeout 120 qemu-img convert -f raw -O raw "$URL1" "$TMP/lun1-back.img" &&
   cmp "$TMP/lun1-src.img" "$TMP/lun1-back.img"; then
  ok "4096-byte-block LUN round trip through qemu-img"
else fail "4096-byte-block LUN round trip"; fi

# Digests on both header and data (negotiated CRC32C).
out=$(timeout 30 iscsi-inq "$URL0?header_digest=crc32c" 2>&1)
grep -q 'Vendor:FERRY' <<<"$out" && ok "INQUIRY with HeaderDigest=CRC32C" || fail "header digest: $out"
# A whole image through header digests (every PDU header carries a CRC32C both ways).
out=$(timeout 60 iscsi-readcapacity16 "$URL1?header_digest=crc32c" 2>&1)
grep -q 'LOGICAL BLOCK LENGTH IN BYTES:4096' <<<"$out" && ok "READ CAPACITY with header digests" ||
  fail "header digest: $out"
stop_pid "$FERRY_PID"

# ---------------------------------------------------------------- several targets
P=$(free_port)
IQN2=iqn.2026-11.io.ferry:second
start_ferry multi --listen 127.0.0.1:$P --lun ram:16MiB --target "$IQN2=ram:8MiB" \
  --target "$IQN2=ram:4MiB:4096"
out=$(timeout 30 iscsi-ls -s "iscsi://127.0.0.1:$P" 2>&1)
if grep -q "Target:$IQN " <<<"$out" && grep -q "Target:$IQN2 " <<<"$out" &&
   [ "$(grep -c 'Lun:' <<<"$out")" -eq 3 ]; then ok "SendTargets lists both targets and their 3 LUNs"
else fail "several targets: $out"; fi
out=$(timeout 30 iscsi-readcapacity16 "iscsi://127.0.0.1:$P/$IQN2/1" 2>&1)
grep -q 'Total size:4194304' <<<"$out" && ok "second target's LUN 1 (4 MiB, 4096-byte blocks)" ||
  fail "second target LUN 1: $out"
stop_pid "$FERRY_PID"

# ---------------------------------------------------------------- CHAP
P=$(free_port)
start_ferry chap --listen 127.0.0.1:$P --lun ram:16MiB --chap alice:opensesame1234
url() { echo "iscsi://$1127.0.0.1:$P/$IQN/0"; }
timeout 30 iscsi-inq "$(url 'alice%opensesame1234@')" 2>&1 | grep -q 'Vendor:FERRY' &&
  ok "CHAP: right secret accepted" || fail "CHAP: right secret refused"
if timeout 30 iscsi-inq "$(url 'alice%wrongsecret99@')" >/dev/null 2>&1; then fail "CHAP: wrong secret accepted"
else ok "CHAP: wrong secret refused"; fi
if timeout 30 iscsi-inq "$(url 'mallory%opensesame1234@')" >/dev/null 2>&1; then fail "CHAP: wrong user accepted"
else ok "CHAP: wrong user refused"; fi
if timeout 30 iscsi-inq "$(url '')" >/dev/null 2>&1; then fail "CHAP: no credentials accepted"
else ok "CHAP: no credentials refused"; fi
grep -q 'CHAP authentication failed' "$TMP/chap.log" && ok "CHAP: refusal logged" || fail "CHAP refusal not logged"
# Two wrong secrets in a row back this address off for 1 s (auth_backoff_test.sh): wait it out.
for i in $(seq 30); do
  timeout 30 iscsi-inq "$(url 'alice%opensesame1234@')" >/dev/null 2>&1 && break
  sleep 0.1
done
timeout 120 qemu-img convert -f raw -O raw "$(url 'alice%opensesame1234@')" "$TMP/chap.img" &&
  ok "CHAP: qemu-img reads with credentials" || fail "CHAP: qemu-img with credentials"
stop_pid "$FERRY_PID"

# ---------------------------------------------------------------- mutual CHAP
P=$(free_port)
start_ferry mutual --listen 127.0.0.1:$P --lun ram:16MiB --chap alice:opensesame1234 \
  --mutual-chap target1:targetsecret567
mutual() { echo "iscsi://alice%$1@127.0.0.1:$P/$IQN/0?target_user=$2&target_password=$3"; }
timeout 30 iscsi-inq "$(mutual opensesame1234 target1 targetsecret567)" 2>&1 | grep -q 'Vendor:FERRY' &&
  ok "mutual CHAP: both secrets right: accepted" || fail "mutual CHAP refused"
if timeout 30 iscsi-inq "$(mutual opensesame1234 target1 notthesecret00)" >/dev/null 2>&1; then
  fail "mutual CHAP: initiator accepted a target with the wrong secret"
else ok "mutual CHAP: target answering with the wrong secret is refused by the initiator"; fi
if timeout 30 iscsi-inq "$(mutual wrongsecret99 target1 targetsecret567)" >/dev/null 2>&1; then
  fail "mutual CHAP: wrong initiator secret accepted"
else ok "mutual CHAP: wrong initiator secret refused"; fi
stop_pid "$FERRY_PID"

# ---------------------------------------------------------------- discovery CHAP
P=$(free_port)
start_ferry disc --listen 127.0.0.1:$P --lun ram:16MiB --discovery-chap disco:discoverysecret1
timeout 30 iscsi-ls "iscsi://disco%discoverysecret1@127.0.0.1:$P" 2>&1 | grep -q "Target:$IQN" &&
  ok "discovery CHAP: right secret lists targets" || fail "discovery CHAP: right secret"
if timeout 30 iscsi-ls "iscsi://disco%wrong@127.0.0.1:$P" 2>&1 | grep -q "Target:$IQN"; then
  fail "discovery CHAP: wrong secret listed targets"
else ok "discovery CHAP: wrong secret refused"; fi
stop_pid "$FERRY_PID"

# ---------------------------------------------------------------- stable LU identity
# The NAA ID came from std::hash of IQN/LUN (may change between builds, collided between two
# targets with the default IQN) and the serial from flag order: a multipath hazard. Now both
# derive from a UUID kept with the disk (user.ferry.uuid xattr or PATH.ferry-uuid).
lu_identity() {  # lu_identity URL: "serial NAA-designator"
  local serial naa
  serial=$(iscsi-inq -e 1 -c 128 "$1" 2>/dev/null | sed -n 's/^Unit Serial Number:\[\(.*\)\]/\1/p')
  # iscsi-inq prints the NAA designator's bytes raw: hex them.
  naa=$(iscsi-inq -e 1 -c 131 "$1" 2>/dev/null | "$PY" -c '
import re, sys
m = re.search(rb"\(3\) NAA\nDesignator:\[(.{16})\]", sys.stdin.buffer.read(), re.S)
print(m.group(1).hex() if m else "")')
  echo "$serial $naa"
}
truncate -s 16M "$TMP/id-a.img" "$TMP/id-b.img"
PA=$(free_port); PB=$(free_port)
start_ferry id1 --listen 127.0.0.1:$PA --lun "file:$TMP/id-a.img" --lun "file:$TMP/id-b.img"
ID1_PID=$FERRY_PID
start_ferry id2 --listen 127.0.0.1:$PB --lun "file:$TMP/id-b.img" --lun "file:$TMP/id-a.img"
a_first=$(lu_identity "iscsi://127.0.0.1:$PA/$IQN/0")
a_second=$(lu_identity "iscsi://127.0.0.1:$PB/$IQN/1")
b_first=$(lu_identity "iscsi://127.0.0.1:$PA/$IQN/1")
echo "   disk a: $a_first; disk b: $b_first"
stop_pid "$FERRY_PID"; stop_pid "$ID1_PID"
[ -n "${a_first%% *}" ] && [ "$a_first" = "$a_second" ] &&
  ok "a file LUN keeps its serial and NAA ID across targets and reordered --lun flags" ||
  fail "file LUN identity changed: '$a_first' vs '$a_second'"
[ "$a_first" != "$b_first" ] && [ "${a_first#* }" != "${b_first#* }" ] &&
  ok "two disks behind the same default IQN have different serials and NAA IDs" ||
  fail "two disks share an identity: '$a_first' / '$b_first'"
start_ferry id3 --listen 127.0.0.1:$PA --lun "file:$TMP/id-a.img"
a_restart=$(lu_identity "iscsi://127.0.0.1:$PA/$IQN/0")
stop_pid "$FERRY_PID"
[ "$a_restart" = "$a_first" ] && ok "the identity survives a restart" || fail "identity after restart: '$a_restart'"
P_R1=$(free_port); P_R2=$(free_port)
start_ferry id4 --listen 127.0.0.1:$P_R1 --lun ram:16MiB
ID4_PID=$FERRY_PID
start_ferry id5 --listen 127.0.0.1:$P_R2 --lun ram:16MiB
r1=$(lu_identity "iscsi://127.0.0.1:$P_R1/$IQN/0"); r2=$(lu_identity "iscsi://127.0.0.1:$P_R2/$IQN/0")
stop_pid "$FERRY_PID"; stop_pid "$ID4_PID"
[ "${r1#* }" != "${r2#* }" ] && ok "two targets with the default IQN and a RAM LUN: different NAA IDs" ||
  fail "RAM LUNs of two targets collide: '$r1' / '$r2'"

# ---------------------------------------------------------------- initiator ACL
P_ACL=$(free_port)
start_ferry acl --listen 127.0.0.1:$P_ACL --lun ram:16MiB --allow-initiator iqn.2026-12.io.ferry.test:allowed
iscsi-inq -i iqn.2026-12.io.ferry.test:ALLOWED "iscsi://127.0.0.1:$P_ACL/$IQN/0" >/dev/null 2>&1 &&
  ok "ACL: a listed initiator logs in (names compare case-insensitively)" || fail "ACL: listed initiator refused"
iscsi-inq -i iqn.2026-12.io.ferry.test:other "iscsi://127.0.0.1:$P_ACL/$IQN/0" >/dev/null 2>&1 &&
  fail "ACL: an unlisted initiator logged in" || ok "ACL: an unlisted initiator is refused"
grep -q 'status 0x0202' "$TMP/acl.log" && ok "ACL refusal logged with status 0x0202" || fail "ACL refusal not logged as 0x0202: $(grep -m1 refused "$TMP/acl.log")"
stop_pid "$FERRY_PID"

finish
