#!/usr/bin/env bash
# Static checks run by scripts/test.sh: clang-format (the repo's .clang-format, no reformat
# needed) on every C/C++ source, then clang-tidy (.clang-tidy: bugprone and performance checks,
# warnings are errors) on every translation unit of BUILD_DIR's compile_commands.json.
# Usage: scripts/lint.sh [BUILD_DIR]   (FORMAT_ONLY=1 skips clang-tidy)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
mapfile -t sources < <(git ls-files '*.cc' '*.h' '*.c')
echo "lint: clang-format on ${#sources[@]} files"
clang-format --dry-run -Werror "${sources[@]}"
[ "${FORMAT_ONLY:-0}" = 1 ] && exit 0
mapfile -t units < <(git ls-files '*.cc' '*.c' | grep -v '_fuzz\.cc$')
echo "lint: clang-tidy on ${#units[@]} translation units"
run-clang-tidy -p "$build" -j "$(nproc)" -quiet "${units[@]}" >"$build/clang-tidy.log" 2>&1 || {
  grep -E 'warning:|error:' "$build/clang-tidy.log" | sort -u
  echo "lint: clang-tidy found problems (full log: $build/clang-tidy.log)"
  exit 1
}
echo "lint: clean"
