"""The Flo wire v2 frame codec, compiled (``flo_core.frame``) and pure (``flo_core._pyframe``).

Every test runs against both codecs (the ``codec`` fixture), and a differential
test feeds the same random streams to both and to the public SDK's own
serializer/parser. The byte-exact vectors are flo-wire-v2.md §1.9.
"""

from __future__ import annotations

import doctest
import os
import random
import struct
import zlib

import pytest

import flo_core._pyframe as pyframe
from flo_core import wire
from flo_core.spec import DEFAULT_MAX_FRAME, HEADER_SIZE, MAGIC, TABLE_HASH, VERSION, Op, Reason, Status, Tag

try:
    import flo_core.frame as cframe
except ImportError:  # pragma: no cover - only without a build
    cframe = None

pytestmark = pytest.mark.unit

CODECS = [pytest.param(pyframe, id="pure")]
CODECS.append(pytest.param(cframe, id="compiled", marks=pytest.mark.skipif(cframe is None, reason="not built")))


@pytest.fixture(params=CODECS)
def codec(request):
    return request.param


FrameError = pyframe.FrameError

# --- flo-wire-v2.md §1.9, verbatim ------------------------------------------------------

HASH = "30 18 94 ae d9 7d ba 2f"
PUT_REQ = bytes.fromhex(
    "46 4c 4f 00 25 00 00 00 01 00 00 00 00 00 00 00"
    f"74 5d 81 09 00 01 02 00 {HASH}"
    "07 00 64 65 66 61 75 6c 74 08 00 75 73 65 72 3a"
    "31 32 33 08 00 00 00 4a 6f 68 6e 20 44 6f 65 00"
    "01 00 00 00 00"
)
PUT_OK = bytes.fromhex(
    "46 4c 4f 00 09 00 00 00 01 00 00 00 00 00 00 00"
    f"15 32 4b 6b 02 00 00 00 {HASH}"
    "01 07 00 00 00 00 00 00 00"
)
GET_BODY = b"\x01" + bytes(8) + b"\x01\x00" + b"\x00" + b"\x00"  # wait_ms 0, wait_for EXISTS, routing, txn
GET_REQ = (
    bytes.fromhex(f"46 4c 4f 00 20 00 00 00 02 00 00 00 00 00 00 00 b7 7b 8d 8c 01 01 02 00 {HASH}")
    + b"\x07\x00default\x08\x00user:123"
    + GET_BODY
)
GET_NOT_FOUND = (
    bytes.fromhex(f"46 4c 4f 00 10 00 00 00 02 00 00 00 00 00 00 00 04 76 83 01 02 02 00 00 {HASH}")
    + b"\x0d\x00\x00key not found"
)
ENQ_REQ = bytes.fromhex(
    "46 4c 4f 00 1b 00 00 00 03 00 00 00 00 00 00 00"
    f"34 a2 86 f6 70 01 02 00 {HASH}"
    "07 00 64 65 66 61 75 6c 74 05 00 74 61 73 6b 73"
    "02 00 00 00 68 69 03 00 10 01 0a"
)

PUT_PAYLOAD = PUT_REQ[HEADER_SIZE:]
GET_PAYLOAD = GET_REQ[HEADER_SIZE:]
ENQ_PAYLOAD = ENQ_REQ[HEADER_SIZE:]


def request_reader(codec, **kw):
    return codec.FrameReader(is_request=True, **kw)


def reply_reader(codec, **kw):
    return codec.FrameReader(is_request=False, **kw)


def feed_in_pieces(reader, data: bytes, cuts: list[int]) -> list:
    out = []
    prev = 0
    for c in [*cuts, len(data)]:
        out += reader.feed(data[prev:c])
        prev = c
    return out


# --- byte-exact vectors -------------------------------------------------------------------


def test_section_1_9_vectors_are_self_consistent() -> None:
    # The vectors' lengths and CRCs, computed here independently with zlib.
    for frame in (PUT_REQ, PUT_OK, GET_REQ, GET_NOT_FOUND, ENQ_REQ):
        (length,) = struct.unpack_from("<I", frame, 4)
        assert length == len(frame) - HEADER_SIZE
        crc = zlib.crc32(frame[:16] + frame[20:32] + frame[32:])
        assert struct.unpack_from("<I", frame, 16)[0] == crc


def test_encode_request_byte_exact(codec) -> None:
    assert codec.encode_request(1, Op.KV_PUT, PUT_PAYLOAD) == PUT_REQ
    assert codec.encode_request(2, Op.KV_GET, GET_PAYLOAD) == GET_REQ
    assert codec.encode_request(3, Op.QUEUE_ENQUEUE, ENQ_PAYLOAD) == ENQ_REQ


def test_encode_reply_byte_exact(codec) -> None:
    assert codec.encode_reply(1, Status.OK, b"\x01\x07" + bytes(7)) == PUT_OK
    assert codec.encode_reply(2, Status.NOT_FOUND, b"\x0d\x00\x00key not found") == GET_NOT_FOUND
    buf = bytearray(b"prefix")
    codec.append_reply(buf, 1, Status.OK, b"\x01\x07" + bytes(7))
    codec.append_reply(buf, 2, Status.NOT_FOUND, b"\x0d\x00\x00key not found")
    assert bytes(buf) == b"prefix" + PUT_OK + GET_NOT_FOUND


def test_read_request_vectors(codec) -> None:
    frames = request_reader(codec).feed(PUT_REQ + GET_REQ + ENQ_REQ)
    assert frames == [(1, Op.KV_PUT, PUT_PAYLOAD), (2, Op.KV_GET, GET_PAYLOAD), (3, Op.QUEUE_ENQUEUE, ENQ_PAYLOAD)]


def test_read_reply_vectors(codec) -> None:
    frames = reply_reader(codec).feed(PUT_OK + GET_NOT_FOUND)
    assert frames == [(1, Status.OK, PUT_OK[32:]), (2, Status.NOT_FOUND, GET_NOT_FOUND[32:])]


def test_split_vectors(codec) -> None:
    ns, key, pos = codec.split_payload(PUT_PAYLOAD)
    assert (ns, key) == ("default", b"user:123")
    assert PUT_PAYLOAD[pos:] == b"\x08\x00\x00\x00John Doe" + b"\x00\x01\x00\x00\x00\x00"
    ns, key, pos = codec.split_payload(ENQ_PAYLOAD)
    assert (ns, key) == ("default", b"tasks")
    value, opts = codec.split_value_options(ENQ_PAYLOAD, pos)
    assert value == b"hi" and opts == {Tag.PRIORITY: b"\x0a"}


def test_sdk_serializer_matches_vectors_and_codec(codec) -> None:
    """The public SDK's own serializer/parser agree with the vectors and with our codec."""
    fw = pytest.importorskip("flo.wire")
    from flo.types import OpCode, StatusCode

    sdk_put = fw.serialize_request(1, OpCode.KV_PUT, b"default", b"user:123",
                                   b"\x08\x00\x00\x00John Doe\x00\x01\x00\x00\x00\x00")
    assert sdk_put == PUT_REQ
    assert fw.serialize_request(3, OpCode.QUEUE_ENQUEUE, b"default", b"tasks", b"hi", b"\x10\x01\x0a") == ENQ_REQ
    resp = fw.parse_response(codec.encode_reply(9, Status.NOT_FOUND, b"\x0d\x00\x00gone"))
    assert (resp.status, resp.request_id, resp.data) == (StatusCode.NOT_FOUND, 9, b"\x0d\x00\x00gone")


# --- reassembly at every split point --------------------------------------------------------


@pytest.mark.parametrize("stream", [PUT_REQ + GET_REQ + ENQ_REQ], ids=["three-requests"])
def test_every_single_split_point(codec, stream: bytes) -> None:
    want = request_reader(codec).feed(stream)
    assert len(want) == 3
    for cut in range(len(stream) + 1):
        r = request_reader(codec)
        assert feed_in_pieces(r, stream, [cut]) == want, cut
        assert r.buffered == 0


def test_every_pair_of_split_points(codec) -> None:
    stream = PUT_REQ + GET_REQ
    want = request_reader(codec).feed(stream)
    n = len(stream)
    for a in range(0, n + 1, 3):
        for b in range(a, n + 1, 5):
            r = request_reader(codec)
            assert feed_in_pieces(r, stream, [a, b]) == want, (a, b)


def test_byte_by_byte_and_buffered_count(codec) -> None:
    r = request_reader(codec)
    got = []
    for i in range(len(PUT_REQ)):
        got += r.feed(PUT_REQ[i : i + 1])
        if i < len(PUT_REQ) - 1:
            assert got == [] and r.buffered == i + 1
    assert got == [(1, Op.KV_PUT, PUT_PAYLOAD)] and r.buffered == 0


def test_reply_every_split_point(codec) -> None:
    stream = PUT_OK + GET_NOT_FOUND
    want = reply_reader(codec).feed(stream)
    for cut in range(len(stream) + 1):
        assert feed_in_pieces(reply_reader(codec), stream, [cut]) == want


def test_feed_accepts_bytes_like(codec) -> None:
    for kind in (bytes, bytearray, memoryview):
        r = request_reader(codec)
        assert r.feed(kind(PUT_REQ[:10])) == []
        assert r.feed(kind(PUT_REQ[10:])) == [(1, Op.KV_PUT, PUT_PAYLOAD)]


def test_empty_payload_and_empty_feed(codec) -> None:
    f = codec.encode_request(7, Op.PING, b"")
    assert len(f) == HEADER_SIZE
    r = request_reader(codec)
    assert r.feed(b"") == []
    assert r.feed(f) == [(7, Op.PING, b"")]
    assert reply_reader(codec).feed(codec.encode_reply(7, 0, b"")) == [(7, 0, b"")]


def test_large_ids_and_ops(codec) -> None:
    f = codec.encode_request((1 << 64) - 1, 0xFFFF, b"x")
    assert request_reader(codec).feed(f) == [((1 << 64) - 1, 0xFFFF, b"x")]
    g = codec.encode_reply((1 << 64) - 1, 255, b"y")
    assert reply_reader(codec).feed(g) == [((1 << 64) - 1, 255, b"y")]


def test_many_frames_across_compaction(codec) -> None:
    # > 64 KiB of small frames, fed in odd-sized chunks: the compiled reader compacts its buffer.
    frames = [codec.encode_request(i, Op.KV_GET, bytes([i % 251]) * (i % 97)) for i in range(1, 3000)]
    stream = b"".join(frames)
    r = request_reader(codec)
    got = []
    for i in range(0, len(stream), 4093):
        got += r.feed(stream[i : i + 4093])
    assert [g[0] for g in got] == list(range(1, 3000))
    assert all(g[2] == bytes([g[0] % 251]) * (g[0] % 97) for g in got)


# --- differential: random frames, both codecs, random splits ------------------------------


def _random_stream(rng: random.Random, n: int, request: bool) -> tuple[bytes, list]:
    parts, want = [], []
    for _ in range(n):
        rid = rng.choice([0, 1, rng.randrange(1 << 64)])
        code = rng.randrange(1 << 16) if request else rng.randrange(256)
        payload = rng.randbytes(rng.choice([0, 1, 5, 31, 32, 33, rng.randrange(2000)]))
        parts.append((pyframe.encode_request if request else pyframe.encode_reply)(rid, code, payload))
        want.append((rid, code, payload))
    return b"".join(parts), want


@pytest.mark.skipif(cframe is None, reason="compiled codec not built")
@pytest.mark.parametrize("request_side", [True, False], ids=["requests", "replies"])
def test_differential_random_frames(request_side: bool) -> None:
    rng = random.Random(20240601 + request_side)
    for _round in range(60):
        stream, want = _random_stream(rng, rng.randrange(1, 12), request_side)
        # the encoders agree byte for byte
        pos = 0
        for rid, code, payload in want:
            enc_c = (cframe.encode_request if request_side else cframe.encode_reply)(rid, code, payload)
            assert stream[pos : pos + len(enc_c)] == enc_c
            pos += len(enc_c)
        cuts = sorted(rng.sample(range(len(stream) + 1), k=min(len(stream) + 1, rng.randrange(0, 8))))
        for codec in (pyframe, cframe):
            r = codec.FrameReader(is_request=request_side)
            assert feed_in_pieces(r, stream, cuts) == want
            assert r.buffered == 0


@pytest.mark.skipif(cframe is None, reason="compiled codec not built")
def test_differential_random_garbage() -> None:
    """Random bytes (often frame-shaped) give the same frames or the same refusal in both codecs."""
    rng = random.Random(7)
    good = pyframe.encode_request(5, Op.KV_GET, b"\x00\x00\x01\x00k")
    for _ in range(400):
        data = bytearray(good * rng.randrange(1, 3))
        for _flip in range(rng.randrange(0, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data += rng.randbytes(rng.randrange(40))
        results = []
        for codec in (pyframe, cframe):
            try:
                results.append(("ok", codec.FrameReader(is_request=True).feed(bytes(data))))
            except FrameError as e:
                results.append(("err", e.reason))
        assert results[0] == results[1], bytes(data).hex()


# --- CRC -----------------------------------------------------------------------------------------


def test_crc_covers_every_byte_but_its_own(codec) -> None:
    """Flip each byte the CRC covers (except magic/len/version/hash, checked earlier): refused."""
    frame = codec.encode_request(42, Op.KV_PUT, b"\x00\x00\x03\x00abc" + bytes(20))
    covered = [*range(8, 16), 20, 21, 23, *range(32, len(frame))]  # id, op, flags, payload
    for i in covered:
        bad = bytearray(frame)
        bad[i] ^= 0x01
        with pytest.raises(FrameError) as ei:
            request_reader(codec).feed(bytes(bad))
        assert ei.value.reason == Reason.MALFORMED and "crc" in ei.value.message
    for i in range(16, 20):  # the CRC field itself
        bad = bytearray(frame)
        bad[i] ^= 0x80
        with pytest.raises(FrameError):
            request_reader(codec).feed(bytes(bad))


def test_reply_crc_checked(codec) -> None:
    bad = bytearray(PUT_OK)
    bad[-1] ^= 0xFF
    with pytest.raises(FrameError) as ei:
        reply_reader(codec).feed(bytes(bad))
    assert ei.value.reason == Reason.MALFORMED


def test_crc_check_can_be_disabled(codec) -> None:
    bad = bytearray(PUT_REQ)
    bad[16:20] = b"\x00\x00\x00\x00"
    assert request_reader(codec, check_crc=False).feed(bytes(bad)) == [(1, Op.KV_PUT, PUT_PAYLOAD)]


def test_good_frames_before_a_bad_one(codec) -> None:
    """A good frame fed in an earlier call is delivered; the bad one then raises."""
    r = request_reader(codec)
    assert r.feed(PUT_REQ) == [(1, Op.KV_PUT, PUT_PAYLOAD)]
    bad = bytearray(GET_REQ)
    bad[-1] ^= 1
    with pytest.raises(FrameError):
        r.feed(bytes(bad))


# --- header checks and bounds -----------------------------------------------------------------


def test_bad_magic(codec) -> None:
    for i in range(4):
        bad = bytearray(PUT_REQ)
        bad[i] ^= 0x20
        with pytest.raises(FrameError) as ei:
            request_reader(codec).feed(bytes(bad))
        assert ei.value.reason == Reason.MALFORMED and "magic" in ei.value.message
    # RESP or HTTP bytes on the Flo port parse as a bad magic, not as a huge length
    with pytest.raises(FrameError):
        request_reader(codec).feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(10))


def test_bad_version_and_table_hash(codec) -> None:
    for offset, value in ((22, 1), (22, 3), (24, 0), (31, 0)):
        bad = bytearray(PUT_REQ)
        bad[offset] = value
        with pytest.raises(FrameError) as ei:
            request_reader(codec).feed(bytes(bad))
        assert ei.value.reason == Reason.TABLE_MISMATCH
    # replies carry the version at offset 20
    bad = bytearray(PUT_OK)
    bad[20] = 1
    with pytest.raises(FrameError) as ei:
        reply_reader(codec).feed(bytes(bad))
    assert ei.value.reason == Reason.TABLE_MISMATCH


def test_header_is_judged_before_the_payload_arrives(codec) -> None:
    """A bad header is refused as soon as its 32 bytes are in, without waiting for the payload."""
    bad = bytearray(PUT_REQ)
    bad[22] = 9
    with pytest.raises(FrameError):
        request_reader(codec).feed(bytes(bad[:HEADER_SIZE]))
    r = request_reader(codec)
    assert r.feed(PUT_REQ[:31]) == []  # 31 bytes: not yet a header


def test_payload_bound(codec) -> None:
    limit = 100
    ok = codec.encode_request(1, Op.KV_GET, bytes(limit))
    assert request_reader(codec, max_payload=limit).feed(ok) == [(1, Op.KV_GET, bytes(limit))]
    too_big = codec.encode_request(1, Op.KV_GET, bytes(limit + 1))
    # refused from the header alone: the server never buffers an oversized frame
    with pytest.raises(FrameError) as ei:
        request_reader(codec, max_payload=limit).feed(too_big[:HEADER_SIZE])
    assert ei.value.reason == Reason.FIELD_TOO_LONG


def test_default_bound_and_claimed_huge_length(codec) -> None:
    head = bytearray(codec.encode_request(1, Op.KV_GET, b""))
    struct.pack_into("<I", head, 4, 0xFFFFFFFF)
    with pytest.raises(FrameError) as ei:
        request_reader(codec).feed(bytes(head))
    assert ei.value.reason == Reason.FIELD_TOO_LONG
    struct.pack_into("<I", head, 4, DEFAULT_MAX_FRAME)  # at the bound: waits for the payload
    r = request_reader(codec)
    assert r.feed(bytes(head)) == [] and r.buffered == HEADER_SIZE


# --- payload splitting -----------------------------------------------------------------------


def _payload(ns: bytes, key: bytes, rest: bytes = b"") -> bytes:
    return struct.pack("<H", len(ns)) + ns + struct.pack("<H", len(key)) + key + rest


def test_split_payload(codec) -> None:
    p = _payload(b"ns", b"k" * 300, b"REST")
    ns, key, pos = codec.split_payload(p)
    assert (ns, key, p[pos:]) == ("ns", b"k" * 300, b"REST")
    ns, key, pos = codec.split_payload(_payload(b"", b""))
    assert (ns, key, pos) == ("", b"", 4)
    ns, _, _ = codec.split_payload(_payload("名前".encode(), b"\xff\x00"))
    assert ns == "名前"


@pytest.mark.parametrize(
    "payload",
    [
        b"", b"\x00", b"\x00\x00\x00",  # shorter than two length fields
        b"\x05\x00ab\x00\x00",  # namespace overruns
        b"\x02\x00ab\x05\x00k",  # key overruns
        b"\x02\x00ab\x01",  # key length cut
        _payload(b"\xff\xfe", b"k"),  # namespace not UTF-8
    ],
)
def test_split_payload_refusals(codec, payload: bytes) -> None:
    with pytest.raises(FrameError) as ei:
        codec.split_payload(payload)
    assert ei.value.reason == Reason.MALFORMED


def test_split_value_options(codec) -> None:
    base = _payload(b"n", b"k")
    pos = len(base)
    p = base + struct.pack("<I", 3) + b"val" + struct.pack("<H", 5) + bytes([Tag.COUNT, 3]) + b"\x01\x02\x03"
    assert codec.split_value_options(p, pos) == (b"val", {Tag.COUNT: b"\x01\x02\x03"})
    # an absent options block is tolerated (no u16 at all)
    assert codec.split_value_options(base + struct.pack("<I", 0), pos) == (b"", {})
    # empty options block
    assert codec.split_value_options(base + struct.pack("<I", 1) + b"v\x00\x00", pos) == (b"v", {})


@pytest.mark.parametrize(
    "rest",
    [
        b"", b"\x01\x00\x00",  # no value length
        struct.pack("<I", 10) + b"short",  # value overruns
        struct.pack("<I", 0) + struct.pack("<H", 4) + b"\x15\x01",  # options overrun
        struct.pack("<I", 0) + struct.pack("<H", 3) + b"\x15\x04\x00",  # one option overruns its block
    ],
)
def test_split_value_options_refusals(codec, rest: bytes) -> None:
    base = _payload(b"n", b"k")
    with pytest.raises(FrameError) as ei:
        codec.split_value_options(base + rest, len(base))
    assert ei.value.reason == Reason.MALFORMED


# --- options TLV -------------------------------------------------------------------------------


def test_parse_options(codec) -> None:
    block = bytes([Tag.BLOCK_MS, 4]) + struct.pack("<I", 1500) + bytes([Tag.STREAM_TAIL, 0]) + bytes([Tag.PRIORITY, 1, 9])
    assert codec.parse_options(block) == {Tag.BLOCK_MS: struct.pack("<I", 1500), Tag.STREAM_TAIL: b"", Tag.PRIORITY: b"\x09"}
    assert codec.parse_options(b"") == {}
    # the last of a repeated tag wins; unknown tags are passed through for the handler to judge
    assert codec.parse_options(b"\x10\x01\x01\x10\x01\x02\xee\x00") == {0x10: b"\x02", 0xEE: b""}
    # a value of the maximal 255 bytes
    assert codec.parse_options(b"\x25\xff" + b"z" * 255) == {0x25: b"z" * 255}


@pytest.mark.parametrize("block", [b"\x10", b"\x10\x02\x01", b"\x10\x01\x01\x15"], ids=["tag-only", "overrun", "trailing"])
def test_parse_options_refusals(codec, block: bytes) -> None:
    with pytest.raises(FrameError) as ei:
        codec.parse_options(block)
    assert ei.value.reason == Reason.MALFORMED


def test_options_round_trip_with_body_writer(codec) -> None:
    from flo_core.body import Writer

    opts = {Tag.COUNT: struct.pack("<I", 10), Tag.BLOCK_MS: struct.pack("<I", 0), Tag.DRY_RUN: b""}
    p = _payload(b"ns", b"q") + Writer().bytes32(b"value").options(opts).getvalue()
    _, _, pos = codec.split_payload(p)
    assert codec.split_value_options(p, pos) == (b"value", opts)


# --- the selection point ---------------------------------------------------------------------


def test_wire_selects_a_codec_with_the_same_names() -> None:
    names = {"FrameReader", "append_reply", "encode_reply", "encode_request", "parse_options", "split_payload",
             "split_value_options"}
    for n in names:
        assert getattr(wire, n) is getattr(cframe if wire.COMPILED else pyframe, n)
    if cframe is not None:
        # built: the compiled one is used unless FLO_PUREPYTHON is set
        assert wire.COMPILED != bool(os.environ.get("FLO_PUREPYTHON"))
    assert wire.FrameError is pyframe.FrameError


@pytest.mark.skipif(cframe is None, reason="needs the compiled codec")
def test_compiled_crc_equals_zlib_for_every_length() -> None:
    """The compiled CRC folds spans >= 64 bytes with PCLMULQDQ (flo_core/fastcrc.h) and hands the
    rest to zlib: every payload length from 0 to 1100 (and large ones), any alignment, must give
    zlib's frame, and the reader must accept it."""
    rng = random.Random(7)
    blob = bytes(rng.randrange(256) for _ in range(1200))
    for n in list(range(0, 1101)) + [4096, 65535, 1 << 20]:
        off = rng.randrange(0, 64)
        payload = (blob * (n // len(blob) + 2))[off:off + n]
        frame = cframe.encode_request(n, 0x101, payload)
        assert frame == pyframe.encode_request(n, 0x101, payload), n
        crc = zlib.crc32(frame[:16] + frame[20:32] + payload)
        assert struct.unpack_from("<I", frame, 16)[0] == crc
    r = cframe.FrameReader(is_request=True, max_payload=1 << 21)
    assert [len(p) for _, _, p in r.feed(cframe.encode_request(1, 0x101, blob[:999]))] == [999]


def test_constants_match_spec() -> None:
    assert PUT_REQ[:4] == struct.pack("<I", MAGIC) and PUT_REQ[22] == VERSION
    assert struct.unpack_from("<Q", PUT_REQ, 24)[0] == TABLE_HASH


def test_doctests() -> None:
    assert doctest.testmod(pyframe).failed == 0


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 63, 64, 65, 1000, 4096, (1 << 20) + 7])
def test_crc32_is_zlibs(n: int) -> None:
    # the snapshot writer and reader checksum with wire.crc32: files stay readable by zlib.crc32
    data = random.Random(n).randbytes(n)
    assert wire.crc32(data) == zlib.crc32(data)
    assert wire.crc32(memoryview(data), 0x1234) == zlib.crc32(data, 0x1234)
    assert wire.crc32(bytearray(data)) == zlib.crc32(data)


@pytest.mark.skipif(cframe is None, reason="needs the compiled codec")
def test_crc32_wide_and_narrow_folding_are_zlibs() -> None:
    # From 256 bytes on, CPUs with VPCLMULQDQ fold 16 lanes at once (flo_core/fastcrc.h); every length
    # to 3 KiB, any alignment and any starting CRC, with that path and without it (FLO_CRC_NARROW=1,
    # read when the CRC is first used: a fresh interpreter), must be zlib's.
    import subprocess
    import sys

    code = (
        "import random, sys, zlib\n"
        "from flo_core.wire import crc32\n"
        "rng = random.Random(11)\n"
        "blob = rng.randbytes(4096)\n"
        "bad = [n for n in range(3073) for off in (rng.randrange(64),)\n"
        "       for init in (rng.randrange(1 << 32),)\n"
        "       if crc32(blob[off:off + n], init) != zlib.crc32(blob[off:off + n], init)]\n"
        "print(len(bad), bad[:5])\n"
    )
    for env in ({}, {"FLO_CRC_NARROW": "1"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == "0", (env, out.stdout)
