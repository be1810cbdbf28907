#!/usr/bin/env bash
# libiscsi's iscsi-test-cu compliance suite (--dataloss), family by family (SCSI, iSCSI, LINUX),
# against ferry with a RAM LUN and with a file LUN, and against tgtd (Debian tgt, RAM-file LUN in
# /dev/shm) as the baseline in the same run. Writes $FERRY_BUILD_DIR/compliance/report.md.
# Fails when ferry fails a test not listed in compliance_known_failures.txt, or passes fewer
# tests than tgtd. Usage: iscsi_compliance_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need iscsi-test-cu
FAMILIES=${COMPLIANCE_FAMILIES:-"SCSI iSCSI LINUX"}
LUN_SIZE=256M
OUT=${FERRY_BUILD_DIR:-$TMP}/compliance
rm -rf "$OUT" && mkdir -p "$OUT"

run_suite() {  # run_suite LABEL URL
  local label=$1 url=$2 fam
  mkdir -p "$OUT/$label"
  for fam in $FAMILIES; do
    # One family per run with a timeout so a hang cannot hide the rest; the URL twice gives the
    # reservation and multipath tests their second session.
    timeout 900 iscsi-test-cu --dataloss -v -t "$fam" "$url" "$url" >"$OUT/$label/$fam.log" 2>&1
    echo "$label $fam: exit $? ($(grep -E '^ +tests ' "$OUT/$label/$fam.log" | tr -s ' '))"
  done
}

# ferry, RAM LUN
P=$(free_port)
start_ferry ferry-ram --listen 127.0.0.1:$P --lun ram:$LUN_SIZE
run_suite ferry-ram "iscsi://127.0.0.1:$P/$IQN/0"
stop_pid "$FERRY_PID"

# ferry, file LUN
truncate -s $LUN_SIZE "$TMP/lun.img"
P=$(free_port)
start_ferry ferry-file --listen 127.0.0.1:$P --lun "file:$TMP/lun.img"
run_suite ferry-file "iscsi://127.0.0.1:$P/$IQN/0"
stop_pid "$FERRY_PID"

configs=(ferry-ram="$OUT/ferry-ram" ferry-file="$OUT/ferry-file")
# tgtd baseline, RAM-file LUN (LUN 1; LUN 0 is tgtd's controller)
if command -v tgtd >/dev/null && command -v tgtadm >/dev/null && [ -z "${COMPLIANCE_NO_TGTD:-}" ]; then
  SHM=$(mktemp -d /dev/shm/ferry-tgtd.XXXXXX)
  truncate -s $LUN_SIZE "$SHM/lun.img"
  P=$(free_port)
  if start_tgtd tgtd $P "$SHM/lun.img"; then
    run_suite tgtd "iscsi://127.0.0.1:$P/$IQN/1"
    configs+=(tgtd="$OUT/tgtd")
  else
    cat "$TMP/tgtd.log"; fail "tgtd did not start: no baseline"
  fi
  stop_tgtd
  rm -rf "$SHM"
else
  echo "tgtd not installed: baseline comparison skipped"
fi

"$PY" "$here/compliance_report.py" "$OUT/report.md" "$here/compliance_known_failures.txt" \
  "${configs[@]}" || fail "compliance"
finish
