"""A tiny raw iSCSI initiator for robustness tests: builds login/SCSI/logout PDUs by hand so
tests can send exactly the malformed or hostile input they want. Test code only."""
import os
import socket
import struct
import zlib  # noqa: F401  (kept for callers that want CRCs of payloads)

IQN = "iqn.2026-11.io.ferry:target"


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def bhs(opcode, flags, dsl=0, lun=0, itt=0, f20=0, f24=0, f28=0, rest=b"", immediate=False):
    h = bytearray(48)
    h[0] = opcode | (0x40 if immediate else 0)
    h[1] = flags
    h[5:8] = dsl.to_bytes(3, "big")
    h[8:16] = lun.to_bytes(8, "big")
    struct.pack_into(">IIII", h, 16, itt, f20, f24, f28)
    h[32:32 + len(rest)] = rest
    return bytes(h)


def login_pdu(keys: dict, csg=1, nsg=3, transit=True, isid=None, itt=1, cmdsn=0, tsih=0):
    text = b"".join(f"{k}={v}".encode() + b"\0" for k, v in keys.items())
    isid = isid or (b"\x80" + os.urandom(5))
    flags = (0x80 if transit else 0) | (csg << 2) | nsg
    h = bytearray(bhs(0x03, flags, len(text), itt=itt, f24=cmdsn, immediate=True))
    h[8:14] = isid
    h[14:16] = tsih.to_bytes(2, "big")
    return bytes(h) + pad4(text)


def recv_exact(s, n, timeout=5.0):
    s.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def recv_pdu(s, header_digest=False, timeout=5.0):
    h = recv_exact(s, 48, timeout)
    ahs = h[4] * 4
    dsl = int.from_bytes(h[5:8], "big")
    extra = ahs + (4 if header_digest else 0) + len(pad4(b"\0" * dsl))
    data = recv_exact(s, extra, timeout) if extra else b""
    return h, data[ahs + (4 if header_digest else 0):][:dsl]


def normal_login(port, extra=None, session_type="Normal", isid=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    keys = {"InitiatorName": "iqn.2026-11.io.ferry:robustness", "SessionType": session_type,
            "HeaderDigest": "None", "DataDigest": "None", "MaxRecvDataSegmentLength": "65536"}
    if session_type == "Normal":
        keys["TargetName"] = IQN
    keys.update(extra or {})
    s.sendall(login_pdu(keys, isid=isid))
    h, data = recv_pdu(s)
    if h[0] & 0x3F != 0x23 or h[36] != 0:
        s.close()
        raise RuntimeError(f"login failed: status {h[36]:#x}/{h[37]:#x}")
    stat_sn = struct.unpack(">I", h[24:28])[0]
    return s, stat_sn, data


def scsi_cmd(cdb: bytes, itt, cmdsn, expstatsn, edtl=0, read=False, write=False, data=b"", lun=0):
    flags = 0x80 | (0x40 if read else 0) | (0x20 if write else 0) | 0x01  # F, simple
    h = bytes(bhs(0x01, flags, len(data), lun=lun, itt=itt, f20=edtl, f24=cmdsn, f28=expstatsn,
                  rest=cdb.ljust(16, b"\0")))
    return h + pad4(data)


def logout(itt, cmdsn, expstatsn):
    return bhs(0x06, 0x80, itt=itt, f24=cmdsn, f28=expstatsn, immediate=True)
