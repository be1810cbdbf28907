#!/usr/bin/env bash
# NBD-over-TLS throughput, one machine: `ferry target --nbd` with a TLS export of a RAM LUN and
# client certificates (STARTTLS, TLS 1.3), driven by nbdcopy (libnbd, GnuTLS). Per round: write
# SIZE_MIB of random data into the export (nbdcopy from a /dev/shm file), then read it all back
# (nbdcopy to null:, so the bytes are really encrypted: the LUN holds data, no holes). Reports
# MB/s of each direction and the server's CPU time per MiB (utime+stime of its PID), median of
# ROUNDS. Several builds (e.g. before/after a change) run side by side and are visited in turn
# each round, so a busy machine slows them alike.
# Usage: perf/nbd_tls_bench.sh /path/to/ferry [/path/to/other/ferry ...]
# Environment: SIZE_MIB (default 512), ROUNDS (default 5). Writes perf/results/nbd-tls-latest.md.
set -u
[ $# -ge 1 ] || { echo "usage: $0 /path/to/ferry [/path/to/other/ferry ...]"; exit 2; }
SIZE_MIB=${SIZE_MIB:-512}
ROUNDS=${ROUNDS:-5}
for t in nbdcopy openssl python3; do command -v $t >/dev/null || { echo "missing $t (scripts/install-deps.sh)"; exit 77; }; done
TMP=$(mktemp -d /tmp/ferry-nbd-tls-bench.XXXXXX)
SRC=/dev/shm/ferry-nbd-tls-bench-$$.raw
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$TMP" "$SRC"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
now() { date +%s.%N; }

(
  cd "$TMP"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=ca \
    -keyout ca-key.pem -out ca-cert.pem 2>/dev/null
  for n in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n" \
      -keyout $n-key.pem -out $n.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >$n.ext
    openssl x509 -req -in $n.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
      -extfile $n.ext -out $n-cert.pem 2>/dev/null
  done
  mkdir certs && cp ca-cert.pem certs/ && cp client-cert.pem certs/ && cp client-key.pem certs/
) || { echo "making the PKI failed"; exit 1; }
head -c $((SIZE_MIB << 20)) /dev/urandom >"$SRC"

HZ=$(getconf CLK_TCK)
URIS=()
for i in $(seq $#); do
  FERRY=${!i}
  P_ISCSI=$(free_port); P_NBD=$(free_port)
  "$FERRY" target --listen 127.0.0.1:$P_ISCSI --lun ram:${SIZE_MIB}MiB --nbd 127.0.0.1:$P_NBD \
    --nbd-tls-cert "$TMP/server-cert.pem" --nbd-tls-key "$TMP/server-key.pem" \
    --nbd-tls-ca "$TMP/ca-cert.pem" --nbd-tls-required >"$TMP/ferry$i.log" 2>&1 &
  PIDS+=($!)
  URI="nbds://127.0.0.1:$P_NBD/lun0?tls-certificates=$TMP/certs"
  URIS+=("$URI")
  for _ in $(seq 100); do nbdinfo --size "$URI" >/dev/null 2>&1 && break; sleep 0.1; done
  nbdinfo --size "$URI" >/dev/null 2>&1 || { cat "$TMP/ferry$i.log"; echo "$FERRY did not start"; exit 1; }
  : >"$TMP/write$i"; : >"$TMP/read$i"
done

run() {  # run DIRECTION PID URI: prints "MB/s cpu_ms_per_MiB"
  local c0 t0 t1 c1
  c0=$(cpu_ticks $2); t0=$(now)
  if [ "$1" = write ]; then nbdcopy "$SRC" "$3" || return 1; else nbdcopy "$3" null: || return 1; fi
  t1=$(now); c1=$(cpu_ticks $2)
  python3 -c "s=$t1-$t0; print(round($SIZE_MIB*1.048576/s,1), round(($c1-$c0)*1000/$HZ/$SIZE_MIB,2))"
}
for r in $(seq "$ROUNDS"); do
  for i in $(seq $#); do
    run write "${PIDS[$((i - 1))]}" "${URIS[$((i - 1))]}" >>"$TMP/write$i" || { echo "nbdcopy write failed"; exit 1; }
    run read "${PIDS[$((i - 1))]}" "${URIS[$((i - 1))]}" >>"$TMP/read$i" || { echo "nbdcopy read failed"; exit 1; }
  done
done
median() { sort -n -k"$2" "$1" | awk -v k="$2" '{a[NR]=$k} END {print a[int((NR+1)/2)]}'; }
HERE=$(cd "$(dirname "$0")" && pwd)
{
echo "NBD over TLS, $SIZE_MIB MiB RAM LUN, nbdcopy, median of $ROUNDS rounds ($(date -u +%FT%TZ)):"
printf '%-40s %12s %14s %12s %14s\n' build "write MB/s" "write CPU ms/MiB" "read MB/s" "read CPU ms/MiB"
for i in $(seq $#); do
  printf '%-40s %12s %14s %12s %14s\n' "${!i}" "$(median "$TMP/write$i" 1)" "$(median "$TMP/write$i" 2)" \
    "$(median "$TMP/read$i" 1)" "$(median "$TMP/read$i" 2)"
done
} | tee "$HERE/results/nbd-tls-latest.md"
