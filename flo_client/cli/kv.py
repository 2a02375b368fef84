"""``flo kv``: get, put, del, scan, history, watch.

Examples::

    flo kv put user:123 "John Doe" --ttl 3600
    flo kv get user:123 --version          # 7<TAB>John Doe
    flo kv put config - < config.json      # the value from stdin
    flo kv put lock me --if-absent
    flo kv put counter 2 --cas 7           # only if the key is still at version 7
    flo kv scan user: --limit 100
    flo kv history user:123
    flo kv watch user:123 --count 1        # waits for the next write
"""

from __future__ import annotations

from typing import AsyncIterator

import click

from flo_core.spec import MAX_HISTORY, MAX_SCAN_LIMIT, WaitFor

from ..client import FloClient
from ..kv import GetOptions, HistoryOptions, PutOptions, ScanOptions
from .session import PAYLOAD, CliError, FloGroup, Session, flo_command, json_bytes, table, text_of, when

SCAN_BOUND = 10_000  # keys `kv scan` pages through unless --limit says otherwise
# Each blocking get of `kv watch` waits this long: a write landing between two waits is
# seen when the next wait ends at the latest (the server answers the current value then).
WATCH_WAIT_MS = 1_000


@click.group(cls=FloGroup)
def kv() -> None:
    """Versioned KV: get, put, del, scan, history, watch."""


def _version_line(version: int, value: bytes) -> str:
    return f"{version}\t{text_of(value)}"


@kv.command("get")
@click.argument("key")
@click.option("--version", "show_version", is_flag=True, help="Print the version first, tab-separated.")
@click.option("--raw", is_flag=True, help="Write the value's bytes exactly, without a newline.")
@flo_command
async def kv_get(session: Session, client: FloClient, key: str, show_version: bool, raw: bool) -> None:
    """Print KEY's value; exit 1 if there is no such key.

    \b
    Examples:
      flo kv get user:123
      flo kv get user:123 --version       # 7<TAB>John Doe
      flo kv get blob --raw > blob.bin
    """
    got = await client.kv.get(key)
    if got is None:
        session.emit({"key": key, "found": False, "value": None, "version": None}, None)
        raise CliError(f"{key}: not found")
    if raw and not session.json_output:
        return session.write_raw(got.value)
    text = _version_line(got.version, got.value) if show_version else text_of(got.value)
    session.emit({"key": key, "found": True, "value": json_bytes(got.value), "version": got.version}, text)


@kv.command("put")
@click.argument("key")
@click.argument("value", type=PAYLOAD)
@click.option("--ttl", type=click.FloatRange(min=0.001), metavar="SECONDS", help="Expire the key after this long.")
@click.option("--cas", "cas_version", type=click.IntRange(min=0), metavar="VERSION",
              help="Write only if the key is at this version.")
@click.option("--if-absent", is_flag=True, help="Write only if the key does not exist.")
@flo_command
async def kv_put(session: Session, client: FloClient, key: str, value: bytes, ttl: float | None,
                 cas_version: int | None, if_absent: bool) -> None:
    """Write VALUE to KEY (VALUE '-' reads stdin) and print the new version.

    \b
    Examples:
      flo kv put user:123 "John Doe" --ttl 3600
      flo kv put config - < config.json
      flo kv put counter 2 --cas 7
    """
    res = await client.kv.put(key, value, PutOptions(ttl_seconds=ttl, cas_version=cas_version, if_not_exists=if_absent))
    session.emit({"key": key, "version": res.version}, f"OK version {res.version}")


@kv.command("del")
@click.argument("key")
@flo_command
async def kv_del(session: Session, client: FloClient, key: str) -> None:
    """Delete KEY (a missing key is not an error).

    \b
    Example:
      flo kv del user:123
    """
    existed = await client.kv.delete(key)
    session.emit({"key": key, "deleted": existed}, f"deleted {key}" if existed else f"{key} did not exist")


@kv.command("scan")
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(min=1), default=SCAN_BOUND, show_default=True,
              help="Stop after this many keys.")
@flo_command
async def kv_scan(session: Session, client: FloClient, prefix: str, limit: int) -> None:
    """List the keys starting with PREFIX (all keys without one), paging through the server's pages.

    \b
    Examples:
      flo kv scan user:
      flo --json kv scan --limit 10
    """
    names: list[str] = []
    cursor = None
    while len(names) < limit:
        page = await client.kv.scan(prefix, ScanOptions(limit=min(MAX_SCAN_LIMIT, limit - len(names)), cursor=cursor))
        names += page.names
        cursor = page.cursor
        if cursor is None:
            break
    session.emit({"prefix": prefix, "keys": names, "truncated": cursor is not None}, "\n".join(names) or None)
    if cursor is not None:
        session.note(f"flo: stopped after {len(names)} keys (--limit); there may be more")


@kv.command("history")
@click.argument("key")
@click.option("--limit", type=click.IntRange(1, MAX_HISTORY), help="At most this many versions (newest first).")
@flo_command
async def kv_history(session: Session, client: FloClient, key: str, limit: int | None) -> None:
    """Show KEY's versions the server keeps, newest first.

    \b
    Example:
      flo kv history user:123 --limit 5
    """
    entries = await client.kv.history(key, HistoryOptions(limit=limit))
    rows = [(e.version, when(e.at_ms), text_of(e.value)) for e in entries]
    doc = {"key": key, "versions": [{"version": e.version, "at_ms": e.at_ms, "value": json_bytes(e.value)}
                                    for e in entries]}
    session.emit(doc, table(("VERSION", "WRITTEN", "VALUE"), rows) if rows else None)


async def key_changes(client: FloClient, key: str, last_version: int) -> AsyncIterator[tuple[int, bytes] | None]:
    """Yield ``(version, value)`` for each version of ``key`` after ``last_version``, None for a deletion.

    A blocking get waits for a change; versions written between two waits are taken
    from the key's history, so none is skipped (as far as the server keeps history).
    """
    while True:
        got = await client.kv.get(key, GetOptions(block_ms=WATCH_WAIT_MS, wait_for=WaitFor.CHANGE))
        if got is None:
            if last_version:
                last_version = 0
                yield None
            continue
        if got.version == last_version:
            continue  # the wait ended without a change
        versions = {e.version: e.value for e in await client.kv.history(key, HistoryOptions(limit=MAX_HISTORY))
                    if e.version > last_version}
        versions.setdefault(got.version, got.value)
        for version in sorted(versions):
            last_version = version
            yield version, versions[version]


@kv.command("watch")
@click.argument("key")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many changes.")
@click.option("--initial", is_flag=True, help="Print the current value first (it counts toward --count).")
@flo_command
async def kv_watch(session: Session, client: FloClient, key: str, count: int | None, initial: bool) -> None:
    """Print every new version of KEY (VERSION<TAB>VALUE, '(deleted)' for a delete) until Ctrl-C or --count.

    With --json: one JSON line per change.

    \b
    Examples:
      flo kv watch config
      flo --json kv watch config --count 3
    """
    current = await client.kv.get(key)
    last_version = current.version if current is not None else 0
    printed = 0

    def show(change: tuple[int, bytes] | None) -> None:
        nonlocal printed
        printed += 1
        if change is None:
            session.emit({"key": key, "deleted": True}, "(deleted)")
        else:
            version, value = change
            session.emit({"key": key, "version": version, "value": json_bytes(value)}, _version_line(version, value))

    if initial and current is not None:
        show((current.version, current.value))
    if count is not None and printed >= count:
        return
    async for change in key_changes(client, key, last_version):
        show(change)
        if count is not None and printed >= count:
            return
