# Shared helpers for integration tests (sourced). Servers bind 127.0.0.1 on free ports; only
# processes this test started are stopped, by PID. Exit codes: 0 pass, 1 fail, 77 skip.
set -u
FERRY=${FERRY:-${1:-}}
[ -n "$FERRY" ] || { echo "usage: $0 /path/to/ferry"; exit 2; }
FERRY=$(readlink -f "$FERRY")
IQN=iqn.2026-11.io.ferry:target
FAILED=0
PIDS=()
TMP=$(mktemp -d /tmp/ferry-it.XXXXXX)

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; FAILED=1; }
ok() { echo "ok: $*"; }
need() { for t in "$@"; do command -v "$t" >/dev/null || skip "$t not installed (scripts/install-deps.sh)"; done; }
finish() { if [ "$FAILED" -eq 0 ]; then echo PASS; exit 0; else echo "FAILED"; exit 1; fi; }

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ -n "${KEEP_TMP:-}" ] && echo "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_listening LOG PID: wait for ferry's "listening on" line (10 s).
wait_listening() {
  local i
  for i in $(seq 200); do
    kill -0 "$2" 2>/dev/null || return 1
    grep -q 'ferry: listening on' "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# start_ferry NAME ARGS... : starts `ferry target ARGS` logging to $TMP/NAME.log; sets FERRY_PID.
start_ferry() {
  local name=$1; shift
  "$FERRY" target "$@" >"$TMP/$name.log" 2>&1 &
  FERRY_PID=$!
  PIDS+=("$FERRY_PID")
  if ! wait_listening "$TMP/$name.log" "$FERRY_PID"; then
    cat "$TMP/$name.log"
    echo "FAIL: ferry did not start"
    exit 1
  fi
}

# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit status.
stop_pid() {
  local i
  kill "$1" 2>/dev/null || return 0
  for i in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

# tgtd helpers: start_tgtd NAME PORT BACKING_FILE [BLOCKSIZE]; sets TGTD_PID TGTD_CTL.
start_tgtd() {
  local name=$1 port=$2 backing=$3 bs=${4:-512}
  TGTD_CTL=$(( port % 10000 + 100 ))  # tgtd control-socket index (small integers only)
  tgtd -f -C "$TGTD_CTL" --iscsi portal=127.0.0.1:"$port" >"$TMP/$name.log" 2>&1 &
  TGTD_PID=$!
  PIDS+=("$TGTD_PID")
  local i
  for i in $(seq 100); do
    tgtadm -C "$TGTD_CTL" --lld iscsi --op show --mode target >/dev/null 2>&1 && break
    sleep 0.1
  done
  tgtadm -C "$TGTD_CTL" --lld iscsi --op new --mode target --tid 1 -T "$IQN" &&
  tgtadm -C "$TGTD_CTL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$backing" \
    --blocksize "$bs" &&
  tgtadm -C "$TGTD_CTL" --lld iscsi --op bind --mode target --tid 1 -I ALL
}
stop_tgtd() {
  tgtadm -C "$TGTD_CTL" --op delete --mode system >/dev/null 2>&1
  sleep 0.2
  kill -9 "$TGTD_PID" 2>/dev/null
  wait "$TGTD_PID" 2>/dev/null
}

# ---- WAN pipeline pieces shared by the edge tests
# make_pki: a throw-away PKI in $TMP/pki (scripts/make-test-pki.sh); sets PKI.
make_pki() {
  local src=${FERRY_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
  PKI=$TMP/pki
  "$src/scripts/make-test-pki.sh" "$PKI" >/dev/null || { echo "FAIL: make-test-pki"; exit 1; }
}
# start_nbd_source MIB: a MIB MiB random raw disk served read-only by qemu-nbd as export "disk";
# sets P_SRC.
start_nbd_source() {
  dd if=/dev/urandom of="$TMP/disk.raw" bs=1M count="$1" status=none
  P_SRC=$(free_port)
  qemu-nbd -f raw -r --shared=8 -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
  PIDS+=($!)
  local i
  for i in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && return 0; sleep 0.1; done
  echo "FAIL: qemu-nbd did not start"; exit 1
}
# DC_ARGS: a dc-edge's volume and certificates (after make_pki and start_nbd_source).
dc_args() {
  DC_ARGS=(--volume "disk=nbd://127.0.0.1:$P_SRC/disk" --tls-cert "$PKI/dc-edge-cert.pem"
           --tls-key "$PKI/dc-edge-key.pem" --tls-ca "$PKI/ca-cert.pem")
}
# start_dc_edge NAME [ARGS...]: a dc-edge on a free port, logging to $TMP/NAME.log; sets DC_PID, P_WAN.
start_dc_edge() {
  local name=$1; shift
  dc_args
  P_WAN=$(free_port)
  "$FERRY" dc-edge --listen 127.0.0.1:$P_WAN "${DC_ARGS[@]}" "$@" >"$TMP/$name.log" 2>&1 &
  DC_PID=$!; PIDS+=($DC_PID)
  local i
  for i in $(seq 100); do grep -q 'dc-edge listening' "$TMP/$name.log" && return 0; sleep 0.05; done
  cat "$TMP/$name.log"; echo "FAIL: dc-edge did not start"; exit 1
}
