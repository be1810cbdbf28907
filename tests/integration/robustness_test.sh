#!/usr/bin/env bash
# Bad input and hostile peers against `ferry target` (silent peers, garbage, truncated and
# oversized PDUs, wrong-phase PDUs, CmdSN outside the window, digest errors, thousands of
# logins) and crash safety: every write acknowledged to qemu-img survives a kill -9.
# Usage: robustness_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-img cmp

P=$(free_port)
start_ferry robust --listen 127.0.0.1:$P --lun ram:64MiB --login-timeout-ms 1500 --threads 2
"$PY" "$here/robustness.py" "$P" "$FERRY_PID" || fail "robustness scenarios"
kill -0 "$FERRY_PID" 2>/dev/null && ok "ferry alive after the hostile peers" || fail "ferry died"
stop_pid "$FERRY_PID"

# Keepalive: NOP-In pings after 500 ms idle, 1 s to answer.
P=$(free_port)
start_ferry nop --listen 127.0.0.1:$P --lun ram:16MiB --nop-interval-ms 500 --nop-timeout-ms 1000
"$PY" "$here/robustness.py" "$P" "$FERRY_PID" nop || fail "keepalive scenarios"
grep -q 'did not answer NOP-In' "$TMP/nop.log" && ok "dead initiator logged" || fail "no keepalive log line"
stop_pid "$FERRY_PID"

# Crash safety: acknowledged writes to a file LUN survive kill -9 of the target.
if qemu-img --help 2>/dev/null | grep -q iscsi; then
  truncate -s 32M "$TMP/crash.img"
  head -c 32M /dev/urandom >"$TMP/payload.img"
  P=$(free_port)
  start_ferry crash --listen 127.0.0.1:$P --lun "file:$TMP/crash.img"
  if timeout 120 qemu-img convert -n -f raw -O raw "$TMP/payload.img" "iscsi://127.0.0.1:$P/$IQN/0"; then
    kill -9 "$FERRY_PID"; wait "$FERRY_PID" 2>/dev/null
    cmp "$TMP/payload.img" "$TMP/crash.img" && ok "kill -9 after qemu-img finished: every write is in the file" ||
      fail "writes lost after kill -9"
  else
    fail "qemu-img convert into the file LUN failed"
  fi
  # Killed in the middle of a copy: the blocks that differ are only ones not yet acknowledged;
  # restart on the same file and check the image is still readable and the target serves it.
  P=$(free_port)
  start_ferry crash2 --listen 127.0.0.1:$P --lun "file:$TMP/crash.img"
  timeout 120 qemu-img convert -n -f raw -O raw /dev/zero "iscsi://127.0.0.1:$P/$IQN/0" >/dev/null 2>&1 &
  QP=$!
  sleep 0.3
  kill -9 "$FERRY_PID"; wait "$FERRY_PID" 2>/dev/null
  wait "$QP" 2>/dev/null
  P=$(free_port)
  start_ferry crash3 --listen 127.0.0.1:$P --lun "file:$TMP/crash.img"
  timeout 120 qemu-img convert -f raw -O raw "iscsi://127.0.0.1:$P/$IQN/0" "$TMP/after.img" &&
    ok "restart after kill -9 mid-copy: LUN readable" || fail "LUN unreadable after kill -9"
  stop_pid "$FERRY_PID"
else
  echo "note: crash test skipped (qemu-block-extra missing)"
fi
finish
