"""Bad input on raw sockets: flo-server refuses clearly, closes only the guilty connection, never crashes.

* A frame that cannot be parsed (bad magic, version, table hash, CRC, an
  oversized length) gets one refusal frame with request id 0, then that
  connection is closed.
* An unknown op gets UNKNOWN_OP with the request's id; the connection stays.
* A body that does not parse gets MALFORMED with the request's id; the
  connection stays.
* Garbage from one client never disturbs another; a client that never reads
  its answers is back-pressured while others are served, with bounded memory.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time

import pytest

from flo_client import FloClient, GetOptions
from flo_core import _pyframe as pf
from flo_core.body import Writer
from flo_core.errors import parse_refusal_body
from flo_core.spec import HEADER_SIZE, MAGIC_BYTES, Op, Ran, Reason, Status
from tests.helpers import ServerProc

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(60)]

NS = b"badinput"


# --- raw socket helpers ----------------------------------------------------------------------------------


def payload(key: bytes = b"k", rest: bytes = b"", ns: bytes = NS) -> bytes:
    return struct.pack("<H", len(ns)) + ns + struct.pack("<H", len(key)) + key + rest


def get_body() -> bytes:
    return Writer().opt_u64(0).opt_u8(0).absent().absent().getvalue()


def ping() -> bytes:
    """PING is a value+options op: empty value, empty options."""
    return payload(b"", Writer().bytes32(b"").options({}).getvalue())


def put_body(value: bytes) -> bytes:
    return Writer().bytes32(value).absent().opt_u8(0).absent().absent().absent().getvalue()


class Raw:
    """A blocking socket speaking frames by hand."""

    def __init__(self, sp: ServerProc, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", sp.port), timeout=timeout)
        self.reader = pf.FrameReader(is_request=False, max_payload=1 << 30)
        self.frames: list[tuple[int, int, bytes]] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, rid: int, op: int, pl: bytes) -> None:
        self.send(pf.encode_request(rid, op, pl))

    def read(self) -> tuple[int, int, bytes]:
        """The next answer frame (fails on EOF or timeout)."""
        while not self.frames:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("connection closed")
            self.frames += self.reader.feed(data)
        return self.frames.pop(0)

    def call(self, rid: int, op: int, pl: bytes) -> tuple[int, int, bytes]:
        self.request(rid, op, pl)
        return self.read()

    def closed_by_server(self) -> bool:
        """True once the server closed: EOF (or reset) with nothing more to read."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.frames += self.reader.feed(data)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def refusal(frame: tuple[int, int, bytes]) -> tuple[int, int, int, int, str]:
    rid, status, data = frame
    reason, ran, msg = parse_refusal_body(data)
    assert len(data) >= 3, "every refusal carries reason and ran"
    return rid, status, reason, ran, msg


def assert_alive(sp: ServerProc) -> None:
    assert sp.proc is not None and sp.proc.poll() is None, "flo-server died:\n" + sp.log()
    r = Raw(sp)
    try:
        rid, status, _ = r.call(99, Op.PING, ping())
        assert (rid, status) == (99, Status.OK)
    finally:
        r.close()


# --- unparseable frames: refusal with id 0, then close --------------------------------------------------------


def _frame_with(**changes) -> bytes:
    f = bytearray(pf.encode_request(5, Op.KV_GET, payload(rest=get_body())))
    for off, val in changes.get("bytes", {}).items():
        f[off] = val
    return bytes(f)


@pytest.mark.parametrize(
    "name, frame, reason",
    [
        ("bad-version", _frame_with(bytes={22: 1}), Reason.TABLE_MISMATCH),
        ("future-version", _frame_with(bytes={22: 3}), Reason.TABLE_MISMATCH),
        ("bad-table-hash", _frame_with(bytes={24: 0x31}), Reason.TABLE_MISMATCH),
        ("bad-crc", _frame_with(bytes={16: 0}), Reason.MALFORMED),
        ("payload-flipped", _frame_with(bytes={HEADER_SIZE + 3: ord("X")}), Reason.MALFORMED),
    ],
)
def test_unparseable_first_frame(shared_server, name: str, frame: bytes, reason: Reason) -> None:
    r = Raw(shared_server)
    try:
        r.send(frame)
        rid, status, got_reason, ran, msg = refusal(r.read())
        assert (rid, status, got_reason, ran) == (0, Status.BAD_REQUEST, reason, Ran.NO), msg
        assert msg
        assert r.closed_by_server()
    finally:
        r.close()
    assert_alive(shared_server)


def test_bad_magic_after_a_good_frame(shared_server) -> None:
    # The first four bytes choose the protocol (FLO\0 or RESP), so bad magic is a later frame's.
    r = Raw(shared_server)
    try:
        assert r.call(1, Op.KV_GET, payload(rest=get_body()))[0] == 1
        r.send(b"XLO\x00" + bytes(28) + b"junk")
        rid, status, reason, ran, msg = refusal(r.read())
        assert (rid, status, reason, ran) == (0, Status.BAD_REQUEST, Reason.MALFORMED, Ran.NO)
        assert "magic" in msg
        assert r.closed_by_server()
    finally:
        r.close()
    assert_alive(shared_server)


def test_oversized_frame_refused_from_its_header(shared_server) -> None:
    """Only the header is sent: the server refuses without waiting for (or buffering) the payload."""
    r = Raw(shared_server)
    try:
        head = bytearray(pf.encode_request(3, Op.KV_PUT, b""))
        struct.pack_into("<I", head, 4, 512 * 1024 * 1024)
        r.send(bytes(head))
        rid, status, reason, ran, _ = refusal(r.read())
        assert (rid, status, reason, ran) == (0, Status.BAD_REQUEST, Reason.FIELD_TOO_LONG, Ran.NO)
        assert r.closed_by_server()
    finally:
        r.close()
    assert_alive(shared_server)


def test_max_frame_setting_is_enforced(make_server) -> None:
    sp = make_server("--max-frame", "4096")
    r = Raw(sp)
    try:
        assert r.call(1, Op.KV_PUT, payload(rest=put_body(b"x" * 3000)))[1] == Status.OK
        r.request(2, Op.KV_PUT, payload(rest=put_body(b"x" * 5000)))
        rid, status, reason, _, _ = refusal(r.read())
        assert (rid, status, reason) == (0, Status.BAD_REQUEST, Reason.FIELD_TOO_LONG)
        assert r.closed_by_server()
    finally:
        r.close()


def test_good_frames_before_a_bad_one_in_the_same_write_are_answered(shared_server) -> None:
    """Answers stay in order and complete: every well-framed request before the bad bytes gets its answer."""
    r = Raw(shared_server)
    try:
        good = b"".join(pf.encode_request(i, Op.KV_GET, payload(rest=get_body())) for i in (1, 2, 3))
        r.send(good + _frame_with(bytes={16: 0}))
        got = [r.read() for _ in range(4)]
        assert [g[0] for g in got] == [1, 2, 3, 0]
        assert refusal(got[3])[2] == Reason.MALFORMED
        assert r.closed_by_server()
    finally:
        r.close()


def test_resp_garbage_does_not_crash(shared_server) -> None:
    """Bytes that are neither a Flo frame nor RESP get an error and/or a close, nothing else."""
    for junk in (b"\x00\x01\x02\x03" * 20, b"*-5\r\n", b"$99999999999\r\n", b"GET\r\n\r\n" * 3, os.urandom(300)):
        r = Raw(shared_server, timeout=2)
        try:
            r.send(junk)
            r.sock.shutdown(socket.SHUT_WR)
            try:
                while r.sock.recv(65536):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
        finally:
            r.close()
    assert_alive(shared_server)


# --- per-request refusals: the connection stays -----------------------------------------------------------


@pytest.mark.parametrize("op", [0x0FF, Op.TS_WRITE, Op.CLUSTER_STATUS, 0x2FF, 0xFFFF])
def test_unknown_op_keeps_the_connection(shared_server, op: int) -> None:
    r = Raw(shared_server)
    try:
        rid, status, reason, ran, msg = refusal(r.call(41, op, payload(rest=Writer().bytes32(b"").options({}).getvalue())))
        assert (rid, status, reason, ran) == (41, Status.BAD_REQUEST, Reason.UNKNOWN_OP, Ran.NO)
        assert msg
        # still usable
        rid, status, _ = r.call(42, Op.KV_PUT, payload(b"after-unknown", put_body(b"ok")))
        assert (rid, status) == (42, Status.OK)
    finally:
        r.close()


def _cuts(body: bytes) -> list[bytes]:
    return [body[:i] for i in range(len(body))]


def test_truncated_put_bodies_are_malformed(shared_server) -> None:
    r = Raw(shared_server)
    try:
        value_field = Writer().bytes32(b"hello").getvalue()
        # every cut inside [value bytes32] and inside a present ttl
        bodies = _cuts(value_field) + [value_field + b"\x01" + bytes(k) for k in range(8)]
        for i, body in enumerate(bodies, start=100):
            rid, status, reason, ran, _ = refusal(r.call(i, Op.KV_PUT, payload(b"trunc", body)))
            assert (rid, status, reason, ran) == (i, Status.BAD_REQUEST, Reason.MALFORMED, Ran.NO), body
        # nothing was written
        rid, status, data = r.call(1, Op.KV_GET, payload(b"trunc", get_body()))
        assert status == Status.NOT_FOUND and refusal((rid, status, data))[2] == Reason.NOT_FOUND
    finally:
        r.close()


@pytest.mark.parametrize(
    "op, body",
    [
        (Op.KV_GET, b"\x01\x00\x00"),  # wait_ms cut
        (Op.KV_GET, b"\x02"),  # presence byte neither 0 nor 1
        (Op.KV_MGET, b"\x02\x00\x01\x00a"),  # two keys announced, one sent
        (Op.KV_MGET, b"\x01"),  # count cut
        (Op.KV_SCAN, b"\x01\x0a\x00\x00\x00\x05ab"),  # cursor overruns
        (Op.KV_HISTORY, b"\x01\x05"),
        (Op.KV_INCR, b"\x01\x05\x00"),
        (Op.KV_EXPIRE, b"\x10\x27"),  # ttl_ms is required and cut
        (Op.KV_JSON_GET, b"\x01\x05\x00$."),  # path overruns
        (Op.KV_JSON_SET, b"\x01\x01\x00$\x09\x00\x00\x00{}"),  # document overruns
        (Op.KV_COMMIT_TXN, b"\x01\x02\x03"),
        (Op.KV_ROLLBACK_TXN, b""),
        (Op.KV_DELETE, b"\x01\x07"),
        (Op.KV_PUT, b"\x05\x00\x00\x00hello\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x05\x00ab"),  # routing key cut
    ],
)
def test_truncated_table_bodies_are_malformed(shared_server, op: int, body: bytes) -> None:
    r = Raw(shared_server)
    try:
        rid, status, reason, ran, msg = refusal(r.call(7, op, payload(b"k", body)))
        assert (rid, status, reason, ran) == (7, Status.BAD_REQUEST, Reason.MALFORMED, Ran.NO), msg
        assert r.call(8, Op.PING, ping())[:2] == (8, Status.OK)
    finally:
        r.close()


@pytest.mark.parametrize(
    "pl, reason",
    [
        (b"", Reason.MALFORMED),  # no namespace or key length
        (b"\x05\x00ab", Reason.MALFORMED),  # namespace overruns
        (b"\x02\x00ab\x09\x00k", Reason.MALFORMED),  # key overruns
        (b"\x02\x00\xff\xfe\x01\x00k", Reason.MALFORMED),  # namespace is not UTF-8
        (struct.pack("<H", 300) + b"n" * 300 + b"\x01\x00k", Reason.FIELD_TOO_LONG),  # namespace > 255 bytes
        (struct.pack("<H", 256) + "é".encode() * 128 + b"\x01\x00k", Reason.FIELD_TOO_LONG),  # 128 chars, 256 bytes
    ],
)
def test_bad_payload_heads(shared_server, pl: bytes, reason: Reason) -> None:
    r = Raw(shared_server)
    try:
        rid, status, got, ran, _ = refusal(r.call(9, Op.KV_GET, pl))
        assert (rid, status, got, ran) == (9, Status.BAD_REQUEST, reason, Ran.NO)
        assert r.call(10, Op.PING, ping())[:2] == (10, Status.OK)
    finally:
        r.close()


def test_truncated_value_options_op(shared_server) -> None:
    r = Raw(shared_server)
    try:
        for i, rest in enumerate([b"\x09\x00\x00\x00ab", b"\x00\x00", b"\x02\x00\x00\x00hi\x05\x00\x10\x01"], start=20):
            rid, status, reason, ran, _ = refusal(r.call(i, Op.QUEUE_ENQUEUE, payload(b"q", rest)))
            assert (rid, status, reason, ran) == (i, Status.BAD_REQUEST, Reason.MALFORMED, Ran.NO)
        assert r.call(30, Op.PING, ping())[:2] == (30, Status.OK)
    finally:
        r.close()


def test_key_too_long_and_limits(shared_server) -> None:
    r = Raw(shared_server)
    try:
        # a key at the SDK's bound works, values at MAX_KV_VALUE-ish work
        big_key = b"k" * 4096
        assert r.call(1, Op.KV_PUT, payload(big_key, put_body(b"v")))[1] == Status.OK
        assert r.call(2, Op.KV_GET, payload(big_key, get_body()))[1] == Status.OK
        # wait_ms above 300 000 is out of range
        body = Writer().opt_u64(300_001).opt_u8(0).absent().absent().getvalue()
        assert refusal(r.call(3, Op.KV_GET, payload(b"k", body)))[2] == Reason.OUT_OF_RANGE
        # an unknown condition is refused, not treated as ALWAYS
        body = Writer().bytes32(b"v").absent().opt_u8(7).absent().absent().absent().getvalue()
        assert refusal(r.call(4, Op.KV_PUT, payload(b"k", body)))[1] == Status.BAD_REQUEST
    finally:
        r.close()


# --- fuzz: mutated KV requests never crash the server or earn INTERNAL_ERROR ---------------------------------------


def _valid_kv_requests() -> list[tuple[int, bytes]]:
    w = Writer
    return [
        (Op.KV_PUT, payload(b"fz", put_body(b"value"))),
        (Op.KV_PUT, payload(b"fz", w().bytes32(b"v").opt_u64(1000).opt_u8(1).opt_u64(0).opt_str16("r").absent().getvalue())),
        (Op.KV_GET, payload(b"fz", get_body())),
        (Op.KV_MGET, payload(b"", w().u16(2).bytes16(b"fz").bytes16(b"x").absent().getvalue())),
        (Op.KV_DELETE, payload(b"fz", w().opt_u64(5).absent().absent().getvalue())),
        (Op.KV_SCAN, payload(b"f", w().opt_u32(10).bytes8(b"\x00fz").getvalue())),
        (Op.KV_HISTORY, payload(b"fz", w().opt_u32(5).absent().getvalue())),
        (Op.KV_INCR, payload(b"fzc", w().opt_i64(3).absent().absent().getvalue())),
        (Op.KV_EXPIRE, payload(b"fz", w().u64(1000).absent().absent().absent().getvalue())),
        (Op.KV_EXISTS, payload(b"fz", b"\x00\x00")),
        (Op.KV_JSON_SET, payload(b"fzj", w().opt_str16("$").bytes32(b'{"a":[1,{"b":2}]}').absent().getvalue())),
        (Op.KV_JSON_GET, payload(b"fzj", w().opt_str16("$.a[1].b").absent().getvalue())),
        (Op.KV_JSON_DEL, payload(b"fzj", w().opt_str16("$.a[0]").absent().getvalue())),
        (Op.KV_BEGIN_TXN, payload(b"fz", b"")),
        (Op.KV_COMMIT_TXN, payload(b"", w().u64(1).getvalue())),
        (Op.KV_ROLLBACK_TXN, payload(b"", w().u64(1).getvalue())),
    ]


def test_fuzzed_kv_bodies_get_clear_answers(shared_server) -> None:
    rng = random.Random(1234)
    base = _valid_kv_requests()
    internal = []
    r = Raw(shared_server)
    try:
        rid = 0
        for _ in range(3000):
            op, pl = rng.choice(base)
            pl = bytearray(pl)
            head = 4 + len(NS)  # keep ns intact: mutate the key and body
            for _m in range(rng.randrange(1, 4)):
                kind = rng.random()
                if kind < 0.5 and len(pl) > head:
                    pl[rng.randrange(head, len(pl))] = rng.choice([0, 1, 2, 0x7F, 0xFF, rng.randrange(256)])
                elif kind < 0.75 and len(pl) > head:
                    del pl[rng.randrange(head, len(pl)):]
                else:
                    pl += rng.randbytes(rng.randrange(1, 6))
            rid += 1
            got_rid, status, data = r.call(rid, op, bytes(pl))
            assert got_rid == rid
            if status == Status.INTERNAL_ERROR:
                internal.append((hex(op), bytes(pl).hex(), parse_refusal_body(data)))
            elif status != Status.OK:
                reason, ran, _ = parse_refusal_body(data)
                assert len(data) >= 3 and ran in (0, 1, 2) and reason in set(Reason)
    finally:
        r.close()
    assert not internal, f"{len(internal)} INTERNAL_ERROR answers, e.g. {internal[:3]}"
    assert_alive(shared_server)


# --- isolation: garbage next to a well-behaved client ------------------------------------------------------


async def test_garbage_never_disturbs_another_client(shared_server) -> None:
    stop = asyncio.Event()
    rng = random.Random(99)

    async def garbage(i: int) -> None:
        while not stop.is_set():
            try:
                _, w = await asyncio.open_connection("127.0.0.1", shared_server.port)
            except OSError:
                continue
            good = pf.encode_request(1, Op.KV_PUT, payload(b"g%d" % i, put_body(b"x")))
            junk = rng.choice([
                MAGIC_BYTES + rng.randbytes(60),
                good[:40] + rng.randbytes(40),
                bytes(good[:16]) + b"\x00\x00\x00\x00" + good[20:],  # bad crc
                good + rng.randbytes(rng.randrange(1, 100)),
                rng.randbytes(200),
            ])
            w.write(junk)
            try:
                await w.drain()
            except ConnectionError:
                pass
            w.close()
            await asyncio.sleep(0)

    junkers = [asyncio.ensure_future(garbage(i)) for i in range(8)]
    try:
        async with FloClient(shared_server.endpoint, namespace="calm") as c:
            for i in range(300):
                v = await c.kv.put(f"k{i % 10}", b"%d" % i)
                got = await c.kv.get(f"k{i % 10}")
                assert (got.value, got.version) == (b"%d" % i, v.version)
    finally:
        stop.set()
        await asyncio.gather(*junkers, return_exceptions=True)
    assert_alive(shared_server)


# --- back-pressure --------------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_client_that_never_reads_is_back_pressured(shared_server) -> None:
    """A pipelining client that never reads: the server stops reading it, serves others, memory stays bounded."""
    value = b"v" * (16 * 1024)
    async with FloClient(shared_server.endpoint, namespace="bp") as c:
        await c.kv.put("big", value)
        rss_before = _rss_mb(shared_server.proc.pid)

        hog = socket.create_connection(("127.0.0.1", shared_server.port))
        hog.setblocking(False)
        one = pf.encode_request(1, Op.KV_GET, payload(b"big", get_body(), ns=b"bp"))
        chunk = one * 512  # 512 requests -> 8 MiB of answers
        sent = 0
        budget = 40_000  # requests at most: 640 MiB of answers if nothing pushed back
        deadline = time.monotonic() + 8
        loop = asyncio.get_running_loop()
        try:
            while sent < budget * len(one) and time.monotonic() < deadline:
                try:
                    n = hog.send(chunk)
                except BlockingIOError:
                    # the server stopped reading us: the kernel buffers are full
                    break
                sent += n
                await asyncio.sleep(0)
            # meanwhile others are served promptly
            t0 = loop.time()
            for i in range(20):
                await c.kv.put(f"other{i}", b"x")
                assert (await c.kv.get(f"other{i}")).value == b"x"
            assert loop.time() - t0 < 5
            growth = _rss_mb(shared_server.proc.pid) - rss_before
            requests_sent = sent // len(one)
            # without back-pressure the server would hold requests_sent x 16 KiB of answers
            unbounded_mb = requests_sent * len(value) / (1 << 20)
            assert growth < 200, f"RSS grew {growth:.0f} MiB (unbounded would be ~{unbounded_mb:.0f} MiB)"
            assert requests_sent < budget or unbounded_mb > 4 * max(growth, 1)
        finally:
            hog.close()
        # the hog's connection going away frees everything; the server still answers
        assert (await c.kv.get("big", GetOptions())).value == value
    assert_alive(shared_server)
