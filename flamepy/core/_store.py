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

from flo_client import (ConflictError, DequeueOptions, EnqueueOptions, GetOptions, KVIncrOptions, PutOptions,
                        ScanOptions)

WAIT_FOR_CHANGE = 1  # GetOptions.wait_for: 0 = until the key exists, 1 = until its version changes

__all__ = ["Store", "Conflict"]

MGET_BATCH = 256
MAX_BLOCK_MS = 300_000


class Conflict(Exception):
    """A CAS / if-absent write lost."""


class Store:
    """Thin async wrapper over one FloClient in the flamepy namespace."""

    def __init__(self, endpoint: str, namespace: str = R.NAMESPACE) -> None:
        self.endpoint = endpoint
        self.namespace = namespace
        self.client: Optional[FloClient] = None

    async def connect(self, timeout: float = 10.0) -> "Store":
        client = FloClient(self.endpoint, namespace=self.namespace)
        try:
            await asyncio.wait_for(client.connect(), timeout)
        except asyncio.TimeoutError:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"timeout connecting to {self.endpoint}") from None
        except OSError as exc:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"failed to connect to {self.endpoint}: {exc}") from None
        self.client = client
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
            await asyncio.gather(*(self.put(k, v) for k, v in chunks))

    async def read_blob(self, ref) -> Optional[bytes]:
        if not ref:
            return None
        if ref[0] == "i":
            return ref[1]
        parts = await self.mget(R.blob_chunk_keys(ref))
        if any(p is None for p in parts):
            raise FlameError(FlameErrorCode.INTERNAL, "blob chunk missing")
        return b"".join(p[0] for p in parts)
