#!/usr/bin/env bash
# systemd integration (issue 13): each daemon run with $NOTIFY_SOCKET (as a Type=notify unit
# runs it) sends READY=1 only once its listener accepts connections, and STOPPING=1 on SIGTERM,
# then exits 0; `cmake --install` puts the binary, man page, units and example configs in place;
# the installed units pass `systemd-analyze verify` and the man page renders without warnings.
# Usage: systemd_notify_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl

# notify_listen NAME: a datagram socket at $TMP/NAME.sock logging each message (one line per
# field, after a "@" line) to $TMP/NAME.notify, for at most 120 s.
notify_listen() {
  "$PY" - "$TMP/$1.sock" "$TMP/$1.notify" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1]); s.settimeout(0.5)
end = time.time() + 120
with open(sys.argv[2], "a", buffering=1) as out:
    while time.time() < end:
        try: msg = s.recv(4096).decode()
        except socket.timeout: continue
        out.write("@\n" + msg.rstrip("\n") + "\n")
PY
  PIDS+=($!)
  local i
  for i in $(seq 50); do [ -S "$TMP/$1.sock" ] && return 0; sleep 0.05; done
  echo "FAIL: notify listener did not start"; exit 1
}
# wait_notify NAME LINE: wait (10 s) until NAME's log holds LINE.
wait_notify() {
  local i
  for i in $(seq 200); do grep -qx "$2" "$TMP/$1.notify" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
can_connect() { "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$1), timeout=2)" 2>/dev/null; }

# check_daemon NAME PID PORT: READY=1 arrived and the port takes connections; SIGTERM gives
# STOPPING=1 and exit 0.
check_daemon() {
  local name=$1 pid=$2 port=$3
  if wait_notify "$name" READY=1; then
    can_connect "$port" && ok "$name: READY=1 ($(grep '^STATUS=' "$TMP/$name.notify" | head -1)), port $port accepts" ||
      fail "$name: READY=1 before its port accepted connections"
  else
    fail "$name: no READY=1 on \$NOTIFY_SOCKET: $(tail -5 "$TMP/$name.log")"
  fi
  kill -TERM "$pid"
  local i rc
  for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  wait "$pid"; rc=$?
  wait_notify "$name" STOPPING=1 && [ "$rc" = 0 ] && ok "$name: STOPPING=1 on SIGTERM, exit 0" ||
    fail "$name: stop: exit $rc, notify log: $(tr '\n' ' ' <"$TMP/$name.notify")"
}

notify_listen target
p=$(free_port)
NOTIFY_SOCKET=$TMP/target.sock "$FERRY" target --listen 127.0.0.1:$p --lun ram:64MiB >"$TMP/target.log" 2>&1 &
T_PID=$!; PIDS+=($T_PID)
check_daemon target "$T_PID" "$p"

make_pki
start_nbd_source 8
notify_listen dc
dc_args
P_WAN=$(free_port)
NOTIFY_SOCKET=$TMP/dc.sock "$FERRY" dc-edge --listen 127.0.0.1:$P_WAN "${DC_ARGS[@]}" >"$TMP/dc.log" 2>&1 &
DC_PID=$!; PIDS+=($DC_PID)
wait_notify dc READY=1 || { cat "$TMP/dc.log"; fail "dc-edge: no READY=1"; }
notify_listen cloud
p_iscsi=$(free_port)
mkdir -p "$TMP/j"
NOTIFY_SOCKET=$TMP/cloud.sock "$FERRY" cloud-edge --listen 127.0.0.1:$p_iscsi --dc 127.0.0.1:$P_WAN \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge --tls-cert "$PKI/cloud-edge-cert.pem" \
  --tls-key "$PKI/cloud-edge-key.pem" --ram-cache-mib 8 >"$TMP/cloud.log" 2>&1 &
C_PID=$!; PIDS+=($C_PID)
check_daemon cloud "$C_PID" "$p_iscsi"
check_daemon dc "$DC_PID" "$P_WAN"

# Installation: what `cmake --install` lays down, and the units and man page as installed.
build=${FERRY_BUILD_DIR:-$(dirname "$FERRY")}
if [ -f "$build/cmake_install.cmake" ]; then
  inst=$TMP/inst
  cmake --install "$build" --prefix "$inst" >"$TMP/install.log" 2>&1 || fail "cmake --install: $(tail -5 "$TMP/install.log")"
  missing=()
  for f in bin/ferry share/man/man1/ferry.1 share/doc/ferry/README.md share/doc/ferry/openapi.yaml \
           share/doc/ferry/examples/{target,dc-edge,cloud-edge}.toml lib/systemd/system/ferry-{target,dc-edge,cloud-edge}.service; do
    [ -e "$inst/$f" ] || missing+=("$f")
  done
  [ ${#missing[@]} -eq 0 ] && ok "cmake --install: binary, man page, 3 units, examples" || fail "not installed: ${missing[*]}"
  # The units name the paths of the prefix the build was configured with (CMAKE_INSTALL_PREFIX).
  prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
  unit=$inst/lib/systemd/system/ferry-cloud-edge.service
  grep -q "^ExecStart=$prefix/bin/ferry cloud-edge --config .*/ferry/cloud-edge.toml\$" "$unit" &&
    grep -q '^Type=notify$' "$unit" && ok "units: Type=notify, ExecStart $prefix/bin/ferry" ||
    fail "unit contents: $(grep -E '^(Type|ExecStart)=' "$unit")"
  if command -v systemd-analyze >/dev/null; then
    # verify checks that ExecStart's binary exists: point copies of the units at this install.
    mkdir -p "$TMP/units"
    for u in "$inst"/lib/systemd/system/ferry-*.service; do
      sed "s|$prefix/bin/ferry|$inst/bin/ferry|g" "$u" >"$TMP/units/$(basename "$u")"
    done
    systemd-analyze verify --man=no "$TMP"/units/ferry-*.service >"$TMP/verify.log" 2>&1 &&
      ok "systemd-analyze verify: clean" || fail "systemd-analyze verify: $(cat "$TMP/verify.log")"
  fi
  bad=0
  for t in target dc-edge cloud-edge; do  # the example configs are valid for their daemon
    "$inst/bin/ferry" "$t" --config "$inst/share/doc/ferry/examples/$t.toml" --check-config >"$TMP/check-$t.log" 2>&1 ||
      { bad=1; fail "example $t.toml: $(cat "$TMP/check-$t.log")"; }
  done
  [ "$bad" = 0 ] && ok "installed example configs pass --check-config"
  if command -v groff >/dev/null; then
    warnings=$(groff -man -Tutf8 -ww -z "$inst/share/man/man1/ferry.1" 2>&1)
    [ -z "$warnings" ] && MANWIDTH=80 man -l "$inst/share/man/man1/ferry.1" 2>/dev/null | grep -q '^FERRY(1)' &&
      ok "man page renders without warnings" || fail "man page: $warnings"
  fi
else
  echo "SKIP (part): no cmake_install.cmake in $build"
fi
finish
