"""``flo queue``: enqueue, dequeue, peek, stats, list, dlq, requeue.

Examples::

    flo queue enqueue tasks '{"job": 1}' --priority 0
    flo queue dequeue tasks --count 10 --block-ms 5000     # prints the lease ids (seqs)
    flo queue dequeue tasks --ack                           # take and acknowledge
    flo queue stats tasks
    flo queue dlq tasks
    flo queue requeue tasks 17 18
"""

from __future__ import annotations

from typing import Sequence

import click

from flo_core.spec import MAX_BLOCK_MS

from ..client import FloClient
from ..queue import DequeueOptions, DlqListOptions, EnqueueOptions, Message, QueueListOptions, QueueStats
from .session import PAYLOAD, FloGroup, Session, flo_command, json_bytes, table, text_of, when

QUEUE_LIST_BOUND = 10_000  # names `queue list` pages through


@click.group(cls=FloGroup)
def queue() -> None:
    """Leased priority queues: enqueue, dequeue, peek, stats, list, dlq, requeue."""


def message_doc(m: Message) -> dict:
    return {"seq": m.seq, "payload": json_bytes(m.payload), "priority": m.priority,
            "delivery_count": m.delivery_count, "enqueued_at_ms": m.enqueued_at_ms}


def emit_messages(session: Session, name: str, messages: Sequence[Message], **extra: object) -> None:
    """A message list as a table (SEQ is the lease id to ack / nack / requeue) or one JSON document."""
    rows = [(m.seq, m.priority, m.delivery_count, when(m.enqueued_at_ms), text_of(m.payload)) for m in messages]
    text = table(("SEQ", "PRIORITY", "DELIVERIES", "ENQUEUED", "PAYLOAD"), rows) if rows else None
    session.emit({"queue": name, "messages": [message_doc(m) for m in messages], **extra}, text)
    if not rows:
        session.note("(no messages)")


def stats_doc(stats: QueueStats) -> dict:
    return dict(vars(stats))


async def queue_names(client: FloClient, prefix: str = "", bound: int = QUEUE_LIST_BOUND) -> list[str]:
    """The namespace's queue names, all pages, up to ``bound``."""
    names: list[str] = []
    cursor = ""
    while len(names) < bound:
        page_size = min(1024, bound - len(names))
        page = await client.queue.list(QueueListOptions(prefix=prefix, cursor=cursor, limit=page_size))
        names += page.names
        cursor = page.cursor
        if not page.has_more:
            break
    return names


@queue.command("enqueue")
@click.argument("name", metavar="QUEUE")
@click.argument("payload", type=PAYLOAD)
@click.option("--priority", type=click.IntRange(0, 255), default=0, show_default=True, help="Lower goes first.")
@click.option("--delay-ms", type=click.IntRange(min=0), help="Invisible to dequeue until then.")
@click.option("--dedup-key", help="A second enqueue with this key (within the server's window) adds nothing.")
@flo_command
async def queue_enqueue(session: Session, client: FloClient, name: str, payload: bytes, priority: int,
                        delay_ms: int | None, dedup_key: str | None) -> None:
    """Add PAYLOAD ('-' reads stdin) to QUEUE and print its seq.

    \b
    Example:
      flo queue enqueue tasks '{"job": 1}' --priority 10 --delay-ms 60000
    """
    seq = await client.queue.enqueue(name, payload, EnqueueOptions(priority=priority, delay_ms=delay_ms,
                                                                   dedup_key=dedup_key))
    session.emit({"queue": name, "seq": seq}, f"OK seq {seq}")


@queue.command("dequeue")
@click.argument("name", metavar="QUEUE")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True, help="Take up to this many.")
@click.option("--block-ms", type=click.IntRange(0, MAX_BLOCK_MS), default=0, show_default=True,
              help="Wait this long for a message.")
@click.option("--lease-ms", type=click.IntRange(min=1), help="Lease length (server default 30 s).")
@click.option("--ack", is_flag=True, help="Acknowledge what was taken (otherwise the leases stay).")
@flo_command
async def queue_dequeue(session: Session, client: FloClient, name: str, count: int, block_ms: int,
                        lease_ms: int | None, ack: bool) -> None:
    """Lease messages from QUEUE and print them; SEQ is the lease id (ack it, or it comes back).

    \b
    Examples:
      flo queue dequeue tasks --count 10 --block-ms 5000
      flo queue dequeue tasks --ack
    """
    got = await client.queue.dequeue(name, count, DequeueOptions(block_ms=block_ms, lease_ms=lease_ms))
    acked = await client.queue.ack(name, [m.seq for m in got.messages]) if ack else None
    emit_messages(session, name, got.messages, acked=acked)
    if acked is not None and got.messages:
        session.note(f"acked {acked}")


@queue.command("peek")
@click.argument("name", metavar="QUEUE")
@click.option("--count", type=click.IntRange(min=1), default=10, show_default=True)
@flo_command
async def queue_peek(session: Session, client: FloClient, name: str, count: int) -> None:
    """Show the next ready messages of QUEUE in dequeue order, without leasing them.

    \b
    Example:
      flo queue peek tasks --count 5
    """
    emit_messages(session, name, (await client.queue.peek(name, count)).messages)


@queue.command("stats")
@click.argument("name", metavar="QUEUE")
@flo_command
async def queue_stats(session: Session, client: FloClient, name: str) -> None:
    """Ready, delayed, leased and DLQ counts of QUEUE, and its lifetime totals.

    \b
    Example:
      flo --json queue stats tasks
    """
    doc = stats_doc(await client.queue.stats(name))
    session.emit({"queue": name, **doc}, table(("FIELD", "VALUE"), list(doc.items())))


@queue.command("list")
@click.argument("prefix", default="")
@flo_command
async def queue_list(session: Session, client: FloClient, prefix: str) -> None:
    """The queues of the namespace (those starting with PREFIX).

    \b
    Example:
      flo queue list
    """
    names = await queue_names(client, prefix)
    session.emit({"queues": names}, "\n".join(names) or None)


@queue.command("dlq")
@click.argument("name", metavar="QUEUE")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many, oldest first.")
@flo_command
async def queue_dlq(session: Session, client: FloClient, name: str, limit: int | None) -> None:
    """List QUEUE's dead-lettered messages, oldest first.

    \b
    Example:
      flo queue dlq tasks
    """
    emit_messages(session, name, (await client.queue.dlq_list(name, DlqListOptions(limit=limit))).messages)


@queue.command("requeue")
@click.argument("name", metavar="QUEUE")
@click.argument("seqs", nargs=-1, required=True, type=click.IntRange(min=0), metavar="SEQ...")
@flo_command
async def queue_requeue(session: Session, client: FloClient, name: str, seqs: tuple[int, ...]) -> None:
    """Move DLQ entries of QUEUE back to ready (same seq, delivery count restarts).

    \b
    Example:
      flo queue requeue tasks 17 18
    """
    moved = await client.queue.dlq_requeue(name, seqs)
    session.emit({"queue": name, "requeued": moved, "asked": len(seqs)}, f"requeued {moved} of {len(seqs)}")
