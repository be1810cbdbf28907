#!/usr/bin/env bash
# Strict configuration (issue 13): a typo in a --config key (`give-up-secs = 5`), a garbage line,
# a wrong type and an out-of-range value were silently ignored (the default applied) or wrapped
# (`--give-up-s 4294968` became 704 ms). Each must now be refused with exit 2, naming the key and
# the file's line; the documented example file of each daemon must pass --check-config; every
# numeric option of every daemon must refuse -5 and a huge value (no wrap); --version and usage
# errors exit 0 and 2; a flag on the command line overrides the file.
# Usage: strict_config_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
examples=${FERRY_SOURCE_DIR:-$here/../..}/mgmt/examples

# expect RC NEEDLE... -- CMD... : CMD exits RC and its stderr holds every NEEDLE.
expect() {
  local want=$1; shift
  local needles=()
  while [ "$1" != "--" ]; do needles+=("$1"); shift; done
  shift
  "$@" >"$TMP/out" 2>&1
  local rc=$? n good=1
  [ "$rc" -eq "$want" ] || good=0
  for n in "${needles[@]}"; do grep -qF -- "$n" "$TMP/out" || good=0; done
  if [ "$good" -eq 1 ]; then ok "rc $rc: ${*:2:4} -> $(head -1 "$TMP/out")"
  else fail "wanted rc $want and [${needles[*]}], got rc $rc: $(tr '\n' ' ' <"$TMP/out") (cmd: $*)"; fi
}

for d in target dc-edge cloud-edge; do
  expect 0 "configuration OK" -- "$FERRY" "$d" --config "$examples/$d.toml" --check-config
  expect 0 "ferry " -- "$FERRY" "$d" --version
  expect 2 "not expected" -- "$FERRY" "$d" --config "$examples/$d.toml" --check-config --no-such-flag
done
expect 0 "ferry " -- "$FERRY" --version
expect 0 "ferry " -- "$FERRY" demo --version
expect 0 "ferry " -- "$FERRY" ctl --version
expect 2 "not in range" -- "$FERRY" demo --rtt-ms -5
expect 2 "required" -- "$FERRY" ctl volumes
expect 2 "unknown command" -- "$FERRY" no-such-command

base='volume = ["vm1"]
tls-cert = "e.pem"
tls-key = "e.key"
tls-ca = "ca.pem"'
printf '%s\ngive-up-secs = 5\n' "$base" >"$TMP/typo.toml"
expect 2 "typo.toml line 5" "give-up-secs" "unknown key" "did you mean 'give-up-s'" -- \
  "$FERRY" cloud-edge --config "$TMP/typo.toml" --check-config
printf '%s\ngive-up-s = 5\nthis line is not toml\n' "$base" >"$TMP/garbage.toml"
expect 2 "garbage.toml line 6" "not TOML" -- "$FERRY" cloud-edge --config "$TMP/garbage.toml" --check-config
printf '%s\n\ngive-up-s = "five"\n' "$base" >"$TMP/type.toml"
expect 2 "type.toml line 6" "give-up-s" "wants a number" -- "$FERRY" cloud-edge --config "$TMP/type.toml" --check-config
printf '%s\ngive-up-s = 4294968\n' "$base" >"$TMP/range.toml"
expect 2 "range.toml line 5" "give-up-s" "not in range" -- "$FERRY" cloud-edge --config "$TMP/range.toml" --check-config
printf '%s\nram-cache-mib = -5\n' "$base" >"$TMP/negative.toml"
expect 2 "negative.toml line 5" "ram-cache-mib" "negative" -- "$FERRY" cloud-edge --config "$TMP/negative.toml" --check-config
printf '%s\ncompression = "gzip"\n' "$base" >"$TMP/value.toml"
expect 2 "value.toml line 5" "compression" "unknown 'gzip'" -- "$FERRY" cloud-edge --config "$TMP/value.toml" --check-config
printf '%s\nstream = 1\n' "$base" >"$TMP/flag.toml"
expect 2 "flag.toml line 5" "stream" "true or false" -- "$FERRY" cloud-edge --config "$TMP/flag.toml" --check-config
printf '%s\n[section]\ngive-up-s = 5\n' "$base" >"$TMP/section.toml"
expect 2 "section.toml line 5" "sections are not used" -- "$FERRY" cloud-edge --config "$TMP/section.toml" --check-config
printf 'lun = ["ram:64MiB"]\nqueue-depth = [1, 2]\n' >"$TMP/array.toml"
expect 2 "array.toml line 2" "queue-depth" "not repeatable" -- "$FERRY" target --config "$TMP/array.toml" --check-config
expect 2 "absent.toml was not readable" -- "$FERRY" dc-edge --config "$TMP/absent.toml" --check-config
# The command line wins over the file (the out-of-range file value is never used).
expect 0 "configuration OK" -- "$FERRY" cloud-edge --config "$TMP/range.toml" --give-up-s 3 --check-config
# ...and a bad value on the command line is named as the flag.
expect 2 "--give-up-s" "not in range" -- "$FERRY" cloud-edge --config "$TMP/range.toml" --give-up-s -5 --check-config

# Every numeric option (UINT/INT/FLOAT in --help) of each daemon refuses -5 and 10^15.
required_target=(--lun ram:64MiB)
required_dc=(--volume vm1=nbd://127.0.0.1:1/x --tls-cert e.pem --tls-key e.key --tls-ca ca.pem)
required_cloud=(--volume vm1 --tls-cert e.pem --tls-key e.key --tls-ca ca.pem)
for d in target dc-edge cloud-edge; do
  case $d in target) req=("${required_target[@]}") ;; dc-edge) req=("${required_dc[@]}") ;; *) req=("${required_cloud[@]}") ;; esac
  "$FERRY" "$d" "${req[@]}" --check-config >/dev/null 2>&1 || fail "$d: the required flags alone are not a valid configuration"
  opts=$("$FERRY" "$d" --help | awk '$1 ~ /^--/ && $2 ~ /^(UINT|INT|FLOAT)/ {print $1}')
  count=0
  for o in $opts; do
    count=$((count + 1))
    "$FERRY" "$d" --help | grep -E "^\s+$o (UINT|INT|FLOAT)[^ ]* in \[" >/dev/null || fail "$d $o: no range in --help"
    for v in -5 1000000000000000; do
      "$FERRY" "$d" "${req[@]}" "$o" "$v" --check-config >"$TMP/out" 2>&1
      rc=$?
      [ "$rc" -eq 2 ] || fail "$d $o $v: rc $rc (accepted: $(head -1 "$TMP/out"))"
    done
  done
  [ "$count" -ge 5 ] || fail "$d: only $count numeric options found in --help"
  ok "$d: all $count numeric options refuse -5 and 10^15"
done
finish
