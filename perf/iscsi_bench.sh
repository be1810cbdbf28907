#!/usr/bin/env bash
# iSCSI target benchmark, one run, same machine, loopback: ferry (`ferry target`, RAM LUN 1 GiB)
# vs tgtd (Debian tgt, rdwr backing store on a 1 GiB /dev/shm file). A benchmark, not a test:
# it reports numbers, and records any client failure instead of stopping.
#
# Workloads (each run once per target, the two targets interleaved metric by metric):
#   4 KiB random read, QD 32 and 128 ...... iscsi-perf -r -m QD -t DURATION
#   4 KiB random write, QD 32 and 128 ..... perf/iscsi_randwrite.c (libiscsi async, WRITE16)
#   4 KiB read / write, QD 32 ............. qemu-img bench -c 200000 -d 32 -s 4k [-w] (sequential)
#   128 KiB sequential read, QD 16 ........ iscsi-perf -b 256 -m 16 -t DURATION, and
#                                           qemu-img bench -c 20000 -d 16 -s 128k
#   data check ............................ iscsi_randwrite -V: 3 s of QD 128 stamped writes, read back
#   loopback TCP .......................... iperf3, one stream, 5 s
# Target CPU time per million I/Os is utime+stime of the target PID (all its threads) from
# /proc/PID/stat, sampled before and after each client run.
#
# Usage: perf/iscsi_bench.sh [--threads N] [--duration S]      (from the repo root, after a build)
#        FERRY=/path/to/ferry perf/iscsi_bench.sh ...
# Writes perf/results/iscsi-latest.md. Exit status: 0 if every run succeeded, 1 otherwise.

# shellcheck disable=SC2317  # the stop/cleanup functions run from traps
set -euo pipefail

usage() {
  echo "usage: [FERRY=path] $0 [--threads N] [--duration SECONDS]" >&2
  exit "${1:-2}"
}

THREADS=""
DURATION=10
ARGS_ORIG=("$@")
while (($#)); do
  case $1 in
    --threads) [[ $# -ge 2 ]] || usage; THREADS=$2; shift 2 ;;
    --threads=*) THREADS=${1#*=}; shift ;;
    --duration) [[ $# -ge 2 ]] || usage; DURATION=$2; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ -z $THREADS || $THREADS =~ ^[1-9][0-9]*$ ]] || { echo "--threads wants a positive integer" >&2; exit 2; }
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || { echo "--duration wants a positive integer (seconds)" >&2; exit 2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
FERRY_BIN=${FERRY:-$ROOT/build/ferry}
[[ -x $FERRY_BIN ]] || { echo "ferry binary not found at $FERRY_BIN (build first, or set FERRY=path)" >&2; exit 2; }
for t in tgtd tgtadm iscsi-perf qemu-img iperf3 cc python3 timeout getconf; do
  command -v "$t" >/dev/null || { echo "missing required tool: $t" >&2; exit 2; }
done
[[ -r /usr/include/iscsi/iscsi.h ]] || { echo "missing libiscsi headers (libiscsi-dev)" >&2; exit 2; }

TMP=$(mktemp -d /tmp/ferry-iscsi-bench.XXXXXX)
SHM=""
FERRY_PID=""
FERRY_RC=""
TGTD_PID=""
TGTD_CTL=""
IPERF_PID=""
TGTD_IQN=iqn.2026-11.io.ferry:tgtd-baseline
FERRY_IQN=iqn.2026-11.io.ferry:target

stop_ferry() {
  [[ -n $FERRY_PID ]] || return 0
  kill -TERM "$FERRY_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$FERRY_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$FERRY_PID" 2>/dev/null; then
    echo "ferry (pid $FERRY_PID) ignored SIGTERM for 5 s; SIGKILL" | tee -a "$TMP/failures.txt" >&2
    kill -KILL "$FERRY_PID" 2>/dev/null || true
  fi
  FERRY_RC=0
  wait "$FERRY_PID" 2>/dev/null || FERRY_RC=$?
  FERRY_PID=""
}
stop_tgtd() {
  [[ -n $TGTD_PID ]] || return 0
  # tgtd ignores SIGTERM; "delete system" is refused while a target exists.
  timeout 10 tgtadm -C "$TGTD_CTL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
  timeout 10 tgtadm -C "$TGTD_CTL" --op delete --mode system >/dev/null 2>&1 || true
  for _ in $(seq 20); do kill -0 "$TGTD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$TGTD_PID" 2>/dev/null || true
  wait "$TGTD_PID" 2>/dev/null || true
  rm -f "/var/run/tgtd/socket.$TGTD_CTL" "/var/run/tgtd/socket.$TGTD_CTL.lock"
  TGTD_PID=""
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_ferry
  stop_tgtd
  if [[ -n $IPERF_PID ]]; then kill -TERM "$IPERF_PID" 2>/dev/null || true; wait "$IPERF_PID" 2>/dev/null || true; fi
  [[ -n $SHM ]] && rm -f "$SHM"
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A random high TCP port on 127.0.0.1 that nobody listens on and we have not handed out yet.
USED_PORTS=" "
free_port() {
  local p
  p=$(python3 - "$USED_PORTS" <<'PY'
import random, socket, sys
used = set(sys.argv[1].split())
for _ in range(200):
    p = random.randint(20000, 60999)
    if str(p) in used:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    sys.exit(0)
sys.exit(1)
PY
  ) || { echo "no free port found" >&2; return 1; }
  USED_PORTS+="$p "
  echo "$p"
}
port_open() { python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1',$1)))"; }
# utime+stime (clock ticks) of a whole process: fields 14 and 15, counted after the ")" of comm.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
HZ=$(getconf CLK_TCK)

# ---- build the write client ---------------------------------------------------------------
RANDWRITE=$TMP/iscsi_randwrite
cc -O2 -Wall -Wextra -o "$RANDWRITE" "$HERE/iscsi_randwrite.c" -liscsi

# ---- start the targets ----------------------------------------------------------------------
# Run a private copy: others may relink build/ferry while this runs.
cp "$FERRY_BIN" "$TMP/ferry"
FERRY_SHA=$(sha256sum "$TMP/ferry" | cut -c1-12)
FERRY_PORT=$(free_port)
TGTD_PORT=$(free_port)
IPERF_PORT=$(free_port)

FERRY_ARGS=(target --listen "127.0.0.1:$FERRY_PORT" --lun ram:1GiB)
[[ -n $THREADS ]] && FERRY_ARGS+=(--threads "$THREADS")
"$TMP/ferry" "${FERRY_ARGS[@]}" >"$TMP/ferry.log" 2>&1 &
FERRY_PID=$!
for _ in $(seq 100); do
  grep -q "ferry: listening on 127.0.0.1:$FERRY_PORT" "$TMP/ferry.log" && break
  kill -0 "$FERRY_PID" 2>/dev/null || break
  sleep 0.1
done
grep -q "ferry: listening on" "$TMP/ferry.log" || { echo "ferry did not start:" >&2; cat "$TMP/ferry.log" >&2; exit 1; }
FERRY_THREADS=$(sed -n 's/.* with .* LUN(s), \([0-9]*\) thread(s).*/\1/p' "$TMP/ferry.log" | head -1)

# tgtd's control "port" names a unix socket /var/run/tgtd/socket.N; pick an unused N.
while :; do
  TGTD_CTL=$(python3 -c 'import random; print(random.randint(20000, 32000))')  # tgtadm caps -C
  [[ -e /var/run/tgtd/socket.$TGTD_CTL ]] || break
done
SHM=$(mktemp /dev/shm/ferry-iscsi-bench.XXXXXX)
truncate -s 1G "$SHM"
tgtd -f -C "$TGTD_CTL" --iscsi "portal=127.0.0.1:$TGTD_PORT" >"$TMP/tgtd.log" 2>&1 &
TGTD_PID=$!
tgtadm_() { timeout 10 tgtadm -C "$TGTD_CTL" --lld iscsi "$@"; }
for _ in $(seq 50); do
  tgtadm_ --op show --mode target >/dev/null 2>&1 && break
  kill -0 "$TGTD_PID" 2>/dev/null || break
  sleep 0.1
done
tgtadm_ --op new --mode target --tid 1 -T "$TGTD_IQN"
tgtadm_ --op new --mode logicalunit --tid 1 --lun 1 -b "$SHM" --bstype rdwr
tgtadm_ --op bind --mode target --tid 1 -I ALL
for _ in $(seq 50); do port_open "$TGTD_PORT" && break; sleep 0.1; done
port_open "$TGTD_PORT" || { echo "tgtd did not start:" >&2; cat "$TMP/tgtd.log" >&2; exit 1; }
TGTD_VERSION=$(tgtd --version 2>/dev/null | head -1 || true)

declare -A URL PID
URL[ferry]="iscsi://127.0.0.1:$FERRY_PORT/$FERRY_IQN/0"
URL[tgtd]="iscsi://127.0.0.1:$TGTD_PORT/$TGTD_IQN/1"
PID[ferry]=$FERRY_PID
PID[tgtd]=$TGTD_PID
TARGETS=(ferry tgtd)

# ---- running clients ------------------------------------------------------------------------
declare -A VAL CPU DEAD
FAILED=0
: >"$TMP/failures.txt"

# run_client TARGET NAME TIMEOUT_S CMD... : runs CMD under a timeout with the target's CPU time
# sampled around it. Output in $TMP/NAME.TARGET.{out,err}; sets TICKS. Records failures.
run_client() {
  local tgt=$1 name=$2 limit=$3 rc=0 t0 t1
  shift 3
  local out=$TMP/$name.$tgt.out err=$TMP/$name.$tgt.err
  TICKS=""
  kill -0 "${PID[$tgt]}" 2>/dev/null || DEAD[$tgt]=1
  if [[ -n ${DEAD[$tgt]:-} ]]; then
    echo "skipped: $tgt is no longer running" >"$err"
    return 1
  fi
  t0=$(cpu_ticks "${PID[$tgt]}")
  timeout -k 5 "$limit" "$@" >"$out" 2>"$err" || rc=$?
  if kill -0 "${PID[$tgt]}" 2>/dev/null; then
    t1=$(cpu_ticks "${PID[$tgt]}")
    TICKS=$((t1 - t0))
  else
    DEAD[$tgt]=1
  fi
  # iscsi-perf exits 0 after "iscsi_service failed"; treat any "failed" on its output as failure.
  if ((rc == 0)) && grep -qi "failed" "$out" "$err"; then rc=99; fi
  if ((rc != 0)) || [[ -n ${DEAD[$tgt]:-} ]]; then
    FAILED=1
    {
      echo "### $tgt: $name"
      echo
      echo "Command (timeout ${limit}s): \`$*\`"
      echo
      if ((rc == 124)); then echo "Result: timed out after ${limit}s (killed)";
      elif ((rc == 99)); then echo "Result: exit 0 but the output reports a failure";
      else echo "Result: exit status $rc"; fi
      [[ -n ${DEAD[$tgt]:-} ]] && echo "Result: the $tgt process had exited after this run"
      echo
      echo '```'
      tail -c 1500 "$out" | tr '\r' '\n' | grep -v '^ *$' | tail -15 || true
      tail -c 1500 "$err" | tail -15 || true
      echo '```'
      if [[ $tgt == ferry ]]; then
        echo "ferry log (last lines):"; echo '```'; tail -n 10 "$TMP/ferry.log"; echo '```'
      fi
      echo
    } >>"$TMP/failures.txt"
    echo "FAILED: $tgt $name (rc $rc), see the failures section" >&2
    return 1
  fi
  return 0
}

# record KEY TARGET VALUE IOS : stores a metric and the target CPU seconds per million I/Os.
record() {
  VAL[$1.$2]=$3
  if [[ -n $TICKS && $4 != 0 ]]; then
    CPU[$1.$2]=$(awk -v t="$TICKS" -v hz="$HZ" -v n="$4" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }')
  fi
}
fail() { VAL[$1.$2]="FAIL"; }

perf_iops() { tr '\r' '\n' <"$1" | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}'; }
qemu_seconds() { sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' "$1" | tail -1; }

CLIENT_LIMIT=$((DURATION + 60))
QEMU_LIMIT=300

iscsi_perf_rand() { # KEY QD TARGET
  if run_client "$3" "$1" "$CLIENT_LIMIT" iscsi-perf -r -m "$2" -t "$DURATION" "${URL[$3]}"; then
    local iops; iops=$(perf_iops "$TMP/$1.$3.out")
    if [[ -n $iops ]]; then record "$1" "$3" "$iops" $((iops * DURATION)); else fail "$1" "$3"; fi
  else fail "$1" "$3"; fi
}
randwrite() { # KEY QD TARGET
  if run_client "$3" "$1" "$CLIENT_LIMIT" "$RANDWRITE" -m "$2" -t "$DURATION" "${URL[$3]}"; then
    local iops ios
    iops=$(awk '$1 == "iops" {print $2}' "$TMP/$1.$3.out")
    ios=$(awk '{for (i = 1; i < NF; i++) if ($i == "ios") print $(i + 1)}' "$TMP/$1.$3.out")
    record "$1" "$3" "$iops" "$ios"
  else fail "$1" "$3"; fi
}
qemu_bench() { # KEY TARGET COUNT SIZE_BYTES UNIT(iops|mbs) QEMU-IMG-BENCH-ARGS...
  local key=$1 tgt=$2 count=$3 size=$4 unit=$5
  shift 5
  if run_client "$tgt" "$key" "$QEMU_LIMIT" qemu-img bench -f raw -t none -c "$count" "$@" "${URL[$tgt]}"; then
    local s; s=$(qemu_seconds "$TMP/$key.$tgt.out")
    if [[ -z $s ]]; then fail "$key" "$tgt"; return; fi
    if [[ $unit == iops ]]; then
      record "$key" "$tgt" "$(awk -v c="$count" -v s="$s" 'BEGIN { printf "%.0f", c / s }')" "$count"
    else
      record "$key" "$tgt" "$(awk -v c="$count" -v b="$size" -v s="$s" 'BEGIN { printf "%.0f", c * b / s / 1e6 }')" "$count"
    fi
  else fail "$key" "$tgt"; fi
}
seq_perf() { # KEY TARGET
  if run_client "$2" "$1" "$CLIENT_LIMIT" iscsi-perf -b 256 -m 16 -t "$DURATION" "${URL[$2]}"; then
    local iops; iops=$(perf_iops "$TMP/$1.$2.out")
    if [[ -n $iops ]]; then
      record "$1" "$2" "$(awk -v i="$iops" 'BEGIN { printf "%.0f", i * 131072 / 1e6 }')" $((iops * DURATION))
    else fail "$1" "$2"; fi
  else fail "$1" "$2"; fi
}
data_check() { # TARGET
  if run_client "$1" check "$CLIENT_LIMIT" "$RANDWRITE" -V -m 128 -t 3 "${URL[$1]}"; then
    VAL[check.$1]="ok ($(awk '$1 == "verify" {print $2}' "$TMP/check.$1.out") blocks)"
  else
    VAL[check.$1]="FAIL"
  fi
}

echo "ferry pid $FERRY_PID on 127.0.0.1:$FERRY_PORT ($FERRY_THREADS threads); tgtd pid $TGTD_PID on 127.0.0.1:$TGTD_PORT (ctl $TGTD_CTL); duration ${DURATION}s" >&2
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)

# Prefill so that every read hits written (non-zero) data on both targets.
for t in "${TARGETS[@]}"; do
  run_client "$t" prefill "$QEMU_LIMIT" qemu-img bench -f raw -t none -w --pattern=165 -c 1024 -d 8 -s 1M "${URL[$t]}" || true
done

step() { echo "[$(date +%T)] $*" >&2; }
step "4k random read QD32 (iscsi-perf)";  for t in "${TARGETS[@]}"; do iscsi_perf_rand rr32 32 "$t"; done
step "4k random read QD128 (iscsi-perf)"; for t in "${TARGETS[@]}"; do iscsi_perf_rand rr128 128 "$t"; done
step "4k read QD32 (qemu-img bench)";     for t in "${TARGETS[@]}"; do qemu_bench qr "$t" 200000 4096 iops -d 32 -s 4k; done
step "128k seq read QD16 (iscsi-perf)";   for t in "${TARGETS[@]}"; do seq_perf sr "$t"; done
step "128k seq read QD16 (qemu-img)";     for t in "${TARGETS[@]}"; do qemu_bench qsr "$t" 20000 131072 mbs -d 16 -s 128k; done
step "4k random write QD32";              for t in "${TARGETS[@]}"; do randwrite rw32 32 "$t"; done
step "4k random write QD128";             for t in "${TARGETS[@]}"; do randwrite rw128 128 "$t"; done
step "4k write QD32 (qemu-img bench -w)"; for t in "${TARGETS[@]}"; do qemu_bench qw "$t" 200000 4096 iops -d 32 -s 4k -w --pattern=90; done
step "data check";                        for t in "${TARGETS[@]}"; do data_check "$t"; done

# ---- loopback TCP bandwidth -----------------------------------------------------------------
step "iperf3 loopback, one stream, 5 s"
LOOPBACK_MBS=""
iperf3 -s -1 -B 127.0.0.1 -p "$IPERF_PORT" >"$TMP/iperf-server.log" 2>&1 &
IPERF_PID=$!
# Wait for its banner, not by connecting: a probe connection would use up the server's one test.
for _ in $(seq 50); do grep -q "Server listening" "$TMP/iperf-server.log" && break; sleep 0.1; done
if timeout -k 5 30 iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t 5 -P 1 -J >"$TMP/iperf.json" 2>"$TMP/iperf.err" &&
  LOOPBACK_MBS=$(python3 -c 'import json,sys; print("%.0f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 8e6))' "$TMP/iperf.json" 2>>"$TMP/iperf.err"); then
  :
else
  FAILED=1
  LOOPBACK_MBS=""
  { echo "### iperf3 client failed"; echo '```'; tail -5 "$TMP/iperf.err"; head -c 600 "$TMP/iperf.json"; echo '```'; } >>"$TMP/failures.txt"
fi
wait "$IPERF_PID" 2>/dev/null || true
IPERF_PID=""

# Stop both targets now, so that ferry's exit status and last words go into the report.
stop_ferry
stop_tgtd
if [[ $FERRY_RC != 0 ]]; then
  FAILED=1
  echo "### ferry exited with status $FERRY_RC on SIGTERM" >>"$TMP/failures.txt"
fi

# ---- table ----------------------------------------------------------------------------------
ratio() { # A B -> A/B, or "" if either is not a number
  awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.2f", a / b }'
}
row() { # LABEL FERRY TGTD
  printf '| %s | %s | %s | %s |\n' "$1" "${2:--}" "${3:--}" "$(ratio "${2:-}" "${3:-}")"
}
pct() { [[ -n $LOOPBACK_MBS ]] && awk -v a="$1" -v b="$LOOPBACK_MBS" 'BEGIN { if (a ~ /^[0-9.]+$/) printf "%.0f%%", 100 * a / b }'; }

{
  echo "| metric | ferry | tgtd | ratio |"
  echo "|---|---:|---:|---:|"
  row "4 KiB random read IOPS, QD 32 (iscsi-perf)" "${VAL[rr32.ferry]:-}" "${VAL[rr32.tgtd]:-}"
  row "4 KiB random read IOPS, QD 128 (iscsi-perf)" "${VAL[rr128.ferry]:-}" "${VAL[rr128.tgtd]:-}"
  row "4 KiB random write IOPS, QD 32 (iscsi_randwrite)" "${VAL[rw32.ferry]:-}" "${VAL[rw32.tgtd]:-}"
  row "4 KiB random write IOPS, QD 128 (iscsi_randwrite)" "${VAL[rw128.ferry]:-}" "${VAL[rw128.tgtd]:-}"
  row "4 KiB read IOPS, QD 32 (qemu-img bench, 200k seq)" "${VAL[qr.ferry]:-}" "${VAL[qr.tgtd]:-}"
  row "4 KiB write IOPS, QD 32 (qemu-img bench -w, 200k seq)" "${VAL[qw.ferry]:-}" "${VAL[qw.tgtd]:-}"
  row "128 KiB seq read MB/s, QD 16 (iscsi-perf -b 256)" "${VAL[sr.ferry]:-}" "${VAL[sr.tgtd]:-}"
  row "128 KiB seq read MB/s, QD 16 (qemu-img bench, 20k)" "${VAL[qsr.ferry]:-}" "${VAL[qsr.tgtd]:-}"
  row "128 KiB seq read (iscsi-perf) as % of loopback TCP" "$(pct "${VAL[sr.ferry]:-}")" "$(pct "${VAL[sr.tgtd]:-}")"
  row "128 KiB seq read (qemu-img) as % of loopback TCP" "$(pct "${VAL[qsr.ferry]:-}")" "$(pct "${VAL[qsr.tgtd]:-}")"
  printf '| %s | %s | %s | |\n' "loopback TCP MB/s (iperf3, 1 stream, 5 s)" "${LOOPBACK_MBS:--}" "${LOOPBACK_MBS:--}"
  for k in rr32:"rand read QD 32" rr128:"rand read QD 128" rw32:"rand write QD 32" rw128:"rand write QD 128" \
           qr:"qemu-img read QD 32" qw:"qemu-img write QD 32" sr:"128 KiB seq read (iscsi-perf)" \
           qsr:"128 KiB seq read (qemu-img)"; do
    row "target CPU s per 1M IOs, ${k#*:} (lower is better)" "${CPU[${k%%:*}.ferry]:-}" "${CPU[${k%%:*}.tgtd]:-}"
  done
  printf '| %s | %s | %s | %s |\n' "data check: 3 s QD 128 stamped random writes, read back" "${VAL[check.ferry]:-}" "${VAL[check.tgtd]:-}" ""
} >"$TMP/table.md"

if [[ -n ${FERRY:-} ]]; then CMD="FERRY=$FERRY perf/iscsi_bench.sh"; else CMD="perf/iscsi_bench.sh"; fi
((${#ARGS_ORIG[@]})) && CMD+=" ${ARGS_ORIG[*]}"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || REV+=" (with uncommitted changes)"

{
  echo "# iSCSI benchmark: ferry vs tgtd"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), kernel $(uname -r), load average at start $LOADAVG_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- command: \`$CMD\` (from the repo root; repo at $REV; binary $FERRY_BIN, sha256 $FERRY_SHA…)"
  echo "- ferry: \`ferry ${FERRY_ARGS[*]}\` ($FERRY_THREADS reactor threads), 512-byte blocks"
  echo "- tgtd: ${TGTD_VERSION:-tgtd}, \`--bstype rdwr\` on a 1 GiB file in /dev/shm, default I/O threads, 512-byte blocks"
  echo "- ${DURATION} s per timed run; ratio = ferry / tgtd; MB = 10^6 bytes"
  echo
  cat "$TMP/table.md"
  echo
  echo "Notes:"
  echo "- Client, target and the other target share the same $(nproc) CPUs over loopback; the machine is shared and"
  echo "  noisy, so compare only within one run. Both LUNs are prefilled (1 GiB of 0xa5) before the reads."
  echo "- iscsi-perf -r picks random 512-byte-aligned LBAs (8 blocks per READ16); iscsi_randwrite picks random"
  echo "  4 KiB-aligned offsets. qemu-img bench is sequential (offset 0, step = size)."
  echo "- CPU per 1M IOs is utime+stime of the target process (all threads, CLK_TCK $HZ) over the client run;"
  echo "  for iscsi-perf runs the I/O count is its average IOPS x duration. For seq reads an IO is 128 KiB."
  echo "- The data check runs perf/iscsi_randwrite.c -V: random 4 KiB writes stamped with (block, sequence),"
  echo "  never two in flight to one block, then every written block is read back and compared."
  echo "- iperf3 uses its default 128 KiB writes and one stream, so it is a reference, not a ceiling:"
  echo "  an iSCSI read stream can exceed it."
  echo
  echo "ferry's stderr over the whole run (exit status ${FERRY_RC:-?} after SIGTERM):"
  echo
  echo '```'
  tail -n 20 "$TMP/ferry.log"
  echo '```'
  echo
  echo "## Failures"
  echo
  if [[ -s $TMP/failures.txt ]]; then cat "$TMP/failures.txt"; else echo "None: every client run exited 0 and both targets stayed up."; fi
} >"$TMP/report.md"

mkdir -p "$HERE/results"
cp "$TMP/report.md" "$HERE/results/iscsi-latest.md"
cat "$TMP/report.md"
exit "$FAILED"
