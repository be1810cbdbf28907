#!/usr/bin/env bash
# The whole test suite in one command: installs what is missing, builds (warnings are errors),
# runs unit and integration tests (real peers: iscsi-test-cu, tgtd, qemu-img, libiscsi tools,
# libnbd tools), checks formatting and runs clang-tidy, then the unit tests and hostile-peer tests again under ASan+UBSan, then every
# libFuzzer target briefly. Usage: scripts/test.sh   (FUZZ_SECONDS=N to change fuzz time)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/install-deps.sh

echo "== build (RelWithDebInfo, -Werror)"
scripts/build.sh
echo "== lint: clang-format check, clang-tidy (bugprone, performance)"
scripts/lint.sh build
echo "== unit + integration tests"
ctest --test-dir build --output-on-failure --timeout 1500

echo "== ASan+UBSan build: unit tests and hostile-peer integration tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON -DFERRY_BENCH=OFF \
  -DFERRY_WERROR=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan --output-on-failure -L unit
ctest --test-dir build-asan --output-on-failure -R 'integration\.(robustness|initiators|nbd_interop|wan_pipeline)_test'

if [ -x scripts/fuzz.sh ]; then
  echo "== libFuzzer targets, ${FUZZ_SECONDS:-20} s each"
  rc=0; scripts/fuzz.sh || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || exit "$rc"
fi
echo "== all tests passed in $(( $(date +%s) - start )) s"
