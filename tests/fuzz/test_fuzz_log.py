"""Fuzz log-record decoding: random and mutated segments through every reader of the log.

The readers: ``flo_core.log.LogReader`` (replay, ``check-log``, ``dump-log``), ``LogWriter``
opening the newest segment (start-up, which truncates a torn tail), ``flo-server
check-log`` and ``flo_server.persistence.recover`` (start-up's replay into the stores),
and ``read_snapshot`` / ``newest_valid_snapshot`` for the snapshot files beside the log.

Promises:

* any bytes in any segment files are read as intact records (LSNs strictly rising, kind
  1..255), a torn tail (``reader.torn``) or ``LogCorruption`` - nothing else;
* cutting the newest segment anywhere, or zeroing it from anywhere on (a crash mid-write,
  a power loss before the pages reached the disk), is a torn tail or a clean end - never
  corruption - and every record before the cut reads back unchanged;
* ``LogWriter`` on any newest segment opens (after cutting a torn tail; then the log
  reads clean) or raises ``LogCorruption``;
* ``check-log`` exits 0 or 1 and ``recover`` returns or raises ``RecoveryError``, even for
  records whose CRC is right but whose payload is not a record (CRCs recomputed after
  mutation, so the decoding after the CRC check is reached);
* a damaged snapshot is skipped with a warning, never an exception out of start-up.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from flo_core.log import LogCorruption, LogReader, LogWriter, segment_name
from flo_server.app import Server
from flo_server.persistence import (RecoveryError, check_log_cmd, log_dir, newest_valid_snapshot, read_snapshot,
                                    recover, snap_dir)
from tests.fuzz._fuzz import apply_mutations, corpus_dirs, examples, executed, mutation_steps, scratch_base

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

HDR = 17
SEED_DIRS = corpus_dirs("log")
SEEDS = {d.name: {p.name: p.read_bytes() for p in sorted(d.glob("*.seg"))} for d in SEED_DIRS}
SNAPS = {d.name: {p.name: p.read_bytes() for p in sorted(d.glob("snap/*.snap"))} for d in SEED_DIRS}


def fix_crcs(seg: bytes) -> bytes:
    """Recompute the CRC of every record whose length fits, so decoding past the CRC check is reached."""
    b = bytearray(seg)
    pos = 0
    while len(b) - pos >= HDR:
        n = int.from_bytes(b[pos:pos + 4], "little")
        if n == 0 and not any(b[pos:pos + HDR]):
            break  # the writer's zero-filled room
        if pos + HDR + n > len(b):
            break
        c = zlib.crc32(b[pos + 8:pos + HDR], zlib.crc32(b[pos:pos + 4]))
        b[pos + 4:pos + 8] = zlib.crc32(b[pos + HDR:pos + HDR + n], c).to_bytes(4, "little")
        pos += HDR + n
    return bytes(b)


def read(directory: str) -> tuple[list, tuple | None, LogCorruption | None]:
    """Every record the reader gives, its torn tail, the corruption it raised (only that may escape)."""
    r = LogReader(directory)
    records: list = []
    try:
        for lsn, kind, payload in r:
            records.append((lsn, kind, payload))
    except LogCorruption as e:
        assert isinstance(e.offset, int) and e.path and e.reason
        return records, r.torn, e
    lsns = [x[0] for x in records]
    assert lsns == sorted(set(lsns)) and all(1 <= k <= 255 for _, k, _ in records)
    assert r.last_lsn == (lsns[-1] if lsns else 0) or r.torn is not None or not lsns
    return records, r.torn, None


class DataDir:
    """A throw-away data dir with the given segments (and snapshots)."""

    def __init__(self, segments: dict[str, bytes], snapshots: dict[str, bytes] | None = None) -> None:
        self.root = tempfile.mkdtemp(dir=scratch_base())
        os.makedirs(log_dir(self.root))
        for name, data in segments.items():
            Path(log_dir(self.root), name).write_bytes(data)
        if snapshots:
            os.makedirs(snap_dir(self.root))
            for name, data in snapshots.items():
                Path(snap_dir(self.root), name).write_bytes(data)

    @property
    def log(self) -> str:
        return log_dir(self.root)

    def __enter__(self) -> "DataDir":
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        shutil.rmtree(self.root, ignore_errors=True)


def every_reader(segments: dict[str, bytes], snapshots: dict[str, bytes] | None = None,
                 writer: bool = True) -> tuple[list, tuple | None, LogCorruption | None]:
    """Run each reader of the log over a copy of ``segments``; each keeps its promise."""
    executed("log")
    with DataDir(segments, snapshots) as d:
        got = read(d.log)
        res = CliRunner().invoke(check_log_cmd, [d.root])
        assert res.exit_code in (0, 1) and (res.exception is None or isinstance(res.exception, SystemExit)), \
            res.output + repr(res.exception)
        assert (res.exit_code == 1) >= (got[2] is not None)  # corruption is never "OK"
        try:
            rec = recover(Server(), d.root)
        except RecoveryError:
            pass
        else:
            assert got[2] is None
            assert rec.torn == got[1]
        newest_valid_snapshot(d.root)  # never raises
        if writer and os.listdir(d.log):
            try:
                w = LogWriter(d.log, segment_bytes=1 << 20)
            except LogCorruption:
                assert got[2] is not None or got[1] is None  # only the newest segment is its business
            else:
                w.close(sync=False)
                again = read(d.log)
                if got[2] is None:
                    assert again[1] is None and again[0] == got[0]  # torn tail cut, nothing else lost
    return got


# --- the corpus first ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_corpus_segments_read_clean(name: str) -> None:
    records, torn, err = every_reader(SEEDS[name], SNAPS[name])
    assert records and torn is None and err is None


@pytest.mark.parametrize("name", sorted(n for n in SEEDS if not n.startswith("crash-")))
def test_every_cut_of_the_newest_segment_is_a_torn_tail(name: str) -> None:
    segs = SEEDS[name]
    full, _, _ = every_reader(segs, writer=False)
    last = sorted(segs)[-1]
    data = segs[last]
    for cut in list(range(0, min(len(data), 120))) + list(range(120, len(data), 53)):  # every byte of the first records
        for tail in (b"", b"\x00" * 4096):  # cut short, or cut and the rest zeros (pages never written)
            got, torn, err = every_reader({**segs, last: data[:cut] + tail}, writer=cut % 7 == 0)
            assert err is None, (cut, err)
            assert got == full[:len(got)]


# --- generated -------------------------------------------------------------------------------------


@settings(max_examples=examples(80))
@given(data=st.binary(max_size=600), lsn=st.sampled_from([1, 2, 1000]), prefix=st.booleans())
def test_random_segment(data: bytes, lsn: int, prefix: bool) -> None:
    if prefix:
        data = SEEDS["clean"][segment_name(1)][:200] + data
    every_reader({segment_name(lsn): data})


@settings(max_examples=examples(150))
@given(name=st.sampled_from(sorted(SEEDS)), which=st.integers(0, 10), steps=mutation_steps(4),
       crc=st.booleans(), rename=st.integers(0, 7))
def test_mutated_segments(name: str, which: int, steps: list, crc: bool, rename: int) -> None:
    segs = dict(SEEDS[name])
    files = sorted(segs)
    target = files[which % len(files)]
    data = apply_mutations(segs[target], steps)
    segs[target] = fix_crcs(data) if crc else data
    if rename == 0 and len(files) > 1:  # a segment whose name does not match its records
        segs[segment_name(int(files[1][:20]) + 3)] = segs.pop(files[1])
    every_reader(segs)


@settings(max_examples=examples(80))
@given(payload=st.one_of(st.binary(max_size=40),
                         st.builds(lambda v: msgpack.packb(v, use_bin_type=True),
                                   st.recursive(st.none() | st.integers(-5, 1 << 63) | st.text(max_size=6)
                                                | st.binary(max_size=6),
                                                lambda c: st.lists(c, max_size=4), max_leaves=8))),
       kind=st.integers(1, 255))
def test_records_that_pass_the_crc_but_are_not_records(payload: bytes, kind: int) -> None:
    """A record the CRC vouches for whose payload is not ``msgpack [kind, args]``: start-up refuses it cleanly."""
    good = SEEDS["clean"][segment_name(1)]
    rec = struct.pack("<IIQB", len(payload), 0, 1000, kind) + payload
    every_reader({segment_name(1): fix_crcs(good + rec)})


SNAP_HEAD = struct.Struct("<8sQQI")
STORE_NAMES = st.one_of(st.sampled_from(["kv", "queues", "streams", "actions", "lists"]), st.text(max_size=3))
STATES = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3),
                   st.lists(st.one_of(st.none(), st.integers(0, 9), st.binary(max_size=3)), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.one_of(st.none(), st.integers(0, 9), st.lists(st.none())),
                                   max_size=2))


def _snapshot(lsn: int, body: bytes) -> bytes:
    return SNAP_HEAD.pack(b"FLOSNAP1", lsn, len(body), zlib.crc32(body)) + body


SNAP_BODIES = st.builds(lambda v: msgpack.packb(v, use_bin_type=True), st.one_of(
    st.none(), st.integers(-(1 << 63), (1 << 64) - 1), st.lists(st.integers(0, 1 << 40), max_size=3),
    st.dictionaries(st.sampled_from(["lsn", "stores", "x"]),
                    st.one_of(st.integers(0, 5), st.none(), st.text(max_size=3),
                              st.dictionaries(STORE_NAMES, STATES, max_size=3)))))


@settings(max_examples=examples(80))
@given(body=st.one_of(st.binary(max_size=40), SNAP_BODIES),
       steps=st.one_of(st.just([]), mutation_steps(2)))
def test_damaged_snapshots(body: bytes, steps: list) -> None:
    """Snapshot files with a right CRC and a wrong body, or mutated: skipped (ValueError), never a crash."""
    executed("log")
    data = _snapshot(3, body)
    if steps:
        data = apply_mutations(data, steps)
    with DataDir({}, {"00000000000000000003.snap": data}) as d:
        try:
            read_snapshot(os.path.join(snap_dir(d.root), "00000000000000000003.snap"))
        except (ValueError, OSError, msgpack.UnpackException):
            pass
        newest_valid_snapshot(d.root)
        try:
            recover(Server(), d.root)
        except RecoveryError:
            pass


# --- regressions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n in SEEDS if n.startswith("crash-")))
def test_regression_crash_data_dirs(name: str) -> None:
    """Records whose CRC is right but whose payload is no ``[kind, args]`` (not msgpack, an int, a
    kind that is not a name) and snapshots whose CRC is right but whose body is no snapshot (an
    int, a map keyed by a list, a store state that does not load): start-up raised msgpack's,
    ValueError / TypeError / AttributeError tracebacks and ``check-log`` crashed sorting kinds.
    Now: RecoveryError naming the record or store (or, for a snapshot, skipped with a warning
    like any damaged one), and ``check-log`` says NOT OK."""
    segs, snaps = SEEDS[name], SNAPS[name]
    every_reader(segs, snaps)
    with DataDir(segs, snaps) as d:
        res = CliRunner().invoke(check_log_cmd, [d.root])
        assert res.exit_code in (0, 1) and not isinstance(res.exception, (TypeError, ValueError, AttributeError))
        if name.startswith("crash-record"):
            assert res.exit_code == 1 and "NOT OK" in res.output
            with pytest.raises(RecoveryError, match="does not decode|no applier"):
                recover(Server(), d.root)
        elif name == "crash-snapshot-store-state-wrong":
            with pytest.raises(RecoveryError, match="does not load"):
                recover(Server(), d.root)
        else:
            assert recover(Server(), d.root).snapshot_path is None  # skipped: the log alone is replayed
