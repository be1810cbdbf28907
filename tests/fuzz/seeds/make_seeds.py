#!/usr/bin/env python3
"""Writes the seed inputs of the iSCSI fuzzers (tests/fuzz/seeds/<fuzzer>/*.bin).

Each fuzzer's file comment describes its input layout; the seeds here are valid examples of it
(a normal login, a CHAP login, SendTargets, SCSI commands with immediate and solicited data...)
so that fuzzing starts past the framing. Rerun after changing a layout:
    python3 tests/fuzz/seeds/make_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = b"iqn.2024-01.io.ferry:fuzz"
INITIATOR = b"iqn.2024-01.io.ferry:fuzz-initiator"
ISID = bytes([0x80, 0x00, 0x00, 0x01, 0x02, 0x03])


def kv(*pairs):
    return b"".join(k + b"=" + v + b"\0" for k, v in pairs)


def pad4(b):
    return b + b"\0" * (-len(b) % 4)


def bhs(opcode, flags=0, dsl=0, lun=0, itt=0, ttt_or_edtl=0, cmd_sn=0, exp_stat_sn=0, tail=b""):
    h = bytearray(48)
    h[0] = opcode
    h[1] = flags
    h[5:8] = dsl.to_bytes(3, "big")
    h[8:16] = lun.to_bytes(8, "big")
    h[16:20] = itt.to_bytes(4, "big")
    h[20:24] = ttt_or_edtl.to_bytes(4, "big")
    h[24:28] = cmd_sn.to_bytes(4, "big")
    h[28:32] = exp_stat_sn.to_bytes(4, "big")
    h[32:32 + len(tail)] = tail
    return bytes(h)


def login_bhs(flags, itt, text, isid=ISID):
    h = bytearray(bhs(0x43, flags, len(text), itt=itt))
    h[8:14] = isid
    return bytes(h)


def login_pdu(flags, itt, text):
    return login_bhs(flags, itt, text) + pad4(text)


def scsi_cmd(itt, cmd_sn, cdb, edtl=0, read=False, write=False, data=b"", final=True):
    flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | 0x01  # SIMPLE
    cdb = cdb.ljust(16, b"\0")
    return bhs(0x01, flags, len(data), lun=0, itt=itt, ttt_or_edtl=edtl, cmd_sn=cmd_sn,
               tail=cdb) + pad4(data)


def data_out(itt, ttt, data_sn, offset, data, final=True):
    h = bytearray(bhs(0x05, 0x80 if final else 0, len(data), itt=itt, ttt_or_edtl=ttt))
    h[36:40] = data_sn.to_bytes(4, "big")
    h[40:44] = offset.to_bytes(4, "big")
    return bytes(h) + pad4(data)


def nop_out(itt, cmd_sn, data=b""):
    return bhs(0x00, 0x80, len(data), itt=itt, ttt_or_edtl=0xFFFFFFFF, cmd_sn=cmd_sn) + pad4(data)


def text_req(itt, cmd_sn, text, final=True, ttt=0xFFFFFFFF):
    return bhs(0x04, 0x80 if final else 0x40, len(text), itt=itt, ttt_or_edtl=ttt,
               cmd_sn=cmd_sn) + pad4(text)


def tmf(itt, cmd_sn, function, ref_itt=0xFFFFFFFF, ref_cmd_sn=0):
    h = bytearray(bhs(0x42, 0x80 | function, itt=itt, ttt_or_edtl=ref_itt, cmd_sn=cmd_sn))
    h[32:36] = ref_cmd_sn.to_bytes(4, "big")
    return bytes(h)


def logout(itt, cmd_sn, reason=0):
    return bhs(0x46, 0x80 | reason, itt=itt, cmd_sn=cmd_sn)


def write(name, data):
    path = os.path.join(HERE, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
READ_CAPACITY16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)
TEST_UNIT_READY = bytes(6)
REPORT_LUNS = bytes([0xA0, 0, 0, 0, 0, 0]) + (64).to_bytes(4, "big") + bytes(2)


def rw10(op, lba, blocks):
    return bytes([op, 0]) + lba.to_bytes(4, "big") + bytes([0]) + blocks.to_bytes(2, "big") + bytes(1)


def main():
    normal = kv((b"InitiatorName", INITIATOR), (b"SessionType", b"Normal"), (b"TargetName", TARGET))

    # ---- iscsi_connection_fuzz: byte 0 = prefix mode, then the stream after the login
    full = b"".join([
        scsi_cmd(0x10, 0, TEST_UNIT_READY),
        scsi_cmd(0x11, 1, INQUIRY, edtl=96, read=True),
        scsi_cmd(0x12, 2, READ_CAPACITY16, edtl=32, read=True),
        scsi_cmd(0x13, 3, REPORT_LUNS, edtl=64, read=True),
        scsi_cmd(0x14, 4, rw10(0x2A, 8, 2), edtl=1024, write=True, data=bytes(range(256)) * 4),
        scsi_cmd(0x15, 5, rw10(0x28, 8, 2), edtl=1024, read=True),
        nop_out(0x16, 6, b"ping"),
        text_req(0x17, 7, kv((b"SendTargets", b"All"))),
        tmf(0x18, 8, 1, ref_itt=0x99, ref_cmd_sn=8),
        logout(0x19, 9),
    ])
    write("iscsi_connection_fuzz/mode1_commands.bin", b"\x01" + full)
    # Mode 2: InitialR2T=Yes, no immediate data: WRITE then Data-Out answering the R2T (TTT of
    # the first task is 0x40000001).
    # The first command of a session gets the power-on unit attention: a TEST UNIT READY
    # takes it.
    write("iscsi_connection_fuzz/mode2_r2t_write.bin", b"\x02" + b"".join([
        scsi_cmd(0x1F, 0, TEST_UNIT_READY),
        scsi_cmd(0x20, 1, rw10(0x2A, 0, 4), edtl=2048, write=True),
        data_out(0x20, 0x40000001, 0, 0, b"\xab" * 1024, final=False),
        data_out(0x20, 0x40000001, 1, 1024, b"\xcd" * 1024, final=True),
        scsi_cmd(0x21, 2, rw10(0x28, 0, 4), edtl=2048, read=True),
        logout(0x22, 3),
    ]))
    # Mode 6: unsolicited Data-Out after immediate data (FirstBurstLength 4096).
    write("iscsi_connection_fuzz/mode6_unsolicited.bin", b"\x06" + b"".join([
        scsi_cmd(0x2F, 0, TEST_UNIT_READY),
        scsi_cmd(0x30, 1, rw10(0x2A, 16, 8), edtl=4096, write=True, data=b"\x11" * 1024,
                 final=False),
        data_out(0x30, 0xFFFFFFFF, 0, 1024, b"\x22" * 3072, final=True),
        scsi_cmd(0x31, 2, rw10(0x28, 16, 8), edtl=4096, read=True),
    ]))
    # Regression: EOF right behind commands whose responses are still queued. close() freed those
    # tasks and release_pdu freed them again (double delete in ~Connection).
    write("iscsi_connection_fuzz/close_with_queued_response_double_free.bin", b"\x06" + b"".join([
        scsi_cmd(0x30, 0, rw10(0x2A, 16, 8), edtl=4096, write=True, data=b"\x11" * 1024,
                 final=False),
        data_out(0x30, 0xFFFFFFFF, 0, 1024, b"\x22" * 3072, final=True),
        scsi_cmd(0x31, 1, rw10(0x28, 16, 8), edtl=4096, read=True),
    ]))
    # Regression: commands pipelined in the same receive as the final login PDU were parsed from
    # the login receive buffer after enter_full_feature had returned it to the pool; a 64 KiB
    # WRITE then got that very buffer as its data buffer (memcpy-param-overlap under ASan).
    write("iscsi_connection_fuzz/pipelined_after_login_stale_rx_buffer.bin", b"\x01" + b"".join([
        scsi_cmd(0x50, 0, rw10(0x2A, 0, 128), edtl=65536, write=True, data=b"\x33" * 1024,
                 final=False),
        scsi_cmd(0x51, 1, TEST_UNIT_READY),
    ]))
    write("iscsi_connection_fuzz/mode3_digests.bin", b"\x03" + full)
    write("iscsi_connection_fuzz/mode7_data_digest.bin", b"\x07" + full)
    write("iscsi_connection_fuzz/mode5_security_stage.bin", b"\x05" + full)
    write("iscsi_connection_fuzz/mode4_discovery.bin", b"\x04" + b"".join([
        text_req(0x40, 0, kv((b"SendTargets", b"All"))),
        text_req(0x41, 1, b"SendTar", final=False),
        text_req(0x41, 2, b"gets=All\0", final=True, ttt=0x20000001),
        logout(0x42, 3),
    ]))
    # Mode 0: the whole login is in the input (security stage, then operational).
    raw = login_pdu(0x81, 1, normal + kv((b"AuthMethod", b"None")))
    raw += login_pdu(0x87, 2, kv((b"MaxRecvDataSegmentLength", b"8192"), (b"ImmediateData", b"Yes")))
    write("iscsi_connection_fuzz/mode0_raw_login.bin", b"\x00" + raw + full)

    # ---- pdu_fuzz: flags | max segment (24-bit) | stream
    write("pdu_fuzz/plain.bin", b"\x00" + (8192).to_bytes(3, "big") + full)
    write("pdu_fuzz/digests_fixed.bin", b"\x0f" + (262144).to_bytes(3, "big") +
          scsi_cmd(1, 0, rw10(0x2A, 0, 1), edtl=512, write=True, data=bytes(512)) + bytes(8))
    write("pdu_fuzz/login.bin", b"\x00" + (8192).to_bytes(3, "big") + raw)

    # ---- login_fuzz: chunks of BHS | length(2) | text
    def chunk(flags, itt, text, isid=ISID):
        return login_bhs(flags, itt, text, isid) + len(text).to_bytes(2, "big") + text

    write("login_fuzz/open_operational.bin", chunk(0x87, 1, normal.replace(TARGET, b"iqn.2024-01.io.ferry:open") +
                                                   kv((b"HeaderDigest", b"CRC32C,None"),
                                                      (b"MaxBurstLength", b"1048576"))))
    write("login_fuzz/open_security_then_op.bin",
          chunk(0x81, 1, normal.replace(TARGET, b"iqn.2024-01.io.ferry:open") + kv((b"AuthMethod", b"None"))) +
          chunk(0x87, 2, kv((b"InitialR2T", b"No"), (b"FirstBurstLength", b"4096"))))
    secure = normal.replace(TARGET, b"iqn.2024-01.io.ferry:secure")
    write("login_fuzz/chap_mutual.bin",
          chunk(0x00, 1, secure + kv((b"AuthMethod", b"CHAP,None"))) +
          chunk(0x00, 2, kv((b"CHAP_A", b"5"))) +
          chunk(0x81, 3, kv((b"CHAP_N", b"alice"), (b"CHAP_R", b"auto"), (b"CHAP_I", b"7"),
                            (b"CHAP_C", b"0x0123456789abcdef0123456789abcdef"))) +
          chunk(0x87, 4, kv((b"ImmediateData", b"Yes"))))
    write("login_fuzz/discovery_chap.bin",
          chunk(0x00, 1, kv((b"InitiatorName", INITIATOR), (b"SessionType", b"Discovery"),
                            (b"AuthMethod", b"CHAP"))) +
          chunk(0x00, 2, kv((b"CHAP_A", b"5,7"))) +
          chunk(0x83, 3, kv((b"CHAP_N", b"disco"), (b"CHAP_R", b"auto"))))
    opened = normal.replace(TARGET, b"iqn.2024-01.io.ferry:open")
    write("login_fuzz/continued_text.bin",
          chunk(0x44, 1, opened[:20]) + chunk(0x87, 2, opened[20:]))

    # ---- text_fuzz: session | (flags | length(2) | data)* | chunk sizes
    st = kv((b"SendTargets", b"All"))
    write("text_fuzz/discovery_all.bin", b"\x00" + b"\x00" + len(st).to_bytes(2, "big") + st + b"\x10\x20")
    write("text_fuzz/normal_continued.bin", b"\x01" + b"\x01" + (5).to_bytes(2, "big") + st[:5] +
          b"\x00" + (len(st) - 5).to_bytes(2, "big") + st[5:] + b"\x03")
    other = kv((b"SendTargets", b"iqn.2024-01.io.ferry:secure"), (b"X-Vendor", b"1"))
    write("text_fuzz/named_target.bin", b"\x01" + b"\x00" + len(other).to_bytes(2, "big") + other)


if __name__ == "__main__":
    main()
