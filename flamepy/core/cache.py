"""The object cache on Flo KV: versioned objects with a base and appended deltas.

Key ``<app>/<session>/<object-id>``; the record ``obj/<key>`` holds the
version (1 on put, +1 on every write), the base blob and the list of delta
ids; each delta lives at ``objd/<key>/<delta-id>``. Writers use CAS on the
record, so concurrent writers are last-writer-wins without losing a delta.

Example::

    ref = flamepy.put_object("my-app/my-ssn", {"a": 1})
    ref = flamepy.core.patch_object(ref, {"b": 2})
    merged = flamepy.get_object(ref, deserializer=lambda base, deltas: {**base, **deltas[0]})
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import cloudpickle

from . import _runtime
from . import records as R
from ._store import Conflict, Store

__all__ = ["ObjectRef", "put_object", "get_object", "update_object", "patch_object", "delete_objects"]


@dataclass
class ObjectRef:
    endpoint: str
    key: str
    version: int = 0

    def encode(self) -> bytes:
        return R.pack({"endpoint": self.endpoint, "key": self.key, "version": self.version})

    @classmethod
    def decode(cls, data: bytes) -> "ObjectRef":
        try:
            d = R.unpack(bytes(data))
            return cls(endpoint=d["endpoint"], key=d["key"], version=int(d.get("version", 0)))
        except Exception as exc:
            raise ValueError(f"invalid ObjectRef bytes: {exc}") from None


def _check_part(part: str, what: str, allow_star: bool = False) -> None:
    if not part or "/" in part or "\\" in part or ".." in part or (part == "*" and not allow_star):
        raise ValueError(f"invalid {what} <{part}> in object key")


def _split_prefix(prefix: str) -> tuple[str, str]:
    parts = str(prefix).split("/")
    if len(parts) != 2:
        raise ValueError(f"invalid object prefix <{prefix}>, expected <app>/<session>")
    _check_part(parts[0], "application")
    _check_part(parts[1], "session")
    return parts[0], parts[1]


def _check_key(key: str) -> None:
    parts = str(key).split("/")
    if len(parts) != 3:
        raise ValueError(f"invalid object key <{key}>, expected <app>/<session>/<object-id>")
    _check_part(parts[0], "application")
    _check_part(parts[1], "session")
    _check_part(parts[2], "object id")


def _store() -> Store:
    from .client import connection
    return connection().store


def _endpoint() -> str:
    from .client import connection
    return connection().endpoint


async def _put_new(store: Store, key: str, data: bytes) -> int:
    ref, chunks = R.split_blob(data)
    await store.write_chunks(chunks)
    await store.put(R.k_obj(key), R.pack({"v": 1, "base": ref, "d": []}), if_absent=True)
    return 1


async def _read_record(store: Store, key: str):
    got = await store.get(R.k_obj(key))
    return (R.unpack(got[0]), got[1]) if got else (None, None)


async def _get(store: Store, key: str, with_deltas: bool) -> tuple[bytes, list[bytes], int]:
    rec, _ = await _read_record(store, key)
    if rec is None:
        raise ValueError(f"object <{key}> not found")
    base = await store.read_blob(rec["base"])
    deltas: list[bytes] = []
    if with_deltas and rec["d"]:
        vals = await store.mget([R.k_objd(key, d) for d in rec["d"]])
        refs = [R.unpack(v[0]) for v in vals if v is not None]
        deltas = list(await asyncio.gather(*(store.read_blob(r) for r in refs)))
    return base, deltas, rec["v"]


async def _update(store: Store, key: str, data: bytes) -> int:
    ref, chunks = R.split_blob(data)
    await store.write_chunks(chunks)
    while True:
        rec, version = await _read_record(store, key)
        new_v = 1 if rec is None else rec["v"] + 1
        try:
            if rec is None:
                await store.put(R.k_obj(key), R.pack({"v": 1, "base": ref, "d": []}), if_absent=True)
            else:
                await store.put(R.k_obj(key), R.pack({"v": new_v, "base": ref, "d": []}), cas=version)
        except Conflict:
            continue
        if rec is not None:  # the replaced base and the dropped deltas are garbage now
            await _drop_payload(store, key, rec)
        return new_v


async def _drop_payload(store: Store, key: str, rec: dict) -> None:
    delta_keys = [R.k_objd(key, d) for d in rec["d"]]
    chunk_keys = R.blob_chunk_keys(rec["base"])
    if delta_keys:
        for v in await store.mget(delta_keys):
            if v is not None:
                chunk_keys += R.blob_chunk_keys(R.unpack(v[0]))
    await store.delete_many(delta_keys + chunk_keys)


async def _patch(store: Store, key: str, data: bytes) -> int:
    ref, chunks = R.split_blob(data)
    await store.write_chunks(chunks)
    did = uuid.uuid4().hex
    await store.put(R.k_objd(key, did), R.pack(ref))
    while True:
        rec, version = await _read_record(store, key)
        if rec is None:
            await store.delete(R.k_objd(key, did))
            raise ValueError(f"object <{key}> not found")
        rec["v"] += 1
        rec["d"].append(did)
        try:
            await store.put(R.k_obj(key), R.pack(rec), cas=version)
            return rec["v"]
        except Conflict:
            continue


async def _delete(store: Store, key_or_prefix: str) -> int:
    parts = str(key_or_prefix).split("/")
    if len(parts) == 3:
        _check_key(key_or_prefix)
        keys = [key_or_prefix]
    elif len(parts) == 2:
        _check_part(parts[0], "application")
        _check_part(parts[1], "session", allow_star=True)
        prefix = f"{parts[0]}/" if parts[1] == "*" else f"{key_or_prefix}/"
        keys = [k[len("obj/"):] for k in await store.scan(R.k_obj(prefix))]
    else:
        raise ValueError(f"invalid object key or prefix <{key_or_prefix}>")
    n = 0
    for key in keys:
        rec, _ = await _read_record(store, key)
        if rec is not None:
            await _drop_payload(store, key, rec)
            await store.delete(R.k_obj(key))
            n += 1
    return n


def put_object(prefix: str, obj: Any) -> ObjectRef:
    """Store ``obj`` (cloudpickled) as a new object under ``<app>/<session>``; version 1."""
    _split_prefix(prefix)
    key = f"{prefix}/{uuid.uuid4().hex}"
    version = _runtime.run(_put_new(_store(), key, cloudpickle.dumps(obj)))
    return ObjectRef(endpoint=_endpoint(), key=key, version=version)


def get_object(ref: ObjectRef, deserializer: Optional[Callable[[Any, list], Any]] = None) -> Any:
    """The base object; with a deserializer, ``deserializer(base, [delta, ...])`` in patch order."""
    _check_key(ref.key)
    base, deltas, _ = _runtime.run(_get(_store(), ref.key, deserializer is not None))
    if deserializer is None:
        return cloudpickle.loads(base)
    return deserializer(cloudpickle.loads(base), [cloudpickle.loads(d) for d in deltas])


def update_object(ref: ObjectRef, obj: Any) -> ObjectRef:
    """Replace the base and drop every delta; version + 1 (creates the object when missing)."""
    _check_key(ref.key)
    version = _runtime.run(_update(_store(), ref.key, cloudpickle.dumps(obj)))
    return ObjectRef(endpoint=ref.endpoint, key=ref.key, version=version)


def patch_object(ref: ObjectRef, delta: Any) -> ObjectRef:
    """Append ``delta`` to the object's delta list (base untouched); version + 1."""
    _check_key(ref.key)
    version = _runtime.run(_patch(_store(), ref.key, cloudpickle.dumps(delta)))
    return ObjectRef(endpoint=ref.endpoint, key=ref.key, version=version)


def delete_objects(key_or_prefix: str) -> int:
    """Delete one object, every object of ``<app>/<session>``, or of ``<app>/*``; returns how many."""
    return _runtime.run(_delete(_store(), key_or_prefix))
