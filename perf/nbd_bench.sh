#!/usr/bin/env bash
# NBD server benchmark, one run, same machine: ferry (`ferry target --nbd`, RAM LUN) vs
# `qemu-nbd -f raw` on a /dev/shm file vs `nbdkit memory 1G`, all driven by fio's nbd engine.
# Workloads: 4 KiB randread and randwrite at a total queue depth of 32, 1 MiB sequential read at
# a total queue depth of 8, each with one fio job (one connection, the issue's configuration)
# and with two jobs of half the depth (two connections, same total depth). Servers run side by
# side and are visited in rotating order for ROUNDS rounds; the table shows the median round.
# Reports IOPS, MB/s, p50/p99 completion latency, server CPU time per IO (utime+stime of the
# server PID) and client CPU (fio's utime+stime, in cores): a client at ~1 core is the ceiling.
# Usage: perf/nbd_bench.sh /path/to/ferry [runtime_s] [rounds]  (writes perf/results/nbd-latest.md)
# Environment: FERRY_FLAGS extra `ferry target` flags (e.g. "--tcp-congestion cubic");
#              RESULT name of the result file in perf/results (default nbd-latest).
set -u
FERRY=${1:?usage: $0 /path/to/ferry [runtime_s] [rounds]}
RUNTIME=${2:-5}
ROUNDS=${3:-3}
RAMP=1
FERRY_FLAGS=${FERRY_FLAGS:-}
RESULT=${RESULT:-nbd-latest}
HERE=$(cd "$(dirname "$0")" && pwd)
for t in fio qemu-nbd nbdkit python3 /usr/bin/time; do command -v $t >/dev/null || { echo "missing $t (scripts/install-deps.sh)"; exit 77; }; done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "fio has no nbd engine"; exit 77; }
TMP=$(mktemp -d /tmp/ferry-nbd-bench.XXXXXX)
SHM=/dev/shm/ferry-nbd-bench-$$.raw
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$TMP" "$SHM"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" && return 0
    sleep 0.1
  done; return 1
}
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }

run_server() {  # run_server NAME PORT CMD... ; sets SERVER_PID
  "${@:3}" >"$TMP/$1.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  wait_port "$2" && kill -0 "$SERVER_PID" 2>/dev/null || { echo "$1 did not start:" >&2; cat "$TMP/$1.log" >&2; return 1; }
}

# name rw bs total-depth jobs
WORKLOADS=(
  "randread-4k-qd32 randread 4k 32 1" "randwrite-4k-qd32 randwrite 4k 32 1" "seqread-1m-qd8 read 1m 8 1"
  "randread-4k-2x16 randread 4k 32 2" "randwrite-4k-2x16 randwrite 4k 32 2" "seqread-1m-2x4 read 1m 8 2"
)

run_one() {  # run_one SERVER PID URI ROUND WORKLOAD...
  local name=$1 pid=$2 uri=$3 round=$4; shift 4
  local wl=$1 rw=$2 bs=$3 depth=$4 jobs=$5 t0 t1
  local out="$TMP/$name-$wl-$round"
  t0=$(cpu_ticks "$pid")
  /usr/bin/time -f "%U %S" -o "$out.time" \
    fio --name="$wl" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth=$((depth / jobs)) \
        --numjobs="$jobs" --group_reporting --size=1g --time_based --runtime="$RUNTIME" \
        --ramp_time=$RAMP --output-format=json >"$out.json" 2>"$out.err"
  t1=$(cpu_ticks "$pid")
  echo "$name $wl $round $((t1 - t0))" >>"$TMP/cpu.txt"
}

P_F=$(free_port); P_F2=$(free_port); P_Q=$(free_port); P_K=$(free_port)
truncate -s 1G "$SHM"
# shellcheck disable=SC2086  # FERRY_FLAGS is a list of flags
run_server ferry "$P_F2" "$FERRY" target --listen 127.0.0.1:$P_F --lun ram:1GiB --nbd 127.0.0.1:$P_F2 \
  $FERRY_FLAGS || exit 1
PID_F=$SERVER_PID
# /dev/shm (tmpfs) has no O_DIRECT: qemu-nbd uses its default (writeback cache, thread pool aio).
# --shared=8: qemu-nbd serves one connection at a time unless told otherwise.
run_server qemu-nbd "$P_Q" qemu-nbd -f raw -b 127.0.0.1 -p "$P_Q" -t -e 8 -x lun0 "$SHM" || exit 1
PID_Q=$SERVER_PID
run_server nbdkit "$P_K" nbdkit -f -i 127.0.0.1 -p "$P_K" memory 1G || exit 1
PID_K=$SERVER_PID

SERVERS=("ferry $PID_F nbd://127.0.0.1:$P_F2/lun0" "qemu-nbd $PID_Q nbd://127.0.0.1:$P_Q/lun0"
         "nbdkit $PID_K nbd://127.0.0.1:$P_K/")
# Prefill so reads hit allocated data everywhere (no hole shortcuts for anyone).
for s in "${SERVERS[@]}"; do
  set -- $s
  fio --name=fill --ioengine=nbd --uri="$3" --rw=write --bs=1m --iodepth=8 --size=1g \
      --output-format=json >/dev/null 2>&1
done
for round in $(seq "$ROUNDS"); do
  for wl in "${WORKLOADS[@]}"; do
    for i in 0 1 2; do  # rotate the order: nobody always runs first or last
      s=${SERVERS[$(((i + round) % 3))]}
      set -- $s
      run_one "$1" "$2" "$3" "$round" $wl
    done
  done
  echo "round $round of $ROUNDS done" >&2
done

HZ=$(getconf CLK_TCK)
CC=$(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo unknown)
python3 - "$TMP" "$HZ" "$RUNTIME" "$RAMP" "$ROUNDS" "$FERRY_FLAGS" "$CC" >"$TMP/table.md" <<'PY'
import json, sys, os
tmp, hz, runtime, ramp, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ferry_flags, cc = sys.argv[6], sys.argv[7]
servers = ("ferry", "qemu-nbd", "nbdkit")
workloads = ("randread-4k-qd32", "randwrite-4k-qd32", "seqread-1m-qd8",
             "randread-4k-2x16", "randwrite-4k-2x16", "seqread-1m-2x4")
cpu = {}
for line in open(os.path.join(tmp, "cpu.txt")):
    n, w, r, t = line.split(); cpu[(n, w, int(r))] = int(t)
def one(n, w, r):
    base = os.path.join(tmp, f"{n}-{w}-{r}")
    text = open(base + ".json").read(); text = text[text.index("{"):]  # the nbd engine prints a line first
    job = json.loads(text)["jobs"][0]
    d = job["read"] if job["read"]["io_bytes"] else job["write"]
    pct = d["clat_ns"]["percentile"]
    u, s = open(base + ".time").read().split()[-2:]
    ios_all = d["iops"] * (runtime + ramp)  # the server also worked through the ramp
    return {"iops": d["iops"], "mbs": d["bw_bytes"] / 1e6, "p50": pct["50.000000"] / 1e3,
            "p99": pct["99.000000"] / 1e3, "cpu_us": cpu[(n, w, r)] * 1e6 / hz / max(ios_all, 1),
            "client": (float(u) + float(s)) / (runtime + ramp)}
res = {}
for w in workloads:
    for n in servers:
        runs = []
        for r in range(1, rounds + 1):
            try: runs.append(one(n, w, r))
            except Exception as e: print(f"<!-- {n} {w} round {r}: {e} -->")
        if runs:
            runs.sort(key=lambda x: x["iops"])
            res[(n, w)] = (runs[len(runs) // 2], [x["iops"] for x in runs])
print(f"# NBD benchmark (fio nbd engine, loopback, {runtime} s + {ramp} s ramp per run, "
      f"median of {rounds} interleaved rounds)\n")
print("`1 job`: one fio job, one connection, the whole queue depth. `2x`: two jobs (two "
      "connections) with half the depth each, same total.\n")
print(f"System TCP congestion control: {cc}. Extra ferry flags: {ferry_flags or 'none'}.\n")
print("| workload | server | IOPS (median) | all rounds | MB/s | p50 µs | p99 µs | server CPU µs/IO | client CPU cores |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|")
for w in workloads:
    for n in servers:
        if (n, w) not in res: print(f"| {w} | {n} | error | | | | | | |"); continue
        m, all_ = res[(n, w)]
        print(f"| {w} | {n} | {m['iops']:,.0f} | {' / '.join(f'{x/1000:.0f}K' if x >= 10000 else f'{x:.0f}' for x in all_)} "
              f"| {m['mbs']:,.0f} | {m['p50']:,.0f} | {m['p99']:,.0f} | {m['cpu_us']:.2f} | {m['client']:.2f} |")
print("\n## Ferry against the better of qemu-nbd and nbdkit (medians)\n")
print("| workload | ferry IOPS | best other | IOPS ratio | CPU µs/IO ferry / other | ratio per round (ferry ÷ best other, same round) |")
print("|---|---:|---|---:|---|---|")
for w in workloads:
    if ("ferry", w) not in res: continue
    others = [(res[(n, w)][0]["iops"], n) for n in servers[1:] if (n, w) in res]
    if not others: continue
    best_iops, best = max(others)
    f = res[("ferry", w)][0]
    per_round = []
    for r in range(1, rounds + 1):
        try:
            fi = one("ferry", w, r)["iops"]; oi = max(one(n, w, r)["iops"] for n in servers[1:])
            per_round.append(f"{fi / oi:.2f}")
        except Exception: pass
    print(f"| {w} | {f['iops']:,.0f} | {best} {best_iops:,.0f} | {f['iops'] / best_iops:.2f} | "
          f"{f['cpu_us']:.2f} / {res[(best, w)][0]['cpu_us']:.2f} | {', '.join(per_round)} |")
print(f"\nServer CPU per IO counts the ramp second too (IOPS × (runtime + ramp)). Machine: "
      f"{os.cpu_count()} CPUs, shared with the client; compare within one run only.")
PY
cat "$TMP/table.md"
mkdir -p "$HERE/results"
cp "$TMP/table.md" "$HERE/results/$RESULT.md"
