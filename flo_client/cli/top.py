"""``flo top``: a live view of a server, like ``nats-top``.

Every ``--interval`` seconds it asks SERVER_INFO and the stats of the
namespace's queues, and prints one frame: server facts, rates computed from
the change of the server's counters since the last frame, and a queue table.
``--once`` prints a single frame (two samples one interval apart) and exits.

Example::

    flo top
    flo top --once --interval 0.5
    flo --json top --once | jq .rates
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import click

from ..client import FloClient
from .queue import queue_names, stats_doc
from .session import Session, flo_command, table

CLEAR_SCREEN = "\x1b[H\x1b[2J"
# Rates in the header, a line per group: JSON key -> where its counter is in SERVER_INFO.
# last_lsn rises by one per write that reached the log; a counter the server does not
# report (an older server has no "commands") shows as "-".
RATE_LINES = (
    {"ops_per_s": ("commands",), "writes_per_s": ("last_lsn",), "bytes_in_per_s": ("bytes_in",),
     "bytes_out_per_s": ("bytes_out",)},
    {"log_bytes_per_s": ("journal", "bytes_appended"), "flushes_per_s": ("journal", "flushes"),
     "fsyncs_per_s": ("journal", "syncs")},
)
# Per-queue rates -> the QueueStats counter they follow.
QUEUE_RATES = {"enqueued_per_s": "total_enqueued", "delivered_per_s": "total_delivered", "acked_per_s": "total_acked"}


@dataclass
class Sample:
    at: float  # time.monotonic()
    info: dict
    queues: dict[str, dict]


async def take_sample(client: FloClient, max_queues: int) -> Sample:
    info, names = await asyncio.gather(client.server_info(), queue_names(client, bound=max_queues))
    stats = await asyncio.gather(*(client.queue.stats(n) for n in names))
    return Sample(time.monotonic(), info, {n: stats_doc(s) for n, s in zip(names, stats)})


def _counter(doc: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc if isinstance(doc, (int, float)) and not isinstance(doc, bool) else None


def _rate(before: float | None, after: float | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0:
        return None
    return max(0.0, (after - before) / seconds)


def _uptime(seconds: int) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return (f"{days}d" if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _label(key: str) -> str:
    return key.replace("_per_s", "/s")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def frame(prev: Sample, cur: Sample, address: str, namespace: str) -> tuple[dict, str]:
    """One frame: (JSON document, text)."""
    seconds = cur.at - prev.at
    info = cur.info
    rates = {key: _rate(_counter(prev.info, path), _counter(info, path), seconds)
             for line in RATE_LINES for key, path in line.items()}
    queues = []
    for name, stats in cur.queues.items():
        before = prev.queues.get(name, {})
        queues.append({"name": name, **stats,
                       "rates": {key: _rate(before.get(field), stats.get(field), seconds)
                                 for key, field in QUEUE_RATES.items()}})
    journal = info.get("journal") or {}
    lines = [
        f"flo-server {info.get('version', '?')} at {address}  user {info.get('user') or '-'}  "
        f"uptime {_uptime(info.get('uptime_s', 0))}  {time.strftime('%H:%M:%S')}",
        f"connections {info.get('connections', '-')}  waiters {info.get('waiters', '-')}  "
        f"auth {'required' if info.get('auth_required') else 'off'}  fsync {info.get('fsync', '-')}  "
        f"last_lsn {info.get('last_lsn', '-')}  snapshots {journal.get('snapshots', '-')}  "
        f"segments {journal.get('segments', '-')}",
        *("  ".join(f"{_label(key)} {_num(rates[key])}" for key in line) for line in RATE_LINES),
        "",
    ]
    header = ("QUEUE", "READY", "DELAYED", "LEASED", "DLQ", *(_label(k).upper() for k in QUEUE_RATES))
    rows = [(q["name"], q["ready"], q["delayed"], q["leased"], q["dlq"], *map(_num, q["rates"].values()))
            for q in queues]
    lines.append(table(header, rows) if rows else f"(no queues in namespace {namespace})")
    doc = {"address": address, "namespace": namespace, "interval_s": round(seconds, 3), "server": info,
           "rates": rates, "queues": queues}
    return doc, "\n".join(lines)


@click.command("top")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="SECONDS",
              help="Time between frames (the rates are over it).")
@click.option("--queues", "max_queues", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show at most this many queues.")
@flo_command
async def top(session: Session, client: FloClient, once: bool, interval: float, max_queues: int) -> None:
    """A live view of the server: connections, writes/s, journal, queues. Ctrl-C quits.

    With --json: one JSON line per frame.

    \b
    Examples:
      flo top
      flo top --once
    """
    clear = sys.stdout.isatty() and not session.json_output
    prev = await take_sample(client, max_queues)
    separator = CLEAR_SCREEN if clear and not once else ""  # before a frame: clear the terminal, or a blank line
    while True:
        await asyncio.sleep(interval)
        cur = await take_sample(client, max_queues)
        doc, text = frame(prev, cur, session.target.address, client.namespace)
        session.emit(doc, separator + text)
        if once:
            return
        prev = cur
        separator = CLEAR_SCREEN if clear else "\n"
