"""``flo stream``: append, read, tail (-f), groups.

Examples::

    flo stream append events '{"event": "click"}' --header source=web
    flo stream read events --from 1700000000000-0 --count 50
    flo stream tail events                 # the last record
    flo stream tail -f events              # follow new records until Ctrl-C
    flo stream groups events
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable

import click

from ..client import FloClient
from ..stream import GroupInfo, StreamAppendOptions, StreamID, StreamReadOptions, StreamRecord
from .session import PAYLOAD, FloGroup, Session, flo_command, json_bytes, table, text_of

READ_PAGE = 1000  # the server's largest read
FOLLOW_WAIT_MS = 30_000  # each blocking read of `tail -f` (Ctrl-C ends it at once)


@click.group(cls=FloGroup)
def stream() -> None:
    """Append-only streams: append, read, tail -f, groups."""


class StreamIDType(click.ParamType):
    name = "id"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> StreamID:
        if isinstance(value, StreamID):
            return value
        try:
            return StreamID.parse(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _header(ctx: click.Context, param: click.Parameter, values: Iterable[str]) -> dict[str, str] | None:
    headers = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not k=v", ctx, param)
        headers[name] = value
    return headers or None


def _after(rid: StreamID) -> StreamID:
    """The smallest id after ``rid`` (reads are inclusive of their start)."""
    return StreamID(rid.timestamp_ms, rid.sequence + 1)


def record_doc(rec: StreamRecord) -> dict:
    return {"id": str(rec.id), "payload": json_bytes(rec.payload), "headers": rec.headers or {}}


def record_line(rec: StreamRecord) -> str:
    """``ID<TAB>PAYLOAD`` and, when it has headers, ``<TAB>k=v k=v``."""
    line = f"{rec.id}\t{text_of(rec.payload)}"
    if rec.headers:
        line += "\t" + " ".join(f"{k}={v}" for k, v in rec.headers.items())
    return line


def emit_records(session: Session, name: str, records: list[StreamRecord]) -> None:
    session.emit({"stream": name, "records": [record_doc(r) for r in records]},
                 "\n".join(record_line(r) for r in records) or None)


async def read_records(client: FloClient, name: str, start: StreamID | None, count: int | None,
                       block_ms: int = 0) -> AsyncIterator[StreamRecord]:
    """Records from ``start`` on, page by page, ``count`` in all (None: for good);
    with ``block_ms`` each page waits for new records, so this follows the stream."""
    remaining = count
    while remaining is None or remaining > 0:
        ask = READ_PAGE if remaining is None else min(READ_PAGE, remaining)
        page = (await client.stream.read(name, StreamReadOptions(start=start, count=ask, block_ms=block_ms))).records
        if not page and not block_ms:
            return
        for rec in page:
            yield rec
        if page:
            start = _after(page[-1].id)
            if remaining is not None:
                remaining -= len(page)


@stream.command("append")
@click.argument("name", metavar="STREAM")
@click.argument("payload", type=PAYLOAD)
@click.option("--header", "headers", multiple=True, callback=_header, metavar="K=V", help="A header (repeatable).")
@flo_command
async def stream_append(session: Session, client: FloClient, name: str, payload: bytes,
                        headers: dict[str, str] | None) -> None:
    """Append PAYLOAD ('-' reads stdin) to STREAM and print the record's id.

    \b
    Example:
      flo stream append events '{"event": "click"}' --header source=web --header v=2
    """
    res = await client.stream.append(name, payload, StreamAppendOptions(headers=headers))
    session.emit({"stream": name, "id": str(res.id)}, f"OK id {res.id}")


@stream.command("read")
@click.argument("name", metavar="STREAM")
@click.option("--from", "start", type=StreamIDType(), help="First id (inclusive; default: the beginning).")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@flo_command
async def stream_read(session: Session, client: FloClient, name: str, start: StreamID | None, count: int) -> None:
    """Print records of STREAM: ID<TAB>PAYLOAD[<TAB>HEADERS].

    \b
    Examples:
      flo stream read events --count 10
      flo stream read events --from 1700000000000-3
    """
    emit_records(session, name, [rec async for rec in read_records(client, name, start, count)])


@stream.command("tail")
@click.argument("name", metavar="STREAM")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records until Ctrl-C or --count.")
@click.option("--count", type=click.IntRange(min=1), help="With -f: stop after this many records.")
@flo_command
async def stream_tail(session: Session, client: FloClient, name: str, follow: bool, count: int | None) -> None:
    """Print the last record of STREAM; with -f, follow the records appended from now on.

    With -f and --json: one JSON line per record.

    \b
    Examples:
      flo stream tail events
      flo stream tail -f events --count 100
    """
    info = await client.stream.info(name)
    has_ids = info.last_id != StreamID.MIN
    if not follow:
        last = [rec async for rec in read_records(client, name, info.last_id, 1)] if info.count else []
        return emit_records(session, name, last)
    async for rec in read_records(client, name, _after(info.last_id) if has_ids else None, count, FOLLOW_WAIT_MS):
        session.emit({"stream": name, **record_doc(rec)}, record_line(rec))


def group_doc(g: GroupInfo) -> dict:
    return {"name": g.name, "pending": g.pending, "lag": g.lag, "last_delivered_id": str(g.last_delivered_id),
            "delivered": g.delivered, "acked": g.acked, "dead_lettered": g.dead_lettered,
            "ack_timeout_ms": g.ack_timeout_ms, "max_deliver": g.max_deliver,
            "consumers": [{"name": c.name, "pending": c.pending, "idle_ms": c.idle_ms} for c in g.consumers]}


@stream.command("groups")
@click.argument("name", metavar="STREAM")
@flo_command
async def stream_groups(session: Session, client: FloClient, name: str) -> None:
    """The consumer groups of STREAM: pending, lag, cursor, totals and consumers.

    \b
    Example:
      flo stream groups events
    """
    info = await client.stream.info(name)
    groups = await asyncio.gather(*(client.stream.group_info(name, g) for g in info.groups))
    rows = [(g.name, g.pending, g.lag, g.last_delivered_id, g.delivered, g.acked, g.dead_lettered,
             ",".join(c.name for c in g.consumers) or "-") for g in groups]
    header = ("GROUP", "PENDING", "LAG", "LAST_DELIVERED", "DELIVERED", "ACKED", "DEAD", "CONSUMERS")
    session.emit({"stream": name, "groups": [group_doc(g) for g in groups]}, table(header, rows) if rows else None)
    if not rows:
        session.note("(no groups)")
