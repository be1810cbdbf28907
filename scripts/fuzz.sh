#!/usr/bin/env bash
# Builds every libFuzzer target (clang, ASan+UBSan) into build-fuzz/ and runs each for
# FUZZ_SECONDS (default 20) on a fresh corpus build-fuzz/corpus/NAME, seeded from
# tests/fuzz/seeds/NAME when that exists. Fails if any fuzzer crashes, leaks or hangs; the
# reproducer is left in build-fuzz/artifacts/NAME/ and the log in build-fuzz/logs/NAME.log.
# Exits 77 (skip) without clang.
# Usage: scripts/fuzz.sh [NAME...]      (default: all built fuzzers)
# Env:   FUZZ_SECONDS, FUZZ_JOBS (ninja -j, default 2), FUZZ_ARGS (extra libFuzzer flags)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v clang >/dev/null || ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang/clang++ not found: skipping (apt-get install clang libclang-rt-14-dev)" >&2
  exit 77
fi

seconds=${FUZZ_SECONDS:-20}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DFERRY_FUZZ=ON -DFERRY_TESTS=OFF \
  -DFERRY_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"${FUZZ_JOBS:-2}"

if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for f in build-fuzz/*_fuzz; do
    [ -x "$f" ] && names+=("$(basename "$f")")
  done
fi
if [ ${#names[@]} -eq 0 ]; then
  echo "fuzz.sh: no fuzzers were built" >&2
  exit 1
fi

mkdir -p build-fuzz/logs
failed=()
for name in "${names[@]}"; do
  bin=build-fuzz/$name
  [ -x "$bin" ] || { echo "fuzz.sh: $bin not built" >&2; failed+=("$name"); continue; }
  corpus=build-fuzz/corpus/$name
  artifacts=build-fuzz/artifacts/$name
  log=build-fuzz/logs/$name.log
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  dirs=("$corpus")
  [ -d "tests/fuzz/seeds/$name" ] && dirs+=("tests/fuzz/seeds/$name")
  echo "== $name: ${seconds}s"
  # Seeds are read but new inputs go to the first directory only: the checked-in seeds stay put.
  # shellcheck disable=SC2086
  if "$bin" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-} "${dirs[@]}" >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb' "$log" | sed 's/^/   /'
  else
    echo "   FAILED (exit $?): log $log, artifacts $artifacts/" >&2
    grep -E 'ERROR|SUMMARY|Test unit written|==[0-9]+==' "$log" | head -20 | sed 's/^/   /' >&2
    failed+=("$name")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: all ${#names[@]} fuzzers ran ${seconds}s without a crash"
