"""The object cache on Flo KV: versioned objects (a base plus appended deltas) and files.

Flame runs a separate cache service; here objects live in the same flo-server
(namespace ``flame``), under ``<app>/<session>/<object-id>`` keys:

=================================  ===============================================================
``obj/{<app>/<ssn>}/<id>``         the head: ``{v: version, bv: base version, g: generation, f: format}``
``objd/{<app>/<ssn>}/<id>/<g>/<bv>``  the base (a blob reference: inline, or ``blob/{<app>/<ssn>}<uuid>/<i>``)
``objd/{<app>/<ssn>}/<id>/<g>/<v>``   the deltas (``bv+1..v``), one per version, in patch order
=================================  ===============================================================

(``{<app>/<ssn>}`` is a hash tag: on a cluster a session's objects, their parts and chunks share a
shard, so a write's transaction stays on one; :func:`flamepy.core.records.k_obj`.)

Every write is one KV transaction: the head, CAS-guarded on its KV version, plus
the part it adds, so concurrent writers never lose a delta and a reader never sees
a head without its parts. ``put`` makes version 1, ``update`` and ``patch`` add 1.
A client keeps what it read (per process, LRU, bounded in entries and bytes) and
asks only for what changed: the head (a few bytes) tells it whether it is current,
and if only deltas were appended it fetches exactly those (``stats()`` counts the
bytes). Each ``get_object`` returns a fresh object (unpickled from the kept bytes).

Example::

    ref = flamepy.put_object("my-app/my-ssn", {"a": 1})
    ref = flamepy.core.patch_object(ref, {"b": 2})
    merged = flamepy.get_object(ref, deserializer=lambda base, deltas: {**base, **deltas[0]})
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import cloudpickle

from . import _runtime
from . import records as R
from ._store import Store

__all__ = ["ObjectRef", "ObjectKey", "WILDCARD_SESSION", "CacheStats", "put_object", "get_object",
           "update_object", "patch_object", "delete_objects", "upload_object", "download_object", "stats"]

Deserializer = Callable[[Any, list], Any]
log = logging.getLogger("flamepy.cache")

WILDCARD_SESSION = "*"
MAX_KEY_PART = 255                      # characters per key part
MAX_DELTAS = 10_000                     # deltas per object; update_object folds them into a new base
MAX_OBJECT_BYTES = 4 << 30              # one object or file (the server keeps it in memory)
CLIENT_CACHE_ENTRIES = 1000             # Flame's LRU size ...
CLIENT_CACHE_BYTES = 256 << 20          # ... and a bound on the bytes it keeps
READ_RETRIES = 8                        # reads racing an update_object start over this often
WRITE_RETRIES = 1000                    # CAS rounds before a write under contention gives up
_CHUNK_BATCH = 20                       # blob chunks per request when streaming (~4 MiB)
_PICKLED, _RAW = "p", "r"               # what a base holds: cloudpickle bytes, or a file's bytes


# -- keys and references ------------------------------------------------------------------------------------

@dataclass
class ObjectRef:
    """Where an object is: the flo-server (``host:port``), its key and the version last seen (0 = re-read all)."""

    endpoint: str
    key: str
    version: int = 0

    def encode(self) -> bytes:
        return R.pack(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> "ObjectRef":
        try:
            d = R.unpack(bytes(data))
            return cls(endpoint=str(d["endpoint"]), key=str(d["key"]), version=int(d.get("version", 0)))
        except Exception as exc:
            raise ValueError(f"invalid ObjectRef bytes: {exc}") from None


def _check_part(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} cannot be empty")
    if len(value) > MAX_KEY_PART:
        raise ValueError(f"{what} is longer than {MAX_KEY_PART} characters")
    if "/" in value or "\\" in value or ".." in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{what} contains invalid characters: '{value}'")


@dataclass(frozen=True)
class ObjectKey:
    """``<app>/<session>[/<object-id>]``; session ``*`` (WILDCARD_SESSION) means all sessions, without an id.

    >>> ObjectKey.from_path("app/ssn/obj").to_prefix()
    'app/ssn'
    >>> str(ObjectKey.for_all_sessions("app"))
    'app/*'
    """

    app_name: str
    session_id: str
    object_id: Optional[str] = None

    def __post_init__(self) -> None:
        _check_part(self.app_name, "app_name")
        if self.app_name == WILDCARD_SESSION:
            raise ValueError("Wildcard '*' not allowed for app_name")
        if self.session_id == WILDCARD_SESSION:
            if self.object_id is not None:
                raise ValueError("Wildcard session '*' cannot have object_id")
        else:
            _check_part(self.session_id, "session_id")
        if self.object_id is not None:
            _check_part(self.object_id, "object_id")
            if self.object_id == WILDCARD_SESSION:
                raise ValueError("Wildcard '*' not allowed for object_id")

    @classmethod
    def from_path(cls, path: str) -> "ObjectKey":
        parts = str(path).split("/")
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2])
        raise ValueError(f"Invalid object key path '{path}': expected '<app>/<ssn>' or '<app>/<ssn>/<uuid>' format")

    @classmethod
    def from_prefix(cls, prefix: str) -> "ObjectKey":
        key = cls.from_path(prefix)
        if key.object_id is not None:
            raise ValueError(f"Invalid key prefix '{prefix}': expected '<app>/<ssn>' format")
        return key

    @classmethod
    def from_key(cls, key: str) -> "ObjectKey":
        object_key = cls.from_path(key)
        if object_key.object_id is None:
            raise ValueError(f"Invalid object key '{key}': expected '<app>/<ssn>/<uuid>' format")
        return object_key

    @classmethod
    def for_shared(cls, app_name: str) -> "ObjectKey":
        return cls(app_name, "shared")

    @classmethod
    def for_all_sessions(cls, app_name: str) -> "ObjectKey":
        return cls(app_name, WILDCARD_SESSION)

    def is_all_sessions(self) -> bool:
        return self.session_id == WILDCARD_SESSION

    def with_generated_id(self) -> "ObjectKey":
        return ObjectKey(self.app_name, self.session_id, str(uuid.uuid4()))

    def to_prefix(self) -> str:
        return f"{self.app_name}/{self.session_id}"

    def to_key(self) -> Optional[str]:
        return None if self.object_id is None else f"{self.app_name}/{self.session_id}/{self.object_id}"

    def matches_key(self, key: str) -> bool:
        """Whether the full object key ``key`` is this key, or under this prefix."""
        parts = str(key).split("/")
        if len(parts) != 3 or not all(parts) or parts[0] != self.app_name:
            return False
        if self.object_id is not None:
            return key == self.to_key()
        return self.is_all_sessions() or parts[1] == self.session_id

    def __str__(self) -> str:
        return self.to_key() or self.to_prefix()


# -- what a client keeps --------------------------------------------------------------------------------------

@dataclass
class CacheStats:
    """What this process's ``get_object`` calls did: answers by kind and the bytes read from the server."""

    gets: int = 0
    full: int = 0              # read the base and every delta
    patches: int = 0           # read only the deltas appended since the kept version
    not_modified: int = 0      # read the head only
    bytes_fetched: int = 0     # head, part and chunk values read, over all of the above


@dataclass
class _Kept:
    """One object as this process last read (or wrote) it: raw bytes, unpickled per call."""

    version: int
    base_version: int
    generation: str
    fmt: str
    base: bytes
    deltas: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.base) + sum(len(d) for d in self.deltas)


_kept: "OrderedDict[tuple, _Kept]" = OrderedDict()
_kept_bytes = 0
_kept_lock = threading.Lock()
_stats = CacheStats()


def stats(reset: bool = False) -> CacheStats:
    """A copy of this process's :class:`CacheStats` (``reset=True`` zeroes them after copying).

    >>> before = stats().bytes_fetched                 # doctest: +SKIP
    >>> get_object(ref); stats().bytes_fetched - before  # doctest: +SKIP
    22
    """
    with _kept_lock:
        out = CacheStats(**asdict(_stats))
        if reset:
            for name in asdict(_stats):
                setattr(_stats, name, 0)
        return out


def _count(**deltas: int) -> None:
    with _kept_lock:
        for name, n in deltas.items():
            setattr(_stats, name, getattr(_stats, name) + n)


def _keep(ck: tuple, entry: _Kept) -> None:
    """Keep ``entry`` unless a newer version is kept already; evict the least recently used past the bounds."""
    global _kept_bytes
    with _kept_lock:
        old = _kept.pop(ck, None)
        if old is not None:
            _kept_bytes -= old.size
            if old.generation == entry.generation and old.version > entry.version:
                entry = old
        if entry.size > CLIENT_CACHE_BYTES // 4:   # one huge object must not flush everything else
            return
        _kept[ck] = entry
        _kept_bytes += entry.size
        while len(_kept) > CLIENT_CACHE_ENTRIES or _kept_bytes > CLIENT_CACHE_BYTES:
            _, dropped = _kept.popitem(last=False)
            _kept_bytes -= dropped.size


def _kept_entry(ck: tuple) -> Optional[_Kept]:
    with _kept_lock:
        entry = _kept.get(ck)
        if entry is not None:
            _kept.move_to_end(ck)
        return entry


def _forget(match: Callable[[tuple], bool]) -> None:
    global _kept_bytes
    with _kept_lock:
        for ck in [ck for ck in _kept if match(ck)]:
            _kept_bytes -= _kept.pop(ck).size


# -- where the cache is ---------------------------------------------------------------------------------------

_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()
_resolved: tuple = (None, None)   # (default connection, cache endpoint) it was resolved for


def _store() -> Store:
    """The store holding the cache: the default connection's, unless the context names another flo-server."""
    global _resolved
    from .client import connection
    from .config import FlameContext

    conn = connection()
    if _resolved[0] is not conn:
        ctx = FlameContext()
        _resolved = (conn, (ctx.object_cache_endpoint(), ctx.object_cache_options()))
    endpoint, options = _resolved[1]
    if endpoint == conn.endpoint:
        return conn.store
    with _stores_lock:
        store = _stores.get(endpoint)
        if store is None:
            store = _stores[endpoint] = _runtime.run(Store(endpoint, client_options=options).connect())
        return store


def _slot(key: str, generation: str, version: int) -> str:
    return R.k_objd(key, f"{generation}/{version}")


def _head(version: int, base_version: int, generation: str, fmt: str) -> bytes:
    return R.pack({"v": version, "bv": base_version, "g": generation, "f": fmt})


def _check_size(n: int, what: str) -> None:
    if n > MAX_OBJECT_BYTES:
        raise ValueError(f"{what} is {n} bytes, more than the object cache's limit of {MAX_OBJECT_BYTES}")


# -- server side of the operations (coroutines on the flamepy loop) -------------------------------------------

class _Changed(Exception):
    """A part vanished under a read: an update replaced the object meanwhile; read the head again."""

    def __init__(self, nread: int) -> None:
        super().__init__(nread)
        self.nread = nread


async def _read_head(store: Store, key: str) -> tuple[Optional[dict], int, int]:
    """(head or None, its KV version, bytes read)."""
    got = await store.get(R.k_obj(key))
    if got is None:
        return None, 0, 0
    head = R.unpack(got[0])
    if not isinstance(head, dict) or "g" not in head:
        raise ValueError(f"Object {key} was written by an older flamepy (another layout); put it again")
    return head, got[1], len(got[0])


async def _read_parts(store: Store, key: str, generation: str, versions: range) -> tuple[list, int]:
    """The bytes of parts ``versions`` (base or deltas) and how many bytes that read."""
    keys = [_slot(key, generation, v) for v in versions]
    got = await store.mget(keys) if keys else []
    nread = sum(len(g[0]) for g in got if g is not None)
    if any(g is None for g in got):
        raise _Changed(nread)
    refs = [R.unpack(g[0]) for g in got]
    chunk_keys = [k for ref in refs for k in R.blob_chunk_keys(ref)]
    chunks = await store.mget(chunk_keys) if chunk_keys else []
    nread += sum(len(c[0]) for c in chunks if c is not None)
    if any(c is None for c in chunks):
        raise _Changed(nread)
    values, i = [], 0
    for ref in refs:
        if ref[0] == "i":
            values.append(bytes(ref[1]))
        else:
            values.append(b"".join(c[0] for c in chunks[i:i + ref[2]]))
            i += ref[2]
    return values, nread


async def _fetch(store: Store, key: str, kept: Optional[_Kept]) -> tuple[str, Optional[_Kept]]:
    """('not_modified' | 'patches' | 'full', the object as it is now) with the fewest bytes that tell it."""
    nread = 0
    try:
        for _ in range(READ_RETRIES):
            head, _, n = await _read_head(store, key)
            nread += n
            if head is None:
                raise ValueError(f"Object not found: {key}")
            v, bv, g = head["v"], head["bv"], head["g"]
            if kept is not None and kept.generation == g and kept.base_version == bv and kept.version <= v:
                if kept.version == v:
                    return "not_modified", kept
                try:
                    deltas, n = await _read_parts(store, key, g, range(kept.version + 1, v + 1))
                except _Changed as changed:
                    nread += changed.nread
                    continue
                nread += n
                return "patches", _Kept(v, bv, g, head["f"], kept.base, kept.deltas + deltas)
            try:
                parts, n = await _read_parts(store, key, g, range(bv, v + 1))
            except _Changed as changed:
                nread += changed.nread
                continue
            nread += n
            return "full", _Kept(v, bv, g, head["f"], parts[0], parts[1:])
        raise ValueError(f"Object {key} changed {READ_RETRIES} times while it was read; try again")
    finally:
        _count(bytes_fetched=nread)


async def _write_blob(store: Store, key: str, data: bytes) -> Any:
    ref, chunks = R.split_blob(data, key.rsplit("/", 1)[0])  # on the object's shard
    await store.write_chunks(chunks)
    return ref


async def _drop_parts(store: Store, key: str, generation: str, versions: Optional[range] = None) -> None:
    """Delete parts (all of a generation, or ``versions``) and their blob chunks."""
    if versions is None:
        keys = await store.scan(R.k_objd(key, f"{generation}/"))
    else:
        keys = [_slot(key, generation, v) for v in versions]
    if not keys:
        return
    chunk_keys = []
    for got in await store.mget(keys):
        if got is not None:
            chunk_keys += R.blob_chunk_keys(R.unpack(got[0]))
    await store.delete_many(keys + chunk_keys)


async def _create(store: Store, key: str, ref: Any, fmt: str) -> Optional[str]:
    """A new object at version 1 with base ``ref``: its generation, or None if the key exists."""
    generation = uuid.uuid4().hex[:12]
    # One request applied in order: the part, then the head if absent (a reader never sees a head
    # without its base).
    versions = await store.put_many([(_slot(key, generation, 1), R.pack(ref)),
                                     (R.k_obj(key), _head(1, 1, generation, fmt), 0)])
    if versions[1] is None:
        await store.delete(_slot(key, generation, 1))
        return None
    return generation


async def _install_base(store: Store, key: str, ref: Any, fmt: str, fresh: bool = False) -> tuple[int, str]:
    """Make ``ref`` the object's new base (creating the object at version 1); its (version, generation).

    ``fresh``: the key was just generated, so do not look for an existing head first.
    """
    for _ in range(WRITE_RETRIES):
        head, kv_version, _ = (None, 0, 0) if fresh else await _read_head(store, key)
        fresh = False
        if head is None:
            generation = await _create(store, key, ref, fmt)
            if generation is not None:
                return 1, generation
            continue
        v, g = head["v"] + 1, head["g"]
        if await store.put_atomic([(R.k_obj(key), _head(v, v, g, fmt), kv_version), (_slot(key, g, v), R.pack(ref))]):
            try:   # the replaced parts are garbage now; failing to drop them must not fail the write
                await _drop_parts(store, key, g, range(head["bv"], head["v"] + 1))
            except Exception as exc:
                log.warning("object %s: replaced parts of version %s left behind: %s", key, head["v"], exc)
            return v, g
    raise ValueError(f"Object {key}: too many concurrent writers, giving up after {WRITE_RETRIES} attempts")


async def _patch(store: Store, key: str, data: bytes) -> tuple[int, int, str]:
    """Append one delta; (new version, base version, generation)."""
    ref = await _write_blob(store, key, data)
    try:
        for _ in range(WRITE_RETRIES):
            head, kv_version, _ = await _read_head(store, key)
            if head is None:
                raise ValueError(f"Object not found: {key}")
            v, bv, g = head["v"] + 1, head["bv"], head["g"]
            if v - bv > MAX_DELTAS:
                raise ValueError(f"Object {key} has {MAX_DELTAS} deltas, the limit: update_object it to fold "
                                 f"them into a new base")
            if await store.put_atomic([(R.k_obj(key), _head(v, bv, g, head["f"]), kv_version),
                                       (_slot(key, g, v), R.pack(ref))]):
                return v, bv, g
        raise ValueError(f"Object {key}: too many concurrent writers, giving up after {WRITE_RETRIES} attempts")
    except ValueError:   # refused, nothing written: drop the chunks (a broken connection may have committed)
        await store.delete_many(R.blob_chunk_keys(ref))
        raise


async def _delete(store: Store, keys: list[str]) -> int:
    n = 0
    for key in keys:
        head, _, _ = await _read_head(store, key)
        if head is None:
            continue
        await store.delete(R.k_obj(key))      # the head first: from here on the object is gone for readers
        await _drop_parts(store, key, head["g"])
        n += 1
    return n


async def _keys_under(store: Store, object_key: ObjectKey) -> list[str]:
    if object_key.object_id is not None:
        return [object_key.to_key()]
    prefix = R.p_obj(object_key.app_name, None if object_key.is_all_sessions() else object_key.session_id)
    return [R.obj_key_of(k) for k in await store.scan(prefix)]


# -- the API --------------------------------------------------------------------------------------------------

def _dumps(obj: Any) -> bytes:
    data = cloudpickle.dumps(obj, protocol=cloudpickle.DEFAULT_PROTOCOL)
    _check_size(len(data), "the object")
    return data


def _loads(fmt: str, data: bytes) -> Any:
    return data if fmt == _RAW else cloudpickle.loads(data)


def put_object(key_prefix: str, obj: Any) -> ObjectRef:
    """Store ``obj`` (cloudpickled) as a new object under ``<app>/<session>``: version 1.

    >>> ref = put_object("my-app/my-ssn", [1, 2, 3])      # doctest: +SKIP
    >>> ref.key, ref.version                               # doctest: +SKIP
    ('my-app/my-ssn/2f1c…', 1)
    """
    key = ObjectKey.from_prefix(key_prefix).with_generated_id().to_key()
    data = _dumps(obj)
    store = _store()
    version, generation = _runtime.run(_install(store, key, data, _PICKLED, fresh=True))
    _keep((store.endpoint, key), _Kept(version, version, generation, _PICKLED, data))
    return ObjectRef(endpoint=store.endpoint, key=key, version=version)


async def _install(store: Store, key: str, data: bytes, fmt: str, fresh: bool = False) -> tuple[int, str]:
    ref = await _write_blob(store, key, data)
    try:
        return await _install_base(store, key, ref, fmt, fresh)
    except ValueError:   # refused, nothing written (see _patch)
        await store.delete_many(R.blob_chunk_keys(ref))
        raise


def get_object(ref: ObjectRef, deserializer: Optional[Deserializer] = None) -> Any:
    """The object's base; with a deserializer, ``deserializer(base, [delta, ...])`` (deltas in patch order).

    Always current: it asks the server what changed since this process last read the
    object and fetches only that. ``ref.version == 0`` reads everything again.
    """
    ObjectKey.from_key(ref.key)
    store = _store()
    ck = (store.endpoint, ref.key)
    kept = None if ref.version == 0 else _kept_entry(ck)
    kind, entry = _runtime.run(_fetch(store, ref.key, kept))
    _count(gets=1, **{kind: 1})
    if kind != "not_modified":
        _keep(ck, entry)
    base = _loads(entry.fmt, entry.base)
    if deserializer is None:
        return base
    return deserializer(base, [cloudpickle.loads(d) for d in entry.deltas])


def update_object(ref: ObjectRef, new_obj: Any) -> ObjectRef:
    """Replace the base and drop every delta: version + 1 (creates the object, at version 1, when missing)."""
    ObjectKey.from_key(ref.key)
    data = _dumps(new_obj)
    store = _store()
    version, generation = _runtime.run(_install(store, ref.key, data, _PICKLED))
    _keep((store.endpoint, ref.key), _Kept(version, version, generation, _PICKLED, data))
    return ObjectRef(endpoint=store.endpoint, key=ref.key, version=version)


def patch_object(ref: ObjectRef, delta: Any) -> ObjectRef:
    """Append ``delta`` (cloudpickled) to the object's deltas, base untouched: version + 1; the object must exist."""
    ObjectKey.from_key(ref.key)
    data = _dumps(delta)
    store = _store()
    ck = (store.endpoint, ref.key)
    version, base_version, generation = _runtime.run(_patch(store, ref.key, data))
    kept = _kept_entry(ck)
    # Kept at the version just before ours: ours is the only change, so keep it too (no read needed next time).
    if kept is not None and kept.version == version - 1 and (kept.base_version, kept.generation) == \
            (base_version, generation):
        _keep(ck, _Kept(version, base_version, generation, kept.fmt, kept.base, kept.deltas + [data]))
    return ObjectRef(endpoint=store.endpoint, key=ref.key, version=version)


def delete_objects(key_prefix: str) -> int:
    """Delete one object (``<app>/<ssn>/<id>``), a session's (``<app>/<ssn>``) or an app's (``<app>/*``).

    Returns how many objects were deleted.
    """
    object_key = ObjectKey.from_path(key_prefix)
    store = _store()

    async def go() -> int:
        return await _delete(store, await _keys_under(store, object_key))

    n = _runtime.run(go())
    _forget(lambda ck: ck[0] == store.endpoint and object_key.matches_key(ck[1]))
    return n


def upload_object(key_or_prefix: str, file_path: str) -> ObjectRef:
    """Store a file's bytes as an object (streamed; memory stays bounded whatever its size).

    A full key (``myapp/pkg/myapp-1.0.tar.gz``) creates or replaces that object (version + 1);
    a prefix (``myapp/pkg``) gets a generated id. ``get_object`` of it returns the bytes.
    """
    object_key = ObjectKey.from_path(key_or_prefix)
    if object_key.is_all_sessions():
        raise ValueError(f"Invalid key format: {key_or_prefix}")
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"File not found: {file_path}")
    key = object_key.to_key() or object_key.with_generated_id().to_key()
    size = os.path.getsize(file_path)
    _check_size(size, file_path)
    store = _store()
    if size <= R.INLINE_MAX:
        with open(file_path, "rb") as f:
            ref: Any = ["i", f.read()]
    else:
        ref = _upload_chunks(store, key, file_path)
    try:
        version, _ = _runtime.run(_install_base(store, key, ref, _RAW))
    except ValueError:   # refused, nothing written (see _patch)
        _runtime.run(store.delete_many(R.blob_chunk_keys(ref)))
        raise
    _forget(lambda ck: ck == (store.endpoint, key))
    return ObjectRef(endpoint=store.endpoint, key=key, version=version)


def _upload_chunks(store: Store, key: str, file_path: str) -> list:
    """Write a file as blob chunks, a few at a time (file reads stay off the I/O loop); its blob reference."""
    bid, n, size = R.new_blob_id(key.rsplit("/", 1)[0]), 0, 0
    try:
        with open(file_path, "rb") as f:
            while True:
                batch = []
                for _ in range(_CHUNK_BATCH):
                    piece = f.read(R.CHUNK)
                    if not piece:
                        break
                    batch.append((R.k_blob(bid, n), piece))
                    n, size = n + 1, size + len(piece)
                if not batch:
                    break
                _runtime.run(store.write_chunks(batch))
    except (OSError, ValueError):   # the file failed to read: nothing refers to these chunks yet
        _runtime.run(store.delete_many([R.k_blob(bid, i) for i in range(n)]))
        raise
    return ["c", bid, n, size]


def download_object(ref: ObjectRef, dest_path: str) -> None:
    """Write the object's base bytes to ``dest_path`` (streamed, atomically: a failure leaves no file).

    For uploaded files and any object without deltas (a pickled object's pickle bytes).
    """
    ObjectKey.from_key(ref.key)
    store = _store()
    dest_dir = os.path.dirname(os.path.abspath(dest_path))
    os.makedirs(dest_dir, exist_ok=True)
    for _ in range(READ_RETRIES):
        head, _, _ = _runtime.run(_read_head(store, ref.key))
        if head is None:
            raise ValueError(f"Object not found: {ref.key}")
        if head["v"] != head["bv"]:
            raise ValueError(f"Object {ref.key} has {head['v'] - head['bv']} deltas; download_object writes "
                             f"objects without deltas (files)")
        got = _runtime.run(store.get(_slot(ref.key, head["g"], head["bv"])))
        if got is None:
            continue
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download-")
        try:
            with os.fdopen(fd, "wb") as out:
                if _stream_blob(store, R.unpack(got[0]), out):
                    os.replace(tmp, dest_path)
                    return
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise ValueError(f"Object {ref.key} changed {READ_RETRIES} times while it was downloaded; try again")


def _stream_blob(store: Store, ref: Any, out) -> bool:
    """Write a blob to ``out`` a few chunks at a time; False if a chunk vanished (replaced meanwhile)."""
    if ref[0] == "i":
        out.write(ref[1])
        return True
    keys = R.blob_chunk_keys(ref)
    for i in range(0, len(keys), _CHUNK_BATCH):
        got = _runtime.run(store.mget(keys[i:i + _CHUNK_BATCH]))
        if any(g is None for g in got):
            return False
        for g in got:
            out.write(g[0])
    return True
