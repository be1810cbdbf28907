#!/usr/bin/env bash
# NBD interop: `ferry target --nbd` against real NBD clients (libnbd tools, nbdsh, qemu-img),
# including STARTTLS with a throw-away CA. Usage: nbd_interop_test.sh /path/to/ferry
# Exit 0 = pass, 1 = fail, 77 = skipped (a tool is missing or ferry lacks --nbd).
set -u
FERRY=${1:?usage: $0 /path/to/ferry}
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; FAILED=1; }
ok() { echo "ok: $*"; }
FAILED=0

for t in nbdinfo nbdcopy nbdsh qemu-img openssl python3 cmp; do
  command -v "$t" >/dev/null || skip "$t not installed (apt-get install libnbd-bin python3-libnbd qemu-utils openssl)"
done
# nbdsh runs `python3` from PATH: prefer the system one, which has python3-libnbd.
if ! python3 -c 'import nbd' 2>/dev/null && /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
  mkdir -p "${TMPDIR:-/tmp}/ferry-nbd-py" && ln -sf /usr/bin/python3 "${TMPDIR:-/tmp}/ferry-nbd-py/python3"
  export PATH="${TMPDIR:-/tmp}/ferry-nbd-py:$PATH"
fi
python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed (needed by nbdsh)"
"$FERRY" target --help 2>&1 | grep -q -- '--nbd' || skip "ferry target has no --nbd option yet"

TMP=$(mktemp -d /tmp/ferry-nbd-it.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {  # wait_port PORT PID
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" && return 0
    sleep 0.1
  done
  return 1
}
start_ferry() {  # start_ferry LOG ARGS... ; sets FERRY_PID
  local log=$1; shift
  "$FERRY" target "$@" >"$log" 2>&1 &
  FERRY_PID=$!
  PIDS+=("$FERRY_PID")
}
stop_ferry() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

# ---------------------------------------------------------------- plain NBD
P1=$(free_port); P2=$(free_port)
IMG=$TMP/disk.img
truncate -s 64M "$IMG"
start_ferry "$TMP/ferry.log" --listen 127.0.0.1:$P1 --lun ram:256MiB --lun "file:$IMG" --nbd 127.0.0.1:$P2
wait_port "$P2" "$FERRY_PID" || { cat "$TMP/ferry.log"; echo "FAIL: ferry did not listen on $P2"; exit 1; }
URI0=nbd://127.0.0.1:$P2/lun0
URI1=nbd://127.0.0.1:$P2/lun1

out=$(nbdinfo --list "nbd://127.0.0.1:$P2" 2>&1)
if grep -q 'export="lun0"' <<<"$out" && grep -q 'export="lun1"' <<<"$out"; then ok "nbdinfo --list shows lun0 and lun1"
else fail "nbdinfo --list: $out"; fi
nbdinfo "$URI0" | grep -q 'can_multi_conn: true' && ok "multi-conn advertised" || fail "multi-conn not advertised"

# Source data: 8 MiB random + 8 MiB zeros + 8 MiB random, sparse tail.
head -c 8M /dev/urandom >"$TMP/src.raw"; truncate -s 16M "$TMP/src.raw"
head -c 8M /dev/urandom >>"$TMP/src.raw"; truncate -s 64M "$TMP/src.raw"

nbdcopy "$TMP/src.raw" "$URI1" && ok "nbdcopy file → nbd" || fail "nbdcopy file → nbd"
nbdcopy "$URI1" "$TMP/back.raw" && cmp "$TMP/src.raw" "$TMP/back.raw" && ok "nbdcopy nbd → file byte-identical" \
  || fail "nbdcopy round trip differs"
nbdcopy "$URI1" "$URI0" && nbdcopy "$URI0" "$TMP/back0.raw" && cmp <(head -c 64M "$TMP/back0.raw") "$TMP/src.raw" \
  && ok "nbdcopy nbd → nbd byte-identical" || fail "nbdcopy nbd → nbd"

map=$(nbdinfo --map "$URI1" 2>&1)
echo "$map" | head -5
python3 - "$map" <<'PY' && ok "nbdinfo --map reports data and holes" || fail "nbdinfo --map: $map"
import sys
rows = [l.split() for l in sys.argv[1].splitlines() if l.strip()]
kinds = {r[2] for r in rows}   # offset length type [description]
sys.exit(0 if "0" in kinds and "3" in kinds else 1)
PY

qemu-img convert -f raw -O raw "$URI1" "$TMP/qemu.raw" && cmp "$TMP/qemu.raw" "$TMP/src.raw" \
  && ok "qemu-img convert from nbd://" || fail "qemu-img convert from nbd://"
qemu-img convert -n -f raw -O raw "$TMP/src.raw" "$URI0" && ok "qemu-img convert to nbd://" || fail "qemu-img convert to nbd://"
qemu-img compare -f raw -F raw "$TMP/src.raw" "$URI1" && ok "qemu-img compare (lun1)" || fail "qemu-img compare lun1"

# nbdsh: structured replies and block status after TRIM / WRITE_ZEROES.
nbdsh --base-allocation -u "$URI0" -c '
import nbd
assert h.get_structured_replies_negotiated()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
def extents(off, n):
    out = []
    def cb(meta, offset, e, err):
        for i in range(0, len(e), 2): out.append((e[i], e[i+1]))
    h.block_status(n, off, cb)
    return out
M = 1 << 20
h.pwrite(b"\xab" * M, 0)
assert extents(0, M)[0] == (M, 0), extents(0, M)
h.trim(M // 2, 0)
e = extents(0, M)
assert e[0] == (M // 2, 3), e
h.zero(M // 4, M // 2 + M // 4, nbd.CMD_FLAG_NO_HOLE)
h.pwrite(b"\xcd" * 4096, 3 * M // 4)
buf = h.pread(M, 0)
assert buf[:M // 2] == bytes(M // 2)
assert buf[3 * M // 4:3 * M // 4 + 4096] == b"\xcd" * 4096
# a read over data + hole arrives as OFFSET_DATA + OFFSET_HOLE chunks
chunks = []
def chunk(sub, off, status, err):
    chunks.append((status, off, len(sub)))
    return 0
h.pread_structured(M, 0, chunk)
kinds = {c[0] for c in chunks}
assert nbd.READ_HOLE in kinds and nbd.READ_DATA in kinds, chunks
try:
    h.pread(4096, h.get_size())
    raise SystemExit("read past the end succeeded")
except nbd.Error as ex:
    assert ex.errno in ("EINVAL", 22) or "Invalid" in str(ex), ex
h.flush()
print("nbdsh checks passed")
' && ok "nbdsh structured replies / block status" || fail "nbdsh script"
stop_ferry "$FERRY_PID"

# ---------------------------------------------------------------- TLS
mkdir -p "$TMP/pki" "$TMP/good" "$TMP/bad"
(
  cd "$TMP/pki"
  mkca() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$1" -keyout "$1-key.pem" -out "$1-cert.pem" 2>/dev/null
  }
  mkcert() {  # mkcert NAME CA SAN
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2-cert.pem" -CAkey "$2-key.pem" -CAcreateserial -days 2 \
      -extfile "$1.ext" -out "$1-cert.pem" 2>/dev/null
  }
  mkca ca; mkca evilca
  mkcert server ca "IP:127.0.0.1,DNS:localhost"
  mkcert client ca "DNS:client"
  mkcert evilclient evilca "DNS:client"
) || fail "making the test PKI"
cp "$TMP/pki/ca-cert.pem" "$TMP/good/ca-cert.pem"
cp "$TMP/pki/client-cert.pem" "$TMP/good/client-cert.pem"; cp "$TMP/pki/client-key.pem" "$TMP/good/client-key.pem"
cp "$TMP/pki/evilca-cert.pem" "$TMP/bad/ca-cert.pem"
cp "$TMP/pki/evilclient-cert.pem" "$TMP/bad/client-cert.pem"; cp "$TMP/pki/evilclient-key.pem" "$TMP/bad/client-key.pem"
mkdir -p "$TMP/badclient"; cp "$TMP/pki/ca-cert.pem" "$TMP/badclient/ca-cert.pem"
cp "$TMP/pki/evilclient-cert.pem" "$TMP/badclient/client-cert.pem"; cp "$TMP/pki/evilclient-key.pem" "$TMP/badclient/client-key.pem"

P3=$(free_port); P4=$(free_port)
start_ferry "$TMP/ferry-tls.log" --listen 127.0.0.1:$P3 --lun ram:64MiB --nbd 127.0.0.1:$P4 \
  --nbd-tls-cert "$TMP/pki/server-cert.pem" --nbd-tls-key "$TMP/pki/server-key.pem" \
  --nbd-tls-ca "$TMP/pki/ca-cert.pem" --nbd-tls-required
if ! wait_port "$P4" "$FERRY_PID"; then
  cat "$TMP/ferry-tls.log"; fail "ferry with TLS options did not start"
else
  if nbdinfo "nbds://127.0.0.1:$P4/lun0?tls-certificates=$TMP/good" >/dev/null 2>"$TMP/e1"; then
    ok "TLS: right certificates accepted"
  else fail "TLS: right certificates refused: $(cat "$TMP/e1")"; fi
  nbdsh -c "
import nbd
h.set_tls(nbd.TLS_REQUIRE); h.set_tls_certificates('$TMP/good')
h.set_export_name('lun0'); h.connect_tcp('127.0.0.1', '$P4')
h.pwrite(b'x' * 65536, 0); assert h.pread(65536, 0) == b'x' * 65536
h.pwrite(b'y' * (4 << 20), 1 << 20); assert h.pread(4 << 20, 1 << 20) == b'y' * (4 << 20)
" && ok "TLS: data round trip" || fail "TLS: data round trip"
  nbdinfo "nbds://127.0.0.1:$P4/lun0?tls-certificates=$TMP/bad" >/dev/null 2>&1 \
    && fail "TLS: server certificate from an unknown CA was accepted" || ok "TLS: wrong CA refused"
  nbdinfo "nbds://127.0.0.1:$P4/lun0?tls-certificates=$TMP/badclient" >/dev/null 2>&1 \
    && fail "TLS: client certificate from an unknown CA was accepted" || ok "TLS: wrong client certificate refused"
  nbdinfo "nbd://127.0.0.1:$P4/lun0" >/dev/null 2>&1 \
    && fail "TLS required but plaintext accepted" || ok "TLS required: plaintext refused"
  stop_ferry "$FERRY_PID"
fi

# ---------------------------------------------------------------- CHAP-protected LUN over NBD
# `ferry target --chap` protected iSCSI only: the NBD export of the same LUN took an
# unauthenticated write (issue 15, failure 3). Such a configuration must not start...
P5=$(free_port); P6=$(free_port)
timeout 10 "$FERRY" target --listen 127.0.0.1:$P5 --lun ram:16MiB --chap user:secretsecret \
  --nbd 127.0.0.1:$P6 >"$TMP/ferry-chap-plain.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q 'CHAP-protected' "$TMP/ferry-chap-plain.log"; then
  ok "CHAP LUN with a plaintext NBD export refused to start (rc $rc): $(head -1 "$TMP/ferry-chap-plain.log")"
else fail "CHAP LUN with a plaintext NBD export: rc $rc (124 = it ran and served)"; fi
# ... with client certificates it starts, and only a client with a certificate may write ...
start_ferry "$TMP/ferry-chap-tls.log" --listen 127.0.0.1:$P5 --lun ram:16MiB --chap user:secretsecret \
  --nbd 127.0.0.1:$P6 --nbd-tls-cert "$TMP/pki/server-cert.pem" --nbd-tls-key "$TMP/pki/server-key.pem" \
  --nbd-tls-ca "$TMP/pki/ca-cert.pem"
if ! wait_port "$P6" "$FERRY_PID"; then
  cat "$TMP/ferry-chap-tls.log"; fail "CHAP LUN with NBD client certificates did not start"
else
  nbdsh -c "
h.set_export_name('lun0'); h.connect_tcp('127.0.0.1', '$P6')
h.pwrite(b'z' * 4096, 0)
" >/dev/null 2>&1 && fail "CHAP LUN: unauthenticated NBD write accepted" ||
    ok "CHAP LUN: NBD write without a client certificate refused"
  nbdsh -c "
import nbd
h.set_tls(nbd.TLS_REQUIRE); h.set_tls_certificates('$TMP/good')
h.set_export_name('lun0'); h.connect_tcp('127.0.0.1', '$P6')
h.pwrite(b'z' * 4096, 0); assert h.pread(4096, 0) == b'z' * 4096
" && ok "CHAP LUN: NBD write with a client certificate works" || fail "CHAP LUN: certified NBD write failed"
  stop_ferry "$FERRY_PID"
fi
# ... and the explicit opt-out is logged.
start_ferry "$TMP/ferry-chap-insecure.log" --listen 127.0.0.1:$P5 --lun ram:16MiB --chap user:secretsecret \
  --nbd 127.0.0.1:$P6 --nbd-insecure
if wait_port "$P6" "$FERRY_PID" && grep -q 'WARNING: --nbd-insecure' "$TMP/ferry-chap-insecure.log"; then
  ok "--nbd-insecure starts and says so: $(grep -m1 WARNING "$TMP/ferry-chap-insecure.log")"
else fail "--nbd-insecure: no warning or did not start"; fi
stop_ferry "$FERRY_PID"

[ "$FAILED" = 0 ] && echo "PASS" || echo "FAILED"
exit "$FAILED"
