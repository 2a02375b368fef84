"""Closed-loop load generator: N connections x K requests in flight, bounded by count and time.

Run it as its own process so it can be pinned to the other core::

    taskset -c 1 python -m bench.loadgen --port 9000 --proto flo --workload kv.set -c 50 -k 16 -n 200000

Requests are pre-encoded into a pool of frames (Flo wire v2 frames built with
:func:`flo_core.wire.encode_request`, or RESP commands), so the generator spends
as little CPU as possible per request: it is the server we want to saturate.
Every connection keeps K requests in flight; replies are matched FIFO per
connection, the Flo request id of every reply is checked, and the latency of
every request is recorded. A non-OK status, a wrong id or a RESP ``-ERR`` is
counted as an error (the harness reports errors; it never hides them).

Prints one JSON line: ``ops_s``, ``p50_us``, ``p99_us``, ... and the CPU seconds
this process used (a generator near 100 % CPU is the limit, not the server).

``--tls-ca PEM`` connects with TLS (verifying the server against that CA) and
``--user U --password P`` sends AUTH first on every connection, before the
clock starts; ``--namespace`` moves single-request workloads out of
``default`` (a user restricted to one namespace).

Example (in-process)::

    >>> import asyncio, uvloop  # doctest: +SKIP
    >>> res = uvloop.run(run(LoadSpec(port=9000, workload="kv.get", conns=1, window=1, total=1000)))
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import ssl
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass

from flo_core.body import Writer
from flo_core.spec import Op, Status
from flo_core.wire import FrameError, FrameReader, encode_request

from .workloads import WORKLOADS, Workload, in_namespace, resp_command, stream_append_batch

try:
    from . import fastload  # the queue cycle in C (bench/fastload.pyx), built in place by `make`
except ImportError:  # not built: every chained workload runs in Python
    fastload = None  # type: ignore[assignment]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class LoadSpec:
    port: int
    workload: str = "kv.set"
    proto: str = "flo"  # flo | resp
    host: str = "127.0.0.1"
    conns: int = 50
    window: int = 1
    total: int = 200_000
    max_seconds: float = 30.0
    value_size: int = 100
    keyspace: int = 100_000
    pool: int = 8192
    seed: int = 1
    #: Keys ``prefix + i`` for i in [0, total) in order, each sent once (loading data for the memory test).
    sequential: bool = False
    key_width: int = 0  # zero-pad sequential key numbers to this many digits
    #: Read this process's CPU time from /proc over exactly the timed phase (the server's cost per op).
    server_pid: int = 0
    #: Overrides the workload's fixed key (an action name; the base name of a seeded stream).
    key: str = ""
    #: Most records seeded into a stream for a load that consumes them (stream.group).
    seed_max: int = 200_000
    #: Every connection sends AUTH as this user first (untimed); Flo wire only.
    user: str = ""
    password: str = ""
    #: Connect with TLS, verifying the server certificate against this CA (PEM).
    tls_ca: str = ""
    #: The requests' namespace instead of ``default`` (single-request workloads).
    namespace: str = ""
    #: ``auto`` runs each connection's closed loop in C (bench/fastload.pyx) where it is built (and,
    #: for a chained workload, where the workload has an engine); ``python`` always in Python.
    engine: str = "auto"


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (0.0 when it cannot be read)."""
    if pid <= 0:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def load_core_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot of the one core this process is pinned to, from
    /proc/stat: the whole load side's cost (this generator and what shares its core, such as
    an action cell's workers). None when not pinned to one core (the figure would mix in others)."""
    cores = os.sched_getaffinity(0)
    if len(cores) != 1:
        return None
    want = f"cpu{next(iter(cores))} "
    try:
        with open("/proc/stat") as f:
            line = next((ln for ln in f if ln.startswith(want)), None)
    except OSError:
        return None
    if line is None:
        return None
    ticks = [int(x) for x in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total


def busy_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 1)


# --- request pools ----------------------------------------------------------------


def _keys(w: Workload, spec: LoadSpec, n: int, start: int = 0) -> list[bytes]:
    if w.fixed_key is not None:
        return [spec.key.encode() if spec.key else w.fixed_key] * n  # --key names the one key
    if spec.sequential:
        return [w.key_prefix + str(i).zfill(spec.key_width).encode() for i in range(start, start + n)]
    rnd = random.Random(spec.seed)
    return [w.key_prefix + b"%d" % rnd.randrange(spec.keyspace) for _ in range(n)]


def build_frames(w: Workload, proto: str, keys: list[bytes], value: bytes, first_rid: int = 1,
                 ns: str = "") -> tuple[list[bytes], list[int]]:
    """Pre-encode one request per key (in namespace ``ns`` if given); Flo request ids are ``first_rid, ...``."""
    frames: list[bytes] = []
    rids: list[int] = []
    if proto == "flo":
        if w.flo is None:
            raise SystemExit(f"workload {w.name} has no Flo wire form")
        rid = first_rid
        for k in keys:
            op, payload = w.flo(k, value)
            frames.append(encode_request(rid, op, in_namespace(payload, ns) if ns else payload))
            rids.append(rid)
            rid += 1
    else:
        if w.resp is None:
            raise SystemExit(f"workload {w.name} has no RESP form")
        for k in keys:
            frames.append(resp_command(w.resp(k, value)))
            rids.append(0)
    return frames, rids


class RespError(bytes):
    """A RESP ``-ERR ...`` reply."""


class RespIncomplete(Exception):
    """The buffer ends inside a reply."""


def resp_parse(buf: bytes, pos: int = 0) -> tuple[object, int]:
    """One RESP2 reply at ``pos`` -> ``(value, end)``: bytes, int-as-bytes, None, list, or :class:`RespError`.

    >>> resp_parse(b"*2\\r\\n$1\\r\\na\\r\\n:3\\r\\n")
    ([b'a', b'3'], 15)
    """
    e = buf.find(b"\r\n", pos)
    if e < 0:
        raise RespIncomplete
    t = buf[pos]
    if t == 36:  # '$' bulk
        n = int(buf[pos + 1 : e])
        if n < 0:
            return None, e + 2
        end = e + 2 + n
        if end + 2 > len(buf):
            raise RespIncomplete
        return buf[e + 2 : end], end + 2
    if t == 42:  # '*' array
        n = int(buf[pos + 1 : e])
        if n < 0:
            return None, e + 2
        p = e + 2
        items = []
        for _ in range(n):
            v, p = resp_parse(buf, p)
            items.append(v)
        return items, p
    if t == 45:  # '-' error
        return RespError(buf[pos + 1 : e]), e + 2
    return buf[pos + 1 : e], e + 2  # '+' simple, ':' integer


def build_requests(reqs: list, proto: str, first_rid: int = 1) -> tuple[list[bytes], list[int]]:
    """Encode ready-made requests: ``(op, payload)`` for Flo, argument lists for RESP."""
    if proto == "flo":
        rids = list(range(first_rid, first_rid + len(reqs)))
        return [encode_request(rid, op, payload) for rid, (op, payload) in zip(rids, reqs)], rids
    return [resp_command(a) for a in reqs], [0] * len(reqs)


async def exchange(spec: LoadSpec, reqs: list, window: int = 64, timeout: float = 120.0) -> list:
    """Send ``reqs`` over one connection, ``window`` at a time, and return every answer body (seeding, untimed).

    A refused request stops the load (seeding that failed would make every measurement wrong).
    """
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(spec.host, spec.port, **_tls(spec)), timeout=10)
    auth = [auth_request(spec)] if spec.user else []  # answered first, and dropped
    frames, rids = build_requests(auth + reqs, spec.proto)
    fr = FrameReader(is_request=False, check_crc=False)
    out: list = []
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        for lo in range(0, len(frames), window):
            writer.write(b"".join(frames[lo : lo + window]))
            want = min(len(frames), lo + window)
            while len(out) < want:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"seeding took longer than {timeout:.0f} s")
                data = await asyncio.wait_for(reader.read(1 << 20), timeout=left)
                if not data:
                    raise SystemExit("the server closed the connection while seeding")
                if spec.proto == "flo":
                    for rid, status, body in fr.feed(data):
                        if status != 0 or rid != rids[len(out)]:
                            raise SystemExit(f"seeding refused: {_describe_refusal(status, body)}")
                        out.append(body)
                else:
                    buf += data
                    pos = 0
                    while pos < len(buf):
                        try:
                            v, pos2 = resp_parse(buf, pos)
                        except RespIncomplete:
                            break
                        if isinstance(v, RespError):
                            raise SystemExit(f"seeding refused: {v.decode(errors='replace')}")
                        out.append(v)
                        pos = pos2
                    buf = buf[pos:]
    finally:
        writer.close()
    return out[len(auth):]


async def seed_stream(spec: LoadSpec, w: Workload, key: bytes, n: int, value: bytes) -> list:
    """Append ``n`` records to the fresh stream ``key``; their ids, in order."""
    if spec.proto == "flo":
        batch = 1000  # the server's MAX_APPEND_BATCH: ids of a batch are (ts, seq), (ts, seq+1), ...
        sizes = [min(batch, n - lo) for lo in range(0, n, batch)]
        reqs = [stream_append_batch(key, [value] * k) for k in sizes]
        ids: list = []
        for k, body in zip(sizes, await exchange(spec, reqs, window=4)):
            first_seq, ts = int.from_bytes(body[:8], "little"), int.from_bytes(body[8:16], "little", signed=True)
            ids.extend((ts, first_seq + i) for i in range(k))
        return ids
    reqs = [[b"XADD", key, b"*", b"f", value] for _ in range(n)]
    ids = await exchange(spec, reqs, window=256)
    if w.seed is not None and w.seed.redis_group:
        await exchange(spec, [[b"XGROUP", b"CREATE", key, w.seed.redis_group, b"0"]])
    return ids


# --- connecting: TLS and AUTH ---------------------------------------------------


def auth_request(spec: LoadSpec) -> tuple[int, bytes]:
    """AUTH ``spec.user`` / ``spec.password``: [ns str16 ""][user str16][password bytes32][options]."""
    user = spec.user.encode()
    return Op.AUTH, (b"\x00\x00" + len(user).to_bytes(2, "little") + user
                     + Writer().bytes32(spec.password.encode()).options({}).getvalue())


@functools.lru_cache(maxsize=4)
def _ssl_context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)  # one per CA, shared by every connection


def _tls(spec: LoadSpec) -> dict:
    """``create_connection`` arguments for TLS (server certificate verified against ``spec.tls_ca``), or none."""
    if not spec.tls_ca:
        return {}
    return {"ssl": _ssl_context(spec.tls_ca), "server_hostname": spec.host}


class _Auth(asyncio.Protocol):
    """A connection's first exchange: AUTH, before the load protocol takes the transport over."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.done = asyncio.get_running_loop().create_future()
        self.reader = FrameReader(is_request=False, check_crc=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.frame)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for _rid, status, body in self.reader.feed(data):
            if not self.done.done():
                if status == 0:
                    self.done.set_result(None)
                else:
                    self.done.set_exception(SystemExit(f"AUTH refused: {_describe_refusal(status, body)}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(SystemExit(f"connection closed during AUTH: {exc}"))


async def connect(spec: LoadSpec, factory) -> asyncio.Protocol:  # type: ignore[no-untyped-def]
    """Open one connection (TLS if asked), AUTH on it if asked, then hand it to ``factory()``'s protocol.

    The load protocols never see the AUTH answer, so their reply loops stay as they are.
    """
    loop = asyncio.get_running_loop()
    if not spec.user:
        _, proto = await asyncio.wait_for(loop.create_connection(factory, spec.host, spec.port, **_tls(spec)),
                                          timeout=10)
        return proto
    frame = encode_request(1, *auth_request(spec))
    transport, hs = await asyncio.wait_for(
        loop.create_connection(lambda: _Auth(frame), spec.host, spec.port, **_tls(spec)), timeout=10)
    try:
        await asyncio.wait_for(hs.done, timeout=10)
    except BaseException:
        transport.close()
        raise
    proto = factory()
    transport.set_protocol(proto)
    proto.connection_made(transport)
    return proto


# --- the closed loop --------------------------------------------------------------


class _State:
    __slots__ = ("completed", "errors", "statuses", "error_sample", "lat", "stop", "server_cpu", "load_core_busy")

    def __init__(self) -> None:
        self.completed = 0
        self.errors = 0
        self.statuses: Counter[int] = Counter()
        self.error_sample = ""
        self.lat: list[int] = []
        self.stop = False
        self.server_cpu = 0.0
        self.load_core_busy: float | None = None


class FloLoad(asyncio.Protocol):
    """One connection: K in flight, FIFO matching, request-id check."""

    def __init__(self, st: _State, window: int, frames: list[bytes], rids: list[int], offset: int, budget: int) -> None:
        self.st = st
        self.window = window
        self.frames = frames
        self.rids = rids
        self.np = len(frames)
        self.idx = offset % self.np
        self.budget = budget
        self.inflight: deque[tuple[int, int]] = deque()  # (send ns, request id)
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.reader = FrameReader(is_request=False, check_crc=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self) -> None:
        self._send(self.window)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _send(self, k: int) -> None:
        if self.st.stop:
            k = 0
        k = min(k, self.budget)
        if k <= 0:
            if not self.inflight:
                self._finish()
            return
        self.budget -= k
        now = time.perf_counter_ns()
        fr, rids, np_, i = self.frames, self.rids, self.np, self.idx
        infl = self.inflight
        out = []
        for _ in range(k):
            out.append(fr[i])
            infl.append((now, rids[i]))
            i += 1
            if i == np_:
                i = 0
        self.idx = i
        self.transport.write(b"".join(out) if k > 1 else out[0])  # type: ignore[union-attr]

    def _error(self, what: str) -> None:
        self.st.errors += 1
        if not self.st.error_sample:
            self.st.error_sample = what

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.reader.feed(data)
        except FrameError as e:
            self._error(f"bad reply frame: {e.message}")
            self.transport.close()  # type: ignore[union-attr]
            return
        if not replies:
            return
        now = time.perf_counter_ns()
        lat = self.st.lat
        infl = self.inflight
        for rid, status, body in replies:
            if not infl:
                self._error("reply without a request")
                continue
            t0, expected = infl.popleft()
            if rid != expected:
                self._error(f"reply id {rid}, expected {expected}")
            elif status != 0:
                self.st.statuses[status] += 1
                self.st.errors += 1
                if not self.st.error_sample:
                    self.st.error_sample = _describe_refusal(status, body)
            lat.append(now - t0)
        self.st.completed += len(replies)
        self._send(len(replies))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inflight:
            self._error(f"connection lost with {len(self.inflight)} requests in flight")
        self._finish()


class RespLoad(FloLoad):
    """Same closed loop, RESP2 replies (+OK, $bulk, $-1, :int, -ERR, *array)."""

    def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        got = 0
        find = buf.find
        while pos < n:
            e = find(b"\r\n", pos)
            if e < 0:
                break
            t = buf[pos]
            if t == 36:  # '$' bulk string
                ln = int(buf[pos + 1 : e])
                if ln >= 0:
                    end = e + 2 + ln + 2
                    if end > n:
                        break
                    pos = end
                else:
                    pos = e + 2
            elif t == 42:  # '*' array (XRANGE): the slow, general parser
                try:
                    _, pos = resp_parse(buf, pos)
                except RespIncomplete:
                    break
            else:
                if t == 45:  # '-' error
                    self._error(buf[pos + 1 : e].decode("utf-8", "replace"))
                pos = e + 2
            got += 1
        self.buf = buf[pos:] if pos < n else b""
        if got:
            now = time.perf_counter_ns()
            lat = self.st.lat
            infl = self.inflight
            for _ in range(got):
                lat.append(now - infl.popleft()[0])
            self.st.completed += got
            self._send(got)


class ChainLoad(asyncio.Protocol):
    """Chained workloads (enqueue -> dequeue -> ack): K cycles in flight per connection.

    Each reply feeds the workload's next step; one completed cycle is one op,
    and its latency runs from the first request to the last reply.
    """

    def __init__(self, st: _State, window: int, w: Workload, key: bytes, value: bytes, budget: int,
                 proto: str) -> None:
        self.st = st
        self.window = window
        self.chain = w.chain
        self.key = key
        self.value = value
        self.budget = budget
        self.resp = proto == "resp"
        self.rid = 0
        self.inflight: deque[tuple[int, int, int]] = deque()  # (cycle start ns, request id, step)
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.reader = FrameReader(is_request=False, check_crc=False)
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self) -> None:
        out: list[bytes] = []
        self._new_cycles(self.window, out, time.perf_counter_ns())
        self._flush(out)

    def _encode(self, step: int, prev: object, t0: int, out: list[bytes]) -> str:
        """Queue the cycle's next request: ``sent``, ``done`` (the cycle is complete) or ``failed``."""
        try:
            req = (self.chain.resp if self.resp else self.chain.flo)(step, self.key, self.value, prev)  # type: ignore[union-attr]
        except (LookupError, ValueError, TypeError, IndexError) as e:
            self._error(f"step {step}: {e}")  # type: ignore[arg-type]
            return "failed"
        if req is None:
            return "done"
        self.rid += 1
        if not self.resp:
            out.append(encode_request(self.rid, req[0], req[1]))  # type: ignore[index]
        else:
            out.append(req if isinstance(req, bytes) else resp_command(req))  # type: ignore[arg-type]
        self.inflight.append((t0, self.rid if not self.resp else 0, step))
        return "sent"

    def _new_cycles(self, k: int, out: list[bytes], now: int) -> None:
        if self.st.stop:
            k = 0
        k = min(k, self.budget)
        self.budget -= k
        for _ in range(k):
            self._encode(0, b"", now, out)

    def _flush(self, out: list[bytes]) -> None:
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]
        elif not self.inflight and not self.done.done():
            self.done.set_result(None)

    def _replies(self, data: bytes) -> list[tuple[int, int, object]]:
        """(request id, status, body) per reply; RESP replies carry id 0, status 0 or -1 (-ERR) and a
        parsed value (nil = b"")."""
        if not self.resp:
            return self.reader.feed(data)
        buf = self.buf + data if self.buf else data
        out: list[tuple[int, bool, object]] = []
        pos, n = 0, len(buf)
        while pos < n:
            try:
                v, pos2 = resp_parse(buf, pos)
            except RespIncomplete:
                break
            out.append((0, -1 if isinstance(v, RespError) else 0, b"" if v is None else v))
            pos = pos2
        self.buf = buf[pos:]
        return out

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._replies(data)
        except FrameError as e:
            self._error(f"bad reply frame: {e.message}")  # type: ignore[arg-type]
            self.transport.close()  # type: ignore[union-attr]
            return
        now = time.perf_counter_ns()
        out: list[bytes] = []
        finished = 0
        for rid, status, body in replies:
            t0, expected, step = self.inflight.popleft()
            if rid != expected or status != 0:
                if rid != expected:
                    why = f"reply id {rid}, expected {expected}"
                elif not self.resp:
                    self.st.statuses[status] += 1
                    why = _describe_refusal(status, body)  # type: ignore[arg-type]
                else:
                    why = repr(body)[:200]
                self._error(f"step {step}: {why}")
                finished += 1  # the cycle is abandoned; start another one
                continue
            state = self._encode(step + 1, body, t0, out)
            if state != "sent":
                if state == "done":
                    self.st.lat.append(now - t0)
                    self.st.completed += 1
                finished += 1
        if finished:
            self._new_cycles(finished, out, now)
        self._flush(out)

    _error = FloLoad._error
    _finish = FloLoad._finish
    connection_lost = FloLoad.connection_lost


class FastLoad(asyncio.Protocol):
    """One connection driven by an engine of bench/fastload.pyx (the closed loop in C): this protocol
    only moves bytes between the socket and the engine, and the engine's counts into the state.
    Every reply is checked as FloLoad / RespLoad / ChainLoad check it."""

    def __init__(self, st: _State, engine: object) -> None:
        self.st = st
        self.eng = engine
        self.flight = engine.flight  # type: ignore[attr-defined]
        self.flight.describe = _describe_refusal
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    @staticmethod
    def pool(st: _State, window: int, frames: list[bytes], offset: int, budget: int, proto: str) -> "FastLoad":
        engine = fastload.RespPool if proto == "resp" else fastload.FloPool
        return FastLoad(st, engine(window, budget, st.lat, frames, offset))

    @staticmethod
    def chain(st: _State, window: int, w: Workload, key: bytes, value: bytes, budget: int, proto: str) -> "FastLoad":
        if proto != "resp" and w.chain.flo_single is not None:  # type: ignore[union-attr]
            op, payload, after_id = w.chain.flo_single(key, value)  # type: ignore[union-attr]
            return FastLoad(st, fastload.FloPool(window, budget, st.lat, [encode_request(1, op, payload)], 0, after_id))
        fixed = w.chain.resp_fixed if proto == "resp" else w.chain.flo_fixed  # type: ignore[union-attr]
        engine = fastload.RespCycle if proto == "resp" else fastload.FloCycle
        return FastLoad(st, engine(window, budget, st.lat, *fixed(key, value)))  # type: ignore[misc]

    @staticmethod
    def usable(w: Workload, proto: str, engine: str) -> bool:
        """Whether a load of ``w`` over ``proto`` runs in C (``engine`` "auto", and an engine is built)."""
        if engine != "auto" or fastload is None:
            return False
        if w.chain is None:
            return True
        if proto == "resp":
            return w.chain.resp_fixed is not None
        return w.chain.flo_fixed is not None or w.chain.flo_single is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self) -> None:
        self._flush(self.eng.start())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.flight.stop = self.st.stop
        try:
            out = self.eng.feed_replies(data)  # type: ignore[attr-defined]
        except FrameError as e:
            self._error(f"bad reply frame: {e.message}")
            self.transport.close()  # type: ignore[union-attr]
            return
        self._count()
        self._flush(out)

    def _count(self) -> None:
        c, st = self.flight, self.st
        if c.completed:
            st.completed += c.completed
            c.completed = 0
        if c.errors:
            st.errors += c.errors
            c.errors = 0
            st.error_sample = st.error_sample or c.error_sample
        if c.statuses:
            st.statuses.update(c.statuses)
            c.statuses.clear()

    def _flush(self, out: bytes) -> None:
        if out:
            self.transport.write(out)  # type: ignore[union-attr]
        elif not self.flight.inflight:
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self._count()
        if self.flight.inflight:
            self._error(f"connection lost with {self.flight.inflight} requests in flight")
        self._finish()

    _error = FloLoad._error
    _finish = FloLoad._finish


def _describe_refusal(status: int, body: bytes) -> str:
    try:
        name = Status(status).name
    except ValueError:
        name = str(status)
    reason = int.from_bytes(body[:2], "little") if len(body) >= 2 else -1
    msg = body[3:].decode("utf-8", "replace") if len(body) > 3 else ""
    return f"status {name} reason {reason}: {msg}"[:300]


def pct(sorted_vals: list[int], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))
    return float(sorted_vals[i])


async def _phase(spec: LoadSpec, frames: list[bytes], rids: list[int], conns: int, window: int, total: int,
                 max_seconds: float, exact: bool) -> tuple[_State, float, float]:
    """Run one closed loop; ``exact`` gives each connection its own slice of the pool, sent once."""
    st = _State()
    cls = RespLoad if spec.proto == "resp" else FloLoad
    w = WORKLOADS[spec.workload]
    fast = FastLoad.usable(w, spec.proto, spec.engine)
    clients: list[FloLoad] = []
    per = total // conns
    for c in range(conns):
        budget = per + (1 if c < total % conns else 0)
        if w.chain is not None and not exact:
            key = spec.key.encode() if spec.key else (w.fixed_key or w.key_prefix + b"%d" % c)
            chain = FastLoad.chain if fast else ChainLoad
            proto = await connect(spec, lambda b=budget, key=key, chain=chain: chain(st, window, w, key,
                                                                                      b"v" * spec.value_size, b, spec.proto))
            clients.append(proto)  # type: ignore[arg-type]
            continue
        if exact:
            lo = c * per + min(c, total % conns)
            fr, rd, off = frames[lo : lo + budget], rids[lo : lo + budget], 0
        else:
            fr, rd, off = frames, rids, c * 97
        if budget <= 0 or not fr:
            continue
        if fast:
            proto = await connect(spec, lambda fr=fr, off=off, b=budget: FastLoad.pool(st, window, fr, off, b, spec.proto))
        else:
            proto = await connect(spec, lambda fr=fr, rd=rd, off=off, b=budget: cls(st, window, fr, rd, off, b))
        clients.append(proto)  # type: ignore[arg-type]
    cpu0 = proc_cpu_seconds(spec.server_pid)
    core0 = load_core_ticks()
    t0 = time.perf_counter()  # every connection is open before the clock starts
    for cl in clients:
        cl.start()
    done = asyncio.gather(*(cl.done for cl in clients))
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout=max_seconds)
    except asyncio.TimeoutError:
        st.stop = True  # stop sending; let the requests in flight come back
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout=5)
        except asyncio.TimeoutError:
            st.errors += 1
            st.error_sample = st.error_sample or "replies still missing 5 s after the time limit"
    elapsed = time.perf_counter() - t0
    st.server_cpu = proc_cpu_seconds(spec.server_pid) - cpu0
    st.load_core_busy = busy_pct(core0, load_core_ticks())
    for cl in clients:
        cl.transport.close()  # type: ignore[union-attr]
    return st, elapsed, t0


async def run(spec: LoadSpec) -> dict:
    """Run one bounded load and return its result record."""
    if spec.host not in LOOPBACK:
        raise SystemExit("loopback only")
    w = WORKLOADS[spec.workload]
    value = b"v" * spec.value_size
    prefill_s = 0.0
    seeded = 0
    timed_from: float | None = None
    if spec.sequential:
        # Data loading: keys 0..total-1 once each, built in chunks to bound memory.
        st_all = _State()
        elapsed = 0.0
        chunk = 100_000
        for start in range(0, spec.total, chunk):
            keys = _keys(w, spec, min(chunk, spec.total - start), start)
            frames, rids = build_frames(w, spec.proto, keys, value)
            st, el, _ = await _phase(spec, frames, rids, spec.conns, spec.window, len(frames),
                                     max(1.0, spec.max_seconds - elapsed), exact=True)
            elapsed += el
            st_all.completed += st.completed
            st_all.errors += st.errors
            st_all.statuses.update(st.statuses)
            st_all.error_sample = st_all.error_sample or st.error_sample
            st_all.lat.extend(st.lat)
            st_all.server_cpu += st.server_cpu
            if elapsed >= spec.max_seconds or st.stop:
                st_all.stop = True
                break
        st = st_all
    else:
        ids: list = []
        if w.seed is not None:
            # A fresh stream per load (repetitions and servers never share one), seeded untimed.
            t = time.perf_counter()
            base = spec.key.encode() if spec.key else (w.fixed_key or b"stream:bench")
            key = base + b":%d.%d" % (os.getpid(), time.time_ns())
            n = w.seed.records or max(1, min(spec.total * w.seed.records_per_op, spec.seed_max))
            if w.seed.records_per_op:  # a consuming load cannot do more ops than the records allow
                spec.total = max(1, min(spec.total, n // w.seed.records_per_op))
            ids = await seed_stream(spec, w, key, n, value)
            spec.key = key.decode()
            seeded = len(ids)
            prefill_s = time.perf_counter() - t
        keys = _keys(w, spec, spec.pool)
        if w.chain is not None:
            keys = []  # chained workloads build each request from the previous reply
        if w.prefill:
            # Reads must find their key: one SET per distinct pool key, untimed.
            t = time.perf_counter()
            setw = WORKLOADS["kv.set"]
            pf, prid = build_frames(setw, spec.proto, sorted(set(keys)), value, ns=spec.namespace)
            pre, _, _ = await _phase(spec, pf, prid, 1, 64, len(pf), 60.0, exact=True)
            if pre.errors:
                raise SystemExit(f"prefill failed: {pre.error_sample}")
            prefill_s = time.perf_counter() - t
        at = None if w.seed is None else (w.seed.flo_at if spec.proto == "flo" else w.seed.resp_at)
        if at is not None:
            # Requests at random ids of the seeded records, each leaving `tail` records to read.
            rnd = random.Random(spec.seed)
            hi = max(1, len(ids) - w.seed.tail)  # type: ignore[union-attr]
            reqs = [at(spec.key.encode(), ids[rnd.randrange(hi)]) for _ in range(spec.pool)]
            frames, rids = build_requests(reqs, spec.proto)
        else:
            frames, rids = build_frames(w, spec.proto, keys, value, ns=spec.namespace) if keys else ([], [])
        st, elapsed, t0 = await _phase(spec, frames, rids, spec.conns, spec.window, spec.total, spec.max_seconds,
                                       exact=False)
        timed_from = time.time() - (time.perf_counter() - t0)  # the timed phase's start, wall clock
    lat = sorted(st.lat)
    return {
        **{k: v for k, v in asdict(spec).items() if k not in ("host", "seed", "pool", "server_pid", "password")},
        "completed": st.completed,
        "errors": st.errors,
        "error_statuses": {Status(s).name if s in Status._value2member_map_ else str(s): n
                           for s, n in st.statuses.items()},
        "error_sample": st.error_sample,
        "elapsed_s": round(elapsed, 4),
        "timed_from_unix": None if timed_from is None else round(timed_from, 3),
        "ops_s": round(st.completed / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_us": round(pct(lat, 50) / 1000, 1),
        "p90_us": round(pct(lat, 90) / 1000, 1),
        "p99_us": round(pct(lat, 99) / 1000, 1),
        "p999_us": round(pct(lat, 99.9) / 1000, 1),
        "mean_us": round(sum(lat) / len(lat) / 1000, 1) if lat else float("nan"),
        "prefill_s": round(prefill_s, 3),
        "seeded_records": seeded,
        "server_cpu_pct": round(100 * st.server_cpu / elapsed, 1) if spec.server_pid and elapsed > 0 else None,
        # The load core's busy share over the timed phase (None unless pinned to one core).
        "load_core_busy_pct": st.load_core_busy,
        "timed_out": st.stop,
        # the closed loop ran in C (bench/fastload.pyx) or in Python
        "engine": "c" if FastLoad.usable(w, spec.proto, spec.engine) else "python",
    }


def run_sync(spec: LoadSpec) -> dict:
    """Run :func:`run` on a fresh uvloop loop and add this process's CPU time to the result."""
    import uvloop

    c0 = os.times()
    res = uvloop.run(run(spec))
    c1 = os.times()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    res["loadgen_cpu_s"] = round(cpu, 3)
    res["loadgen_cpu_pct"] = round(100.0 * cpu / res["elapsed_s"], 1) if res["elapsed_s"] else 0.0
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto", choices=["flo", "resp"], default="flo")
    ap.add_argument("--workload", "-w", choices=sorted(WORKLOADS), default="kv.set")
    ap.add_argument("--conns", "-c", type=int, default=50)
    ap.add_argument("--window", "-k", type=int, default=1, help="requests in flight per connection")
    ap.add_argument("--total", "-n", type=int, default=200_000)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--value-size", "-d", type=int, default=100)
    ap.add_argument("--keyspace", "-r", type=int, default=100_000)
    ap.add_argument("--pool", type=int, default=8192)
    ap.add_argument("--sequential", action="store_true", help="send keys 0..n-1 once each (data loading)")
    ap.add_argument("--key-width", type=int, default=0)
    ap.add_argument("--server-pid", type=int, default=0, help="report this pid's CPU %% over the timed phase")
    ap.add_argument("--key", default="", help="the workload's key instead of its fixed one (an action name)")
    ap.add_argument("--seed-max", type=int, default=200_000, help="most records seeded for a consuming stream load")
    ap.add_argument("--user", default="", help="send AUTH as this user first on every connection (untimed)")
    ap.add_argument("--password", default="", help="its password")
    ap.add_argument("--tls-ca", default="", help="connect with TLS, verifying the server against this CA (PEM)")
    ap.add_argument("--namespace", default="", help="the requests' namespace (single-request workloads)")
    ap.add_argument("--engine", choices=["auto", "python"], default="auto",
                    help="run the closed loop in C where there is an engine (auto), or in Python")
    a = ap.parse_args(argv)
    if a.host not in LOOPBACK:
        ap.error("loopback only: the load generator never targets another machine")
    for name, lo, hi in (("conns", 1, 10_000), ("window", 1, 4096), ("total", 1, 100_000_000),
                         ("value_size", 0, 16 * 1024 * 1024), ("pool", 1, 1_000_000),
                         ("seed_max", 1, 10_000_000)):
        if not lo <= getattr(a, name) <= hi:
            ap.error(f"--{name.replace('_', '-')} must be in [{lo}, {hi}]")
    if len(a.key.encode()) > 200:
        ap.error("--key is at most 200 bytes")
    if not 0 < a.max_seconds <= 3600:
        ap.error("--max-seconds must be in (0, 3600]")
    if a.user and a.proto != "flo":
        ap.error("--user sends a Flo wire AUTH: --proto flo only")
    wl = WORKLOADS[a.workload]
    if a.namespace and (a.proto != "flo" or wl.chain is not None or wl.seed is not None):
        ap.error("--namespace applies to single-request Flo workloads (kv.*, stream.append, queue.enqueue)")
    spec = LoadSpec(port=a.port, workload=a.workload, proto=a.proto, host=a.host, conns=a.conns, window=a.window,
                    total=a.total, max_seconds=a.max_seconds, value_size=a.value_size, keyspace=a.keyspace,
                    pool=a.pool, sequential=a.sequential, key_width=a.key_width,
                    server_pid=a.server_pid, key=a.key, seed_max=a.seed_max, user=a.user, password=a.password,
                    tls_ca=a.tls_ca, namespace=a.namespace, engine=a.engine)
    print(json.dumps(run_sync(spec)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
