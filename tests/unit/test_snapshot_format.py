"""Streamed snapshot files (flo_server.snapshots): round trips of every store, bounded frames,
torn and damaged files never loaded as good, and files of the first format still read."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flo_server import snapshots
from flo_server.app import Server
from flo_server.persistence import (DiskJournal, RecoveryError, check_log_cmd, list_snapshots, newest_valid_snapshot,
                                    read_snapshot, recover, write_snapshot)
from flo_server.snapshots import MAX_FRAME, SnapshotFile
from tests.helpers import wait_for

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def filled_server(keys: int = 3000) -> Server:
    """A server with something in every store: kv (history, TTLs, two namespaces), queues in every
    state, a stream with a group and pending entries, lists, the cluster's epochs."""
    srv = Server()
    for i in range(keys):
        srv.kv.set("default", b"k%06d" % i, b"v%d" % i, i + 1, 0, T0)
    srv.kv.set("default", b"k000001", b"newer", keys + 1, 0, T0 + 1)  # a history entry
    srv.kv.set("other", b"ttl", b"x", keys + 2, T0 + 60_000, T0)
    q = srv.queues.get_or_create("default", "jobs")
    for i in range(50):
        q.enqueue(b"job%d" % i, i % 3, T0, delay_ms=1000 if i % 10 == 0 else 0,
                  dedup_key=b"d%d" % i if i < 5 else None)
    q.dequeue(5, T0)
    srv.queues.get_or_create("ns2", "empty")
    srv.streams.get_or_create("default", "quiet", T0)  # no records, and another stream after it
    s = srv.streams.get_or_create("default", "events", T0)
    for i in range(200):
        ts, seq = s.next_id(T0 + i)
        s.append(T0 + i, ts, seq, [[b"payload%d" % i, [["h", "v"]] if i % 7 == 0 else None]])
    s.remove_oldest(30)  # a trimmed prefix: the snapshot holds the live records only
    g = s.group_create("g", T0)
    g.deliver(s, "c1", 7, T0 + 500)
    srv.lists.push("default", b"l", [b"a", b"b", b"c"], False)
    srv.epochs.extend([(1, 1), (2, 40)])
    return srv


def dumps(srv: Server) -> dict:
    return {name: store.dump() for name, store in srv.stores.items()}


def snap_file(root: Path, lsn: int) -> Path:
    return root / "snap" / f"{lsn:020d}.snap"


def frames_of(path: Path) -> list[tuple[int, int]]:
    """``(offset, length)`` of each frame of a file of the streamed format."""
    data = path.read_bytes()
    at, out = 16, []
    while at < len(data):
        length, _ = struct.unpack_from("<II", data, at)
        out.append((at, length))
        at += 8 + length
    return out


def test_every_store_round_trips(tmp_path: Path) -> None:
    srv = filled_server()
    before = dumps(srv)
    write_snapshot(str(tmp_path), 42, srv.stores)
    back = Server()
    rec = recover(back, str(tmp_path))
    assert rec.snapshot_lsn == 42
    assert dumps(back) == before
    # the whole-file reader (check-log, tools) agrees with the streaming one
    lsn, states = read_snapshot(str(snap_file(tmp_path, 42)))
    assert lsn == 42 and msgpack.unpackb(msgpack.packb(states), raw=False, strict_map_key=False) == \
        msgpack.unpackb(msgpack.packb(before), raw=False, strict_map_key=False)
    assert SnapshotFile.open(str(snap_file(tmp_path, 42))).names == list(srv.stores)


def test_rows_are_cut_into_frames_of_about_a_mebibyte(tmp_path: Path) -> None:
    srv = Server()
    value = b"x" * 3000
    for i in range(2000):  # ~6 MB of kv
        srv.kv.set("default", b"k%d" % i, value, i + 1, 0, T0)
    big = srv.streams.get_or_create("default", "big", T0)
    for i in range(40):  # ~2.5 MB of stream records: cut into pieces too
        ts, seq = big.next_id(T0 + i)
        big.append(T0 + i, ts, seq, [[os.urandom(64 * 1024), None]])
    before = dumps(srv)
    write_snapshot(str(tmp_path), 5, srv.stores)
    sizes = [n for _, n in frames_of(snap_file(tmp_path, 5))]
    assert len(sizes) > 8 and max(sizes) <= snapshots.TARGET_FRAME + 70 * 1024
    back = Server()
    recover(back, str(tmp_path))
    assert dumps(back) == before


def test_a_row_over_the_frame_limit_is_refused_when_written(tmp_path: Path, monkeypatch) -> None:
    srv = Server()
    srv.kv.set("default", b"huge", b"x" * 5000, 1, 0, T0)
    monkeypatch.setattr(snapshots, "MAX_FRAME", 4096)
    with pytest.raises(ValueError, match="exceeds the limit of 4096"):
        write_snapshot(str(tmp_path), 3, srv.stores)
    assert list_snapshots(str(tmp_path)) == [] and os.listdir(tmp_path / "snap") == []  # no temp file left


def test_a_frame_claiming_more_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    write_snapshot(str(tmp_path), 3, filled_server(10).stores)
    path = snap_file(tmp_path, 3)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 16, 0xFFFFFFF0)  # the first frame claims ~4 GiB
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"over the limit of {MAX_FRAME}"):
        SnapshotFile.open(str(path))


def two_snapshots(root: Path) -> tuple[dict, Path]:
    """Snapshots at LSN 10 (the older state) and 20 (more keys); returns the older dumps and the newer file."""
    srv = filled_server(500)
    write_snapshot(str(root), 10, srv.stores)
    older = dumps(srv)
    for i in range(500):
        srv.kv.set("default", b"later%d" % i, b"y", 10_000 + i, 0, T0)
    write_snapshot(str(root), 20, srv.stores)
    return older, snap_file(root, 20)


def test_a_torn_newest_snapshot_is_never_loaded_the_older_one_is(tmp_path: Path) -> None:
    older, newest = two_snapshots(tmp_path)
    whole = newest.read_bytes()
    frames = frames_of(newest)
    # cut at the header, inside and at the end of frame headers and payloads, and just before the trailer
    cuts = {0, 7, 16, 20, len(whole) - 1, frames[-1][0]}
    for at, n in frames[:4] + frames[-3:]:
        cuts |= {at + 3, at + 8, at + 8 + n // 2, at + 8 + n}
    cuts.discard(len(whole))
    for cut in sorted(cuts):
        newest.write_bytes(whole[:cut])
        with pytest.raises(ValueError):
            SnapshotFile.open(str(newest))
        lsn, snap, path = newest_valid_snapshot(str(tmp_path))
        assert lsn == 10, cut
        back = Server()
        rec = recover(back, str(tmp_path))
        assert rec.snapshot_lsn == 10 and dumps(back) == older, cut


def test_a_flipped_bit_anywhere_makes_the_file_unusable(tmp_path: Path) -> None:
    older, newest = two_snapshots(tmp_path)
    whole = newest.read_bytes()
    for at in list(range(0, 40)) + list(range(40, len(whole), max(1, len(whole) // 50))) + [len(whole) - 1]:
        data = bytearray(whole)
        data[at] ^= 0x10
        newest.write_bytes(bytes(data))
        assert newest_valid_snapshot(str(tmp_path))[0] == 10, at
    newest.write_bytes(whole + b"\x00" * 8)  # an empty frame after the trailer: no longer ends with it
    assert newest_valid_snapshot(str(tmp_path))[0] == 10


STREAM_HEAD = {"name": "s", "created": 0, "first_ord": 0, "last": [0, 0], "bytes": 0, "retention": [0, 0, 0],
               "meta": b"", "data": b"", "groups": []}


def frame(obj) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_frames_with_good_crcs_and_bad_contents_stop_start_up_with_a_reason(tmp_path: Path) -> None:
    """A file whose CRCs match but whose frames a store cannot take was written by a bug or another
    version: start-up stops and says which store, rather than load half of it."""
    os.makedirs(tmp_path / "snap")
    cases = {
        "unknown store": [["store", "nosuch", "list"], ["part", None], ["rows", [1]]],
        "kv row of the wrong shape": [["store", "kv", "kv"], ["part", "default"], ["rows", [[b"k", b"v"]]]],
        "bad stream header": [["store", "streams", "streams"], ["part", "default"], ["rows", [["s", {}, 5, 0], b"ab"]]],
        "stream pieces short": [["store", "streams", "streams"], ["part", "default"],
                                ["rows", [["s", STREAM_HEAD, 0, 5], b"ab"]]],
        "stream pieces long": [["store", "streams", "streams"], ["part", "default"],
                               ["rows", [["s", STREAM_HEAD, 0, 1], b"ab"]]],
        "stream claims more than the file": [["store", "streams", "streams"], ["part", "default"],
                                             ["rows", [["s", STREAM_HEAD, 0, 1 << 40], b"ab"]]],
        "unknown shape": [["store", "kv", "triangle"]],
    }
    for why, body in cases.items():
        path = snap_file(tmp_path, 9)
        path.write_bytes(b"FLOSNAP2" + struct.pack("<Q", 9) + b"".join(frame(f) for f in body)
                         + frame(["end", 9, len(body), ["kv"]]))
        with pytest.raises(RecoveryError, match="snapshot .*(does not load|does not have)"):
            recover(Server(), str(tmp_path))
        if why.startswith("stream") or why in ("bad stream header", "unknown shape"):  # (the whole-file reader knows no stores' rows)
            with pytest.raises(ValueError):
                read_snapshot(str(path))


def test_a_snapshot_written_by_the_first_format_still_loads(tmp_path: Path) -> None:
    """A data dir from an older flo-server: its FLOSNAP1 snapshot (one CRC'd msgpack body of
    ``{"lsn", "stores"}``, written here the way that code did) loads, and the next snapshot is streamed."""
    srv = filled_server()
    before = dumps(srv)
    body = msgpack.packb({"lsn": 77, "stores": {name: store.dump() for name, store in srv.stores.items()}},
                         use_bin_type=True)
    os.makedirs(tmp_path / "snap")
    snap_file(tmp_path, 77).write_bytes(struct.pack("<8sQQI", b"FLOSNAP1", 77, len(body), zlib.crc32(body)) + body)
    back = Server()
    rec = recover(back, str(tmp_path))
    assert rec.snapshot_lsn == 77 and dumps(back) == before
    res = CliRunner().invoke(check_log_cmd, [str(tmp_path)])
    assert res.exit_code == 0 and "ok (actions, cluster, kv, lists, queues, streams)" in res.output, res.output
    write_snapshot(str(tmp_path), 80, back.stores)
    assert snap_file(tmp_path, 80).read_bytes()[:8] == b"FLOSNAP2"
    again = Server()
    assert recover(again, str(tmp_path)).snapshot_lsn == 80 and dumps(again) == before
    # a damaged first-format file is skipped like any other
    snap_file(tmp_path, 80).unlink()
    snap_file(tmp_path, 77).write_bytes(snap_file(tmp_path, 77).read_bytes()[:-1])
    assert newest_valid_snapshot(str(tmp_path)) == (0, None, None)


_BASE: dict[str, bytes] = {}


def small_snapshot() -> bytes:
    """A streamed snapshot of a little of every store (made once)."""
    if not _BASE:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            write_snapshot(d, 9, filled_server(20).stores)
            _BASE["file"] = snap_file(Path(d), 9).read_bytes()
    return _BASE["file"]


def recrc(data: bytearray) -> bytes:
    """Recompute every whole frame's CRC, so a mutation reaches the decoding behind it."""
    at = 16
    while at + 8 <= len(data):
        length, _ = struct.unpack_from("<II", data, at)
        if at + 8 + length > len(data):
            break
        struct.pack_into("<I", data, at + 4, zlib.crc32(bytes(data[at + 8:at + 8 + length])))
        at += 8 + length
    return bytes(data)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 1 << 20)), fix_crcs=st.booleans())
def test_mutated_snapshots_are_skipped_or_refused_never_a_crash(tmp_path_factory, edits, cut, fix_crcs) -> None:
    """Bytes changed (CRCs recomputed or not) or the file cut anywhere: checking raises ValueError,
    start-up takes no snapshot or stops with RecoveryError - never another exception."""
    data = bytearray(small_snapshot())
    for at, byte in edits:
        data[at % len(data)] = byte
    if cut is not None:
        del data[cut % len(data):]
    root = tmp_path_factory.mktemp("mut")
    os.makedirs(root / "snap")
    snap_file(root, 9).write_bytes(recrc(data) if fix_crcs else bytes(data))
    try:
        SnapshotFile.open(str(snap_file(root, 9)))
    except ValueError:
        assert newest_valid_snapshot(str(root)) == (0, None, None)
    try:
        recover(Server(), str(root))
    except RecoveryError:
        pass
    try:
        read_snapshot(str(snap_file(root, 9)))
    except ValueError:
        pass


async def test_without_fork_the_snapshot_is_packed_in_the_loop_and_written_off_it(tmp_path: Path, monkeypatch) -> None:
    """When fork fails the stores are packed at once (a write right after is not in the snapshot)
    and a thread writes the bytes; the file is a good streamed snapshot."""
    srv = filled_server(2000)
    journal = DiskJournal(srv, str(tmp_path), policy="no", snapshot_bytes=1 << 30)
    before = dumps(srv)

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    try:
        journal._start_snapshot()
        srv.kv.set("default", b"after", b"late", 10**6, 0, T0)  # the loop goes on: not in the snapshot
        await wait_for(lambda: journal.snapshots == 1 or journal.snapshot_failures, what="the snapshot written")
        assert journal.snapshot_failures == 0, journal.last_snapshot_error
    finally:
        journal.close(snapshot=False)
    (lsn, path), = list_snapshots(str(tmp_path))
    assert SnapshotFile.open(path).lsn == lsn
    back = Server()
    recover(back, str(tmp_path))
    assert dumps(back) == before
