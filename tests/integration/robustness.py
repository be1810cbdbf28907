#!/usr/bin/env python3
"""Hostile and careless initiators against a running `ferry target` (see robustness_test.sh).
Usage: robustness.py PORT FERRY_PID. Prints ok/FAIL lines; exit 1 on any failure."""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iscsi_raw import (IQN, bhs, crc32c, login_pdu, logout, normal_login, pad4, recv_pdu,  # noqa: E402
                       scsi_cmd)

PORT, PID = int(sys.argv[1]), int(sys.argv[2])
MODE = sys.argv[3] if len(sys.argv) > 3 else "all"
failures = 0


def ok(msg):
    print("ok:", msg, flush=True)


def fail(msg):
    global failures
    failures += 1
    print("FAIL:", msg, flush=True)


def alive():
    try:
        os.kill(PID, 0)
        return True
    except OSError:
        return False


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def closed_by_target(s, within):
    """True when the target closes the connection within `within` seconds (data is drained)."""
    s.settimeout(within)
    end = time.time() + within
    try:
        while time.time() < end:
            if not s.recv(65536):
                return True
    except socket.timeout:
        return False
    except ConnectionError:
        return True
    return False


def works():
    s, stat_sn, _ = normal_login(PORT)
    s.sendall(scsi_cmd(b"\x00", itt=7, cmdsn=0, expstatsn=stat_sn + 1))  # TEST UNIT READY
    ok_ = False
    for _ in range(4):
        h, _data = recv_pdu(s)
        if h[0] & 0x3F == 0x21 and struct.unpack(">I", h[16:20])[0] == 7:
            ok_ = h[3] in (0, 2)  # GOOD, or CHECK CONDITION (a unit attention first)
            break
    s.close()
    return ok_


if MODE == "nop":
    # Target keepalive (ferry runs with a short NOP interval and timeout): an initiator that
    # echoes NOP-Ins keeps its session; one that ignores them is dropped as dead.
    s, stat_sn, _ = normal_login(PORT)
    answered = 0
    t_end = time.time() + 4
    while time.time() < t_end:
        try:
            h, _ = recv_pdu(s, timeout=0.5)
        except socket.timeout:
            continue
        if h[0] & 0x3F == 0x20 and h[20:24] != b"\xff\xff\xff\xff":
            answered += 1
            # NOP-Out echoing the TTT, immediate, ITT reserved.
            s.sendall(bhs(0x00, 0x80, itt=0xFFFFFFFF, f20=struct.unpack(">I", h[20:24])[0],
                          f24=0, f28=struct.unpack(">I", h[24:28])[0] + 1, immediate=True))
    s.sendall(scsi_cmd(b"\x00", itt=5, cmdsn=0, expstatsn=0))
    h, _ = recv_pdu(s)
    if answered > 0 and h[0] & 0x3F == 0x21:
        ok(f"answered {answered} NOP-In pings: session alive")
    else:
        fail(f"keepalive: answered {answered}, last opcode {h[0] & 0x3f:#x}")
    s.close()
    s, stat_sn, _ = normal_login(PORT)
    t0 = time.time()
    if closed_by_target(s, 10):
        ok(f"silent initiator dropped by keepalive after {time.time() - t0:.1f} s")
    else:
        fail("an initiator ignoring NOP-Ins was not dropped")
    s.close()
    sys.exit(1 if failures else 0)

# 1. A peer that connects and says nothing is dropped after the login timeout.
t0 = time.time()
s = socket.create_connection(("127.0.0.1", PORT))
if closed_by_target(s, 10):
    ok(f"silent peer dropped after {time.time() - t0:.1f} s")
else:
    fail("silent peer still connected after 10 s")
s.close()

# 2. Garbage instead of a login.
s = socket.create_connection(("127.0.0.1", PORT))
s.sendall(os.urandom(48) + b"\xff" * 100)
ok("garbage dropped") if closed_by_target(s, 5) else fail("garbage: connection kept")
s.close()

# 3. A truncated PDU, then the peer vanishes.
s = socket.create_connection(("127.0.0.1", PORT))
s.sendall(login_pdu({"InitiatorName": "iqn.x:y", "TargetName": IQN})[:30])
s.close()
ok("truncated PDU + close") if alive() else fail("target died on a truncated PDU")

# 4. A login whose DataSegmentLength is 16 MiB - 1: refused without buffering it.
s = socket.create_connection(("127.0.0.1", PORT))
h = bytearray(login_pdu({"InitiatorName": "iqn.x:y", "TargetName": IQN}))
h[5:8] = (0xFFFFFF).to_bytes(3, "big")
s.sendall(bytes(h[:48]) + b"A" * 4096)
ok("oversized login segment dropped") if closed_by_target(s, 5) else fail("oversized segment kept")
s.close()

# 5. Wrong-phase PDUs: a SCSI command before login.
s = socket.create_connection(("127.0.0.1", PORT))
s.sendall(scsi_cmd(b"\x00", itt=1, cmdsn=0, expstatsn=0))
ok("SCSI command before login dropped") if closed_by_target(s, 5) else fail("command before login kept")
s.close()

# 6. Login to an unknown target: a login response with status 02/03, then close.
s = socket.create_connection(("127.0.0.1", PORT))
s.sendall(login_pdu({"InitiatorName": "iqn.x:y", "TargetName": "iqn.nope:none"}))
h, _ = recv_pdu(s)
if h[36] == 2 and h[37] == 3:
    ok("unknown target: login status 0203 (not found)")
else:
    fail(f"unknown target: status {h[36]:#x}/{h[37]:#x}")
s.close()

# 7. Full feature phase: unknown opcode gets a Reject; the session goes on.
s, stat_sn, _ = normal_login(PORT)
s.sendall(bhs(0x1c, 0x80, itt=9, f24=0, f28=stat_sn + 1))
h, data = recv_pdu(s)
if h[0] & 0x3F == 0x3F and h[2] == 0x05:
    ok("unknown opcode: Reject (command not supported)")
else:
    fail(f"unknown opcode answered with opcode {h[0] & 0x3f:#x} reason {h[2]:#x}")
s.sendall(scsi_cmd(b"\x00", itt=10, cmdsn=0, expstatsn=stat_sn + 2))
h, _ = recv_pdu(s)
ok("session usable after a Reject") if h[0] & 0x3F == 0x21 else fail("no response after Reject")

# 8. CmdSN far outside the window is ignored (no response), the next in-window one is served.
s.sendall(scsi_cmd(b"\x00", itt=11, cmdsn=100000, expstatsn=stat_sn + 3))
s.sendall(scsi_cmd(b"\x00", itt=12, cmdsn=1, expstatsn=stat_sn + 3))
h, _ = recv_pdu(s)
itt = struct.unpack(">I", h[16:20])[0]
ok("out-of-window CmdSN ignored") if itt == 12 else fail(f"got a response for ITT {itt}")
s.sendall(logout(itt=13, cmdsn=2, expstatsn=stat_sn + 4))
h, _ = recv_pdu(s)
ok("logout response") if h[0] & 0x3F == 0x26 else fail("no logout response")
s.close()

# 9. Header digest negotiated, then a PDU with a wrong header digest: connection dropped.
s, stat_sn, _ = normal_login(PORT, {"HeaderDigest": "CRC32C"})
pdu = scsi_cmd(b"\x00", itt=1, cmdsn=0, expstatsn=stat_sn + 1)
s.sendall(pdu[:48] + struct.pack("<I", crc32c(pdu[:48]) ^ 1))
ok("bad header digest: connection dropped") if closed_by_target(s, 5) else fail("bad header digest kept")
s.close()
# ... and a correct digest works.
s, stat_sn, _ = normal_login(PORT, {"HeaderDigest": "CRC32C"})
s.sendall(pdu[:48] + struct.pack("<I", crc32c(pdu[:48])))
h, _ = recv_pdu(s, header_digest=True)
ok("good header digest served") if h[0] & 0x3F == 0x21 else fail("good header digest not served")
s.close()

# 10. Data digest error on immediate data: Reject (data digest error), session continues.
s, stat_sn, _ = normal_login(PORT, {"DataDigest": "CRC32C", "ImmediateData": "Yes"})
data = b"\x5a" * 512
cdb = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])  # WRITE(10) LBA 0, 1 block
pdu = scsi_cmd(cdb, itt=21, cmdsn=0, expstatsn=stat_sn + 1, edtl=512, write=True, data=data)
s.sendall(pdu + struct.pack("<I", crc32c(data) ^ 0xFFFF))
try:
    h, _ = recv_pdu(s)
    if h[0] & 0x3F == 0x3F and h[2] == 0x02:
        ok("bad data digest: Reject (data digest error)")
    else:
        fail(f"bad data digest answered with opcode {h[0] & 0x3f:#x}")
except (ConnectionError, socket.timeout):
    ok("bad data digest: connection dropped")
s.close()

# 11. Session reinstatement: the same initiator and ISID logging in again replaces the session.
isid = b"\x80\x12\x34\x56\x78\x9a"
old_s, _, _ = normal_login(PORT, isid=isid)
new_s, stat_sn, _ = normal_login(PORT, isid=isid)
if closed_by_target(old_s, 5):
    ok("same ISID logs in again: the old session's connection is closed (reinstatement)")
else:
    fail("old session survived a login with the same ISID")
new_s.sendall(scsi_cmd(b"\x00", itt=3, cmdsn=0, expstatsn=stat_sn + 1))
h, _ = recv_pdu(new_s)
ok("reinstated session serves commands") if h[0] & 0x3F == 0x21 else fail("reinstated session dead")
old_s.close()
new_s.close()

# 12. Many sessions at once: 200 logged-in sessions, each runs a command, all answered.
sessions = []
for i in range(200):
    s, stat_sn, _ = normal_login(PORT)
    sessions.append((s, stat_sn))
for s, stat_sn in sessions:
    s.sendall(scsi_cmd(b"\x00", itt=1, cmdsn=0, expstatsn=stat_sn + 1))
answered = 0
for s, _ in sessions:
    h, _ = recv_pdu(s)
    answered += h[0] & 0x3F == 0x21
    s.close()
ok(f"200 concurrent sessions answered") if answered == 200 else fail(f"only {answered}/200 sessions answered")

# 13. Thousands of logins and logouts; memory stays bounded and the target keeps working.
rss0 = rss_kib()
t0 = time.time()
n = 0
for i in range(2000):
    s, stat_sn, _ = normal_login(PORT, session_type="Discovery" if i % 2 else "Normal")
    s.sendall(logout(itt=2, cmdsn=0, expstatsn=stat_sn + 1))
    recv_pdu(s)
    s.close()
    n += 1
rss1 = rss_kib()
ok(f"{n} logins/logouts in {time.time() - t0:.1f} s; RSS {rss0} -> {rss1} KiB")
# ... and 500 connections held open at once, half-way through a login, then dropped.
held = []
for i in range(500):
    c = socket.create_connection(("127.0.0.1", PORT))
    c.sendall(login_pdu({"InitiatorName": "iqn.x:y", "TargetName": IQN})[:40])
    held.append(c)
for c in held:
    c.close()
time.sleep(0.5)
rss2 = rss_kib()
if rss2 - rss0 > 256 * 1024:
    fail(f"memory grew by {(rss2 - rss0) // 1024} MiB")
else:
    ok(f"500 half-open logins dropped; RSS {rss2} KiB")
ok("target still serves commands") if alive() and works() else fail("target stopped serving")
sys.exit(1 if failures else 0)
