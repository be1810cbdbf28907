#!/usr/bin/env bash
# Management endpoint of the edges (issue 13): qemu-nbd -> dc-edge -> cloud-edge (journal, RAM
# cache) with --mgmt-listen on both. After reading the disk twice and writing over NBD, the cloud
# edge's /metrics (checked by the prometheus_client parser and promtool) must show per-tier hits
# and misses (the second read hits RAM), WAN bytes raw vs sent, journal fill and dirty bytes,
# and the same volume in /api/v1/volumes/disk; the dc-edge's /metrics the bytes it was asked for;
# and both stop reports must print the registry's series.
# Usage: mgmt_edge_metrics_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl nbdcopy curl
"$PY" -c 'import prometheus_client.parser' 2>/dev/null || skip "python3-prometheus-client not installed"
make_pki
# A writable source (start_nbd_source serves read-only; the journal needs to write back).
dd if=/dev/urandom of="$TMP/disk.raw" bs=1M count=8 status=none
P_SRC=$(free_port)
qemu-nbd -f raw --shared=8 -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
PIDS+=($!)
for i in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break; sleep 0.1; done
cp "$TMP/disk.raw" "$TMP/source.raw"
head -c 24 /dev/urandom | base64 | tr -d '=/+' >"$TMP/token"; chmod 600 "$TMP/token"
token=$(cat "$TMP/token")
m_dc=$(free_port); m_cloud=$(free_port)
mkdir -p "$TMP/redo"  # a cloud edge with a journal needs a dc-edge that offers epochs
start_dc_edge dc --redo-dir "$TMP/redo" --redo-mib 64 --mgmt-listen 127.0.0.1:$m_dc --mgmt-token-file "$TMP/token"
p_nbd=$(free_port); p_iscsi=$(free_port)
mkdir -p "$TMP/j"
"$FERRY" cloud-edge --listen 127.0.0.1:$p_iscsi --nbd 127.0.0.1:$p_nbd --dc 127.0.0.1:$P_WAN \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
  --ram-cache-mib 32 --journal-dir "$TMP/j" --journal-mib 64 --journal-drain-s 5 \
  --mgmt-listen 127.0.0.1:$m_cloud --mgmt-token-file "$TMP/token" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }

for pass in 1 2; do
  timeout 120 nbdcopy --connections=1 --requests=8 --request-size=65536 "nbd://127.0.0.1:$p_nbd" "$TMP/copy$pass.raw" ||
    fail "nbdcopy pass $pass"
done
cmp -s "$TMP/copy2.raw" "$TMP/source.raw" && ok "two reads of the 8 MiB disk, byte-identical" || fail "copy differs"
head -c 1048576 /dev/urandom >"$TMP/w.raw"
timeout 60 nbdcopy "$TMP/w.raw" "nbd://127.0.0.1:$p_nbd" || fail "write"

curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$m_cloud/metrics" >"$TMP/cloud.prom"
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$m_dc/metrics" >"$TMP/dc.prom"
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$m_cloud/api/v1/volumes/disk" >"$TMP/disk.json"
"$PY" - "$TMP/cloud.prom" "$TMP/dc.prom" "$TMP/disk.json" >"$TMP/check.log" 2>&1 <<'PY' && ok "metrics: $(cat "$TMP/check.log")" || fail "metrics: $(cat "$TMP/check.log")"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
def load(path):
    out = {}
    for f in text_string_to_metric_families(open(path).read()):
        for s in f.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
cloud, dc = load(sys.argv[1]), load(sys.argv[2])
def get(m, name, **labels):
    v = m.get((name, tuple(sorted(labels.items()))))
    assert v is not None, f"missing {name}{labels}"
    return v
size = 8 << 20
hits = get(cloud, "ferry_cache_hits_total", volume="disk", tier="ram")
misses = get(cloud, "ferry_cache_misses_total", volume="disk", tier="ram")
ratio = get(cloud, "ferry_cache_hit_ratio", volume="disk", tier="ram")
raw_in = get(cloud, "ferry_wan_raw_bytes_total", volume="disk", direction="in")
sent_in = get(cloud, "ferry_wan_sent_bytes_total", volume="disk", direction="in")
read_bytes = get(cloud, "ferry_volume_bytes_total", volume="disk", op="read")
written = get(cloud, "ferry_volume_bytes_total", volume="disk", op="write")
jused = get(cloud, "ferry_journal_used_bytes", volume="disk")
jfill = get(cloud, "ferry_journal_fill_ratio", volume="disk")
get(cloud, "ferry_journal_dirty_bytes", volume="disk")
get(cloud, "ferry_write_back_lag_seconds", volume="disk")
lat = get(cloud, "ferry_volume_latency_seconds_count", volume="disk")
wan_up = get(cloud, "ferry_wan_connections", daemon="cloud-edge")
get(cloud, "ferry_nbd_connections", daemon="cloud-edge")
get(cloud, "ferry_iscsi_sessions", daemon="cloud-edge")
requested = get(dc, "ferry_wan_raw_bytes_total", volume="disk", direction="in")
assert read_bytes >= 2 * size, read_bytes
assert written >= 1 << 20, written
# The second pass reads 128 chunks that are all in the 32 MiB cache; the first one missed.
assert hits >= 128 and misses > 0, (hits, misses)
assert raw_in >= size and sent_in > 0, (raw_in, sent_in)
assert requested >= size, requested
assert jused > 0 and 0 < jfill < 1, (jused, jfill)
assert wan_up == 1 and lat > 0
v = json.load(open(sys.argv[3]))
assert v["name"] == "disk" and v["cache"][0]["tier"] == "ram" and v["cache"][0]["hits"] >= hits and "journal" in v and "wan" in v, v
print(f"ram hits {hits:.0f} / misses {misses:.0f} (ratio {ratio:.2f}); WAN raw in {raw_in:.0f} B, sent {sent_in:.0f} B; "
      f"dc-edge asked {requested:.0f} B; journal used {jused:.0f} B ({jfill:.4f}); {lat:.0f} timed I/Os")
PY
if "$PY" -c 'import yaml' 2>/dev/null; then
  "$PY" "$here/openapi_check.py" "${FERRY_SOURCE_DIR:-$here/../..}/mgmt/openapi.yaml" \
    /api/v1/volumes/{name} 200 "$TMP/disk.json" >"$TMP/openapi.log" 2>&1 &&
    ok "cloud-edge volume (cache, journal, wan) matches mgmt/openapi.yaml" || fail "openapi: $(cat "$TMP/openapi.log")"
fi
if command -v promtool >/dev/null; then
  for f in cloud dc; do
    promtool check metrics <"$TMP/$f.prom" >"$TMP/promtool.log" 2>&1 && ok "promtool check metrics ($f): clean" ||
      fail "promtool ($f): $(cat "$TMP/promtool.log")"
  done
fi
stop_pid "$CLOUD_PID" >/dev/null
stop_pid "$DC_PID" >/dev/null
grep -q '^ferry: final metrics (as GET /metrics):' "$TMP/cloud.log" &&
  grep -q '^ferry_cache_hits_total{volume="disk",tier="ram"} [1-9]' "$TMP/cloud.log" &&
  ok "cloud-edge stop report prints the registry: $(grep -c '^ferry_' "$TMP/cloud.log") series" ||
  fail "no registry series in the cloud-edge stop report: $(tail -20 "$TMP/cloud.log")"
grep -q '^ferry_wan_raw_bytes_total{volume="disk",direction="in"} [1-9]' "$TMP/dc.log" &&
  ok "dc-edge stop report prints the registry" || fail "dc-edge stop report: $(tail -20 "$TMP/dc.log")"
finish
