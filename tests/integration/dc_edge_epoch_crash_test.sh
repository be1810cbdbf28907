#!/usr/bin/env bash
# The on-prem image stays at an epoch boundary when the datacenter edge dies (issue 11, "must
# show" 2 and 3): qemu-nbd (raw image) → ferry dc-edge --redo-dir (apply slowed by a 2 ms delay
# layer under the redo log, so kills land mid-epoch) → ferry cloud-edge --journal-dir (its --nbd
# export) ← a writer in rounds: round r writes 64 blocks chosen by a PRNG seeded with r, each block
# carrying its number, r and a CRC32, 16 in flight, then FLUSH (an epoch boundary). Three times at
# a random moment: the cloud edge is paused (SIGSTOP, so the image holds still), the dc-edge is
# killed -9 and restarted on the same redo log (it applies a committed epoch before it listens),
# and the raw image file must equal the state after some round m exactly (m = the newest round in
# it; every block as the last round <= m left it, untouched blocks zero); then the cloud edge goes
# on. After a drain the raw image equals what the initiator reads, byte for byte. Catches: epoch
# writes applied before their commit, a committed epoch lost or half applied after kill -9, an
# uncommitted one applied at restart, coalescing across a FLUSH boundary, a re-shipped epoch
# applied over a newer one. About 30 s.
# Usage: dc_edge_epoch_crash_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed (scripts/install-deps.sh)"
make_pki
KILLS=${KILLS:-3}

BLOCKS=4096  # 16 MiB of 4 KiB blocks, in a 64 MiB image
truncate -s 64M "$TMP/disk.raw"
P_SRC=$(free_port)
qemu-nbd -f raw -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
SRC_PID=$!; PIDS+=($SRC_PID)
for i in $(seq 100); do
  "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break
  sleep 0.05
done
mkdir -p "$TMP/redo" "$TMP/journals"
dc_args
P_WAN=$(free_port)
start_dc() {  # start_dc N: the dc-edge on P_WAN with its redo log; sets DC_PID
  "$FERRY" dc-edge --listen 127.0.0.1:$P_WAN "${DC_ARGS[@]}" --redo-dir "$TMP/redo" --redo-mib 64 \
    --layers delay:2ms --lease-ms 500 >"$TMP/dc$1.log" 2>&1 &
  DC_PID=$!; PIDS+=($DC_PID)
  local i
  for i in $(seq 200); do grep -q 'dc-edge listening' "$TMP/dc$1.log" && return 0; sleep 0.05; done
  cat "$TMP/dc$1.log"; echo "FAIL: dc-edge did not start"; exit 1
}
# A dc-edge without a redo log offers no epochs: a cloud edge with a journal must refuse it, saying why.
P_OLD=$(free_port)
"$FERRY" dc-edge --listen 127.0.0.1:$P_OLD "${DC_ARGS[@]}" >"$TMP/dc-old.log" 2>&1 &
OLD_PID=$!; PIDS+=($OLD_PID)
for i in $(seq 200); do grep -q 'dc-edge listening' "$TMP/dc-old.log" && break; sleep 0.05; done
timeout 20 "$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --dc 127.0.0.1:$P_OLD --volume disk \
  --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --journal-dir "$TMP/journals" --journal-mib 16 \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud-old.log" 2>&1
rc=$?
[ $rc -ne 0 ] && grep -q 'does not offer write-back epochs' "$TMP/cloud-old.log" &&
  ok "cloud edge with a journal refuses a dc-edge without epochs (exit $rc): $(grep -o 'does not offer[^:]*' "$TMP/cloud-old.log")" ||
  fail "cloud edge did not refuse a dc-edge without epochs (exit $rc): $(tail -2 "$TMP/cloud-old.log")"
stop_pid "$OLD_PID"
rm -f "$TMP/journals"/*
start_dc 0
P_NBD=$(free_port)
P_ISCSI=$(free_port)
URI="nbd://127.0.0.1:$P_NBD/disk"
"$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --nbd 127.0.0.1:$P_NBD --dc 127.0.0.1:$P_WAN \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --journal-dir "$TMP/journals" \
  --journal-mib 64 --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
  >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }

cat >"$TMP/rounds.py" <<'PY'
# write URI BLOCKS STOPFILE | check IMAGE BLOCKS [EXPECT_ROUND]
import os, random, struct, sys, time, zlib
import nbd
MAGIC = 0x6b636f6c62797266  # "ferryblk"
BS = 4096
PER_ROUND = 64
HDR = struct.Struct("<QQQI")

def round_blocks(r, nblocks):
    return random.Random(r).sample(range(nblocks), PER_ROUND)

def block(blk, r):
    payload = random.Random(r * 1000003 + blk).randbytes(BS - HDR.size)
    crc = zlib.crc32(struct.pack("<QQQ", MAGIC, blk, r) + payload)
    return HDR.pack(MAGIC, blk, r, crc) + payload

def round_of(data, blk):  # 0: never written, None: garbage
    if data == bytes(BS):
        return 0
    magic, b, r, crc = HDR.unpack_from(data)
    if magic != MAGIC or b != blk or zlib.crc32(struct.pack("<QQQ", MAGIC, b, r) + data[HDR.size:]) != crc:
        return None
    return r

def write(uri, nblocks, stopfile):
    h = nbd.NBD()
    h.connect_uri(uri)
    r = 0
    while not os.path.exists(stopfile):
        r += 1
        bufs, inflight = [], []
        for blk in round_blocks(r, nblocks):
            while len(inflight) >= 16:
                h.poll(1000)
                inflight = [c for c in inflight if not h.aio_command_completed(c)]
            buf = nbd.Buffer.from_bytearray(bytearray(block(blk, r)))
            bufs.append(buf)
            inflight.append(h.aio_pwrite(buf, blk * BS))
        while inflight:
            h.poll(1000)
            inflight = [c for c in inflight if not h.aio_command_completed(c)]
        h.flush()  # the round's boundary
        open(stopfile + ".rounds", "w").write(str(r))
    h.shutdown()
    print(f"writer: {r} rounds of {PER_ROUND} blocks, each ended by FLUSH")

def check(image, nblocks, expect):
    with open(image, "rb") as f:
        data = f.read(nblocks * BS)
    found = [round_of(data[b * BS:(b + 1) * BS], b) for b in range(nblocks)]
    if None in found:
        b = found.index(None)
        print(f"block {b} is torn or garbage: not any round's data")
        return 1
    m = max(found)
    if expect is not None and m != expect:
        print(f"newest round in the image is {m}, expected {expect}")
        return 1
    want = [0] * nblocks
    for r in range(1, m + 1):
        for b in round_blocks(r, nblocks):
            want[b] = r
    bad = [(b, want[b], found[b]) for b in range(nblocks) if want[b] != found[b]]
    if bad:
        print(f"image is not the state after round {m}: {len(bad)} blocks differ, e.g. (block, "
              f"want round, found round) {bad[:5]}")
        return 1
    print(f"image equals the state after round {m} (an epoch boundary)")
    return 0

if sys.argv[1] == "write":
    write(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    sys.exit(0)
sys.exit(check(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None))
PY

"$PY" "$TMP/rounds.py" write "$URI" $BLOCKS "$TMP/stop" >"$TMP/writer.log" 2>&1 &
WRITER_PID=$!; PIDS+=($WRITER_PID)
for k in $(seq "$KILLS"); do
  sleep "$("$PY" -c 'import random; print(round(random.uniform(1.0, 3.0), 2))')"
  kill -STOP "$CLOUD_PID"
  kill -9 "$DC_PID"; wait "$DC_PID" 2>/dev/null
  start_dc "$k"
  recovered=$(grep -o 'redo log [^:]*: [0-9]* committed epoch(s) to apply again, [0-9]* uncommitted record(s) discarded' "$TMP/dc$k.log" | sed 's/.*: //')
  if "$PY" "$TMP/rounds.py" check "$TMP/disk.raw" $BLOCKS >"$TMP/check$k.log" 2>&1; then
    ok "kill $k: dc-edge killed -9 mid-write-back, restarted (${recovered:-log was empty}): $(cat "$TMP/check$k.log")"
  else
    fail "kill $k: on-prem image not at an epoch boundary after kill -9 and restart: $(cat "$TMP/check$k.log")"
  fi
  kill -CONT "$CLOUD_PID"
done
sleep 1
touch "$TMP/stop"
for i in $(seq 600); do kill -0 "$WRITER_PID" 2>/dev/null || break; sleep 0.1; done
wait "$WRITER_PID" && ok "$(cat "$TMP/writer.log")" || fail "writer failed: $(tail -3 "$TMP/writer.log")"
ROUNDS=$(cat "$TMP/stop.rounds")
"$PY" -c "
import nbd; h = nbd.NBD(); h.connect_uri('$URI')
open('$TMP/initiator.img', 'wb').write(b''.join(h.pread(4 << 20, o) for o in range(0, 64 << 20, 4 << 20)))
h.shutdown()"
stop_pid "$CLOUD_PID"
grep -q 'journals drained to the datacenter edge' "$TMP/cloud.log" && ok "clean stop drained the journal: $(grep 'journal disk' "$TMP/cloud.log")" ||
  { fail "clean stop did not drain the journal"; tail -5 "$TMP/cloud.log"; }
stop_pid "$DC_PID"
ok "dc-edge: $(grep 'redo log disk' "$TMP/dc$KILLS.log")"
stop_pid "$SRC_PID"
cmp -s "$TMP/initiator.img" "$TMP/disk.raw" && ok "on-prem raw image equals what the initiator read (64 MiB)" ||
  fail "on-prem raw image differs from what the initiator read: $(cmp "$TMP/initiator.img" "$TMP/disk.raw" | head -1)"
"$PY" "$TMP/rounds.py" check "$TMP/disk.raw" $BLOCKS "$ROUNDS" >"$TMP/check-final.log" 2>&1 &&
  ok "after the drain: $(cat "$TMP/check-final.log")" || fail "after the drain: $(cat "$TMP/check-final.log")"
finish
