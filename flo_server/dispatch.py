"""The handler table and the checks every request gets once, before any handler.

Those checks are the payload's bounds and, for a connection whose user may not do
everything, its permissions (:func:`flo_server.auth.check_flo`).

Handlers register with :func:`handler` (one per op, checked at import). The
edge calls :func:`dispatch` per frame; it splits the payload, applies the
generic bounds, runs the handler and turns any exception into a refusal
through :func:`flo_core.errors.refusal_of` - the server's only translation point.
"""

from __future__ import annotations

import inspect
import logging
from time import monotonic_ns
from typing import Any, Callable

from flo_core import wire
from flo_core.errors import Refusal, refusal_body, refusal_of
from flo_core.spec import DEFAULT_NAMESPACE, MAX_KEY, MAX_NAMESPACE, SPEC, TABLE_OPS, Reason, Status
from flo_server.auth import check_flo
from flo_server.waiters import Parked

log = logging.getLogger("flo_server.dispatch")

Handler = Callable[[Any, "Request"], Any]
HANDLERS: dict[int, Handler] = {}


def handler(op: int) -> Callable[[Handler], Handler]:
    """Register the handler of ``op``; an op gets exactly one."""

    def deco(fn: Handler) -> Handler:
        if op in HANDLERS and HANDLERS[op] is not fn:
            raise RuntimeError(f"two handlers for op 0x{op:03x}")
        if op not in SPEC:
            raise RuntimeError(f"handler for op 0x{op:03x}, which is not in flo_core.spec")
        HANDLERS[op] = fn
        return fn

    return deco


class Request:
    """One parsed request. ``body`` for table ops; ``value``/``opts`` for the others."""

    __slots__ = ("op", "rid", "ns", "key", "body", "value", "opts", "conn", "now")

    def __init__(self, op: int, rid: int, ns: str, key: bytes, conn: Any, now: int) -> None:
        self.op = op
        self.rid = rid
        self.ns = ns
        self.key = key
        self.conn = conn
        self.now = now
        self.body = b""
        self.value = b""
        self.opts: dict[int, bytes] = {}

    @property
    def name(self) -> str:
        """The key as text (queue, stream and action names)."""
        try:
            return self.key.decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(Reason.MALFORMED, "name is not UTF-8") from None


def parse(op: int, rid: int, payload: bytes, conn: Any, now: int) -> Request:
    """Split and bound-check a payload; raises Refusal on bad input."""
    try:
        ns, key, pos = wire.split_payload(payload)
        if payload[0] | (payload[1] << 8) > MAX_NAMESPACE:  # bytes, not characters
            raise Refusal(Reason.FIELD_TOO_LONG, f"namespace longer than {MAX_NAMESPACE} bytes")
        if len(key) > MAX_KEY:
            raise Refusal(Reason.FIELD_TOO_LONG, f"key longer than {MAX_KEY} bytes")
        req = Request(op, rid, ns or DEFAULT_NAMESPACE, key, conn, now)
        if op in TABLE_OPS:
            req.body = payload[pos:]
        else:
            req.value, req.opts = wire.split_value_options(payload, pos)
    except wire.FrameError as e:
        raise Refusal(e.reason, e.message) from None
    return req


def dispatch(srv: Any, rid: int, op: int, payload: bytes, conn: Any, now: int) -> tuple[int, bytes] | Any:
    """Run one request: ``(status, data)`` now, or a coroutine that yields it later."""
    t0 = monotonic_ns()
    fn = HANDLERS.get(op)
    req = None
    if fn is None:
        return _counted(srv, op, req, conn, refused(Refusal(Reason.UNKNOWN_OP, f"unknown op 0x{op:03x}")), t0)
    try:
        req = parse(op, rid, payload, conn, now)
        if conn is not None and not conn.trusted:
            check_flo(conn.user, req)  # the one permission check (flo_server.auth)
        router = srv.router
        if router is not None:
            elsewhere = router.route(req, op, payload)  # the one routing check (flo_server.cluster.router)
            if elsewhere is not None:
                _counted(srv, op, req, conn, None, t0)
                return Answering(None, op, elsewhere, relayed=True)
        out = fn(srv, req)
    except Exception as e:  # noqa: BLE001 - every failure becomes a refusal
        return _counted(srv, op, req, conn, refused(e), t0)
    if type(out) is bytes:
        return _counted(srv, op, req, conn, (0, out), t0)
    _counted(srv, op, req, conn, None, t0)  # its service time; the answer is counted when it comes
    if type(out) is Parked:  # parked without a task: it answers the connection itself
        out.metrics, out.op = srv.metrics, op
        return out
    return Answering(srv.metrics, op, out)


def _counted(srv: Any, op: int, req: Request | None, conn: Any, answer: tuple[int, bytes] | None,
             t0: int) -> Any:
    """The Python path's metrics hook: count the answer, time one request in 32, note a slow one
    (the C paths count their own, flo_core.metrics)."""
    m = srv.metrics
    if m is not None:
        ns = monotonic_ns() - t0
        if answer is not None:
            m.record(m.slot_of_op(op), answer[0], ns if m.want_sample() else -1)
        if srv.slowlog.wants(ns):
            spec = SPEC.get(op)
            argv = [(spec.op.name if spec else f"op 0x{op:03x}").encode()]
            if req is not None:
                argv += [req.ns.encode(), req.key]
            srv.slowlog.add(ns, argv, _peer(conn), b"")
    return answer


def _peer(conn: Any) -> str:
    peer = conn.transport.get_extra_info("peername") if conn is not None and conn.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if peer else ""


def discard(r: Any) -> None:
    """Drop an answer-to-come that :func:`dispatch` returned, without running it (its connection is
    closing): closes the handler's coroutine it holds, so that none is collected un-awaited (a
    RuntimeWarning in the server's log per dropped blocking request)."""
    todo = [r]
    while todo:
        c = todo.pop()
        if type(c) is Answering:
            todo.append(c.awaiting)
            continue
        if inspect.iscoroutine(c) and inspect.getcoroutinestate(c) == inspect.CORO_CREATED:
            todo += [v for v in c.cr_frame.f_locals.values() if inspect.iscoroutine(v)]  # its arguments, not started
        close = getattr(c, "close", None)
        if close is not None:
            close()


class Answering:
    """A request's answer-to-come: awaits ``awaiting`` and gives ``(status, data)``, a failure as its
    refusal. A blocking handler's ``awaiting`` gives the OK data, and the answer is counted in
    ``metrics``; a relayed request's (``relayed``: another cluster member answers) gives the whole
    ``(status, data)`` it came with.

    An object rather than a coroutine: :func:`discard` reaches the handler's coroutine through
    ``awaiting``, where a compiled coroutine (this module is compiled, flo_core/compiled.py) would
    not show its locals.
    """

    __slots__ = ("metrics", "op", "awaiting", "relayed")

    def __init__(self, metrics: Any, op: int, awaiting: Any, relayed: bool = False) -> None:
        self.metrics, self.op, self.awaiting, self.relayed = metrics, op, awaiting, relayed

    def __await__(self) -> Any:
        try:
            out = yield from self.awaiting.__await__()
            answer = out if self.relayed else (0, out)
        except Exception as e:  # noqa: BLE001 - every failure becomes a refusal
            answer = refused(e)
        m = self.metrics
        if m is not None:
            m.record(m.slot_of_op(self.op), answer[0], -1)  # a blocking request's wait is not its service time
        return answer

    def close(self) -> None:
        discard(self.awaiting)


def refused(exc: BaseException) -> tuple[int, bytes]:
    status, reason, ran, message = refusal_of(exc)
    if status == Status.INTERNAL_ERROR and not isinstance(exc, Refusal):
        log.error("internal error", exc_info=exc)
    return status, refusal_body(reason, ran, message)
