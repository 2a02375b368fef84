"""The snapshot file format: stores streamed as bounded, checksummed frames.

A snapshot file (``DIR/snap/NNNNNNNNNNNNNNNNNNNN.snap``, see flo_server.persistence) is::

    b"FLOSNAP2" <u64 lsn>                                   the header (little endian)
    <u32 length> <u32 crc32(payload)> <payload>             frames, each payload one msgpack array:
        ["store", name, shape]                              a store begins (shape: how its dump is cut)
        ["part", head]                                      one piece of it: a kv namespace, a queue, ...
        ["rows", [row, ...]]                                rows of the current part, about 1 MiB a frame
        ["end", lsn, frames before this one, [store names]] the trailer: the file is complete

Writing walks the live stores and packs about 1 MiB of rows at a time, so the writer (the forked
snapshot child) never holds a second copy of every store; loading hands each store its rows as
they are read (``KVStore.load`` and ``Queues.load`` take iterables), so start-up never holds the
whole file nor the whole decoded dump. A file is used only after one pass has checked every
frame's CRC and the trailer: a torn or damaged file raises ``ValueError`` before any store is
touched, and start-up takes the older snapshot (or the log) instead.

Files of the first format (``FLOSNAP1``: one CRC'd msgpack ``{"lsn", "stores"}`` body) are still
read (:func:`read_v1`), so a data dir written by an older flo-server loads; a cluster replica's
resynchronisation still writes one (:func:`write_v1`: the leader sends that body).

Example:
    >>> import os, tempfile
    >>> kv = KVStore()
    >>> _ = kv.set("default", b"k", b"v", 1, 0, 0)
    >>> path = os.path.join(tempfile.mkdtemp(), "00000000000000000007.snap")
    >>> with open(path, "wb") as f:
    ...     write_stores(f, 7, {"kv": kv})
    >>> snap = SnapshotFile.open(path)
    >>> snap.lsn, snap.names, snap.states()["kv"]["default"][0][:3]
    (7, ['kv'], [b'k', b'v', 1])
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import msgpack

from flo_core.kv import KVStore
from flo_core.wire import crc32  # zlib's CRC-32, folded with PCLMULQDQ when compiled
from flo_core.pqueue import Queues
from flo_core.stream import Stream, Streams

__all__ = ["SNAP_MAGIC", "SNAP_MAGIC_V1", "MAX_FRAME", "SnapshotFile", "load_store", "write_stores", "write_v1",
           "read_v1"]

SNAP_MAGIC = b"FLOSNAP2"
SNAP_MAGIC_V1 = b"FLOSNAP1"
_HEAD = struct.Struct("<8sQ")  # magic, lsn
_FRAME = struct.Struct("<II")  # payload length, crc32(payload)
_HEAD_V1 = struct.Struct("<8sQQI")  # magic, lsn, body length, crc32(body)
#: A frame's payload may not exceed this (a log record's limit too): a longer one is refused when
#: written, and a file claiming one is damaged - nothing of the claimed size is allocated.
MAX_FRAME = 256 * 1024 * 1024
TARGET_FRAME = 1024 * 1024  # rows are packed about this many bytes at a time
MAX_BATCH_ROWS = 8192
PIECE = 1024 * 1024  # a stream's record bytes go in pieces of this size


# --- writing ---------------------------------------------------------------------------------


class _FrameWriter:
    """Frames to a binary file; rows packed one by one until a frame holds about TARGET_FRAME bytes."""

    def __init__(self, f: BinaryIO, lsn: int) -> None:
        self.f = f
        self.frames = 0
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._rows = msgpack.Packer(use_bin_type=True, autoreset=False)  # a batch's rows build up in it
        self._rows_tag = self._pack("rows")
        f.write(_HEAD.pack(SNAP_MAGIC, lsn))

    def frame(self, obj: Any) -> None:
        self._write(self._pack(obj))

    def _write(self, payload: bytes, prefix: bytes = b"") -> None:
        length = len(prefix) + len(payload)
        if length > MAX_FRAME:
            raise ValueError(f"a snapshot frame of {length} bytes exceeds the limit of {MAX_FRAME}")
        self.f.write(_FRAME.pack(length, crc32(payload, crc32(prefix))))
        self.f.write(prefix)
        self.f.write(payload)
        self.frames += 1

    def rows(self, rows: Iterable) -> None:
        """``["rows", batch]`` frames of ``rows``, each about TARGET_FRAME bytes (one row at the least)."""
        p = self._rows
        n = 0
        for row in rows:
            p.pack(row)
            n += 1
            if n >= MAX_BATCH_ROWS or len(p.getbuffer()) >= TARGET_FRAME:
                self._flush_rows(n)
                n = 0
        if n:
            self._flush_rows(n)

    def packed(self, batches: Iterable[tuple[int, bytes]]) -> None:
        """``["rows", batch]`` frames of batches already packed (``(count, the rows' msgpack bytes)``)."""
        for n, body in batches:
            self._write(body, self._pack_header(n))

    def _flush_rows(self, n: int) -> None:
        # ["rows", [row, ...]] with the rows' bytes as packed: no second copy of the batch
        prefix = self._pack_header(n)
        body = self._rows.bytes()
        self._rows.reset()
        self._write(body, prefix)

    def _pack_header(self, n: int) -> bytes:
        p = msgpack.Packer()
        return p.pack_array_header(2) + self._rows_tag + p.pack_array_header(n)


class _Packed:
    """A part's rows already packed, in ``(count, bytes)`` batches (:meth:`_FrameWriter.packed`)."""

    def __init__(self, batches: Iterable[tuple[int, bytes]]) -> None:
        self.batches = batches


def _kv_parts(kv: KVStore) -> Iterator[tuple[Any, Iterable]]:
    # KVStore.packed_rows packs the rows of KVStore.dump in C, about a frame at a time: each value is
    # copied once, from the store into the frame (a 4 KiB-value store snapshots at memcpy speed)
    for ns in kv.spaces:
        yield ns, _Packed(kv.packed_rows(ns, TARGET_FRAME, MAX_BATCH_ROWS))


def _queue_parts(queues: Queues) -> Iterator[tuple[Any, Iterable]]:
    for ns in queues.namespaces():
        for name in queues.names(ns):
            q = queues.get(ns, name)
            yield [ns, name, q.dump_without_messages()], q.message_rows()


def _stream_parts(streams: Streams) -> Iterator[tuple[Any, Iterable]]:
    for ns, by_name in streams.by_ns.items():
        yield ns, _stream_rows(by_name.values())


def _stream_rows(streams: Iterable) -> Iterator[Any]:
    """Per stream: ``["s", its dump without the record bytes, len(meta), len(data)]``, then
    those bytes in pieces of at most PIECE, meta first (``Stream.record_pieces``: no copy of the stream)."""
    for s in streams:
        state, meta_bytes, data_bytes = s.dump_without_records()
        yield ["s", state, meta_bytes, data_bytes]
        yield from s.record_pieces(PIECE)


def _generic_parts(state: Any) -> tuple[str, Iterator[tuple[Any, Iterable]]]:
    """A store's whole ``dump()`` cut by its shape: a dict of lists by key, a list by rows."""
    if isinstance(state, dict) and all(isinstance(v, list) for v in state.values()):
        return "map", iter(state.items())
    if isinstance(state, list):
        return "list", iter([(None, state)])
    return "value", iter([(state, ())])


def _parts_of(store: Any) -> tuple[str, Iterator[tuple[Any, Iterable]]]:
    if isinstance(store, KVStore):
        return "kv", _kv_parts(store)
    if isinstance(store, Queues):
        return "queues", _queue_parts(store)
    if isinstance(store, Streams):
        return "streams", _stream_parts(store)
    return _generic_parts(store.dump())


def write_stores(f: BinaryIO, lsn: int, stores: dict[str, Any],
                 after_store: Callable[[], None] | None = None) -> None:
    """Stream ``stores`` (name -> store with ``dump``) into ``f`` as a snapshot at ``lsn``.

    Nothing may change the stores meanwhile (the forked child's copy, or the loop thread).
    ``after_store`` is called after each store's frames (the fault points of flo_server.faults).
    """
    w = _FrameWriter(f, lsn)
    for name, store in stores.items():
        shape, parts = _parts_of(store)
        w.frame(["store", name, shape])
        for head, rows in parts:
            w.frame(["part", head])
            if isinstance(rows, _Packed):
                w.packed(rows.batches)
            else:
                w.rows(rows)
        if after_store is not None:
            after_store()
    w.frame(["end", lsn, w.frames, list(stores)])


def write_v1(f: BinaryIO, lsn: int, body: bytes) -> None:
    """The first format: one body (msgpack ``{"lsn", "stores"}``) under one CRC."""
    f.write(_HEAD_V1.pack(SNAP_MAGIC_V1, lsn, len(body), crc32(body)))
    f.write(body)


# --- reading ---------------------------------------------------------------------------------


def read_v1(data: bytes) -> tuple[int, dict]:
    """``(lsn, {store name: state})`` of a first-format file's bytes; ``ValueError`` if damaged."""
    if len(data) < _HEAD_V1.size:
        raise ValueError("shorter than its header")
    magic, lsn, length, crc = _HEAD_V1.unpack_from(data)
    body = memoryview(data)[_HEAD_V1.size:]
    if magic != SNAP_MAGIC_V1:
        raise ValueError("bad magic")
    if len(body) != length:
        raise ValueError(f"body is {len(body)} bytes, header says {length}")
    if crc32(body) != crc:
        raise ValueError("CRC mismatch")
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (TypeError, ValueError, msgpack.UnpackException) as e:  # TypeError: a list as a map key
        raise ValueError(f"body does not decode: {e}") from None
    if not isinstance(doc, dict) or doc.get("lsn") != lsn or not isinstance(doc.get("stores"), dict):
        raise ValueError("body does not match its header")
    return lsn, doc["stores"]


def _frames(f: BinaryIO, where: str, check: bool) -> Iterator[tuple[int, bytes]]:
    """``(offset, payload)`` of each frame after the header; ``ValueError`` on a torn or bad one."""
    at = _HEAD.size
    while head := f.read(_FRAME.size):
        if len(head) < _FRAME.size:
            raise ValueError(f"{where}: torn: ends inside the frame header at offset {at}")
        length, crc = _FRAME.unpack(head)
        if length > MAX_FRAME:
            raise ValueError(f"{where}: frame at offset {at} claims {length} bytes, over the limit of {MAX_FRAME}")
        payload = f.read(length)
        if len(payload) < length:
            raise ValueError(f"{where}: torn: the frame at offset {at} has {len(payload)} of its {length} bytes")
        if check and crc32(payload) != crc:
            raise ValueError(f"{where}: CRC mismatch in the frame at offset {at}")
        yield at, payload
        at += _FRAME.size + length


def _decode(payload: bytes, where: str, at: int) -> list:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (TypeError, ValueError, msgpack.UnpackException) as e:
        raise ValueError(f"{where}: the frame at offset {at} does not decode ({e})") from None
    if not isinstance(obj, list) or not obj or obj[0] not in _ARITY or len(obj) != _ARITY[obj[0]]:
        raise ValueError(f"{where}: the frame at offset {at} is not a snapshot frame")
    return obj


_ARITY = {"store": 3, "part": 2, "rows": 2, "end": 4}


class _Reader:
    """The decoded frames of a checked file, one ahead (what a store's load pulls on)."""

    def __init__(self, f: BinaryIO, where: str) -> None:
        self._it = _frames(f, where, check=False)  # checked by SnapshotFile.check just before
        self.where = where
        self.head = self._next()

    def _next(self) -> list:
        got = next(self._it, None)
        if got is None:
            raise ValueError(f"{self.where}: ends before its trailer")
        return _decode(got[1], self.where, got[0])

    def take(self) -> list:
        got, self.head = self.head, (self._next() if self.head[0] != "end" else self.head)
        return got

    def parts(self) -> Iterator[tuple[Any, Iterator]]:
        """``(head, rows)`` of the current store's parts; rows a consumer leaves unread are skipped."""
        while True:
            tag = self.head[0]
            if tag == "rows":
                self.take()
            elif tag == "part":
                yield self.take()[1], self._rows()
            else:
                return

    def _rows(self) -> Iterator:
        while self.head[0] == "rows":
            rows = self.take()[1]
            if not isinstance(rows, list):
                raise ValueError(f"{self.where}: a rows frame without a list")
            yield from rows


class _Parts:
    """A store's parts as the mapping its ``load`` iterates (``.items()``: ``(head, rows)``), read as it goes."""

    def __init__(self, parts: Iterator[tuple[Any, Iterator]]) -> None:
        self._parts = parts

    def items(self) -> Iterator[tuple[Any, Iterator]]:
        return self._parts


def _stream_head(row: Any, limit: int) -> tuple[dict, int, int]:
    """``(dump without records, meta bytes, data bytes)`` of a stream's first row (:func:`_stream_rows`)."""
    if not (isinstance(row, list) and len(row) == 4 and row[0] == "s" and isinstance(row[1], dict)
            and all(isinstance(n, int) and 0 <= n <= limit for n in row[2:]) and row[2] + row[3] <= limit):
        raise ValueError("a stream's row is not its header")
    return row[1], row[2], row[3]


class _StreamsDump:
    """The streams of a snapshot as they are read: :meth:`load_into` rebuilds each stream piece by
    piece (``Stream.load_records``); :meth:`items` gives ``Streams.dump()``'s shape (tools)."""

    def __init__(self, parts: Iterator[tuple[Any, Iterator]], limit: int) -> None:
        self._parts, self._limit = parts, limit  # limit: the file's size (no stream holds more)

    def load_into(self, streams: Streams) -> None:
        streams.load({})
        for ns, rows in self._parts:
            by_name = streams.by_ns[ns] = {}
            for row in rows:
                state, meta_bytes, data_bytes = _stream_head(row, self._limit)
                s = Stream.from_dump(state)
                s.load_records(meta_bytes, data_bytes, rows)
                by_name[s.name] = s

    def items(self) -> Iterator[tuple[Any, list]]:
        for ns, rows in self._parts:
            yield ns, list(self._dumps(rows))

    def _dumps(self, rows: Iterator) -> Iterator[dict]:
        for row in rows:
            state, *sizes = _stream_head(row, self._limit)
            for field, size in zip(("meta", "data"), sizes):
                pieces, got = [], 0
                while got < size:
                    piece = next(rows, None)
                    if not isinstance(piece, bytes) or got + len(piece) > size:
                        raise ValueError(f"a stream's {field} bytes do not add up to {size}")
                    pieces.append(piece)
                    got += len(piece)
                state[field] = b"".join(pieces)
            yield state


def load_store(store: Any, dump: Any) -> None:
    """Load a dump of :meth:`SnapshotFile.dumps` into its store: ``store.load(dump)``, but streams are
    rebuilt piece by piece rather than from whole byte strings."""
    if isinstance(dump, _StreamsDump):
        dump.load_into(store)
    else:
        store.load(dump)


def _queue_states(parts: Iterator[tuple[Any, Iterator]]) -> Iterator[list]:
    for head, rows in parts:
        ns, name, state = head
        state["msgs"] = rows
        yield [ns, name, state]


def _lazy(shape: str, parts: Iterator[tuple[Any, Iterator]], size: int) -> Any:
    """The store's dump as its ``load`` reads it: kv, queues and streams one row at a time."""
    if shape == "kv":
        return _Parts(parts)
    if shape == "queues":
        return _queue_states(parts)
    if shape == "streams":
        return _StreamsDump(parts, size)
    if shape == "map":
        return {head: list(rows) for head, rows in parts}
    if shape == "list":
        return [row for _, rows in parts for row in rows]
    if shape == "value":
        return next(parts, (None, ()))[0]
    raise ValueError(f"unknown store shape {shape!r}")


def _whole(shape: str, lazy: Any) -> Any:
    """A :func:`_lazy` dump made into plain lists and dicts (what ``store.dump()`` returned)."""
    if shape == "kv":
        return {head: list(rows) for head, rows in lazy.items()}
    if shape == "streams":
        return dict(lazy.items())
    if shape == "queues":
        return [[ns, name, dict(state, msgs=list(state["msgs"]))] for ns, name, state in lazy]
    return lazy


class SnapshotFile:
    """A snapshot file whose every frame and trailer checked out (:meth:`check`); :meth:`dumps`
    streams its stores' dumps (start-up), :meth:`states` decodes it whole (tools, tests).

    Example:
        >>> snap = SnapshotFile.open("data/snap/00000000000000001234.snap")  # doctest: +SKIP
        >>> snap.lsn, snap.names                                              # doctest: +SKIP
        (1234, ['kv', 'queues', 'streams', 'actions', 'lists', 'cluster'])
        >>> for name, dump in snap.dumps():                                   # doctest: +SKIP
        ...     load_store(srv.stores[name], dump)
    """

    def __init__(self, path: str, lsn: int, names: list, v1_stores: dict | None = None) -> None:
        self.path, self.lsn, self.names = path, lsn, names
        self._v1 = v1_stores  # a first-format file: decoded whole when it was checked

    @classmethod
    def open(cls, path: str) -> "SnapshotFile":
        """Check the file at ``path``: ``ValueError`` if it is torn or damaged, OSError if unreadable."""
        with open(path, "rb") as f:
            return cls.check(f, path)

    @classmethod
    def check(cls, f: BinaryIO, where: str) -> "SnapshotFile":
        head = f.read(_HEAD.size)
        if head[:8] == SNAP_MAGIC_V1:
            lsn, stores = read_v1(head + f.read())
            return cls(where, lsn, sorted(k for k in stores if isinstance(k, str)), stores)
        if len(head) < _HEAD.size:
            raise ValueError("shorter than its header")
        magic, lsn = _HEAD.unpack(head)
        if magic != SNAP_MAGIC:
            raise ValueError("bad magic")
        frames, last = 0, None
        for at, payload in _frames(f, where, check=True):
            frames, last = frames + 1, (at, payload)
        if last is None:
            raise ValueError(f"{where}: torn: no frame after the header")
        end = _decode(last[1], where, last[0])
        if end[0] != "end":
            raise ValueError(f"{where}: torn: no trailer after {frames} frame(s)")
        if end[1] != lsn or end[2] != frames - 1 or not isinstance(end[3], list):
            raise ValueError(f"{where}: the trailer does not match the file (LSN {end[1]}, {end[2]} frames)")
        return cls(where, lsn, end[3])

    def states(self) -> dict[str, Any]:
        """``{store name: its dump()}``, decoded whole."""
        return dict(self.dumps(whole=True))

    def dumps(self, whole: bool = False) -> Iterator[tuple[Any, Any]]:
        """``(store name, dump)`` pairs in file order. Unless ``whole``, a dump is read as it is
        iterated (kv, queues and streams: one row at a time) and only until the next pair is asked
        for: pass it to the store's ``load`` straight away. Check the file first (:meth:`open`)."""
        if self._v1 is not None:
            yield from self._v1.items()
            return
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(_HEAD.size)
            r = _Reader(f, self.path)
            while r.head[0] == "store":
                _, name, shape = r.take()
                if not isinstance(shape, str):
                    raise ValueError(f"{self.path}: store {name!r} has no shape")
                lazy = _lazy(shape, r.parts(), size)
                yield name, (_whole(shape, lazy) if whole else lazy)
                for _ in r.parts():  # what the store's load left unread
                    pass
            if r.head[0] != "end":
                raise ValueError(f"{self.path}: a {r.head[0]!r} frame where a store should begin")
