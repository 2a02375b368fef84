"""Fuzz the Flo wire v2 frame reader, compiled (flo_core.frame) and pure (flo_core._pyframe).

Promises (docs/reliability.md):

* any bytes, cut into any reads, either yield frames or raise ``FrameError`` - never
  another exception, never a hang;
* the reader never holds more than one unfinished frame: ``buffered`` stays below
  ``HEADER_SIZE + max_payload`` after every read (bounded memory per connection);
* how the bytes are cut into reads does not change what comes out, and the compiled
  reader and the pure one agree frame for frame and on the refusal reason;
* valid frames round-trip; the payload helpers (``split_payload``,
  ``split_value_options``, ``parse_options``) raise only ``FrameError`` and agree too.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flo_core import _pyframe as pf
from flo_core.spec import HEADER_SIZE, MAGIC_BYTES, TABLE_HASH, VERSION
from tests.fuzz._fuzz import (apply_mutations, chunkings, corpus, examples, executed, flo_seeds, mutation_steps,
                              split)

try:
    from flo_core import frame as cf  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - pure build
    cf = None

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

IMPLS = [pytest.param(pf, id="pure")] + ([pytest.param(cf, id="compiled")] if cf is not None else [])
MAX = 4096  # a small frame limit, so oversized lengths are easy to reach


def run(mod, chunks: list[bytes], is_request: bool = True, max_payload: int = MAX, check_crc: bool = True):
    """Feed ``chunks``; returns (frames, FrameError or None). Asserts the reader's promises as it goes."""
    r = mod.FrameReader(is_request=is_request, max_payload=max_payload, check_crc=check_crc)
    frames: list = []
    for c in chunks:
        try:
            got = r.feed(c)
        except pf.FrameError as e:  # the one exception type (the compiled reader raises the same class)
            assert isinstance(e.reason, int) and isinstance(e.message, str)
            for f in e.frames:
                _check_frame(f, max_payload)
            return frames + list(e.frames), e
        for f in got:
            _check_frame(f, max_payload)
        frames += got
        assert 0 <= r.buffered < HEADER_SIZE + max_payload
    return frames, None


def _check_frame(f, max_payload: int) -> None:
    rid, code, payload = f
    assert type(payload) is bytes and 0 <= rid < 1 << 64 and 0 <= code < 1 << 16 and len(payload) <= max_payload


def _both(chunks: list[bytes], **kw) -> tuple:
    """Run every implementation; they must agree. Returns the pure one's result."""
    results = [run(mod.values[0], chunks, **kw) for mod in IMPLS]
    frames0, err0 = results[0]
    for frames, err in results[1:]:
        assert frames == frames0
        assert (err is None) == (err0 is None)
        if err is not None:
            assert (err.reason, err.message) == (err0.reason, err0.message)
    executed("frame", len(IMPLS))
    return frames0, err0


def _fix_crc(data: bytes, is_request: bool = True) -> bytes:
    """Recompute the CRC of every complete-looking frame, so mutations get past the CRC check."""
    b = bytearray(data)
    pos = 0
    while len(b) - pos >= HEADER_SIZE:
        length = int.from_bytes(b[pos + 4:pos + 8], "little")
        end = pos + HEADER_SIZE + length
        if end > len(b):
            break
        c = zlib.crc32(b[pos + 20:pos + 32], zlib.crc32(b[pos:pos + 16]))
        b[pos + 16:pos + 20] = zlib.crc32(b[pos + HEADER_SIZE:end], c).to_bytes(4, "little")
        pos = end
    return bytes(b)


SEED_STREAMS = [data for _, data in corpus("frame")]
SEED_FRAMES = [pf.encode_request(i, op, p) for i, (_, op, p) in enumerate(flo_seeds(), 1) if len(p) <= MAX]


# --- the corpus first ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,data", corpus("frame"), ids=[n for n, _ in corpus("frame")])
def test_corpus_frames(name: str, data: bytes) -> None:
    frames, err = _both([data], max_payload=1 << 20)
    if not name.startswith("crash-"):
        assert err is None and frames  # the seeds are valid request streams
    # a split anywhere gives the same frames
    for cut in range(0, len(data), max(1, len(data) // 64)):
        assert _both([data[:cut], data[cut:]], max_payload=1 << 20)[0] == frames


# --- generated -------------------------------------------------------------------------------------


@settings(max_examples=examples(150))
@given(data=st.binary(max_size=300), cuts=chunkings(), is_request=st.booleans(), check_crc=st.booleans())
def test_arbitrary_bytes(data: bytes, cuts: list[int], is_request: bool, check_crc: bool) -> None:
    _both(split(data, cuts), is_request=is_request, check_crc=check_crc)


@settings(max_examples=examples(150))
@given(prefix=st.sampled_from([b"", MAGIC_BYTES, MAGIC_BYTES[:2]]), data=st.binary(max_size=200),
       cuts=chunkings(), check_crc=st.booleans())
def test_arbitrary_bytes_after_magic(prefix: bytes, data: bytes, cuts: list[int], check_crc: bool) -> None:
    """Random headers that at least start right, so length, version and hash checks are reached."""
    header_tail = VERSION.to_bytes(1, "little")
    blob = prefix + data
    if len(blob) >= 24 and data[:1] != b"\xff":
        # keep version and table hash right most of the time: the length and CRC paths get exercised
        blob = blob[:22] + header_tail + blob[23:24] + TABLE_HASH.to_bytes(8, "little") + blob[32:]
    _both(split(blob, cuts), check_crc=check_crc)


@settings(max_examples=examples(200))
@given(seeds=st.lists(st.sampled_from(SEED_FRAMES + SEED_STREAMS), min_size=1, max_size=4),
       steps=mutation_steps(), fix_crc=st.booleans(), cuts=chunkings())
def test_mutated_valid_frames(seeds: list[bytes], steps: list, fix_crc: bool, cuts: list[int]) -> None:
    data = apply_mutations(b"".join(seeds), steps)
    if fix_crc:
        data = _fix_crc(data)
    frames, err = _both(split(data, cuts), max_payload=1 << 20)
    # cutting the same bytes differently changes nothing
    assert _both([data], max_payload=1 << 20)[0] == frames


@settings(max_examples=examples(100))
@given(reqs=st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF), st.binary(max_size=MAX)),
                     max_size=5),
       cuts=chunkings(12))
def test_valid_requests_round_trip(reqs: list, cuts: list[int]) -> None:
    encoded = [mod.values[0].encode_request(rid, op, p) for mod in IMPLS for rid, op, p in reqs]
    data = b"".join(encoded[:len(reqs)])
    assert b"".join(encoded[len(reqs):]) in (b"", data)  # compiled and pure encoders write the same bytes
    frames, err = _both(split(data, cuts))
    assert err is None and frames == [(rid, op, p) for rid, op, p in reqs]


@settings(max_examples=examples(100))
@given(replies=st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, 255), st.binary(max_size=512)),
                        max_size=5),
       steps=st.one_of(st.just([]), mutation_steps(2)), cuts=chunkings())
def test_replies_round_trip_and_mutate(replies: list, steps: list, cuts: list[int]) -> None:
    data = b"".join(pf.encode_reply(rid, s, p) for rid, s, p in replies)
    if cf is not None:
        assert data == b"".join(cf.encode_reply(rid, s, p) for rid, s, p in replies)
        buf = bytearray()
        for rid, s, p in replies:
            cf.append_reply(buf, rid, s, p)
        assert bytes(buf) == data
    mutated = apply_mutations(data, steps) if steps else data
    frames, err = _both(split(mutated, cuts), is_request=False)
    if not steps:
        assert err is None and frames == replies


@settings(max_examples=examples(200))
@given(payload=st.one_of(st.binary(max_size=80),
                         st.builds(apply_mutations, st.sampled_from([p for _, _, p in flo_seeds()]), mutation_steps())))
def test_payload_helpers(payload: bytes) -> None:
    """split_payload / split_value_options / parse_options: a result or FrameError, the same in both codecs."""
    outs = []
    for mod in IMPLS:
        m = mod.values[0]
        got: list = []
        for fn in (lambda: m.split_payload(payload), lambda: m.parse_options(payload)):
            try:
                got.append(fn())
            except pf.FrameError as e:
                got.append(("FrameError", e.reason))
        try:
            ns, key, pos = m.split_payload(payload)
            assert isinstance(ns, str) and type(key) is bytes and 4 <= pos <= len(payload)
            got.append(m.split_value_options(payload, pos))
        except pf.FrameError as e:
            got.append(("FrameError", e.reason))
        outs.append(got)
    executed("payload_helpers", len(IMPLS))
    assert all(o == outs[0] for o in outs)


def test_oversized_length_is_refused_before_the_payload_arrives() -> None:
    """A header that claims more than the limit is refused at once: nothing waits for 4 GiB to arrive."""
    for mod in IMPLS:
        m = mod.values[0]
        frame = bytearray(m.encode_request(1, 0x101, b"x" * 8))
        frame[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
        r = m.FrameReader(max_payload=MAX)
        with pytest.raises(pf.FrameError) as ei:
            r.feed(bytes(frame[:HEADER_SIZE]))
        assert "exceeds the limit" in ei.value.message
