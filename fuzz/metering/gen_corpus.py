#!/usr/bin/python3
"""gen_corpus.py — writes the seed corpus of fuzz_spool.c into fuzz/metering/corpus/:
valid spool files (one record, several, the longest model name, odd values) and
broken ones (torn at every kind of place, bad magic, bad CRC, lengths out of range,
a model length that disagrees with the payload, garbage).  The byte format is the
table in metering/mtr.h.  Deterministic: run it again and nothing changes.
    /usr/bin/python3 fuzz/metering/gen_corpus.py"""
import os
import random
import struct
import zlib

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def payload(i, model=b"deepseek-v3-demo", stream=0, first=1764300000100000, mlen=None, status=200, version=None):
    rid = ("0190f0e2-7a3b-7c00-8000-%012d" % i).encode()
    p = rid + struct.pack("<qqqqqqqqq", 42 + i, 7, 270000, 70000, 1100000, 1000 + i, 300, 500, 20)
    p += struct.pack("<iB", status, stream)
    p += struct.pack("<qqq", 1764300000000000 + i, first, 1764300000900000)
    p += struct.pack("<H", len(model) if mlen is None else mlen) + model
    if version is not None:  # TGS2: price_id, override_id
        p += struct.pack("<qq", *version)
    return p


def record(p, magic=b"TGS1", n=None, crc=None):
    return magic + struct.pack("<II", len(p) if n is None else n,
                               zlib.crc32(p) & 0xffffffff if crc is None else crc) + p


def main():
    os.makedirs(OUT, exist_ok=True)
    one = record(payload(1))
    three = record(payload(1)) + record(payload(2, b"m", 1, 0)) + record(payload(3, b"a/b \"q\"", 1))
    seeds = {
        "valid-one": one,
        "valid-three": three,
        "valid-model-max": record(payload(4, b"x" * 1024)),
        "valid-model-one-byte": record(payload(5, b"z")),
        "valid-odd-values": record(payload(6, b"m", 1, 0, status=-1)),
        "empty": b"",
        "torn-header": three + one[:7],
        "torn-payload": three + one[:60],
        "torn-last-byte": three + one[:-1],
        "torn-mid-file": one[:100],
        "bad-magic": record(payload(7), magic=b"TGS9"),
        "valid-v2": record(payload(17, version=(12, 0)), magic=b"TGS2"),
        "valid-v2-override": one + record(payload(18, b"m", version=(3, 9)), magic=b"TGS2"),
        "v2-zero-version": record(payload(19, version=(0, 0)), magic=b"TGS2"),
        "v2-without-version": record(payload(20), magic=b"TGS2"),
        "v1-with-version": record(payload(21, version=(1, 2))),
        "bad-crc": record(payload(8), crc=0xdeadbeef),
        "bad-crc-after-valid": one + record(payload(9), crc=1),
        "len-too-small": record(payload(10), n=139),
        "len-too-big": record(payload(11), n=155 + 1025),
        "len-zero": record(b"", n=0),
        "model-len-zero": record(payload(12, b"", mlen=0)),
        "model-len-longer": record(payload(13, b"abc", mlen=4)),
        "model-len-shorter": record(payload(14, b"abcd", mlen=3)),
        "model-len-max-plus-one": record(payload(15, b"y" * 1025)),
        "stream-two": record(payload(16, stream=2)),
        "garbage-after-valid": one + b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "magic-only": b"TGS1",
    }
    rnd = random.Random(13)
    seeds["garbage-random"] = bytes(rnd.randrange(256) for _ in range(400))
    flipped = bytearray(three)
    for _ in range(8):
        flipped[rnd.randrange(len(flipped))] ^= 1 << rnd.randrange(8)
    seeds["valid-three-bitflips"] = bytes(flipped)
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
