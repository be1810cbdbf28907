# Checksummed block writer and verifier shared by the integration tests (nbd_source_restart,
# shutdown_under_load). Each 4 KiB block carries a magic, its block number, a sequence number and
# a CRC32, so a reader can tell an intact block of the last acknowledged write from garbage or a
# stale one.
#   blocks.py write URI SECONDS BLOCKS OUT.json [RATE]   16 writes in flight (at most RATE
#                                                 writes/s when given); OUT.json = acknowledged
#                                                 block → sequence (written on error too; exit 1)
#   blocks.py verify (URI|FILE) BLOCKS ACKED.json every acknowledged block intact (exit 0)
# On an error the writes still in flight go to OUT.json.inflight: they may or may not have
# landed, so verify accepts either the acknowledged or the in-flight sequence for those blocks.
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

def write(uri, seconds, nblocks, out, rate=0.0):
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
                if rate and seq >= rate * (time.time() - start):
                    break
                blk = rnd.randrange(nblocks)
                if blk in busy:  # never two writes of one block in flight: order undefined
                    continue
                seq += 1
                buf = nbd.Buffer.from_bytearray(bytearray(block(blk, seq)))
                inflight[h.aio_pwrite(buf, blk * BS)] = (blk, seq, buf)
                busy.add(blk)
            h.poll(1000 if not rate else 10)
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
        json.dump({str(b): q for b, q, _ in inflight.values()}, open(out + ".inflight", "w"))
        return 1
    json.dump({str(k): v for k, v in acked.items()}, open(out, "w"))
    n = sum(per_second.values())
    stall = max((s for s in range(int(seconds)) if per_second.get(s, 0) == 0), default=None)
    print(f"writer: {n} writes acknowledged ({len(acked)} blocks), {flushes} flushes, "
          f"per second {[per_second.get(s, 0) for s in range(int(seconds) + 1)]}", flush=True)
    return 0

def verify(src, nblocks, acked_path):
    acked = {int(k): v for k, v in json.load(open(acked_path)).items()}
    maybe = {}
    if os.path.exists(acked_path + ".inflight"):
        maybe = {int(k): v for k, v in json.load(open(acked_path + ".inflight")).items()}
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
        if got != want and not (blk in maybe and got == maybe[blk]):
            bad.append((blk, want, got))
    if bad:
        print(f"verify {src}: {len(bad)} of {len(acked)} blocks wrong, e.g. (block, acked seq, "
              f"found seq or None=garbage) {bad[:5]}")
        return 1
    print(f"verify {src}: all {len(acked)} acknowledged blocks intact")
    return 0

if sys.argv[1] == "write":
    sys.exit(write(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
                   float(sys.argv[6]) if len(sys.argv) > 6 else 0.0))
sys.exit(verify(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
