#!/usr/bin/env bash
# WAN emulator (perf/wan_emu, binary ferry-wan-emu next to ferry): RTT and jitter from small
# ping-pongs, throughput of one and of two connections sharing the link, a 2 s cut in hold mode
# that delays a transfer without breaking it (sha256 compared), reset mode closing connections
# with RST, back-pressure from a receiver that stops reading, SIGTERM byte counts and the
# --stats-file. Peers are small python3 servers/clients (written below). Runs in ~30 s.
# Usage: wan_emu_test.sh /path/to/ferry
source "$(dirname "$0")/lib.sh"
EMU=$(dirname "$FERRY")/ferry-wan-emu
[ -x "$EMU" ] || { echo "FAIL: $EMU not built (cmake --build ... --target ferry-wan-emu)"; exit 1; }

cat >"$TMP/peer.py" <<'EOF'
# Test peer for the WAN emulator. Server: first byte of a connection picks the mode:
#   E echo | S sink (read to EOF, answer one JSON line: bytes, sha256, arrival times) |
#   Z stall (never read). Clients: ping, send, sendpar, pingloop, stall (see main()).
import hashlib, json, random, socket, sys, threading, time

def nodelay(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise EOFError("eof after %d of %d bytes" % (len(b), n))
        b += d
    return bytes(b)

def handle(c):
    nodelay(c)
    try:
        mode = recv_exact(c, 1)
        if mode == b"E":
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        elif mode == b"S":
            h = hashlib.sha256(); n = 0; first = last = None; first_len = 0; gap = 0.0
            while True:
                d = c.recv(1 << 20)
                now = time.monotonic()
                if not d:
                    break
                if first is None:
                    first, first_len = now, len(d)
                elif now - last > gap:
                    gap = now - last
                last = now
                h.update(d); n += len(d)
            c.sendall((json.dumps({"bytes": n, "sha256": h.hexdigest(), "t_first": first,
                                   "t_last": last, "first_len": first_len,
                                   "max_gap_s": gap}) + "\n").encode())
        elif mode == b"Z":
            time.sleep(3600)
    except (OSError, EOFError):
        pass
    finally:
        c.close()

def serve(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port)); ls.listen(64)
    print("peer: listening", flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()

def connect(port, mode):
    s = socket.create_connection(("127.0.0.1", port)); nodelay(s)
    s.sendall(mode)
    return s

def ping(port, count, size):
    s = connect(port, b"E")
    msg = b"p" * size
    s.sendall(msg); recv_exact(s, size)  # warm-up
    rtts = []
    for _ in range(count):
        t = time.monotonic(); s.sendall(msg); recv_exact(s, size)
        rtts.append((time.monotonic() - t) * 1000)
        time.sleep(0.003)
    s.close()
    rtts.sort()
    return {"median_ms": rtts[len(rtts) // 2], "mean_ms": sum(rtts) / len(rtts),
            "min_ms": rtts[0], "max_ms": rtts[-1], "count": len(rtts)}

def send(port, nbytes, seed):
    data = random.Random(seed).randbytes(nbytes)
    t0 = time.monotonic()
    s = connect(port, b"S")
    view = memoryview(data)
    for off in range(0, nbytes, 65536):
        s.sendall(view[off:off + 65536])
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        reply += d
    s.close()
    r = json.loads(reply)
    r["elapsed_s"] = time.monotonic() - t0
    r["intact"] = r["bytes"] == nbytes and r["sha256"] == hashlib.sha256(data).hexdigest()
    span = r["t_last"] - r["t_first"]
    r["mbit"] = (r["bytes"] - r["first_len"]) * 8 / span / 1e6 if span > 0 else 0
    r["mbit_e2e"] = r["bytes"] * 8 / (r["t_last"] - t0) / 1e6  # from connect to the last byte
    r["t0"] = t0
    return r

def sendpar(port, k, nbytes):
    out = [None] * k
    def run(i):
        try:
            out[i] = send(port, nbytes, 100 + i)
        except Exception as e:  # reported, checked by the caller
            out[i] = {"intact": False, "error": repr(e)}
    ts = [threading.Thread(target=run, args=(i,)) for i in range(k)]
    for t in ts: t.start()
    for t in ts: t.join()
    ok = all(r.get("intact") for r in out)
    res = {"intact": ok, "per_conn": out}
    if ok:
        first = min(r["t_first"] for r in out); last = max(r["t_last"] for r in out)
        res["mbit"] = sum(r["bytes"] for r in out) * 8 / (last - first) / 1e6
        t0 = min(r["t0"] for r in out)
        res["mbit_e2e"] = sum(r["bytes"] for r in out) * 8 / (last - t0) / 1e6
        res["conn_mbit"] = [r["bytes"] * 8 / (r["t_last"] - r["t_first"]) / 1e6 for r in out]
    return res

def pingloop(port, seconds):
    s = connect(port, b"E")
    t0 = time.monotonic(); n = 0
    try:
        while time.monotonic() - t0 < seconds:
            s.sendall(b"x" * 32); recv_exact(s, 32); n += 1
            time.sleep(0.02)
        return {"error": None, "pings": n}
    except (OSError, EOFError) as e:
        return {"error": type(e).__name__, "at_s": time.monotonic() - t0, "pings": n}

def stall(port, seconds):
    s = connect(port, b"Z")
    s.setblocking(False)
    buf = b"z" * 65536; sent = 0; t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            sent += s.send(buf)
        except BlockingIOError:
            time.sleep(0.01)
    return {"sent": sent}

def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    a = sys.argv[3:]
    if cmd == "serve":
        serve(port); return
    r = {"ping": lambda: ping(port, int(a[0]), int(a[1])),
         "send": lambda: send(port, int(a[0]), int(a[1])),
         "sendpar": lambda: sendpar(port, int(a[0]), int(a[1])),
         "pingloop": lambda: pingloop(port, float(a[0])),
         "stall": lambda: stall(port, float(a[0]))}[cmd]()
    print(json.dumps(r))

main()
EOF

# jcheck FILE EXPR: EXPR is a python expression over `r` (the JSON in FILE); true → 0.
jcheck() { "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2"; }
jget() { "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print(round(v,2) if isinstance(v,float) else v)' "$1" "$2"; }

PEER_PORT=$(free_port)
"$PY" -u "$TMP/peer.py" serve "$PEER_PORT" >"$TMP/peer.log" 2>&1 &
PIDS+=($!)
for i in $(seq 100); do grep -qs 'peer: listening' "$TMP/peer.log" && break; sleep 0.05; done

# start_emu NAME ARGS...: starts the emulator in front of the peer; sets EMU_PID, EMU_PORT.
start_emu() {
  local name=$1; shift
  EMU_PORT=$(free_port)
  "$EMU" --listen 127.0.0.1:"$EMU_PORT" --connect 127.0.0.1:"$PEER_PORT" "$@" >"$TMP/$name.log" 2>&1 &
  EMU_PID=$!
  PIDS+=("$EMU_PID")
  local i
  for i in $(seq 200); do
    grep -qs "wan-emu: listening on 127.0.0.1:$EMU_PORT" "$TMP/$name.log" && return 0
    kill -0 "$EMU_PID" 2>/dev/null || break
    sleep 0.05
  done
  cat "$TMP/$name.log"
  echo "FAIL: ferry-wan-emu ($name) did not start"
  exit 1
}

# stop_emu NAME: SIGTERM; expects exit 0 and the byte-count line.
stop_emu() {
  kill -TERM "$EMU_PID"
  local rc=0
  wait "$EMU_PID" || rc=$?
  grep 'wan-emu: stopped:' "$TMP/$1.log" | sed 's/^/  /'
  if [ "$rc" -eq 0 ] && grep -q 'wan-emu: stopped: client->target [0-9]* bytes' "$TMP/$1.log"; then
    ok "$1: SIGTERM → exit 0 with byte counts"
  else
    fail "$1: exit $rc after SIGTERM"; cat "$TMP/$1.log"
  fi
}

# 1. Latency: rtt 40 ms, no jitter, then ±2 ms jitter. Small messages, one at a time.
start_emu rtt --rtt-ms 40 --rate-mbit 100
"$PY" "$TMP/peer.py" ping "$EMU_PORT" 40 64 >"$TMP/ping.json"
echo "  rtt 40 ms: $(cat "$TMP/ping.json")"
if jcheck "$TMP/ping.json" 'r["min_ms"] >= 40.0 and 40.0 <= r["median_ms"] <= 42.0'; then
  ok "RTT: median $(jget "$TMP/ping.json" 'r["median_ms"]') ms for 40 ms configured"
else
  fail "RTT off: $(cat "$TMP/ping.json")"
fi
stop_emu rtt

start_emu jitter --rtt-ms 40 --jitter-ms 2 --rate-mbit 100
"$PY" "$TMP/peer.py" ping "$EMU_PORT" 60 64 >"$TMP/jitter.json"
echo "  rtt 40 ms ±2 ms per direction: $(cat "$TMP/jitter.json")"
if jcheck "$TMP/jitter.json" \
    'r["min_ms"] >= 35.9 and 38.5 <= r["mean_ms"] <= 42.5 and r["max_ms"] - r["min_ms"] >= 1.0'; then
  ok "jitter: RTT $(jget "$TMP/jitter.json" 'r["min_ms"]')..$(jget "$TMP/jitter.json" 'r["max_ms"]') ms, mean $(jget "$TMP/jitter.json" 'r["mean_ms"]')"
else
  fail "jitter: $(cat "$TMP/jitter.json")"
fi
stop_emu jitter

# 2. Throughput: 20 MB at 100 Mbit/s, one connection; then two connections share the link.
start_emu rate --rtt-ms 40 --rate-mbit 100 --stats-file "$TMP/rate-stats.json"
"$PY" "$TMP/peer.py" send "$EMU_PORT" 20000000 1 >"$TMP/send.json"
# Checked end to end (connect → last byte at the sink, so a late sink cannot flatter it);
# the sink's own first→last byte rate is printed too.
echo "  20 MB: $(jget "$TMP/send.json" 'r["mbit_e2e"]') Mbit/s end to end, $(jget "$TMP/send.json" 'r["mbit"]') Mbit/s first→last byte at the sink"
if jcheck "$TMP/send.json" 'r["intact"] and 90 <= r["mbit_e2e"] <= 110'; then
  ok "throughput $(jget "$TMP/send.json" 'r["mbit_e2e"]') Mbit/s for 100 configured, data intact"
else
  fail "throughput/integrity: $(cat "$TMP/send.json")"
fi
"$PY" "$TMP/peer.py" sendpar "$EMU_PORT" 2 10000000 >"$TMP/par.json"
if jcheck "$TMP/par.json" 'r["intact"] and 90 <= r["mbit_e2e"] <= 110 and all(30 <= m <= 70 for m in r["conn_mbit"])'; then
  ok "two connections share the link: $(jget "$TMP/par.json" 'r["mbit_e2e"]') Mbit/s total, $(jget "$TMP/par.json" '[round(m,1) for m in r["conn_mbit"]]') each"
else
  fail "shared link: $(cat "$TMP/par.json")"
fi
stop_emu rate
if jcheck "$TMP/rate-stats.json" \
    'r["client_to_target"]["bytes_delivered"] == 40000000 + 3 and r["target_to_client"]["bytes_delivered"] > 0'; then
  ok "--stats-file: $(jget "$TMP/rate-stats.json" 'r["client_to_target"]["bytes_delivered"]') bytes client→target"
else
  fail "--stats-file: $(cat "$TMP/rate-stats.json" 2>&1)"
fi

# 3. Hold-mode cut: 10 MB at 20 Mbit/s (4 s) with a 2 s cut 1.5 s after start.
start_emu cut --rtt-ms 40 --rate-mbit 20 --cut-at-s 1.5 --cut-for-s 2
"$PY" "$TMP/peer.py" send "$EMU_PORT" 10000000 2 >"$TMP/cut.json" 2>&1
echo "  cut: $(cat "$TMP/cut.json")"
if jcheck "$TMP/cut.json" 'r["intact"] and r["max_gap_s"] >= 1.8 and r["elapsed_s"] >= 5.5'; then
  ok "2 s cut: transfer took $(jget "$TMP/cut.json" 'r["elapsed_s"]') s, longest pause $(jget "$TMP/cut.json" 'r["max_gap_s"]') s, data intact"
else
  fail "hold cut: $(cat "$TMP/cut.json")"
fi
grep -q 'cut 1: link down' "$TMP/cut.log" && grep -q 'cut 1: link up' "$TMP/cut.log" ||
  fail "cut not logged"
stop_emu cut

# 4. Reset-mode cut: a live connection gets RST at the cut; after it, new connections work.
start_emu reset --rtt-ms 20 --rate-mbit 100 --cut-mode reset --cut-at-s 1 --cut-for-s 1
"$PY" "$TMP/peer.py" pingloop "$EMU_PORT" 5 >"$TMP/reset.json"
if jcheck "$TMP/reset.json" 'r["error"] == "ConnectionResetError" and 0.7 <= r["at_s"] <= 1.6'; then
  ok "reset mode: connection reset $(jget "$TMP/reset.json" 'r["at_s"]') s after start"
else
  fail "reset mode: $(cat "$TMP/reset.json")"
fi
sleep 1.2
"$PY" "$TMP/peer.py" ping "$EMU_PORT" 3 64 >"$TMP/after.json" 2>&1 &&
  ok "after the cut a new connection works" || fail "after the reset cut: $(cat "$TMP/after.json")"
grep -q 'reset 1 connection' "$TMP/reset.log" || fail "reset not logged"
stop_emu reset

# 5. Back-pressure: a receiver that never reads. The sender must stall (bounded buffers), not
#    push gigabytes into the emulator.
start_emu stall --rtt-ms 10 --rate-mbit 1000
"$PY" "$TMP/peer.py" stall "$EMU_PORT" 2 >"$TMP/stall.json"
rss_kib=$(awk '/VmRSS/ {print $2}' /proc/"$EMU_PID"/status)
echo "  stalled receiver: $(cat "$TMP/stall.json"), emulator RSS ${rss_kib} KiB"
if jcheck "$TMP/stall.json" 'r["sent"] < 64 * 2**20' && [ "$rss_kib" -lt 65536 ]; then
  ok "back-pressure: sender stalled after $(jget "$TMP/stall.json" 'r["sent"] // 2**20') MiB, emulator RSS ${rss_kib} KiB"
else
  fail "back-pressure: $(cat "$TMP/stall.json"), RSS ${rss_kib} KiB"
fi
stop_emu stall

finish
