#!/usr/bin/env bash
# Failed-authentication back-off (CHAP allowed unlimited fast guesses, issue 15): after wrong CHAP
# secrets from one address `ferry target` refuses CHAP logins from it with status 0x0301 — the
# right secret too, unchecked — until the back-off (1 s after the 2nd failure, doubling) is over;
# then the right secret logs in again. A target without CHAP is not held back, the back-off start
# is logged. (The NBD side, refused TLS client certificates: cloud_edge_nbd_tls_test.sh.)
# Usage: auth_backoff_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need iscsi-inq

P=$(free_port)
IQN_OPEN=iqn.2026-11.io.ferry:open
start_ferry backoff --listen 127.0.0.1:$P --lun ram:16MiB --chap alice:opensesame1234 \
  --target "$IQN_OPEN=ram:8MiB"
url() { echo "iscsi://$1@127.0.0.1:$P/$IQN/0"; }
inq() { timeout 30 iscsi-inq "$1" 2>&1 | grep -q 'Vendor:FERRY'; }
now() { date +%s.%N; }

inq "$(url alice%opensesame1234)" && ok "right secret logs in" || fail "right secret refused before any failure"
for i in 1 2 3; do
  inq "$(url alice%wrongguess$i)" && fail "wrong secret $i accepted"
  [ "$i" = 2 ] && t_backoff=$(now)
done
if inq "$(url alice%opensesame1234)"; then
  fail "the right secret logged in right after 3 wrong ones: no back-off"
else ok "while backed off the right secret is refused too"; fi
grep -q 'status 0x0301.*back-off' "$TMP/backoff.log" && ok "refusal logged with status 0x0301 (service unavailable)" ||
  fail "no 0x0301 back-off refusal in the log: $(grep -m3 refused "$TMP/backoff.log")"
grep -q 'ferry: iscsi 127.0.0.1: 2 failed authentications: refusing it for 1 s' "$TMP/backoff.log" &&
  ok "back-off start logged: $(grep -m1 'failed authentications' "$TMP/backoff.log")" ||
  fail "back-off start not logged"
[ "$(grep -c 'CHAP authentication failed' "$TMP/backoff.log")" = 2 ] &&
  ok "the 3rd guess was not checked (2 secrets compared, not 3)" ||
  fail "secrets checked while backed off: $(grep -c 'CHAP authentication failed' "$TMP/backoff.log")"
inq "iscsi://127.0.0.1:$P/$IQN_OPEN/0" && ok "a target without CHAP is not held back" ||
  fail "the back-off held back a login that needs no CHAP"

# After the back-off the right secret logs in; not before 1 s after the 2nd failure.
logged_in=0
for i in $(seq 50); do
  if inq "$(url alice%opensesame1234)"; then logged_in=1; break; fi
  sleep 0.1
done
elapsed=$("$PY" -c "print(round($(now) - $t_backoff, 2))")
if [ "$logged_in" = 1 ] && "$PY" -c "import sys; sys.exit(0 if $elapsed >= 0.95 else 1)"; then
  ok "right secret logs in once the back-off is over (${elapsed} s after the 2nd failure)"
else fail "after the back-off: logged_in=$logged_in after ${elapsed} s"; fi
stop_pid "$FERRY_PID"
finish
