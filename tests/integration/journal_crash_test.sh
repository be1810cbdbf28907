#!/usr/bin/env bash
# The cloud edge's write-back journal survives kill -9 (issue 11, "must show" 1 and 3, first
# part): qemu-nbd (writable raw image) → ferry dc-edge → ferry cloud-edge --journal-dir (its
# --nbd export) ← a writer doing random 4 KiB writes, 16 in flight, each block carrying its block
# number, a sequence number and a CRC32, recording what was acknowledged. Three rounds: the cloud
# edge is killed -9 at a random moment under the writer, then restarted on the same journal.
# Must hold: after each restart, every acknowledged block reads back (through the pipeline) with
# its last acknowledged sequence number or a later one; after a clean stop (which drains the
# journal to the datacenter edge) the raw image on-prem equals what the initiator read, byte for
# byte. Catches: an acknowledged write lost in a crash, a torn record replayed as data, a replay
# that stops early or applies stale records, a drain that leaves data behind. About 40 s.
# Usage: journal_crash_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed (scripts/install-deps.sh)"
make_pki

BLOCKS=4096  # 16 MiB of 4 KiB blocks
truncate -s 64M "$TMP/disk.raw"
P_SRC=$(free_port)
qemu-nbd -f raw -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
SRC_PID=$!; PIDS+=($SRC_PID)
for i in $(seq 100); do
  "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break
  sleep 0.05
done
mkdir -p "$TMP/redo"
start_dc_edge dc --lease-ms 500 --redo-dir "$TMP/redo" --redo-mib 64
mkdir -p "$TMP/journals"
P_NBD=$(free_port)
P_ISCSI=$(free_port)
URI="nbd://127.0.0.1:$P_NBD/disk"
start_cloud() {  # start_cloud N: sets CLOUD_PID
  "$FERRY" cloud-edge --listen 127.0.0.1:$P_ISCSI --nbd 127.0.0.1:$P_NBD --dc 127.0.0.1:$P_WAN \
    --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --journal-dir "$TMP/journals" \
    --journal-mib 32 --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
    >"$TMP/cloud$1.log" 2>&1 &
  CLOUD_PID=$!; PIDS+=($CLOUD_PID)
  wait_listening "$TMP/cloud$1.log" "$CLOUD_PID" || { cat "$TMP/cloud$1.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
}

cat >"$TMP/blocks.py" <<'PY'
# write URI SECONDS BLOCKS SEQ_BASE ACKED.json | verify (URI|FILE) BLOCKS ACKED.json | same URI FILE BYTES
import json, os, random, struct, sys, time, zlib
import nbd
MAGIC = 0x6b636f6c62797266  # "ferryblk"
BS = 4096
HDR = struct.Struct("<QQQI")

def block(blk, seq):
    payload = random.Random(seq).randbytes(BS - HDR.size)
    crc = zlib.crc32(struct.pack("<QQQ", MAGIC, blk, seq) + payload)
    return HDR.pack(MAGIC, blk, seq, crc) + payload

def check(data, blk):
    magic, b, seq, crc = HDR.unpack_from(data)
    if magic != MAGIC or b != blk:
        return None
    if zlib.crc32(struct.pack("<QQQ", MAGIC, b, seq) + data[HDR.size:]) != crc:
        return None
    return seq

def load(path):
    try:
        return {int(k): v for k, v in json.load(open(path)).items()}
    except FileNotFoundError:
        return {}

def save(path, acked):
    json.dump({str(k): v for k, v in acked.items()}, open(path + ".tmp", "w"))
    os.replace(path + ".tmp", path)

def write(uri, seconds, nblocks, seq, out):
    acked = load(out)  # earlier rounds
    h = nbd.NBD()
    h.connect_uri(uri)
    rnd = random.Random(seq)
    inflight, busy = {}, set()
    n = 0
    deadline = time.time() + seconds
    try:
        while time.time() < deadline or inflight:
            while len(inflight) < 16 and time.time() < deadline:
                blk = rnd.randrange(nblocks)
                if blk in busy:  # never two writes of one block in flight: order undefined
                    continue
                seq += 1
                buf = nbd.Buffer.from_bytearray(bytearray(block(blk, seq)))
                inflight[h.aio_pwrite(buf, blk * BS)] = (blk, seq, buf)
                busy.add(blk)
            h.poll(1000)
            for cookie in list(inflight):
                if h.aio_command_completed(cookie):  # raises nbd.Error if the write failed
                    blk, s, _ = inflight.pop(cookie)
                    busy.discard(blk)
                    acked[blk] = s
                    n += 1
        h.flush()
        h.shutdown()
    except nbd.Error as e:
        print(f"writer: stopped after {n} acknowledged writes this round: {e}", flush=True)
        save(out, acked)
        return 1
    save(out, acked)
    print(f"writer: {n} writes acknowledged this round", flush=True)
    return 0

def read_all(src, nbytes):
    if src.startswith("nbd://"):
        h = nbd.NBD()
        h.connect_uri(src)
        data = b"".join(h.pread(min(4 << 20, nbytes - o), o) for o in range(0, nbytes, 4 << 20))
        h.shutdown()
        return data
    with open(src, "rb") as f:
        return f.read(nbytes)

def verify(src, nblocks, acked_path):
    acked = load(acked_path)
    data = read_all(src, nblocks * BS)
    bad = []
    for blk, want in sorted(acked.items()):
        got = check(data[blk * BS:(blk + 1) * BS], blk)
        if got is None or got < want:  # a later write in flight at the kill may have landed
            bad.append((blk, want, got))
    if bad:
        print(f"verify {src}: {len(bad)} of {len(acked)} blocks lost or wrong, e.g. (block, acked seq, "
              f"found seq or None=garbage) {bad[:5]}")
        return 1
    print(f"verify {src}: all {len(acked)} acknowledged blocks present and intact")
    return 0

def same(uri, path, nbytes):
    a, b = read_all(uri, nbytes), read_all(path, nbytes)
    if a != b:
        diff = next(i for i in range(len(a)) if a[i] != b[i])
        print(f"image differs from what the initiator reads, first at byte {diff}")
        return 1
    print(f"image equals what the initiator reads ({nbytes} bytes)")
    return 0

if sys.argv[1] == "write":
    sys.exit(write(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]))
if sys.argv[1] == "same":
    sys.exit(same(sys.argv[2], sys.argv[3], int(sys.argv[4])))
sys.exit(verify(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
PY

for round in 1 2 3; do
  start_cloud $round
  if [ $round -gt 1 ]; then
    "$PY" "$TMP/blocks.py" verify "$URI" $BLOCKS "$TMP/acked.json" &&
      ok "round $round: after kill -9 and restart every acknowledged block is there ($(grep -o 'replayed [0-9]* records' "$TMP/cloud$round.log" || echo 'nothing to replay'))" ||
      fail "round $round: acknowledged writes lost across kill -9"
  fi
  "$PY" "$TMP/blocks.py" write "$URI" 20 $BLOCKS $((round * 1000000000)) "$TMP/acked.json" >"$TMP/writer$round.log" 2>&1 &
  WRITER_PID=$!; PIDS+=($WRITER_PID)
  sleep "$("$PY" -c 'import random; print(round(random.uniform(1.5, 4.0), 2))')"
  kill -9 "$CLOUD_PID"; wait "$CLOUD_PID" 2>/dev/null
  wait "$WRITER_PID"
  ok "round $round: cloud-edge killed -9 under the writer: $(cat "$TMP/writer$round.log" | tr '\n' ' ')"
done
start_cloud 4
"$PY" "$TMP/blocks.py" verify "$URI" $BLOCKS "$TMP/acked.json" && ok "after the third kill every acknowledged block is there" ||
  fail "acknowledged writes lost after the third kill"
"$PY" -c "
import nbd; h = nbd.NBD(); h.connect_uri('$URI')
open('$TMP/initiator.img', 'wb').write(b''.join(h.pread(4 << 20, o) for o in range(0, 64 << 20, 4 << 20)))
h.shutdown()"
stop_pid "$CLOUD_PID"
grep -q 'journals drained to the datacenter edge' "$TMP/cloud4.log" && ok "clean stop drained the journal: $(grep 'journal disk' "$TMP/cloud4.log")" ||
  { fail "clean stop did not drain the journal"; tail -5 "$TMP/cloud4.log"; }
stop_pid "$DC_PID"
stop_pid "$SRC_PID"
cmp -s "$TMP/initiator.img" "$TMP/disk.raw" && ok "on-prem raw image equals what the initiator read (64 MiB)" ||
  fail "on-prem raw image differs from what the initiator read: $(cmp "$TMP/initiator.img" "$TMP/disk.raw" | head -1)"
"$PY" "$TMP/blocks.py" verify "$TMP/disk.raw" $BLOCKS "$TMP/acked.json" && ok "the image file holds every acknowledged block" ||
  fail "the image file lost acknowledged blocks"
finish
