#!/usr/bin/env bash
# The dc-edge's NBD source restarts under write load (issue 15 item 6): qemu-nbd (raw file,
# default writeback cache) → ferry dc-edge → ferry cloud-edge (its --nbd export) ← a writer
# doing random 4 KiB writes, 16 in flight, each block carrying its block number, a sequence
# number and a CRC32. While it runs, qemu-nbd is killed (-9 once, SIGTERM once; only the PID
# this test started) and restarted on the same port after ~1.5 s. Must hold: the writer sees no
# error, the dc-edge logs the outage and the reconnect, and afterwards every acknowledged block
# is present and intact with its last acknowledged sequence number — read back through the
# pipeline, and in the image file itself once everything has stopped. Catches: a dc-edge that
# never reconnects (all I/O failing until it is restarted), requests lost or failed across the
# restart, a write acknowledged but never re-sent. About 30 s.
# Usage: nbd_source_restart_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed (scripts/install-deps.sh)"
make_pki

BLOCKS=4096  # 16 MiB of 4 KiB blocks
truncate -s 64M "$TMP/disk.raw"
P_SRC=$(free_port)
start_source() {  # start_source N: qemu-nbd on $P_SRC (same port every time); sets SRC_PID
  qemu-nbd -f raw -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd$1.log" 2>&1 &
  SRC_PID=$!; PIDS+=($SRC_PID)
  local i
  for i in $(seq 100); do
    "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && return 0
    sleep 0.05
  done
  cat "$TMP/qemu-nbd$1.log"; echo "FAIL: qemu-nbd did not start"; exit 1
}
start_source 1
start_dc_edge dc
P_NBD=$(free_port)
"$FERRY" cloud-edge --listen 127.0.0.1:$(free_port) --nbd 127.0.0.1:$P_NBD --dc 127.0.0.1:$P_WAN \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
URI="nbd://127.0.0.1:$P_NBD/disk"

cat >"$TMP/blocks.py" <<'PY'
# write URI SECONDS BLOCKS OUT.json | verify (URI|FILE) BLOCKS ACKED.json
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

def write(uri, seconds, nblocks, out):
    h = nbd.NBD()
    h.connect_uri(uri)
    rnd = random.Random(1)
    inflight, busy, acked = {}, set(), {}
    seq = flushes = 0
    start = time.time()
    deadline = start + seconds
    per_second = {}
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
                    sec = int(time.time() - start)
                    per_second[sec] = per_second.get(sec, 0) + 1
                    if s % 512 == 0:
                        h.flush()
                        flushes += 1
        h.flush()
        h.shutdown()
    except nbd.Error as e:
        print(f"writer: ERROR after {len(acked)} acknowledged blocks: {e}", flush=True)
        json.dump({str(k): v for k, v in acked.items()}, open(out, "w"))
        return 1
    json.dump({str(k): v for k, v in acked.items()}, open(out, "w"))
    n = sum(per_second.values())
    stall = max((s for s in range(int(seconds)) if per_second.get(s, 0) == 0), default=None)
    print(f"writer: {n} writes acknowledged ({len(acked)} blocks), {flushes} flushes, "
          f"per second {[per_second.get(s, 0) for s in range(int(seconds) + 1)]}", flush=True)
    return 0

def verify(src, nblocks, acked_path):
    acked = {int(k): v for k, v in json.load(open(acked_path)).items()}
    if src.startswith("nbd://"):
        h = nbd.NBD()
        h.connect_uri(src)
        data = h.pread(nblocks * BS, 0)
        h.shutdown()
    else:
        with open(src, "rb") as f:
            data = f.read(nblocks * BS)
    bad = []
    for blk, want in sorted(acked.items()):
        got = check(data[blk * BS:(blk + 1) * BS], blk)
        if got != want:
            bad.append((blk, want, got))
    if bad:
        print(f"verify {src}: {len(bad)} of {len(acked)} blocks wrong, e.g. (block, acked seq, "
              f"found seq or None=garbage) {bad[:5]}")
        return 1
    print(f"verify {src}: all {len(acked)} acknowledged blocks intact")
    return 0

if sys.argv[1] == "write":
    sys.exit(write(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
sys.exit(verify(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
PY

"$PY" "$TMP/blocks.py" write "$URI" 14 $BLOCKS "$TMP/acked.json" >"$TMP/writer.log" 2>&1 &
WRITER_PID=$!; PIDS+=($WRITER_PID)

sleep 3
kill -9 "$SRC_PID"; wait "$SRC_PID" 2>/dev/null
ok "qemu-nbd killed -9 under the writer"
sleep 1.5
start_source 2
sleep 3
kill -TERM "$SRC_PID"; wait "$SRC_PID" 2>/dev/null
ok "qemu-nbd stopped with SIGTERM under the writer"
sleep 1.5
start_source 3

wait "$WRITER_PID"; rc=$?
cat "$TMP/writer.log"
[ $rc -eq 0 ] && ok "the writer saw no error across two source restarts" ||
  fail "the writer saw an error (exit $rc)"
n_up=$(grep -c 'source up again' "$TMP/dc.log")
[ "$n_up" -eq 2 ] && ok "dc-edge reconnected twice: $(grep 'source up again' "$TMP/dc.log" | sed 's/.*: source/source/' | tr '\n' ' ')" ||
  { fail "dc-edge logged $n_up reconnects, want 2"; tail -20 "$TMP/dc.log"; }
n_state=$(grep -cE 'source down|reconnecting|source up again' "$TMP/dc.log")
[ "$n_state" -eq 6 ] && ok "one log line per state change (down, reconnecting, up) × 2" ||
  fail "$n_state state-change lines, want 6 (one per change, none per attempt)"
grep -q 'fail with' "$TMP/cloud.log" && fail "cloud-edge failed requests: $(grep -m1 'fail with' "$TMP/cloud.log")"

"$PY" "$TMP/blocks.py" verify "$URI" $BLOCKS "$TMP/acked.json" && ok "read back through the pipeline" ||
  fail "read back through the pipeline"
stop_pid "$CLOUD_PID"
stop_pid "$DC_PID"
stop_pid "$SRC_PID"
"$PY" "$TMP/blocks.py" verify "$TMP/disk.raw" $BLOCKS "$TMP/acked.json" && ok "the image file holds every acknowledged block" ||
  fail "the image file lost acknowledged blocks"
finish
