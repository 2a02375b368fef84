"""``StreamWorker``: consume a stream through a consumer group, at least once.

It joins the group, long-polls ``group_read`` on a connection of its own, runs
the handler for each record (at most ``concurrency`` at once, each within
``message_timeout`` seconds) and acks on success / nacks on an exception or a
timeout over a second connection, so an ack never queues behind a parked read.
After a lost connection it reconnects, re-joins and drains its own pending
entries (``group_claim`` with ``min_idle 0``) before reading on; it does the
same drain at start, so a worker restarted under the same consumer name picks
up what it had not acknowledged. ``stop()`` ends polling, lets running handlers
finish and send their acks, then closes both connections.

Example:
    >>> async def process_event(ctx: StreamContext) -> None:
    ...     data = ctx.json()
    ...     print(f"Stream: {ctx.stream}, ID: {ctx.stream_id}, headers: {ctx.headers}")
    >>> async with FloClient("localhost:9000", namespace="myapp") as client:         # doctest: +SKIP
    ...     async with client.new_stream_worker(stream="events", group="processors",
    ...                                         handler=process_event, concurrency=5) as worker:
    ...         await worker.start()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from flo_core.errors import ClientError, ConnectionClosedError, RequestTimeoutError, ServerError
from flo_core.spec import MAX_BLOCK_MS, Ran, Status

from .stream import StreamGroupReadOptions, StreamID, StreamRecord

if TYPE_CHECKING:
    from .client import FloClient

log = logging.getLogger("flo_client.stream_worker")

StreamRecordHandler = Callable[["StreamContext"], Awaitable[Any]]

DEFAULT_GROUP = "default"  # what an empty group name means (server side too)
_SEND_ATTEMPTS = 3  # ack/nack resends across reconnects (never on a refusal)
_MAX_DRAIN_PAGES = 1000


@dataclass
class StreamContext:
    """What a handler gets: the record plus where it came from.

    ``payload`` (bytes), ``json()``, ``into(cls)``, ``stream_id``, ``stream``,
    ``headers`` (``{}`` when the record has none), ``record``.
    """

    record: StreamRecord
    namespace: str
    stream: str
    group: str
    consumer: str

    @property
    def stream_id(self) -> StreamID:
        return self.record.id

    @property
    def payload(self) -> bytes:
        return self.record.payload

    @property
    def headers(self) -> dict[str, str]:
        return self.record.headers or {}

    def json(self) -> Any:
        """The payload decoded as JSON (ValueError on an empty payload)."""
        if not self.record.payload:
            raise ValueError("No payload data")
        return json.loads(self.record.payload)

    def into(self, cls: type) -> Any:
        """The JSON payload as ``cls(**obj)`` (a dict) or ``cls(value)``."""
        data = self.json()
        return cls(**data) if isinstance(data, dict) else cls(data)


def _is_connection_error(e: BaseException) -> bool:
    return isinstance(e, (ConnectionClosedError, RequestTimeoutError, ConnectionError, OSError, asyncio.TimeoutError))


def _refused_unrun(e: BaseException) -> bool:
    return isinstance(e, ServerError) and e.ran == Ran.NO and e.status_code in (Status.OVERLOADED, Status.UNAVAILABLE)


def _default_consumer() -> str:
    try:
        host = socket.gethostname()
    except OSError:
        host = "unknown"
    return f"{host}-{secrets.token_hex(4)}"


class _Backoff:
    """Jittered exponential delays: ``first`` doubling up to ``cap`` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.cur = first, cap, first

    def next(self) -> float:
        d = self.cur * (0.5 + random.random() / 2)
        self.cur = min(self.cur * 2, self.cap)
        return d

    def reset(self) -> None:
        self.cur = self.first


class StreamWorker:
    """Process a stream's records through a consumer group (see the module docstring).

    Args mirror the Flo SDK page's table: ``stream`` (required), ``group`` (``""`` means
    ``"default"``), ``consumer`` (default ``<hostname>-<8 hex>``), ``handler`` (required),
    ``concurrency=10``, ``batch_size=10``, ``block_ms=30000``, ``message_timeout=300.0``;
    and flo-python 0.1.2's ``worker_id``, ``redeliver_pending_on_reconnect=True``,
    ``claim_min_idle_ms=0``.
    """

    def __init__(
        self,
        client: "FloClient",
        handler: StreamRecordHandler | None = None,
        *,
        stream: str,
        group: str = "",
        consumer: str | None = None,
        worker_id: str | None = None,
        concurrency: int = 10,
        batch_size: int = 10,
        block_ms: int = 30_000,
        message_timeout: float = 300.0,
        redeliver_pending_on_reconnect: bool = True,
        claim_min_idle_ms: int = 0,
        namespace: str | None = None,
    ) -> None:
        if handler is None:
            raise TypeError("StreamWorker needs a handler")
        if not stream:
            raise ValueError("StreamWorker needs a stream name")
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        if not 0 <= block_ms <= MAX_BLOCK_MS:
            raise ValueError(f"block_ms must be 0..{MAX_BLOCK_MS}")
        self._parent = client
        self.handler = handler
        self.stream = stream
        self.group = group or DEFAULT_GROUP
        self.consumer = consumer or _default_consumer()
        self.worker_id = worker_id or self.consumer
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.message_timeout = message_timeout
        self.redeliver_pending_on_reconnect = redeliver_pending_on_reconnect
        self.claim_min_idle_ms = claim_min_idle_ms
        self.namespace = namespace or client.namespace
        self._poll: FloClient | None = None
        self._ack: FloClient | None = None
        self._ack_lock = asyncio.Lock()
        self._ack_generation = 0
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._done.set()
        self._slot_free = asyncio.Event()
        self._inflight: dict[StreamID, asyncio.Task] = {}
        self._ack_timeout_ms = 0  # the group's, read after joining; drives auto-touch
        self.processed = 0  # handler successes (acked)
        self.failed = 0  # handler failures and timeouts (nacked)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    async def start(self) -> None:
        """Join the group and process records until :meth:`stop` (or :meth:`close`)."""
        if self.running:
            raise RuntimeError("worker already running")
        self._stop.clear()
        self._done.clear()
        try:
            await self._connect()
            await self._join()
            if self.redeliver_pending_on_reconnect:
                await self._drain_pending()
            await self._poll_loop()
        finally:
            await self._shutdown()
            self._done.set()

    def stop(self) -> None:
        """Ask the worker to stop: polling ends at once (a parked read is interrupted),
        running handlers finish and their acks go out, then :meth:`start` returns."""
        self._stop.set()

    async def close(self) -> None:
        """Stop and wait until the worker has shut down."""
        self.stop()
        await self._done.wait()

    async def __aenter__(self) -> "StreamWorker":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- connections -----------------------------------------------------------------------

    async def _connect(self) -> None:
        backoff = _Backoff(0.1, 5.0)
        while not self._stop.is_set():
            try:
                if self._poll is None:
                    self._poll = await self._parent._clone()
                if self._ack is None:
                    self._ack = await self._parent._clone()
                return
            except Exception as e:  # noqa: BLE001 - a worker keeps trying to reach its server
                if not _is_connection_error(e):
                    raise
                log.warning("stream worker cannot connect: %s", e)
                await self._sleep(backoff.next())

    async def _close_poll(self) -> None:
        if self._poll is not None:
            with contextlib.suppress(Exception):
                await self._poll.close()
            self._poll = None

    async def _reconnect(self) -> None:
        """New poll and ack connections, re-join, drain own pending entries."""
        await self._close_poll()
        await self._reconnect_ack(self._ack_generation)
        await self._connect()
        await self._join()
        if self.redeliver_pending_on_reconnect:
            await self._drain_pending()

    async def _reconnect_ack(self, seen_generation: int) -> None:
        async with self._ack_lock:
            if seen_generation != self._ack_generation:
                return  # someone else already did
            if self._ack is not None:
                with contextlib.suppress(Exception):
                    await self._ack.close()
                self._ack = None
            with contextlib.suppress(Exception):
                self._ack = await self._parent._clone()
            self._ack_generation += 1

    async def _join(self) -> None:
        backoff = _Backoff()
        while not self._stop.is_set():
            try:
                assert self._poll is not None
                await self._poll.stream.group_join(self.stream, self.group, self.consumer,
                                                   _ns_opts(self.namespace))
                with contextlib.suppress(ServerError):
                    info = await self._poll.stream.group_info(self.stream, self.group, namespace=self.namespace)
                    self._ack_timeout_ms = info.ack_timeout_ms
                return
            except Exception as e:  # noqa: BLE001
                if _refused_unrun(e):
                    await self._sleep(backoff.next())
                elif _is_connection_error(e):
                    log.warning("stream worker lost its connection while joining: %s", e)
                    await self._close_poll()
                    await self._sleep(backoff.next())
                    await self._connect()
                else:
                    raise

    async def _shutdown(self) -> None:
        await self._close_poll()
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._ack is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._ack.stream.group_leave(self.stream, self.group, self.consumer, _ns_opts(self.namespace)),
                    self._parent.timeout_ms / 1000,
                )
            with contextlib.suppress(Exception):
                await self._ack.close()
            self._ack = None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # --- polling ------------------------------------------------------------------------------

    async def _wait_slot(self) -> int:
        """Wait until a handler slot is free; returns how many are."""
        while len(self._inflight) >= self.concurrency and not self._stop.is_set():
            self._slot_free.clear()
            stop = asyncio.ensure_future(self._stop.wait())
            free = asyncio.ensure_future(self._slot_free.wait())
            await asyncio.wait({stop, free}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            free.cancel()
        return self.concurrency - len(self._inflight)

    async def _poll_loop(self) -> None:
        backoff = _Backoff()
        while not self._stop.is_set():
            free = await self._wait_slot()
            if self._stop.is_set():
                return
            try:
                records = await self._read(min(self.batch_size, free))
                backoff.reset()
            except Exception as e:  # noqa: BLE001 - the loop survives everything but stop()
                if self._stop.is_set():
                    return
                if _is_connection_error(e):
                    log.warning("stream worker lost its connection, reconnecting: %s", e)
                    await self._sleep(backoff.next())
                    with contextlib.suppress(Exception):
                        await self._reconnect()
                else:
                    delay = backoff.next()
                    log.error("stream worker read failed: %s; retrying in %.2fs", e, delay)
                    await self._sleep(delay)
                continue
            for rec in records:
                self._spawn(rec)

    async def _read(self, count: int) -> list[StreamRecord]:
        """One group_read, interrupted by stop(): closing the poll connection makes
        the server drop the parked read, so nothing is handed to a stopping worker."""
        if self._poll is None:
            await self._reconnect()
        assert self._poll is not None
        read = asyncio.ensure_future(self._poll.stream.group_read(
            self.stream, self.group, self.consumer,
            StreamGroupReadOptions(namespace=self.namespace, count=count, block_ms=self.block_ms),
        ))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not read.done():
            await self._close_poll()
            with contextlib.suppress(Exception):
                await read
        if read.cancelled() or read.exception() is not None:
            if self._stop.is_set():
                return []
            raise read.exception() or ConnectionClosedError("read cancelled")
        return read.result().records  # records that arrived are ours: process them even when stopping

    async def _drain_pending(self) -> None:
        """Re-run this consumer's pending entries (own entries only with claim_min_idle_ms=0)."""
        cursor = StreamID.MIN
        for _ in range(_MAX_DRAIN_PAGES):
            if self._stop.is_set() or self._poll is None:
                return
            free = await self._wait_slot()
            try:
                page = await self._poll.stream.group_claim(
                    self.stream, self.group, self.consumer, self.claim_min_idle_ms, cursor,
                    min(self.batch_size, max(free, 1)), StreamGroupReadOptions(namespace=self.namespace),
                )
            except Exception as e:  # noqa: BLE001 - normal reads resume; the next reconnect drains again
                log.warning("stream worker pending drain failed: %s", e)
                return
            for rec in page.records:
                if rec.id not in self._inflight:  # a handler still running on it will ack it
                    self._spawn(rec)
            if page.done or not page.records:
                return
            cursor = page.next_cursor

    # --- handling --------------------------------------------------------------------------------

    def _spawn(self, rec: StreamRecord) -> None:
        task = asyncio.ensure_future(self._process(rec))
        self._inflight[rec.id] = task

        def done(_: asyncio.Task, rid: StreamID = rec.id) -> None:
            if self._inflight.get(rid) is task:
                del self._inflight[rid]
            self._slot_free.set()

        task.add_done_callback(done)

    async def _process(self, rec: StreamRecord) -> None:
        ctx = StreamContext(rec, self.namespace, self.stream, self.group, self.consumer)
        toucher = asyncio.ensure_future(self._auto_touch(rec.id)) if self._ack_timeout_ms else None
        try:
            await asyncio.wait_for(self.handler(ctx), self.message_timeout)
            ok = True
        except asyncio.TimeoutError:
            log.error("stream handler timed out after %ss (stream=%s id=%s)", self.message_timeout, self.stream, rec.id)
            ok = False
        except Exception as e:  # noqa: BLE001 - a failing handler means nack, never a dead worker
            log.error("stream handler failed (stream=%s id=%s): %r", self.stream, rec.id, e)
            ok = False
        finally:
            if toucher is not None:
                toucher.cancel()
        if ok:
            self.processed += 1
        else:
            self.failed += 1
        await self._send("ack" if ok else "nack", rec.id)

    async def _auto_touch(self, rid: StreamID) -> None:
        """While a handler runs, push the record's ack deadline every third of the group's
        ack timeout, so a long handler (message_timeout > ack timeout) keeps its record."""
        interval = max(self._ack_timeout_ms / 3000, 0.1)
        while True:
            await asyncio.sleep(interval)
            ack = self._ack
            if ack is None:
                continue
            try:
                if not await ack.stream.group_touch(self.stream, self.group, [rid], consumer=self.consumer,
                                                    namespace=self.namespace):
                    return  # no longer pending: acked elsewhere or taken back
            except ServerError:
                return
            except Exception as e:  # noqa: BLE001 - the ack path reconnects; try again next interval
                log.debug("touch of %s lost: %s", rid, e)

    async def _send(self, what: str, rid: StreamID) -> None:
        """Ack or nack on the ack connection; resent after a reconnect on connection errors."""
        for attempt in range(_SEND_ATTEMPTS):
            seen = self._ack_generation
            ack = self._ack
            try:
                if ack is None:
                    raise ConnectionClosedError("ack connection is down")
                if what == "ack":
                    await ack.stream.group_ack(self.stream, self.group, [rid], consumer=self.consumer,
                                               options=_ack_opts(self.namespace))
                else:
                    await ack.stream.group_nack(self.stream, self.group, [rid], consumer=self.consumer,
                                                options=_nack_opts(self.namespace))
                return
            except ServerError as e:
                log.warning("%s of %s refused: %s", what, rid, e)
                return
            except (ClientError, OSError, asyncio.TimeoutError) as e:
                log.warning("%s of %s lost (%s); reconnecting", what, rid, e)
                if attempt + 1 < _SEND_ATTEMPTS:
                    await self._reconnect_ack(seen)
        log.error("%s of %s dropped after %d attempts; the record will be redelivered", what, rid, _SEND_ATTEMPTS)


def _ns_opts(ns: str) -> Any:
    from .stream import StreamGroupJoinOptions

    return StreamGroupJoinOptions(namespace=ns)


def _ack_opts(ns: str) -> Any:
    from .stream import StreamGroupAckOptions

    return StreamGroupAckOptions(namespace=ns)


def _nack_opts(ns: str) -> Any:
    from .stream import StreamGroupNackOptions

    return StreamGroupNackOptions(namespace=ns)


__all__ = ["StreamWorker", "StreamContext", "StreamRecordHandler"]
