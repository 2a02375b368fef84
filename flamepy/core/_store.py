"""The one place flamepy touches flo_client (public API only).

Everything above this module speaks in (key -> bytes, version) and
(queue -> seq, payload); if flo_client's surface moves, only this file does.
"""

from __future__ import annotations

import asyncio
from typing import Optional, Sequence

from flo_client import FloClient

from . import records as R
from .types import FlameError, FlameErrorCode

from flo_core.spec import MAX_MPUT_ITEMS
from flo_core.errors import UnauthorizedError
from flo_client import (ConflictError, DequeueOptions, EnqueueOptions, GetOptions, KVIncrOptions, PutOptions,
                        ScanOptions)

WAIT_FOR_CHANGE = 1  # GetOptions.wait_for: 0 = until the key exists, 1 = until its version changes

__all__ = ["Store", "Conflict"]

MGET_BATCH = 256
MAX_BLOCK_MS = 300_000
MPUT_MAX_ITEMS = MAX_MPUT_ITEMS     # one KV_MPUT request carries at most this many items ...
MPUT_MAX_BYTES = 4 * 1024 * 1024    # ... and about this many key+value bytes (well under the 16 MiB frame)


async def _spans_shards(client: FloClient) -> bool:
    try:
        info = await client.server_info()
    except Exception:  # noqa: BLE001 - a user without the right: take it for a single server
        return False
    return int((info.get("cluster") or {}).get("shards") or 0) > 1


class Conflict(Exception):
    """A CAS / if-absent write lost."""


class Store:
    """Thin async wrapper over one FloClient in the flamepy namespace."""

    def __init__(self, endpoint: str, namespace: str = R.NAMESPACE, client_options: Optional[dict] = None) -> None:
        from .config import default_client_options

        self.endpoint = endpoint
        self.namespace = namespace
        # username / password / tls / ca_file for FloClient: given, or from FLAME_* and flame.yaml
        self.client_options = default_client_options() if client_options is None else dict(client_options)
        self.client: Optional[FloClient] = None
        # A member of a cluster of several shards: the order of one connection's requests holds per
        # shard only (keys of one {hash tag}), not between a session's keys and a client's reply queue.
        self.spans_shards = False

    async def connect(self, timeout: float = 10.0) -> "Store":
        client = FloClient(self.endpoint, namespace=self.namespace, **self.client_options)
        try:
            await asyncio.wait_for(client.connect(), timeout)
        except asyncio.TimeoutError:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"timeout connecting to {self.endpoint}") from None
        except OSError as exc:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"failed to connect to {self.endpoint}: {exc}") from None
        except UnauthorizedError as exc:
            raise FlameError(FlameErrorCode.INVALID_CONFIG,
                             f"{self.endpoint} refused the credentials (cluster.username / cluster.password in "
                             f"flame.yaml, or FLAME_USERNAME / FLAME_PASSWORD): {exc}") from None
        self.client = client
        self.spans_shards = await _spans_shards(client)
        return self

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    # -- kv --------------------------------------------------------------------------------------------------

    async def get(self, key: str, block_ms: int = 0, change: bool = False) -> Optional[tuple[bytes, int]]:
        if block_ms:
            opts = GetOptions(block_ms=min(int(block_ms), MAX_BLOCK_MS))
            if change:
                opts.wait_for = WAIT_FOR_CHANGE
            r = await self.client.kv.get(key, opts)
        else:
            r = await self.client.kv.get(key)
        return None if r is None else (r.value, r.version)

    async def put(self, key: str, value: bytes, cas: Optional[int] = None, if_absent: bool = False,
                  ttl_seconds: Optional[int] = None) -> int:
        opts = None
        if cas is not None or if_absent or ttl_seconds:
            opts = PutOptions()
            if cas is not None:
                opts.cas_version = cas
            if if_absent:
                opts.if_not_exists = True
            if ttl_seconds:
                opts.ttl_seconds = ttl_seconds
        try:
            r = await (self.client.kv.put(key, value, opts) if opts is not None else self.client.kv.put(key, value))
        except ConflictError as exc:
            raise Conflict(str(exc)) from None
        return r.version

    async def put_many(self, items: Sequence[tuple]) -> list[Optional[int]]:
        """Many puts, few requests: each item's new version, or None where its CAS lost (not written).

        ``items`` are ``(key, value)`` or ``(key, value, cas)`` (``cas`` a version, 0 = must not
        exist, or None). They go as the KV_MPUT requests :meth:`mput_requests` plans, all sent
        at once; the connection applies them in order, so the effect is that of putting the
        items one by one.

        >>> await store.put_many([("a", b"1"), ("b", b"2", 7)])          # doctest: +SKIP
        [18, None]
        """
        requests = self.mput_requests(items)
        if len(requests) <= 1:
            return await self.mput(requests[0]) if requests else []
        out: list[Optional[int]] = []
        for versions in await asyncio.gather(*(self.mput(r) for r in requests)):
            out.extend(versions)
        return out

    @staticmethod
    def mput_requests(items: Sequence[tuple]) -> list[list[tuple]]:
        """Split ``put_many`` items into requests of at most ``MPUT_MAX_ITEMS`` items and about
        ``MPUT_MAX_BYTES`` bytes, never with a key twice in one request (the server refuses that),
        and never with keys of two routing tags: on a cluster one KV_MPUT must stay on one shard.
        Keys with the same ``{hash tag}`` (flamepy's layout: one session's) share requests; a key
        without one goes alone. Items keep their order within a tag."""
        requests: list[list[tuple]] = []
        open_batches: dict[str, list] = {}   # routing tag -> [batch, its keys, its bytes]
        head = tag = entry = None         # head: "task/{s-1}", the part of the last key that names its tag
        for item in items:
            key, value = item[0], item[1]
            if head is None or not key.startswith(head):  # the {hash tag} rule of flo_core.slots.hash_tag
                start = key.find("{")
                end = key.find("}", start + 1) if start >= 0 else -1
                tag, head = (key[start + 1:end], key[:end + 1]) if end > start + 1 else (key, None)
                entry = open_batches.get(tag)
            if entry is None or len(entry[0]) >= MPUT_MAX_ITEMS or key in entry[1] \
                    or entry[2] + len(key) + len(value) > MPUT_MAX_BYTES:
                entry = open_batches[tag] = [[], set(), 0]
                requests.append(entry[0])
            entry[0].append((key, value) if len(item) < 3 or item[2] is None
                            else (key, value, PutOptions(cas_version=item[2])))
            entry[1].add(key)
            entry[2] += len(key) + len(value)
        return requests

    async def mput(self, request: list[tuple]) -> list[Optional[int]]:
        """Send one request planned by :meth:`mput_requests` (its bytes leave before the first await)."""
        if len(request) == 1:  # a lone item as a plain KV_PUT: the server's C fast path serves that
            item = request[0]
            try:
                r = await (self.client.kv.put(item[0], item[1], item[2]) if len(item) > 2
                           else self.client.kv.put(item[0], item[1]))
            except ConflictError:
                return [None]
            return [r.version]
        return await self.client.kv.put_many(request)

    async def put_atomic(self, items: Sequence[tuple]) -> bool:
        """All of ``(key, value[, cas])`` or none, as one KV transaction (``cas``: a version, 0 = must
        not exist, None = unguarded); False when a guard did not hold (nothing was written).

        >>> await store.put_atomic([("head", b"v2", 17), ("part/2", b"...")])   # doctest: +SKIP
        True
        """
        async with self.client.kv.begin(items[0][0]) as txn:
            puts = []
            for item in items:
                cas = item[2] if len(item) > 2 else None
                opts = None if cas is None else PutOptions(if_not_exists=True) if cas == 0 else PutOptions(cas_version=cas)
                puts.append(txn.put(item[0], item[1], opts) if opts else txn.put(item[0], item[1]))
            try:
                await asyncio.gather(*puts)   # buffered server-side, in order; a guard that fails answers at once
                await txn.commit()
            except ConflictError:
                return False
        return True

    async def delete(self, key: str) -> None:
        await self.client.kv.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            await asyncio.gather(*(self.client.kv.delete(k) for k in keys))

    async def scan(self, prefix: str, limit: int = 0) -> list[str]:
        """Every key with the prefix (all pages), or at most ``limit`` when given."""
        names: list[str] = []
        cursor = None
        while True:
            opts = ScanOptions(limit=1024) if cursor is None else ScanOptions(limit=1024, cursor=cursor)
            r = await self.client.kv.scan(prefix, opts)
            names.extend(r.names)
            if limit and len(names) >= limit:
                return names[:limit]
            if not r.has_more:
                return names
            cursor = r.cursor

    async def mget(self, keys: Sequence[str]) -> list[Optional[tuple[bytes, int]]]:
        out: list = []
        batches = [list(keys[i:i + MGET_BATCH]) for i in range(0, len(keys), MGET_BATCH)]
        for entries in await asyncio.gather(*(self.client.kv.mget(b) for b in batches)):
            out.extend((e.value, e.version) if e.found else None for e in entries)
        return out

    async def incr(self, key: str, delta: int = 1) -> int:
        r = await (self.client.kv.incr(key) if delta == 1 else self.client.kv.incr(key, KVIncrOptions(delta=delta)))
        return r if isinstance(r, int) else r.value

    # -- queues ----------------------------------------------------------------------------------------------

    async def enqueue(self, queue: str, payload: bytes, priority: int = 0) -> int:
        if priority:
            return await self.client.queue.enqueue(queue, payload, EnqueueOptions(priority=priority))
        return await self.client.queue.enqueue(queue, payload)

    async def dequeue(self, queue: str, count: int, block_ms: int = 0) -> list[tuple[int, bytes]]:
        opts = DequeueOptions(block_ms=min(int(block_ms), MAX_BLOCK_MS)) if block_ms else None
        r = await (self.client.queue.dequeue(queue, count, opts) if opts else self.client.queue.dequeue(queue, count))
        return [(m.seq, m.payload) for m in r.messages]

    async def ack(self, queue: str, seqs: Sequence[int]) -> None:
        if seqs:
            await self.client.queue.ack(queue, list(seqs))

    async def purge(self, queue: str) -> None:
        await self.client.queue.purge(queue)

    async def touch(self, queue: str, seqs: Sequence[int]) -> None:
        if seqs:
            await self.client.queue.touch(queue, list(seqs))

    # -- blobs -----------------------------------------------------------------------------------------------

    async def write_chunks(self, chunks: list[tuple[str, bytes]]) -> None:
        if chunks:
            await self.put_many(chunks)

    async def read_blob(self, ref) -> Optional[bytes]:
        if not ref:
            return None
        if ref[0] == "i":
            return ref[1]
        parts = await self.mget(R.blob_chunk_keys(ref))
        if any(p is None for p in parts):
            raise FlameError(FlameErrorCode.INTERNAL, "blob chunk missing")
        return b"".join(p[0] for p in parts)
