#!/usr/bin/python3
"""An independent decoder of native state streams, versions 1 and 2,
written from the format description alone (protocol/stream-format.md for
version 1; for version 2: header flags COMPRESSED (1) and ENCRYPTED (2),
a 56-byte key block after the header, HKDF-SHA256 stream keys,
AES-256-GCM per record with its position as the nonce and its header as
the AAD, zstd chunks after a u32 decoded length).

Usage: v2_decoder.py STREAM [KEYFILE]

Prints one line per helper: its Id, its blob length and the SHA-256 of
its blob, tab-separated. Exits 1 with a message on any error; exits 77
if the `cryptography` module is missing and the stream is encrypted.
"""

import hashlib
import struct
import subprocess
import sys

MAGIC = b"\x89VMST\r\n\x1a"
FLAG_COMPRESSED = 1
FLAG_ENCRYPTED = 2
LABEL = b"dbus-vmstate stream key v2\x00"


def _crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = _crc_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class Bad(Exception):
    pass


def need(ok, what):
    if not ok:
        raise Bad(what)


def parse_key(contents):
    if len(contents) == 32:
        return contents
    text = contents
    if text.endswith(b"\n"):
        text = text[:-1]
        if text.endswith(b"\r"):
            text = text[:-1]
    need(len(text) == 64, "key file: not 64 hex digits")
    return bytes.fromhex(text.decode("ascii"))


def unzstd(frame):
    out = subprocess.run(
        ["zstd", "-d", "-c", "-q"], input=frame, stdout=subprocess.PIPE, check=False
    )
    need(out.returncode == 0, "zstd frame does not decode")
    return out.stdout


def decode(data, key):
    need(len(data) >= 20, "truncated header")
    header = data[:20]
    need(header[:8] == MAGIC, "bad magic")
    version, flags, crc = struct.unpack("<III", header[8:20])
    need(crc32c(header[:16]) == crc, "header CRC")
    if version == 1:
        need(flags == 0, "version 1 with flags")
    else:
        need(version == 2, "unknown version")
        need(flags in (1, 2, 3), "unknown flags")
    pos = 20
    aead = None
    if flags & FLAG_ENCRYPTED:
        try:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError:
            print("no cryptography module", file=sys.stderr)
            sys.exit(77)
        need(key is not None, "encrypted stream and no key")
        block = data[20:76]
        need(len(block) == 56, "truncated key block")
        need(block[0] == 1 and block[1:4] == b"\0\0\0", "key block algorithm")
        need(crc32c(block[:52]) == struct.unpack("<I", block[52:])[0], "key block CRC")
        salt = block[20:52]
        stream_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=salt, info=LABEL + header + block
        ).derive(key)
        aead = AESGCM(stream_key)
        pos = 76
    helpers = []  # [id, bytearray, open]
    number = 0
    while True:
        rh = data[pos : pos + 12]
        need(len(rh) == 12, "truncated record header")
        kind, encoding, reserved, helper, length = struct.unpack("<BBHII", rh)
        need(reserved == 0, "reserved field")
        stored = data[pos + 12 : pos + 12 + length]
        need(len(stored) == length, "truncated payload")
        rcrc = data[pos + 12 + length : pos + 16 + length]
        need(len(rcrc) == 4, "truncated CRC")
        need(crc32c(rh + stored) == struct.unpack("<I", rcrc)[0], "record CRC")
        pos += 16 + length
        if aead is not None:
            nonce = struct.pack("<Q", number) + b"\0\0\0\0"
            payload = aead.decrypt(nonce, stored, rh)
        else:
            payload = stored
        number += 1
        if encoding == 1:
            need(flags & FLAG_COMPRESSED and kind == 2, "zstd encoding here")
            (decoded_len,) = struct.unpack("<I", payload[:4])
            payload = unzstd(payload[4:])
            need(len(payload) == decoded_len, "decoded length")
        else:
            need(encoding == 0, "unknown encoding")
        if kind == 1:
            need(helper == len(helpers), "BEGIN index")
            helpers.append([payload.decode("utf-8"), bytearray(), True])
        elif kind == 2:
            need(helper < len(helpers) and helpers[helper][2], "CHUNK for a closed helper")
            helpers[helper][1] += payload
        elif kind == 3:
            need(helper < len(helpers) and helpers[helper][2], "END for a closed helper")
            blen, bcrc = struct.unpack("<QI", payload)
            blob = helpers[helper][1]
            need(blen == len(blob) and bcrc == crc32c(blob), "END length or CRC")
            helpers[helper][2] = False
        elif kind == 0xFF:
            need(helper == 0xFFFFFFFF, "STREAM_END helper field")
            count, total = struct.unpack("<IQ", payload)
            need(count == len(helpers), "STREAM_END count")
            need(total == sum(len(h[1]) for h in helpers), "STREAM_END total")
            need(not any(h[2] for h in helpers), "helper still open")
            need(pos == len(data), "trailing data")
            return helpers
        else:
            raise Bad("unknown record kind")


def main():
    data = open(sys.argv[1], "rb").read()
    key = parse_key(open(sys.argv[2], "rb").read()) if len(sys.argv) > 2 else None
    try:
        helpers = decode(data, key)
    except Exception as e:  # noqa: BLE001 (any failure is a rejection)
        print(f"rejected: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    for hid, blob, _ in helpers:
        print(f"{hid}\t{len(blob)}\t{hashlib.sha256(blob).hexdigest()}")


if __name__ == "__main__":
    main()
