#!/usr/bin/env python3
"""Writes the seed inputs of frame_fuzz (tests/fuzz/seeds/frame_fuzz/*.bin).

Layout (datapath/wan/frame_fuzz.cc): one mode byte, then mode 0/1: a stream of frames (1: the
fuzzer fixes magic and CRCs up), 2: algo, 24-bit claimed size, compressed bytes, 3: algo choice,
one spare byte, a chunk to encode. Frames follow datapath/wan/DESIGN.md ("Wire format") with
correct CRCs. Rerun after changing the format:
    python3 datapath/wan/make_frame_seeds.py
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fuzz", "seeds", "frame_fuzz")

_T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    _T.append(c)


def crc32c(b, crc=0):
    crc ^= 0xFFFFFFFF
    for x in b:
        crc = _T[(crc ^ x) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def frame(typ, flags=0, prio=0, algo=0, vol=0, req=0, off=0, length=0, payload=b""):
    h = struct.pack(">HBBBBHQQII", 0xFE77, typ, flags, prio, algo, vol, req, off, length,
                    len(payload))
    h += struct.pack(">I", crc32c(payload))
    h += struct.pack(">I", crc32c(h))
    assert len(h) == 40
    return h + payload


def hello(caps=0x7F, vmin=1, vmax=1, fmax=256 * 1024, reqs=1024, session=0):
    return struct.pack(">HHIIIQ8x", vmin, vmax, caps, fmax, reqs, session)


def raw_deflate(b):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(b) + c.flush()


TEXT = (b"ferry block storage gateway volume cache journal " * 200)[:8192]


def main():
    os.makedirs(OUT, exist_ok=True)
    info = struct.pack(">QIIII", 40 << 30, 4096, 7, 65536, 0)
    err = struct.pack(">HH", 4, 14) + b"unknown volume"
    extents = struct.pack(">IIII", 4096, 0, 1 << 20, 3)
    session = b"".join([
        frame(0x01, payload=hello()),
        frame(0x02, payload=hello(caps=0x3B, session=7)),
        frame(0x03, req=1, payload=b"prod-db-01.vmdk"),
        frame(0x04, vol=1, req=1, payload=info),
        frame(0x10, prio=0, vol=1, req=2, off=1 << 20, length=65536),
        frame(0x11, vol=1, req=2, off=1 << 20, length=4096, payload=b"\x5a" * 4096),
        frame(0x11, flags=0x01, vol=1, req=2, off=(1 << 20) + 4096, length=61440),
        frame(0x12, vol=1, req=2),
        frame(0x13, flags=0x18, prio=1, vol=1, req=3, off=8192, length=512, payload=b"w" * 512),
        frame(0x14, vol=1, req=3),
        frame(0x15, vol=1, req=4),
        frame(0x16, vol=1, req=4),
        frame(0x17, vol=1, req=5, length=(1 << 20) + 4096),
        frame(0x18, vol=1, req=5, length=(1 << 20) + 4096, payload=extents),
        frame(0x13, flags=0x58, prio=1, vol=1, req=7, off=16384, length=512, payload=b"e" * 512),
        frame(0x14, vol=1, req=7),
        frame(0x1B, prio=1, vol=1, req=8, payload=struct.pack(">QQQ", 0x1122334455667788, 42, 512)),
        frame(0x1C, prio=1, vol=1, req=8),
        frame(0x20, req=99),
        frame(0x21, req=99),
        frame(0x30, req=6, payload=err),
    ])
    deflated = raw_deflate(TEXT)
    data = b"".join([
        frame(0x11, flags=0x02, prio=2, algo=3, vol=1, req=9, length=len(TEXT), payload=deflated),
        frame(0x11, flags=0x04, prio=3, vol=2, req=10, length=65536, payload=b"\xab" * 32),
    ])
    seeds = {
        "session_crc.bin": b"\x00" + session,
        "session_fixup.bin": b"\x01" + session,
        "data_crc.bin": b"\x00" + data,
        "data_fixup.bin": b"\x01" + data,
        "small_limit.bin": b"\x11" + session,
        "inflate_direct.bin": b"\x02" + bytes([3]) + len(TEXT).to_bytes(3, "big") + deflated,
        "roundtrip_text.bin": b"\x03\x03\x00" + TEXT,
        "roundtrip_zero.bin": b"\x03\x05\x00" + b"\x00" * 4096,
    }
    for name, b in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(b)


if __name__ == "__main__":
    main()
