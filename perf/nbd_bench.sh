#!/usr/bin/env bash
# NBD server benchmark, one run, same machine: ferry (`ferry target --nbd`, RAM LUN) vs
# `qemu-nbd -f raw` on a /dev/shm file vs `nbdkit memory 1G`, all driven by fio's nbd engine.
# Workloads: randread-4k-qd32, randwrite-4k-qd32, seqread-1m-qd8. Reports IOPS, MB/s, p50/p99
# completion latency and server CPU time per IO (utime+stime of the server PID).
# Usage: perf/nbd_bench.sh /path/to/ferry [runtime_s]    (writes perf/results/nbd-latest.md)
set -u
FERRY=${1:?usage: $0 /path/to/ferry [runtime_s]}
RUNTIME=${2:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
for t in fio qemu-nbd nbdkit python3; do command -v $t >/dev/null || { echo "missing $t"; exit 77; }; done
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

bench() {  # bench NAME PID URI
  local name=$1 pid=$2 uri=$3
  # Prefill so reads hit allocated data everywhere (no hole shortcuts for anyone).
  fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1m --iodepth=8 --size=1g \
      --output-format=json >/dev/null 2>&1
  for wl in "randread-4k-qd32 randread 4k 32" "randwrite-4k-qd32 randwrite 4k 32" "seqread-1m-qd8 read 1m 8"; do
    set -- $wl
    local t0 t1
    t0=$(cpu_ticks "$pid")
    fio --name="$1" --ioengine=nbd --uri="$uri" --rw="$2" --bs="$3" --iodepth="$4" --size=1g \
        --time_based --runtime="$RUNTIME" --ramp_time=1 --output-format=json >"$TMP/$name-$1.json" 2>"$TMP/$name-$1.err"
    t1=$(cpu_ticks "$pid")
    echo "$name $1 $((t1 - t0))" >>"$TMP/cpu.txt"
  done
}

P_F=$(free_port); P_F2=$(free_port); P_Q=$(free_port); P_K=$(free_port)
truncate -s 1G "$SHM"
run_server ferry "$P_F2" "$FERRY" target --listen 127.0.0.1:$P_F --lun ram:1GiB --nbd 127.0.0.1:$P_F2 || exit 1
PID_F=$SERVER_PID
# /dev/shm (tmpfs) has no O_DIRECT: qemu-nbd uses its default (writeback cache, thread pool aio).
run_server qemu-nbd "$P_Q" qemu-nbd -f raw -b 127.0.0.1 -p "$P_Q" -t -x lun0 "$SHM" || exit 1
PID_Q=$SERVER_PID
run_server nbdkit "$P_K" nbdkit -f -i 127.0.0.1 -p "$P_K" memory 1G || exit 1
PID_K=$SERVER_PID

bench ferry "$PID_F" "nbd://127.0.0.1:$P_F2/lun0"
bench qemu-nbd "$PID_Q" "nbd://127.0.0.1:$P_Q/lun0"
bench nbdkit "$PID_K" "nbd://127.0.0.1:$P_K/"

HZ=$(getconf CLK_TCK)
python3 - "$TMP" "$HZ" "$RUNTIME" >"$TMP/table.md" <<'PY'
import json, sys, os
tmp, hz, runtime = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cpu = {}
for line in open(os.path.join(tmp, "cpu.txt")):
    n, w, t = line.split(); cpu[(n, w)] = int(t)
print(f"# NBD benchmark (fio nbd engine, loopback, {runtime} s per workload)\n")
print("| server | workload | IOPS | MB/s | p50 µs | p99 µs | server CPU µs/IO |")
print("|---|---|---:|---:|---:|---:|---:|")
for wl in ("randread-4k-qd32", "randwrite-4k-qd32", "seqread-1m-qd8"):
    for n in ("ferry", "qemu-nbd", "nbdkit"):
        p = os.path.join(tmp, f"{n}-{wl}.json")
        try:
            text = open(p).read(); text = text[text.index("{"):]  # fio's nbd engine prints a line first
            j = json.loads(text); job = j["jobs"][0]
            d = job["read"] if job["read"]["io_bytes"] else job["write"]
            iops = d["iops"]; mbs = d["bw_bytes"] / 1e6
            pct = d["clat_ns"]["percentile"]
            p50 = pct["50.000000"] / 1e3; p99 = pct["99.000000"] / 1e3
            ios = d["total_ios"] or 1
            cpu_us = cpu[(n, wl)] * 1e6 / hz / ios
            print(f"| {n} | {wl} | {iops:,.0f} | {mbs:,.1f} | {p50:,.0f} | {p99:,.0f} | {cpu_us:.2f} |")
        except Exception as e:
            print(f"| {n} | {wl} | error: {e} | | | | |")
print(f"\nCPU per IO includes fio's ramp time (1 s). Machine: {os.cpu_count()} CPUs, shared; compare within one run only.")
PY
cat "$TMP/table.md"
mkdir -p "$HERE/results"
cp "$TMP/table.md" "$HERE/results/nbd-latest.md"
