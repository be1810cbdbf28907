#!/usr/bin/env bash
# Web dashboard (issue 13): qemu-nbd -> dc-edge -> cloud-edge (RAM cache, journal, background
# stream) with --mgmt-listen, under a read and write load over NBD. Headless Chromium loads
# /dashboard/ (token in the URL fragment), polls the live API, and its DOM must show the
# cloud-edge's volume with every chart drawn from several samples: IOPS, cache hit ratio, WAN
# throughput and savings, write-back lag and migration progress, with values that agree with
# GET /api/v1/volumes/disk. Also: the assets need no token but the data does, no asset comes from
# elsewhere (CSP 'self'), and a screenshot is taken (DASHBOARD_SCREENSHOT=PATH keeps it).
# Usage: dashboard_test.sh /path/to/ferry
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
need qemu-nbd openssl nbdcopy curl
CHROMIUM=$(command -v chromium || command -v chromium-browser) || skip "chromium not installed (scripts/install-deps.sh)"
make_pki
dd if=/dev/urandom of="$TMP/disk.raw" bs=1M count=48 status=none
P_SRC=$(free_port)
qemu-nbd -f raw --shared=8 -b 127.0.0.1 -p "$P_SRC" -t -x disk "$TMP/disk.raw" >"$TMP/qemu-nbd.log" 2>&1 &
PIDS+=($!)
for i in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$P_SRC))" 2>/dev/null && break; sleep 0.1; done
head -c 24 /dev/urandom | base64 | tr -d '=/+' >"$TMP/token"; chmod 600 "$TMP/token"
token=$(cat "$TMP/token")
mkdir -p "$TMP/redo" "$TMP/j"
start_dc_edge dc --redo-dir "$TMP/redo" --redo-mib 64
p_nbd=$(free_port); p_iscsi=$(free_port); m=$(free_port)
# The stream is capped so that it is still running while the browser watches (48 MiB at 24 Mbit/s
# is about 16 s).
"$FERRY" cloud-edge --listen 127.0.0.1:$p_iscsi --nbd 127.0.0.1:$p_nbd --dc 127.0.0.1:$P_WAN \
  --volume disk --tls-ca "$PKI/ca-cert.pem" --dc-name dc-edge \
  --tls-cert "$PKI/cloud-edge-cert.pem" --tls-key "$PKI/cloud-edge-key.pem" \
  --ram-cache-mib 16 --journal-dir "$TMP/j" --journal-mib 64 --journal-drain-s 5 \
  --stream --stream-mbit 24 \
  --mgmt-listen 127.0.0.1:$m --mgmt-token-file "$TMP/token" >"$TMP/cloud.log" 2>&1 &
CLOUD_PID=$!; PIDS+=($CLOUD_PID)
wait_listening "$TMP/cloud.log" "$CLOUD_PID" || { cat "$TMP/cloud.log"; echo "FAIL: cloud-edge did not start"; exit 1; }
base=http://127.0.0.1:$m

# Assets without a token; data only with one; no redirect loop.
code=$(curl -s -o "$TMP/index.html" -w '%{http_code}' "$base/dashboard/")
csp=$(curl -sI "$base/dashboard/dashboard.js" | tr -d '\r' | sed -n 's/^Content-Security-Policy: //Ip')
[ "$code" = 200 ] && grep -q 'dashboard.js' "$TMP/index.html" && [[ "$csp" == *"default-src 'self'"* ]] &&
  ok "dashboard assets served without a token, CSP: $csp" || fail "dashboard assets: HTTP $code, CSP '$csp'"
code=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "$base/")
[[ "$code" == "302 $base/dashboard/" ]] && ok "/ redirects to /dashboard/" || fail "/ answered '$code'"
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/api/v1/volumes")
[ "$code" = 401 ] && ok "the data still needs the token (401 without)" || fail "/api/v1/volumes without a token: $code"
! grep -Eqi '(src|href)="(https?:)?//' "$TMP/index.html" && ok "no asset from another origin" || fail "an asset comes from elsewhere"

# A load the charts can see: reads of the whole disk and 1 MiB writes, bounded rounds.
head -c 1048576 /dev/urandom >"$TMP/w.raw"
(for i in $(seq 200); do
   timeout 60 nbdcopy --connections=1 --requests=4 "nbd://127.0.0.1:$p_nbd" null: 2>>"$TMP/load.err"
 done) &
LOAD_PID=$!; PIDS+=($LOAD_PID)
(for i in $(seq 400); do
   timeout 60 nbdcopy "$TMP/w.raw" "nbd://127.0.0.1:$p_nbd" 2>>"$TMP/load.err"
 done) &
LOAD2_PID=$!; PIDS+=($LOAD2_PID)
sleep 2

# Chromium runs the page on virtual time (--virtual-time-budget): its timers fire at once, each
# fetch is real. The page computes rates over the daemon's time_ms, so they stay true.
chrome() {
  timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --user-data-dir="$TMP/chrome" --no-first-run --window-size=1280,1100 \
    --virtual-time-budget=30000 "$@" "$base/dashboard/?interval=250#token=$token" 2>>"$TMP/chrome.log"
}
chrome --dump-dom >"$TMP/dom.html" || fail "chromium --dump-dom failed: $(tail -5 "$TMP/chrome.log")"
curl -s -H "Authorization: Bearer $token" "$base/api/v1/volumes/disk" >"$TMP/disk.json"
"$PY" - "$TMP/dom.html" "$TMP/disk.json" >"$TMP/check.log" 2>&1 <<'PY' && ok "dashboard: $(cat "$TMP/check.log")" || fail "dashboard: $(cat "$TMP/check.log")"
import json, sys
from html.parser import HTMLParser
class Dom(HTMLParser):
    def __init__(self):
        super().__init__(); self.by_id = {}; self.text = {}; self.cur = None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.by_id[a["id"]] = a; self.cur = a["id"]; self.text[self.cur] = ""
        elif "data-key" in a: self.cur = "cell-" + a["data-key"]; self.text[self.cur] = ""
    def handle_data(self, d):
        if self.cur: self.text[self.cur] += d
    def handle_endtag(self, tag): self.cur = None
d = Dom(); d.feed(open(sys.argv[1]).read())
api = json.load(open(sys.argv[2]))
assert d.text.get("daemon") == "cloud-edge", d.text.get("daemon")
assert d.by_id["status"].get("data-state") == "live", d.text.get("status")
charts = {}
for metric in ["iops", "hit", "wan", "savings", "lag", "stream"]:
    c = d.by_id.get(f"chart-disk-{metric}")
    assert c is not None, f"chart {metric} missing"
    points = int(c["data-points"])
    assert points >= 10, (metric, points)
    charts[metric] = (points, float(c["data-last"]), float(c["data-max"]))
assert charts["iops"][2] > 0, charts["iops"]                 # I/O was seen
assert 0 <= charts["hit"][1] <= 100, charts["hit"]
assert charts["wan"][2] > 0, charts["wan"]                   # bytes came over the WAN
raw, sent = api["wan"]["raw_bytes_in"], api["wan"]["sent_bytes_in"]
saved = 100 * (1 - sent / raw)
assert 0 <= charts["savings"][1] <= 100 and abs(charts["savings"][1] - saved) < 25, (charts["savings"], saved)
assert charts["lag"][1] >= 0
assert 0 < charts["stream"][1] <= api["stream"]["percent"] + 1e-9, (charts["stream"], api["stream"])
assert d.text.get("cell-name") == "disk" and d.text.get("cell-migration", "").endswith("%"), d.text
print(f"6 charts, {charts['iops'][0]} samples each; IOPS up to {charts['iops'][2]:.0f}, "
      f"RAM hit ratio {charts['hit'][1]:.1f} %, WAN in up to {charts['wan'][2]/1e6:.1f} MB/s, "
      f"savings {charts['savings'][1]:.1f} % (API {saved:.1f} %), migration {charts['stream'][1]:.1f} % "
      f"(API {api['stream']['percent']:.1f} %), lag {charts['lag'][1]:.3f} s")
PY
chrome --screenshot="$TMP/dashboard.png" >/dev/null || fail "chromium --screenshot failed"
size=$(stat -c %s "$TMP/dashboard.png" 2>/dev/null || echo 0)
[ "$(head -c 8 "$TMP/dashboard.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] && [ "$size" -gt 20000 ] &&
  ok "screenshot: $size bytes" || fail "screenshot missing or blank ($size bytes)"
[ -n "${DASHBOARD_SCREENSHOT:-}" ] && cp "$TMP/dashboard.png" "$DASHBOARD_SCREENSHOT"
kill "$LOAD_PID" "$LOAD2_PID" 2>/dev/null; wait "$LOAD_PID" "$LOAD2_PID" 2>/dev/null
stop_pid "$CLOUD_PID" >/dev/null
stop_pid "$DC_PID" >/dev/null
finish
