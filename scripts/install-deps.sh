#!/usr/bin/env bash
# Installs the Debian 12 packages Ferry builds, tests and benchmarks with (only what is missing).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  liburing-dev libssl-dev libisal-dev libjemalloc-dev libnbd-dev libiscsi-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libzstd-dev liblz4-dev nlohmann-json3-dev libcli11-dev libfmt-dev libtomlplusplus-dev libcpp-httplib-dev
  clang libclang-rt-14-dev clang-format clang-tidy
  libiscsi-bin tgt qemu-utils qemu-block-extra nbdkit libnbd-bin python3-libnbd fio iperf3 openssl
  time python3-prometheus-client python3-yaml prometheus chromium libsystemd-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
# iperf3 asks whether to start a daemon; answer no.
echo "iperf3 iperf3/start_daemon boolean false" | "${sudo_cmd[@]}" debconf-set-selections 2>/dev/null || true
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
