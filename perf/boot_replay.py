#!/usr/bin/python3
"""Replays a recorded boot's reads (../shared/traces/*.csv: seq,t_s,conn,offset,length) against an
NBD export, in the recorded order, each read issued when the previous one completed (QD 1: the
boot loader's pattern and the worst case for latency); with --think, read i is issued no earlier
than its recorded time after the first (t_s[i] - t_s[0]), as the VM's think time between reads
would; a slow read then delays the rest. Optionally checks every byte against a
local image. Prints one JSON line: total seconds, the boot-loader phase (the first N reads), the
rest, bytes read.
Usage: boot_replay.py TRACE.csv NBD_URI [--loader-reads N] [--verify IMAGE] [--limit N]
"""
import argparse, csv, json, sys, time
import nbd

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("uri")
ap.add_argument("--loader-reads", type=int, default=2466)
ap.add_argument("--verify")
ap.add_argument("--limit", type=int, default=0)
ap.add_argument("--think", action="store_true")
a = ap.parse_args()
reads = []
with open(a.trace) as f:
    for row in csv.DictReader(f):
        reads.append((int(row["offset"]), int(row["length"]), float(row["t_s"])))
if a.limit:
    reads = reads[: a.limit]
img = open(a.verify, "rb") if a.verify else None
h = nbd.NBD()
h.connect_uri(a.uri)
size = h.get_size()
t0 = time.monotonic()
t_loader = None
nbytes = 0
bad = 0
t_first = reads[0][2] if reads else 0.0
for i, (off, length, t_s) in enumerate(reads):
    if off + length > size:
        continue
    if a.think:
        wait = (t_s - t_first) - (time.monotonic() - t0)
        if wait > 0:
            time.sleep(wait)
    data = h.pread(length, off)
    nbytes += length
    if img is not None:
        img.seek(off)
        if img.read(length) != data:
            bad += 1
    if i + 1 == a.loader_reads:
        t_loader = time.monotonic() - t0
total = time.monotonic() - t0
h.shutdown()
print(json.dumps({"reads": len(reads), "bytes": nbytes, "total_s": round(total, 2),
                  "loader_s": round(t_loader if t_loader is not None else total, 2),
                  "rest_s": round(total - (t_loader if t_loader is not None else total), 2),
                  "mismatches": bad}))
sys.exit(1 if bad else 0)
