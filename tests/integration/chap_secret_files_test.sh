#!/usr/bin/env bash
# Secrets from files (issue 15: CHAP secrets were only accepted in argv, readable by anyone with
# ps): `ferry target --chap-file/--mutual-chap-file/--discovery-chap-file` read USER:SECRET from
# a file only its owner may read; libiscsi logs in with the secrets from the files (one-way,
# mutual and discovery CHAP); a file readable by group/other is refused with exit 2 naming the
# file and its mode; a file and its argv form together are refused; the argv form still works
# but warns that the secret is visible in the process list. (The cloud edge's --chap-file:
# cloud_edge_nbd_tls_test.sh.) Usage: chap_secret_files_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need iscsi-inq iscsi-ls

umask 077
printf 'alice:opensesame1234\n' >"$TMP/chap"
printf 'target1:targetsecret567\n' >"$TMP/mutual"
printf 'disco:discoverysecret1' >"$TMP/disco"   # no trailing newline: fine too
P=$(free_port)
start_ferry files --listen 127.0.0.1:$P --lun ram:16MiB --chap-file "$TMP/chap" \
  --mutual-chap-file "$TMP/mutual" --discovery-chap-file "$TMP/disco"
timeout 30 iscsi-inq "iscsi://alice%opensesame1234@127.0.0.1:$P/$IQN/0?target_user=target1&target_password=targetsecret567" 2>&1 |
  grep -q 'Vendor:FERRY' && ok "CHAP + mutual CHAP with secrets from files (trailing newline stripped): logged in" ||
  fail "login with the secrets from the files refused"
timeout 30 iscsi-ls "iscsi://disco%discoverysecret1@127.0.0.1:$P" 2>&1 | grep -q "Target:$IQN" &&
  ok "discovery CHAP with the secret from a file" || fail "discovery CHAP from a file"
grep -q WARNING "$TMP/files.log" && fail "secrets from files warned: $(grep -m1 WARNING "$TMP/files.log")" ||
  ok "no warning for secrets from files"
stop_pid "$FERRY_PID"

# A secret file readable by group or others is refused at start, exit 2, naming file and mode.
for flag in --chap-file --mutual-chap-file --discovery-chap-file --discovery-mutual-chap-file; do
  cp "$TMP/chap" "$TMP/open$flag"; chmod 0644 "$TMP/open$flag"
  args=(--chap-file "$TMP/chap")
  [ "$flag" = --chap-file ] && args=()
  [ "$flag" = --discovery-mutual-chap-file ] && args+=(--discovery-chap-file "$TMP/disco")
  timeout 10 "$FERRY" target --listen 127.0.0.1:$(free_port) --lun ram:1MiB "${args[@]}" \
    "$flag" "$TMP/open$flag" >"$TMP/open.log" 2>&1
  rc=$?
  if [ "$rc" = 2 ] && grep -q -- "$flag $TMP/open$flag: readable by group or others (mode 0644)" "$TMP/open.log"; then
    ok "$flag: a 0644 file is refused (exit 2): $(head -1 "$TMP/open.log")"
  else fail "$flag with a 0644 file: rc $rc: $(head -2 "$TMP/open.log" | tr '\n' ' ')"; fi
done
chmod 0640 "$TMP/open--chap-file"
timeout 10 "$FERRY" target --listen 127.0.0.1:$(free_port) --lun ram:1MiB --chap-file "$TMP/open--chap-file" \
  >"$TMP/open.log" 2>&1
[ $? = 2 ] && ok "a group-readable (0640) file is refused too" || fail "0640 secret file accepted"
timeout 10 "$FERRY" target --listen 127.0.0.1:$(free_port) --lun ram:1MiB --chap-file "$TMP/missing" \
  >"$TMP/open.log" 2>&1
[ $? = 2 ] && grep -q "$TMP/missing" "$TMP/open.log" && ok "a missing file: exit 2 naming it" || fail "missing secret file"
timeout 10 "$FERRY" target --listen 127.0.0.1:$(free_port) --lun ram:1MiB --chap-file "$TMP/chap" \
  --chap alice:opensesame1234 >"$TMP/open.log" 2>&1
[ $? = 2 ] && ok "--chap and --chap-file together refused" || fail "--chap and --chap-file together accepted"
printf 'alice:one\nbob:two\n' >"$TMP/two-lines"
timeout 10 "$FERRY" target --listen 127.0.0.1:$(free_port) --lun ram:1MiB --chap-file "$TMP/two-lines" \
  >"$TMP/open.log" 2>&1
[ $? = 2 ] && grep -q 'USER:SECRET on one line' "$TMP/open.log" && ok "a file of two lines refused" ||
  fail "two-line secret file: $(head -1 "$TMP/open.log")"

# The argv form still works, with a warning.
P=$(free_port)
start_ferry argv --listen 127.0.0.1:$P --lun ram:16MiB --chap alice:opensesame1234
timeout 30 iscsi-inq "iscsi://alice%opensesame1234@127.0.0.1:$P/$IQN/0" 2>&1 | grep -q 'Vendor:FERRY' &&
  ok "--chap in argv still logs in" || fail "--chap in argv refused"
grep -q 'WARNING: --chap: the secret is visible in the process list' "$TMP/argv.log" &&
  ok "argv secret warned: $(grep -m1 WARNING "$TMP/argv.log")" || fail "no warning for a secret in argv"
stop_pid "$FERRY_PID"
finish
