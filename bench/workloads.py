"""The workload table: one small entry per thing we measure.

A workload says how to build one request for a key and a value, in each
protocol it speaks:

* ``flo(key, value) -> (op, payload)`` - a Flo wire v2 request payload
  (namespace + key + body), encoded once into a pool of frames by the load
  generator with :func:`flo_core.wire.encode_request`;
* ``resp(key, value) -> [args]`` - the same thing as a RESP command, for Redis
  (and for flo-server's RESP listener) driven by the same load generator;
* ``redis_benchmark`` - the ``redis-benchmark`` arguments of the RESP column.

Adding a workload is one decorated function pair: the harness grid refers to
workloads by name only.

Example:
    >>> w = WORKLOADS["kv.set"]
    >>> op, payload = w.flo(b"key:1", b"v" * 3)
    >>> hex(op), payload[:9]
    ('0x100', b'\\x07\\x00default')
    >>> w.resp(b"key:1", b"vvv")
    [b'SET', b'key:1', b'vvv']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from flo_core.body import Writer
from flo_core.spec import DEFAULT_NAMESPACE, Condition, Op, Tag

FloBuilder = Callable[[bytes, bytes], tuple[int, bytes]]
RespBuilder = Callable[[bytes, bytes], list[bytes]]
#: A chained workload's next request: ``(step, key, value, previous reply) -> request``, or None when the cycle is done.
FloStep = Callable[[int, bytes, bytes, bytes], "tuple[int, bytes] | None"]
RespStep = Callable[[int, bytes, bytes, bytes], "list[bytes] | None"]


@dataclass(frozen=True)
class Chain:
    """A cycle of dependent requests (enqueue -> dequeue -> ack); one op = one whole cycle."""

    flo: FloStep
    resp: RespStep


@dataclass(frozen=True)
class Workload:
    name: str
    summary: str
    flo: FloBuilder | None = None
    resp: RespBuilder | None = None
    key_prefix: bytes = b"key:"
    #: One key for every request (a single stream / queue) instead of a random keyspace.
    fixed_key: bytes | None = None
    #: Write one SET per pool key before timing (reads must find their key).
    prefill: bool = False
    #: ``redis-benchmark`` arguments after the common ones (``-t set`` or a raw command).
    redis_benchmark: tuple[str, ...] = ()
    #: Whether the value size matters (INCR ignores it).
    uses_value: bool = True
    #: Set for chained workloads: the load generator runs cycles instead of single requests.
    chain: Chain | None = None
    tags: tuple[str, ...] = field(default=())


WORKLOADS: dict[str, Workload] = {}


def register(w: Workload) -> Workload:
    if w.name in WORKLOADS:
        raise ValueError(f"workload {w.name!r} registered twice")
    WORKLOADS[w.name] = w
    return w


def _head(key: bytes, ns: str = DEFAULT_NAMESPACE) -> Writer:
    """``[ns str16][key str16]`` - every payload starts with them."""
    return Writer().str16(ns).bytes16(key)


# --- KV (table ops, flo-wire-v2 §3.1) ----------------------------------------


def kv_put(key: bytes, value: bytes) -> tuple[int, bytes]:
    # value, ttl absent, condition ALWAYS (the SDK always sends it), cas absent, routing, txn
    body = _head(key).bytes32(value).opt_u64(None).opt_u8(Condition.ALWAYS).opt_u64(None).absent().absent()
    return Op.KV_PUT, body.getvalue()


def kv_get(key: bytes, value: bytes) -> tuple[int, bytes]:
    # wait_ms 0 and wait_for EXISTS present (as the SDK sends them), routing, txn
    return Op.KV_GET, _head(key).opt_u64(0).opt_u8(0).absent().absent().getvalue()


def kv_incr(key: bytes, value: bytes) -> tuple[int, bytes]:
    return Op.KV_INCR, _head(key).opt_i64(1).absent().absent().getvalue()


register(
    Workload(
        "kv.set",
        "KV put of a fixed-size value (Redis SET)",
        flo=kv_put,
        resp=lambda k, v: [b"SET", k, v],
        redis_benchmark=("-t", "set"),
        tags=("kv",),
    )
)
register(
    Workload(
        "kv.get",
        "KV get of an existing key (Redis GET)",
        flo=kv_get,
        resp=lambda k, v: [b"GET", k],
        prefill=True,
        redis_benchmark=("-t", "get"),
        tags=("kv",),
    )
)
register(
    Workload(
        "kv.incr",
        "KV atomic +1 (Redis INCR)",
        flo=kv_incr,
        resp=lambda k, v: [b"INCR", k],
        key_prefix=b"ctr:",  # never collide with the string values of kv.set
        redis_benchmark=("-t", "incr"),
        uses_value=False,
        tags=("kv",),
    )
)


# --- streams (value+options ops, flo-wire-v2 §3.4) ---------------------------


def stream_append(key: bytes, value: bytes) -> tuple[int, bytes]:
    # value = [record_count u32 = 1][payload bytes32][header_count u16 = 0]; no options
    record = Writer().u32(1).bytes32(value).u16(0).getvalue()
    return Op.STREAM_APPEND, _head(key).bytes32(record).options({}).getvalue()


register(
    Workload(
        "stream.append",
        "append one record to a stream (Redis XADD key * f value)",
        flo=stream_append,
        resp=lambda k, v: [b"XADD", k, b"*", b"f", v],
        fixed_key=b"stream:bench",
        redis_benchmark=("XADD", "stream:bench", "*", "f", "__value__"),
        tags=("stream",),
    )
)


# --- queues (value+options ops, flo-wire-v2 §3.3) ----------------------------


def queue_enqueue(key: bytes, value: bytes) -> tuple[int, bytes]:
    return Op.QUEUE_ENQUEUE, _head(key).bytes32(value).options({}).getvalue()


register(
    Workload(
        "queue.enqueue",
        "enqueue one message at priority 0 (Redis LPUSH)",
        flo=queue_enqueue,
        resp=lambda k, v: [b"LPUSH", k, v],
        fixed_key=b"queue:bench",
        redis_benchmark=("LPUSH", "queue:bench", "__value__"),
        tags=("queue",),
    )
)


def _queue_step(step: int, key: bytes, value: bytes, prev: bytes) -> tuple[int, bytes] | None:
    if step == 0:
        return queue_enqueue(key, value)
    if step == 1:
        return Op.QUEUE_DEQUEUE, _head(key).bytes32(b"").options({Tag.COUNT: (1).to_bytes(4, "little")}).getvalue()
    if step == 2:
        # dequeue answer: [count u32] then [seq u64][payload bytes32]...; ack that seq
        if len(prev) < 12 or int.from_bytes(prev[:4], "little") == 0:
            raise LookupError("dequeue returned no message")
        return Op.QUEUE_COMPLETE, _head(key).bytes32(b"\x01\x00\x00\x00" + prev[4:12]).options({}).getvalue()
    return None


def _redis_queue_step(step: int, key: bytes, value: bytes, prev: bytes) -> list[bytes] | None:
    # Redis's reliable-queue pattern: push, move to a processing list, remove it from there (the ack).
    if step == 0:
        return [b"LPUSH", key, value]
    if step == 1:
        return [b"RPOPLPUSH", key, key + b":processing"]
    if step == 2:
        if not prev:
            raise LookupError("RPOPLPUSH returned nil")
        return [b"LREM", key + b":processing", b"1", prev]
    return None


register(
    Workload(
        "queue.cycle",
        "enqueue -> dequeue (lease) -> ack, one cycle per op (Redis LPUSH -> RPOPLPUSH -> LREM)",
        flo=queue_enqueue,
        fixed_key=b"queue:cycle",
        chain=Chain(_queue_step, _redis_queue_step),
        tags=("queue",),
    )
)


def resp_command(args: list[bytes]) -> bytes:
    """One RESP2 array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)
