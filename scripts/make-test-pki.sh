#!/usr/bin/env bash
# Makes a throw-away PKI for the WAN link (tests, benchmarks, the demo): a CA, a datacenter-edge
# server certificate (CN and SAN "dc-edge") and a cloud-edge client certificate (CN
# "cloud-edge"), plus a second, unrelated CA and client certificate for "wrong certificate"
# tests, and a cloud-edge certificate that expired yesterday ("expired").
# Usage: scripts/make-test-pki.sh DIR      (EC P-256 keys, valid 365 days)
set -euo pipefail
dir=${1:?usage: $0 DIR}
mkdir -p "$dir"
cd "$dir"
days=365
mk_ca() {  # mk_ca NAME
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=$1" -keyout "$1-key.pem" -out "$1-cert.pem" 2>/dev/null
}
mk_cert() {  # mk_cert NAME CA [DAYS]
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$1" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2-cert.pem" -CAkey "$2-key.pem" -CAcreateserial \
    -days "${3:-$days}" -extfile "$1.ext" -out "$1-cert.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
mk_ca ca
mk_cert dc-edge ca
mk_cert cloud-edge ca
mk_ca rogue-ca
mk_cert rogue rogue-ca
mk_cert expired ca -1
echo "test PKI in $dir: ca-cert.pem, dc-edge-{cert,key}.pem, cloud-edge-{cert,key}.pem, rogue-*, expired-*"
