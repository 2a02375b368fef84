"""flo_core.log: record framing, segments, rotation, torn tails, corruption."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from flo_core.log import (
    RECORD_HEADER,
    LogCorruption,
    LogReader,
    LogWriter,
    list_segments,
    repair_log,
    segment_name,
)

pytestmark = pytest.mark.unit


def write_records(d, payloads, *, kind=1, segment_bytes=1 << 20, next_lsn=1):
    w = LogWriter(d, next_lsn=next_lsn, segment_bytes=segment_bytes)
    lsns = [w.append(kind, p) for p in payloads]
    w.flush()
    w.sync()
    w.close()
    return lsns


def read_all(d, from_lsn=1):
    r = LogReader(d, from_lsn)
    return [(lsn, kind, payload) for lsn, kind, payload in r], r


def test_roundtrip_and_lsns(tmp_path):
    payloads = [b"", b"a", b"x" * 1000, bytes(range(256))]
    assert write_records(tmp_path, payloads, kind=7) == [1, 2, 3, 4]
    recs, r = read_all(tmp_path)
    assert recs == [(i + 1, 7, p) for i, p in enumerate(payloads)]
    assert r.last_lsn == 4 and r.torn is None and r.records == 4
    assert [os.path.basename(p) for _, p in list_segments(tmp_path)] == [segment_name(1)]


@pytest.mark.parametrize("zero_fill", [True, False], ids=["written-zeros", "fallocated"])
def test_append_is_buffered_until_flush(tmp_path, zero_fill):
    w = LogWriter(tmp_path)
    w.zero_fill = zero_fill  # the journal's choice: written zeros under fsync=always, else fallocate
    w.append(1, b"abc")
    assert w.pending_bytes == RECORD_HEADER + 3
    assert os.path.getsize(w.segment_path) == 0
    assert w.flushed_lsn == 0
    assert w.flush() == RECORD_HEADER + 3
    with open(w.segment_path, "rb") as f:
        data = f.read()
    # the record, then zero-filled room for the next ones (fdatasync then has no size to commit)
    assert len(data) > RECORD_HEADER + 3 and data[RECORD_HEADER:RECORD_HEADER + 3] == b"abc"
    assert data[RECORD_HEADER + 3:] == bytes(len(data) - RECORD_HEADER - 3)
    assert (w.flushed_lsn, w.synced_lsn) == (1, 0)
    assert w.sync() == 1
    w.close()
    assert os.path.getsize(w.segment_path) == RECORD_HEADER + 3  # a clean close cuts the room


def test_a_fallocated_room_left_by_a_crash_is_the_end(tmp_path):
    """Under everysec the room ahead is fallocate'd: after a crash (no clean close cut it) it
    reads as zeros, so recovery ends the log there and appends continue after the records."""
    w = LogWriter(tmp_path)
    w.zero_fill = False
    for p in (b"one", b"two"):
        w.append(1, p)
    w.flush()
    path = w.segment_path
    assert os.path.getsize(path) > 2 * RECORD_HEADER + 6  # the room, not cut: as a kill -9 leaves it
    w2 = LogWriter(tmp_path)  # (the first writer is never closed, like a killed process's)
    assert w2.truncated is None and w2.last_lsn == 2
    assert w2.append(1, b"three") == 3
    w2.close()
    recs, r = read_all(tmp_path)
    assert [p for _, _, p in recs] == [b"one", b"two", b"three"] and r.torn is None


def test_bad_arguments(tmp_path):
    w = LogWriter(tmp_path)
    with pytest.raises(ValueError):
        w.append(0, b"x")
    with pytest.raises(ValueError):
        w.append(256, b"x")
    with pytest.raises(TypeError):
        w.append(1, "not bytes")
    w.close()
    with pytest.raises(ValueError):
        w.append(1, b"x")
    with pytest.raises(ValueError):
        LogWriter(tmp_path, next_lsn=0)


def test_rotation_and_from_lsn(tmp_path):
    payload = b"p" * 1000
    w = LogWriter(tmp_path, segment_bytes=4096)
    for i in range(20):
        w.append(1, payload)
        w.flush()  # one flush per record: rotation happens between flushes
    w.close()
    segs = list_segments(tmp_path)
    assert len(segs) > 3
    # each segment is named by its first record's LSN
    for first, path in segs:
        r = LogReader(tmp_path, first)
        lsn, _, _ = next(r)
        assert lsn == first and r.path == path
    recs, r = read_all(tmp_path, from_lsn=15)
    assert [lsn for lsn, _, _ in recs] == list(range(15, 21))
    assert r.last_lsn == 20


def test_reopen_continues_and_floor_makes_gap(tmp_path):
    write_records(tmp_path, [b"a", b"b"])
    w = LogWriter(tmp_path)
    assert w.last_lsn == 2 and w.truncated is None
    assert w.append(1, b"c") == 3
    w.close()
    w = LogWriter(tmp_path, next_lsn=100)  # e.g. a snapshot at 99 newer than the log tail
    assert w.append(1, b"d") == 100
    w.close()
    recs, _ = read_all(tmp_path)
    assert [lsn for lsn, _, _ in recs] == [1, 2, 3, 100]


@pytest.mark.parametrize("cut", [1, 5, RECORD_HEADER, RECORD_HEADER + 3])
def test_torn_tail_is_reported_and_truncated(tmp_path, cut):
    write_records(tmp_path, [b"one", b"two", b"three-three"])
    (_, path), = list_segments(tmp_path)
    full = os.path.getsize(path)
    os.truncate(path, full - cut)
    recs, r = read_all(tmp_path)
    assert [p for _, _, p in recs] == [b"one", b"two"]
    assert r.torn is not None and r.torn[0] == path
    good_end = r.torn[1]
    w = LogWriter(tmp_path)
    assert w.truncated == (path, good_end, full - cut - good_end)
    assert os.path.getsize(path) == good_end
    assert w.append(1, b"four") == 3  # the torn record's LSN is reused: it was never acknowledged
    w.close()
    recs, r = read_all(tmp_path)
    assert [p for _, _, p in recs] == [b"one", b"two", b"four"] and r.torn is None


def test_zero_filled_tail_is_the_end_not_damage(tmp_path):
    """Zeros after the last record are the room the writer fills ahead (or a file extension a
    power loss left unwritten): the log ends there, quietly, and appends continue after it."""
    write_records(tmp_path, [b"one", b"two"])
    (_, path), = list_segments(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\0" * 5000)
    recs, r = read_all(tmp_path)
    assert [p for _, _, p in recs] == [b"one", b"two"] and r.torn is None
    w = LogWriter(tmp_path)
    assert w.truncated is None and w.last_lsn == 2
    assert w.append(1, b"three") == 3
    w.close()
    recs, r = read_all(tmp_path)
    assert [p for _, _, p in recs] == [b"one", b"two", b"three"] and r.torn is None


def test_an_unwritten_page_before_intact_records_is_a_torn_tail(tmp_path):
    """A power loss can write back later pages of the zero-filled room and not an earlier one:
    records after an all-zero page were never covered by a completed fdatasync, so the log is
    cut at the damage (with the torn-tail warning), not refused as corrupt."""
    w = LogWriter(tmp_path)
    for i in range(300):
        w.append(1, b"%04d" % i * 25)  # 117-byte records: ~35 KB
    w.flush()
    path = w.segment_path
    with open(path, "rb") as f:
        data = bytearray(f.read())
    del w
    page = 3 * 4096
    data[page:page + 4096] = bytes(4096)  # page 3 never reached the disk
    with open(path, "wb") as f:
        f.write(data)
    recs, r = read_all(tmp_path)
    assert r.torn is not None and r.torn[0] == path and r.torn[1] <= page
    cut = r.torn[1]
    assert len(recs) == (cut // 117) and all(p == b"%04d" % i * 25 for i, (_, _, p) in enumerate(recs))
    w = LogWriter(tmp_path)
    assert w.truncated is not None and w.truncated[1] == cut
    assert w.last_lsn == len(recs)
    w.close()


def test_damage_that_is_not_an_unwritten_page_is_still_corruption(tmp_path):
    w = LogWriter(tmp_path)
    for i in range(300):
        w.append(1, b"%04d" % i * 25)
    w.flush()
    path = w.segment_path
    with open(path, "rb") as f:
        data = bytearray(f.read())
    del w
    data[3 * 4096 + 10:3 * 4096 + 4000] = bytes(3990)  # zeros, but not a whole page
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(LogCorruption):
        read_all(tmp_path)
    with pytest.raises(LogCorruption):
        LogWriter(tmp_path)


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("where", ["payload", "length", "lsn", "crc"])
def test_corruption_in_the_middle_names_file_and_offset(tmp_path, where):
    write_records(tmp_path, [b"a" * 10, b"b" * 10, b"c" * 10])
    (_, path), = list_segments(tmp_path)
    second = RECORD_HEADER + 10
    field = {"length": 0, "crc": 4, "lsn": 8, "payload": RECORD_HEADER + 2}[where]
    _flip(path, second + field)
    r = LogReader(tmp_path)
    assert next(r)[2] == b"a" * 10
    with pytest.raises(LogCorruption) as ei:
        next(r)
    assert ei.value.path == path and ei.value.offset == second
    assert path in str(ei.value) and str(second) in str(ei.value)
    with pytest.raises(LogCorruption):
        LogWriter(tmp_path)


def test_corruption_in_an_older_segment(tmp_path):
    w = LogWriter(tmp_path, segment_bytes=4096)
    for _ in range(12):
        w.append(1, b"z" * 1000)
        w.flush()
    w.close()
    segs = list_segments(tmp_path)
    _flip(segs[0][1], os.path.getsize(segs[0][1]) - 3)  # last record of the first segment
    with pytest.raises(LogCorruption) as ei:
        list(LogReader(tmp_path))
    assert ei.value.path == segs[0][1]
    # the writer only looks at the newest segment; start-up finds this through the reader
    LogWriter(tmp_path).close()


def test_repair_cuts_the_log(tmp_path):
    w = LogWriter(tmp_path, segment_bytes=4096)
    for _ in range(12):
        w.append(1, b"z" * 1000)
        w.flush()
    w.close()
    segs = list_segments(tmp_path)
    _flip(segs[1][1], RECORD_HEADER + 5)
    with pytest.raises(LogCorruption) as ei:
        list(LogReader(tmp_path))
    removed = repair_log(tmp_path, ei.value.path, ei.value.offset)
    assert removed == [p for _, p in segs[2:]]
    recs, r = read_all(tmp_path)
    assert r.torn is None and r.last_lsn == segs[1][0] - 1
    w = LogWriter(tmp_path)
    assert w.append(1, b"after") == segs[1][0]
    w.close()


def test_writer_repair_flag(tmp_path):
    write_records(tmp_path, [b"a" * 10, b"b" * 10, b"c" * 10])
    (_, path), = list_segments(tmp_path)
    _flip(path, RECORD_HEADER + 10 + RECORD_HEADER)
    w = LogWriter(tmp_path, repair=True)
    assert w.truncated[1] == RECORD_HEADER + 10
    assert w.last_lsn == 1
    w.close()


def test_empty_newest_segment(tmp_path):
    write_records(tmp_path, [b"a", b"b"])
    open(os.path.join(tmp_path, segment_name(3)), "wb").close()  # crash right after a rotation
    recs, r = read_all(tmp_path)
    assert len(recs) == 2 and r.torn is None
    w = LogWriter(tmp_path)
    assert w.append(1, b"c") == 3 and w.segment_path.endswith(segment_name(3))
    w.close()


def test_drop_segments_below(tmp_path):
    w = LogWriter(tmp_path, segment_bytes=4096)
    for _ in range(20):
        w.append(1, b"q" * 1000)
        w.flush()
    segs = list_segments(tmp_path)
    cut = segs[2][0] + 1  # inside the third segment: only the first two go
    removed = w.drop_segments_below(cut)
    assert removed == [segs[0][1], segs[1][1]]
    assert w.drop_segments_below(10**9) == [p for _, p in segs[2:-1]]  # never the open one
    w.close()
    recs, r = read_all(tmp_path)
    assert recs[-1][0] == 20 and r.torn is None


def test_sync_in_a_thread_while_appending(tmp_path):
    """The loop thread appends/flushes/rotates while another thread syncs."""
    w = LogWriter(tmp_path, segment_bytes=8192)
    stop = threading.Event()
    errors: list[BaseException] = []
    synced: list[int] = []

    def syncer():
        try:
            while not stop.is_set():
                synced.append(w.sync())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=syncer)
    t.start()
    try:
        for i in range(2000):
            w.append(1, i.to_bytes(4, "little") * 50)
            if i % 7 == 0:
                w.flush()
    finally:
        stop.set()
        t.join(timeout=10)
    w.close()
    assert not errors
    assert synced == sorted(synced)
    recs, r = read_all(tmp_path)
    assert [lsn for lsn, _, _ in recs] == list(range(1, 2001))
    assert all(p == (lsn - 1).to_bytes(4, "little") * 50 for lsn, _, p in recs)


def _wait_synced(w, fd, lsn, timeout=10.0):
    """Wait on the syncer's eventfd until ``lsn`` is durable."""
    deadline = time.monotonic() + timeout
    while w.synced_lsn < lsn:
        left = deadline - time.monotonic()
        assert left > 0, f"synced_lsn stuck at {w.synced_lsn} < {lsn}"
        if select.select([fd], [], [], left)[0]:
            assert w.collect() == 0


def test_syncer_thread_makes_flushed_records_durable_and_signals_the_eventfd(tmp_path):
    w = LogWriter(tmp_path, segment_bytes=8192)
    fd = w.start_syncer()
    assert w.start_syncer() == fd == w.syncer_fd  # one thread
    assert w.request_sync() is False  # nothing flushed: nothing to ask
    last = 0
    for i in range(300):  # rotates several times while the syncer works
        last = w.append(1, i.to_bytes(4, "little") * 50)
        if i % 10 == 9:
            w.flush()
            assert w.request_sync() is True
            assert w.synced_lsn <= w.flushed_lsn
    w.flush()
    w.request_sync()
    _wait_synced(w, fd, last)
    assert w.synced_lsn == w.flushed_lsn == last
    assert len(w.segments()) > 3
    w.close()  # stops the thread
    assert w.syncer_fd == -1
    recs, r = read_all(tmp_path)
    assert [lsn for lsn, _, _ in recs] == list(range(1, 301)) and r.torn is None


def test_syncer_refuses_requests_when_not_started(tmp_path):
    w = LogWriter(tmp_path)
    w.append(1, b"x")
    w.flush()
    with pytest.raises(ValueError):
        w.request_sync()
    assert w.collect() == 0
    w.close()
