#!/usr/bin/env bash
# Makes a throw-away PKI for the WAN link (tests, benchmarks, the demo; `ferry demo` embeds this
# very file). Certificates carry their role as gateway/wan/DESIGN.md ("Certificates") requires:
# the extended key usage of their side and a SAN URI urn:ferry:ROLE:NAME.
#   ca                   the CA
#   dc-edge              datacenter edge: serverAuth, urn:ferry:dc-edge:dc-edge, DNS dc-edge
#   cloud-edge           cloud edge:      clientAuth, urn:ferry:cloud-edge:cloud-edge
#   cloud-edge-2         a second cloud edge (urn:ferry:cloud-edge:cloud-edge-2)
#   norole               from the CA, both key usages, but no Ferry role URI
#   expired              a cloud-edge certificate that expired yesterday
#   rogue-ca, rogue      an unrelated CA and a cloud-edge certificate from it
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
mk_cert() {  # mk_cert NAME CA ROLE [DAYS]    ROLE: dc-edge | cloud-edge | none
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  case $3 in
    dc-edge) printf 'subjectAltName=DNS:%s,URI:urn:ferry:dc-edge:%s\nextendedKeyUsage=serverAuth\n' "$1" "$1" ;;
    cloud-edge) printf 'subjectAltName=DNS:%s,URI:urn:ferry:cloud-edge:%s\nextendedKeyUsage=clientAuth\n' "$1" "$1" ;;
    *) printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$1" ;;
  esac >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2-cert.pem" -CAkey "$2-key.pem" -CAcreateserial \
    -days "${4:-$days}" -extfile "$1.ext" -out "$1-cert.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
mk_ca ca
mk_cert dc-edge ca dc-edge
mk_cert cloud-edge ca cloud-edge
mk_cert cloud-edge-2 ca cloud-edge
mk_cert norole ca none
mk_cert expired ca cloud-edge -1
mk_ca rogue-ca
mk_cert rogue rogue-ca cloud-edge
echo "test PKI in $dir: ca-cert.pem, {dc-edge,cloud-edge,cloud-edge-2,norole,expired,rogue}-{cert,key}.pem"
