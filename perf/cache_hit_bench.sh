#!/usr/bin/env bash
# Cache hit benchmark (issue 10, must-show 2), one run, same machine, side by side:
#   ram-lun   `ferry target --lun ram:SIZE` (no cache)                         baseline of the RAM tier
#   ram-tier  `ferry target --lun ram:SIZE --layers ram-cache:CACHE` (all hits)
#   ssd-tier  `ferry target --lun ram:SIZE --layers ssd-cache:FILE,size=CACHE` (all SSD hits)
#   raw-ssd   fio `--ioengine=io_uring --direct=1` 4 KiB random reads of that same cache FILE
#             baseline of the SSD tier
#   file-lun  `ferry target --lun file:FILE,direct,ro` on that same cache file's data area: ferry's
#             own transport over the same O_DIRECT reads, without the cache (tells the cost of the
#             SSD tier's hit path apart from the cost of NBD over loopback in front of a disk)
#   qemu-nbd  `qemu-nbd --cache=none --aio=io_uring -r` on that same file: another NBD server
#             over the same O_DIRECT reads (the NBD-over-loopback ceiling, not ferry's)
# Workload: 4 KiB random reads, one fio job, QD 32, over the first WS bytes of the volume (fio's
# nbd engine against ferry's NBD export; every ferry runs `--threads 1`, as caches need). The
# volumes are written first, then read sequentially once, so every timed read is a cache hit
# (checked: the counters each ferry prints at stop must show no misses after warm-up).
# Runs are interleaved in rotating order for ROUNDS rounds; the table shows medians.
# Usage: perf/cache_hit_bench.sh /path/to/ferry [runtime_s] [rounds]
#        (writes perf/results/cache-hit-latest.md)
# Environment: WS (working set, default 512m), CACHE_DIR (where the SSD cache file goes: a real
#              disk, not tmpfs, default /var/tmp), RESULT (result file name).
set -u
FERRY=${1:?usage: $0 /path/to/ferry [runtime_s] [rounds]}
RUNTIME=${2:-5}
ROUNDS=${3:-5}
RAMP=1
WS=${WS:-512m}
CACHE_DIR=${CACHE_DIR:-/var/tmp}
RESULT=${RESULT:-cache-hit-latest}
HERE=$(cd "$(dirname "$0")" && pwd)
for t in fio python3; do command -v $t >/dev/null || { echo "missing $t (scripts/install-deps.sh)"; exit 77; }; done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "fio has no nbd engine"; exit 77; }
TMP=$(mktemp -d /tmp/ferry-cache-hit.XXXXXX)
CDIR=$(mktemp -d "$CACHE_DIR/ferry-cache-hit.XXXXXX")
CFILE=$CDIR/ssd.cache
declare -A PID
cleanup() { for p in "${PID[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$TMP" "$CDIR"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" && return 0
    sleep 0.1
  done; return 1
}
declare -A URI
start_ferry() {  # start_ferry NAME [--layers STACK]
  local name=$1 p1 p2; shift
  p1=$(free_port); p2=$(free_port)
  "$FERRY" target --threads 1 --listen 127.0.0.1:$p1 --lun "${LUN:-ram:1GiB}" --nbd 127.0.0.1:$p2 "$@" \
    >"$TMP/$name.log" 2>&1 &
  PID[$name]=$!
  wait_port "$p2" && kill -0 "${PID[$name]}" 2>/dev/null || { echo "$name did not start:" >&2; cat "$TMP/$name.log" >&2; exit 1; }
  URI[$name]="nbd://127.0.0.1:$p2/lun0"
}
start_ferry ram-lun
start_ferry ram-tier --layers ram-cache:768MiB
start_ferry ssd-tier --layers "ssd-cache:$CFILE,size=1GiB"
grep -h "buffered" "$TMP/ssd-tier.log" && echo "warning: the SSD cache file is not O_DIRECT here" >&2
for n in ram-lun ram-tier ssd-tier; do  # write, then read once: the SSD tier is not write-allocate
  fio --name=fill --ioengine=nbd --uri="${URI[$n]}" --rw=write --bs=1m --iodepth=8 --size="$WS" \
      --output-format=json >/dev/null 2>"$TMP/fill-$n.err" || { cat "$TMP/fill-$n.err"; exit 1; }
  fio --name=warm --ioengine=nbd --uri="${URI[$n]}" --rw=read --bs=64k --iodepth=8 --size="$WS" \
      --output-format=json >/dev/null 2>"$TMP/warm-$n.err" || { cat "$TMP/warm-$n.err"; exit 1; }
done
# raw-ssd reads the cache file's data area (slots of the cached chunks), at the same offsets range.
DATA_OFFSET=$(python3 -c "import struct,sys; d=open(sys.argv[1],'rb').read(64); print(struct.unpack_from('<Q',d,48)[0])" "$CFILE")
LUN="file:$CFILE,direct,ro" start_ferry file-lun
if command -v qemu-nbd >/dev/null; then
  PQ=$(free_port)
  qemu-nbd -f raw --cache=none --aio=io_uring -r -b 127.0.0.1 -p "$PQ" -t -e 8 -x lun0 "$CFILE" \
    >"$TMP/qemu-nbd.log" 2>&1 &
  PID[qemu-nbd]=$!
  wait_port "$PQ" || { echo "qemu-nbd did not start:" >&2; cat "$TMP/qemu-nbd.log" >&2; exit 1; }
  URI[qemu-nbd]="nbd://127.0.0.1:$PQ/lun0"
fi

run_one() {  # run_one NAME ROUND
  local name=$1 round=$2 out="$TMP/$1-$2"
  local common=(--name="$name" --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$RUNTIME"
                --ramp_time=$RAMP --output-format=json)
  if [ "$name" = raw-ssd ]; then
    fio "${common[@]}" --ioengine=io_uring --direct=1 --filename="$CFILE" --offset="$DATA_OFFSET" \
        --size="$WS" >"$out.json" 2>"$out.err"
  elif [ "$name" = file-lun ] || [ "$name" = qemu-nbd ]; then
    fio "${common[@]}" --ioengine=nbd --uri="${URI[$name]}" --offset="$DATA_OFFSET" --size="$WS" >"$out.json" 2>"$out.err"
  else
    fio "${common[@]}" --ioengine=nbd --uri="${URI[$name]}" --size="$WS" >"$out.json" 2>"$out.err"
  fi
  awk '{print $1}' /proc/loadavg >"$out.load"
}
NAMES=(ram-lun ram-tier ssd-tier raw-ssd file-lun)
[ -n "${PID[qemu-nbd]:-}" ] && NAMES+=(qemu-nbd)
for round in $(seq "$ROUNDS"); do
  for i in "${!NAMES[@]}"; do run_one "${NAMES[$(((i + round) % ${#NAMES[@]}))]}" "$round"; done
  echo "round $round of $ROUNDS done" >&2
done
LOAD_END=$(cat /proc/loadavg)
for n in ram-lun ram-tier ssd-tier file-lun; do kill -TERM "${PID[$n]}"; done
for n in ram-lun ram-tier ssd-tier file-lun; do
  for _ in $(seq 100); do kill -0 "${PID[$n]}" 2>/dev/null || break; sleep 0.1; done
  wait "${PID[$n]}" 2>/dev/null; unset "PID[$n]"
done
grep -h "ram cache\|ssd cache" "$TMP"/ram-tier.log "$TMP"/ssd-tier.log >"$TMP/counters.txt"
python3 - "$TMP" "$RUNTIME" "$ROUNDS" "$WS" "$LOAD_END" "$CACHE_DIR" >"$TMP/table.md" <<'PY'
import json, os, re, sys, statistics
tmp, runtime, rounds, ws, load_end, cache_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
names = [n for n in ("ram-lun", "ram-tier", "ssd-tier", "raw-ssd", "file-lun", "qemu-nbd")
         if os.path.exists(os.path.join(tmp, f"{n}-1.json"))]
def one(n, r):
    text = open(os.path.join(tmp, f"{n}-{r}.json")).read(); text = text[text.index("{"):]
    d = json.loads(text)["jobs"][0]["read"]
    pct = d["clat_ns"]["percentile"]
    return {"iops": d["iops"], "p50": pct["50.000000"] / 1e3, "p99": pct["99.000000"] / 1e3}
res, loads = {}, []
for n in names:
    runs = []
    for r in range(1, rounds + 1):
        try: runs.append(one(n, r)); loads.append(float(open(os.path.join(tmp, f"{n}-{r}.load")).read()))
        except Exception as e: print(f"<!-- {n} round {r}: {e} -->")
    res[n] = runs
def med(n, k): return statistics.median(x[k] for x in res[n]) if res[n] else float("nan")
print(f"# Cache hit benchmark: 4 KiB random reads, QD 32, one fio job, {ws} working set, all hits\n")
print(f"{runtime} s + 1 s ramp per run, {rounds} interleaved rounds, medians. SSD cache file in {cache_dir}. "
      f"1-min load average during the runs: {min(loads):.1f}–{max(loads):.1f} (2 CPUs, shared with other sessions); at the end: {load_end}.\n")
print("| case | IOPS (median) | all rounds | p50 µs | p99 µs |")
print("|---|---:|---|---:|---:|")
for n in names:
    if not res[n]: print(f"| {n} | error | | | |"); continue
    rounds_text = " / ".join("%.0fK" % (x["iops"] / 1000) for x in res[n])
    print(f"| {n} | {med(n,'iops'):,.0f} | {rounds_text} | {med(n,'p50'):,.0f} | {med(n,'p99'):,.0f} |")
def ratio(a, b):
    per = []
    for r in range(min(len(res[a]), len(res[b]))): per.append(res[a][r]["iops"] / res[b][r]["iops"])
    return med(a, "iops") / med(b, "iops"), per
print("\n| comparison | IOPS ratio of medians | per round (same round) | target |")
print("|---|---:|---|---|")
for a, b, tgt in (("ram-tier", "ram-lun", "≥ 0.90"), ("ssd-tier", "raw-ssd", "≥ 0.80"),
                  ("file-lun", "raw-ssd", "(diagnosis)"), ("qemu-nbd", "raw-ssd", "(diagnosis)"),
                  ("ssd-tier", "file-lun", "(diagnosis)")):
    if a not in names or b not in names: continue
    m, per = ratio(a, b)
    print(f"| {a} ÷ {b} | {m:.2f} | {', '.join(f'{x:.2f}' for x in per)} | {tgt} |")
print("\nCache counters at stop (all reads since start, including the warm-up pass):\n")
for line in open(os.path.join(tmp, "counters.txt")): print("    " + line.rstrip())
PY
cat "$TMP/table.md"
mkdir -p "$HERE/results"
cp "$TMP/table.md" "$HERE/results/$RESULT.md"
