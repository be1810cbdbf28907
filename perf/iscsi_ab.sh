#!/usr/bin/env bash
# A/B comparison of ferry target variants on one machine in one run: each variant is a set of
# extra `ferry target` flags; rounds alternate the variants so drift hits all of them alike.
# Measures 4 KiB random read IOPS (iscsi-perf, QD 32 and 128), 128 KiB sequential read MB/s
# (iscsi-perf -b 256, QD 16) and the target's CPU seconds per million IOs.
# Usage: perf/iscsi_ab.sh [-d SECONDS] [-r ROUNDS] -- "VARIANT A FLAGS" "VARIANT B FLAGS" ...
#   e.g. perf/iscsi_ab.sh -- "--tx-batch-pdus 256" "--tx-batch-pdus 1"
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${FERRY:-build/ferry}
dur=8 rounds=3
while getopts d:r: o; do case $o in d) dur=$OPTARG ;; r) rounds=$OPTARG ;; *) exit 2 ;; esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-d S] [-r N] \"FLAGS A\" \"FLAGS B\" ..."; exit 2; }
tck=$(getconf CLK_TCK)
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$tmp"' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
perf_run() {  # perf_run URL ARGS... -> prints IOPS average
  timeout $((dur + 30)) iscsi-perf "$@" -t "$dur" "$url" 2>&1 | tr '\r' '\n' |
    grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}'
}

declare -A sum
for round in $(seq "$rounds"); do
  for i in $(seq 0 $(($# - 1))); do

    args=("$@"); variant=${args[$i]}
    port=$(free_port)
    # shellcheck disable=SC2086
    "$FERRY" target --listen 127.0.0.1:$port --lun ram:1GiB $variant >"$tmp/ferry.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q 'listening on' "$tmp/ferry.log" && break; sleep 0.05; done
    url="iscsi://127.0.0.1:$port/iqn.2026-11.io.ferry:target/0"
    for w in "r32:-r -m 32 -b 8" "r128:-r -m 128 -b 8" "seq:-m 16 -b 256"; do
      name=${w%%:*}; wargs=${w#*:}
      t0=$(cpu_ticks $pid)
      # shellcheck disable=SC2086
      iops=$(perf_run $wargs)
      t1=$(cpu_ticks $pid)
      cpu_per_m=$(awk -v t=$((t1 - t0)) -v k="$tck" -v i="${iops:-0}" -v d="$dur" \
        'BEGIN { if (i > 0) printf "%.2f", (t / k) / (i * d) * 1e6; else print "n/a" }')
      echo "round $round variant [$variant] $name: ${iops:-0} IOPS, ${cpu_per_m} CPU s/1M IO"
      sum["$i,$name"]=$(( ${sum["$i,$name"]:-0} + ${iops:-0} ))
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
echo
echo "| variant | 4K randread QD32 IOPS | 4K randread QD128 IOPS | 128K seq read MB/s |"
echo "|---|---:|---:|---:|"
args=("$@")
for i in $(seq 0 $(($# - 1))); do
  echo "| \`${args[$i]}\` | $(( ${sum["$i,r32"]} / rounds )) | $(( ${sum["$i,r128"]} / rounds )) | $(( ${sum["$i,seq"]} / rounds * 131072 / 1000000 )) |"
done
