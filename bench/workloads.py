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

import functools
from dataclasses import dataclass, field
from typing import Callable

from flo_core.body import Reader, Writer, id_be
from flo_core.spec import DEFAULT_NAMESPACE, Condition, Op, RunStatus, Tag

FloBuilder = Callable[[bytes, bytes], tuple[int, bytes]]
RespBuilder = Callable[[bytes, bytes], list[bytes]]
#: A chained workload's next request: ``(step, key, value, previous reply) -> request``, or None when the cycle is done.
FloStep = Callable[[int, bytes, bytes, bytes], "tuple[int, bytes] | None"]
#: (A RESP step may return the command already encoded, as bytes.)
RespStep = Callable[[int, bytes, bytes, bytes], "list[bytes] | bytes | None"]


@dataclass(frozen=True)
class Chain:
    """A cycle of dependent requests (enqueue -> dequeue -> ack); one op = one whole cycle."""

    flo: FloStep
    resp: RespStep
    #: The cycle's requests for bench/fastload.pyx's engines, ``(key, value) -> args`` (FloCycle /
    #: RespCycle): the load generator runs the cycle in C when these are set and the engine is built.
    flo_fixed: Callable[[bytes, bytes], tuple] | None = None
    resp_fixed: Callable[[bytes, bytes], tuple] | None = None
    #: A cycle of one request, ``(key, value) -> (op, payload, after_id)``: FloPool sends it, and checks
    #: that the byte after the answer's leading id (str16) is ``after_id`` (what ``flo`` checks).
    flo_single: Callable[[bytes, bytes], tuple[int, bytes, int]] | None = None


#: A request built from a stream record id: ``(stream key, id) -> request``. Flo ids are ``(ts, seq)``, Redis ids ``b"ts-seq"``.
FloAt = Callable[[bytes, "tuple[int, int]"], "tuple[int, bytes]"]
RespAt = Callable[[bytes, bytes], "list[bytes]"]


@dataclass(frozen=True)
class StreamSeed:
    """Records appended to a fresh stream (a new key per load) before the clock starts.

    ``records`` is the fixed count for reads; ``records_per_op`` sizes it to the load
    instead (a group read consumes its records: ``total x records_per_op``, capped by
    ``--seed-max``). With ``flo_at`` / ``resp_at`` the request pool is built from the ids
    of the seeded records (random start ids, leaving ``tail`` records after each).
    """

    records: int = 0
    records_per_op: int = 0
    flo_at: FloAt | None = None
    resp_at: RespAt | None = None
    tail: int = 10
    #: Redis needs its consumer group created first (``XGROUP CREATE key group 0``).
    redis_group: bytes | None = None


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
    #: Each measurement writes to a key of its own (``fixed_key:N``): a queue holds at most
    #: 1M messages, so repetitions on one key would measure "queue is full" refusals.
    fresh_key: bool = False
    #: Set for chained workloads: the load generator runs cycles instead of single requests.
    chain: Chain | None = None
    #: Requests (or records) one op stands for: sizes the request count of a cell (a queue cycle is 3).
    cost: int = 1
    #: Set for workloads that read what was appended first (stream reads, group reads).
    seed: StreamSeed | None = None
    #: Needs action workers running (the harness starts them; the key is the action's name).
    needs_workers: bool = False
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


def in_namespace(payload: bytes, ns: str) -> bytes:
    """The same request in namespace ``ns`` (every payload starts with ``[ns str16]``).

    >>> in_namespace(kv_get(b"k", b"")[1], "bench")[:7]
    b'\\x05\\x00bench'
    """
    old = int.from_bytes(payload[:2], "little")
    return Writer().str16(ns).getvalue() + payload[2 + old :]


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


# --- Redis lists (RESP only: flo-server serves them on its RESP listener) ------

register(
    Workload(
        "list.lpush",
        "RESP LPUSH of one value (redis-benchmark -t lpush)",
        redis_benchmark=("-t", "lpush"),
        tags=("resp",),
    )
)

register(
    Workload(
        "list.rpop",
        "RESP RPOP of one value (redis-benchmark -t lpush,rpop: the RPOP row, the list filled first)",
        redis_benchmark=("-t", "lpush,rpop"),
        tags=("resp",),
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
        fresh_key=True,
        redis_benchmark=("LPUSH", "queue:bench", "__value__"),
        tags=("queue",),
    )
)


@functools.lru_cache(maxsize=256)
def flo_queue_cycle(key: bytes, value: bytes) -> tuple[tuple[int, bytes], tuple[int, bytes], tuple[int, bytes]]:
    """A cycle's fixed requests for ``key`` as ``(op, payload)``: enqueue, dequeue one, and the ack's
    head (the ack adds the seq), built once: the load generator spends its CPU on the sockets, not
    on encoding the same bytes again (bench/fastload.pyx's FloCycle takes them too)."""
    dequeue = _head(key).bytes32(b"").options({Tag.COUNT: (1).to_bytes(4, "little")}).getvalue()
    return queue_enqueue(key, value), (Op.QUEUE_DEQUEUE, dequeue), (Op.QUEUE_COMPLETE, _head(key).getvalue())


_ACK_ONE = (12).to_bytes(4, "little") + (1).to_bytes(4, "little")  # bytes32 of [count u32 = 1][seq u64]
_NO_OPTIONS = b"\x00\x00"


def _queue_step(step: int, key: bytes, value: bytes, prev: bytes) -> tuple[int, bytes] | None:
    enqueue, dequeue, (ack, head) = flo_queue_cycle(key, value)
    if step == 0:
        return enqueue
    if step == 1:
        return dequeue
    if step == 2:
        # dequeue answer: [count u32] then [seq u64][payload bytes32]...; ack that seq
        if len(prev) < 12 or int.from_bytes(prev[:4], "little") == 0:
            raise LookupError("dequeue returned no message")
        return ack, head + _ACK_ONE + prev[4:12] + _NO_OPTIONS
    return None


@functools.lru_cache(maxsize=256)
def redis_queue_cycle(key: bytes, value: bytes) -> tuple[bytes, bytes, bytes]:
    """The Redis cycle's commands for ``key``, encoded: LPUSH, RPOPLPUSH, and LREM's head."""
    # LREM's head: the command without its last argument (the value the move returned)
    lrem = b"*4\r\n" + resp_command([b"LREM", key + b":processing", b"1"])[len(b"*3\r\n"):]
    return resp_command([b"LPUSH", key, value]), resp_command([b"RPOPLPUSH", key, key + b":processing"]), lrem


def _redis_queue_step(step: int, key: bytes, value: bytes, prev: bytes) -> bytes | None:
    # Redis's reliable-queue pattern: push, move to a processing list, remove it from there (the ack).
    # Encoded RESP (built once per key, as the Flo requests are).
    push, move, lrem = redis_queue_cycle(key, value)
    if step == 0:
        return push
    if step == 1:
        return move
    if step == 2:
        if not prev:
            raise LookupError("RPOPLPUSH returned nil")
        return lrem + b"$%d\r\n%s\r\n" % (len(prev), prev)
    return None


register(
    Workload(
        "queue.cycle",
        "enqueue -> dequeue (lease) -> ack, one cycle per op (Redis LPUSH -> RPOPLPUSH -> LREM)",
        flo=queue_enqueue,
        fixed_key=b"queue:cycle",
        chain=Chain(_queue_step, _redis_queue_step, flo_queue_cycle, redis_queue_cycle),
        cost=3,
        tags=("queue",),
    )
)


# --- stream reads (flo-wire-v2 §3.4) and consumer groups (§3.5) --------------------

#: Records per read, in both the XRANGE-like read and the group read.
READ_COUNT = 10
_COUNT_OPT = {Tag.COUNT: READ_COUNT.to_bytes(4, "little")}
BENCH_GROUP = "bench"
BENCH_CONSUMER = "c"


def stream_append_batch(key: bytes, payloads: list[bytes]) -> tuple[int, bytes]:
    """One STREAM_APPEND of several records (the answer is the first id; the rest follow as seq+1, ...)."""
    w = Writer().u32(len(payloads))
    for p in payloads:
        w.bytes32(p).u16(0)
    return Op.STREAM_APPEND, _head(key).bytes32(w.getvalue()).options({}).getvalue()


def stream_read_at(key: bytes, start: tuple[int, int]) -> tuple[int, bytes]:
    # value empty; STREAM_START is the big-endian id, inclusive
    opts = {Tag.STREAM_START: id_be(*start), **_COUNT_OPT}
    return Op.STREAM_READ, _head(key).bytes32(b"").options(opts).getvalue()


def record_ids(body: bytes) -> list[tuple[int, int]]:
    """The ``(ts, seq)`` of every record of a record list (read, group read).

    >>> record_ids(b"\\x00\\x00\\x00\\x00")
    []
    """
    r = Reader(body)
    if len(body) < 4:
        return []
    ids = []
    for _ in range(r.u32()):
        seq, ts = r.u64(), r.i64()  # the record header is [seq][ts]: sequence first
        r.u8()  # tier
        r.u32()  # partition
        if r.u8():
            r.bytes32()  # key
        r.bytes32()  # payload
        for _h in range(r.u32()):
            r.bytes32()
            r.bytes32()
        ids.append((ts, seq))
    return ids


register(
    Workload(
        "stream.read",
        f"read {READ_COUNT} records from a random id of a seeded stream (Redis XRANGE key id + COUNT {READ_COUNT})",
        fixed_key=b"stream:read",
        seed=StreamSeed(records=10_000, flo_at=stream_read_at,
                        resp_at=lambda k, i: [b"XRANGE", k, i, b"+", b"COUNT", b"%d" % READ_COUNT]),
        tags=("stream",),
    )
)


def _group_step(step: int, key: bytes, value: bytes, prev: bytes) -> tuple[int, bytes] | None:
    if step == 0:
        who = Writer().str16(BENCH_GROUP).str16(BENCH_CONSUMER).getvalue()
        return Op.STREAM_GROUP_READ, _head(key).bytes32(who).options(_COUNT_OPT).getvalue()
    if step == 1:
        ids = record_ids(prev)
        if not ids:
            raise LookupError("group read returned no records")
        w = Writer().str16(BENCH_GROUP).str16(BENCH_CONSUMER).u32(len(ids))
        for ts, seq in ids:
            w.id_le(ts, seq)  # ack ids are LE [ts][seq]
        return Op.STREAM_GROUP_ACK, _head(key).bytes32(w.getvalue()).options({}).getvalue()
    if step == 2:
        if int.from_bytes(prev[:4], "little") == 0:
            raise LookupError("group ack acknowledged nothing")
        return None
    return None


def _redis_group_step(step: int, key: bytes, value: bytes, prev: object) -> list[bytes] | None:
    if step == 0:
        return [b"XREADGROUP", b"GROUP", BENCH_GROUP.encode(), BENCH_CONSUMER.encode(), b"COUNT",
                b"%d" % READ_COUNT, b"STREAMS", key, b">"]
    if step == 1:
        # [[key, [[id, [f, v]], ...]]] or nil
        if not prev:
            raise LookupError("XREADGROUP returned nil")
        entries = prev[0][1]  # type: ignore[index]
        return [b"XACK", key, BENCH_GROUP.encode(), *(e[0] for e in entries)]
    return None


register(
    Workload(
        "stream.group",
        f"consumer-group read of {READ_COUNT} records, then ack of those ids; one cycle per op "
        f"(Redis XREADGROUP COUNT {READ_COUNT} -> XACK)",
        fixed_key=b"stream:group",
        chain=Chain(_group_step, _redis_group_step),  # type: ignore[arg-type]
        cost=30,  # each cycle consumes 10 seeded records: keep the seeding bounded
        seed=StreamSeed(records_per_op=READ_COUNT, redis_group=BENCH_GROUP.encode()),
        tags=("stream",),
    )
)


# --- actions (flo-wire-v2 §3.6; ACTION_RESULT and invoke's WAIT_MS are our extensions) ------

#: How long one wait for a no-op run lasts: a run not finished by then is an error, not a hang.
RESULT_WAIT_MS = 2_000
_RESULT_WAIT = {Tag.WAIT_MS: RESULT_WAIT_MS.to_bytes(4, "little")}


def _invoke_request(key: bytes, value: bytes, opts: dict) -> bytes:
    # value [has_labels u8 = 0][input: rest]
    return _head(key).bytes32(b"\x00" + value).options(opts).getvalue()


def _completed(status: bytes) -> None:
    if not status or status[0] != RunStatus.COMPLETED:
        raise LookupError(f"run not completed: status {status[:1].hex() or 'empty'}")


def _action_call_step(step: int, key: bytes, value: bytes, prev: bytes) -> tuple[int, bytes] | None:
    if step == 0:  # one request: invoke and wait (client.action.call)
        return Op.ACTION_INVOKE, _invoke_request(key, value, _RESULT_WAIT)
    r = Reader(prev)  # [run_id str16] then ACTION_RESULT's answer
    r.bytes16()
    _completed(r.rest())
    return None


def _action_call(key: bytes, value: bytes) -> tuple[int, bytes, int]:
    """:func:`_action_call_step` as one request for bench/fastload.pyx's FloPool."""
    return Op.ACTION_INVOKE, _invoke_request(key, value, _RESULT_WAIT), int(RunStatus.COMPLETED)


def _action_step(step: int, key: bytes, value: bytes, prev: bytes) -> tuple[int, bytes] | None:
    if step == 0:
        return Op.ACTION_INVOKE, _invoke_request(key, value, {})
    if step == 1:
        run_id = Reader(prev).bytes16()  # [run_id str16][opt output absent]
        return Op.ACTION_RESULT, _head(run_id).bytes32(b"").options(_RESULT_WAIT).getvalue()
    _completed(prev)
    return None


for _name, _what, _step, _single in (
    ("action.roundtrip", "invoke a no-op action and wait for its result in one request (ACTION_INVOKE with "
     "WAIT_MS, client.action.call) while ActionWorker processes complete it", _action_call_step, _action_call),
    ("action.invoke_result", "invoke a no-op action, then wait for its result (ACTION_RESULT): two requests "
     "per round trip", _action_step, None),
):
    register(Workload(_name, _what, fixed_key=b"bench-noop", chain=Chain(_step, lambda *a: None, flo_single=_single),
                      cost=3, needs_workers=True, tags=("action",)))


def resp_command(args: list[bytes]) -> bytes:
    """One RESP2 array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)
