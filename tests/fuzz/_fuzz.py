"""Shared pieces of the fuzz tests: run sizes, the corpus, mutations, execution counts.

Run sizes: every fuzz test asks :func:`examples` for its hypothesis ``max_examples``.
The in-suite default is small (all fuzz tests together well under 30 s on 2 cores);
``FLO_FUZZ_EXAMPLES=N`` gives every target N examples instead (``make fuzz``).
``FLO_FUZZ_LIVE_SECONDS`` sets the live-server test's fuzzing time (default 10).

The corpus: ``tests/fuzz/corpus/<target>/`` holds seed inputs (real encodings, see
``gen_corpus.py``) and every input that once crashed something (its file name says
so, and a named regression test replays it). Tests replay it before generating.

Mutations: :func:`apply_mutations` turns a list of ``(kind, at, value)`` steps into
a mutated copy of a seed; hypothesis draws the steps (:func:`mutation_steps`), the
live test draws them from a seeded ``random.Random`` (:func:`random_steps`).

Execution counts: :func:`executed` counts inputs per target; ``conftest.py``
prints them at the end of the run (and writes them to ``$FLO_FUZZ_STATS`` as JSON).
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter
from pathlib import Path

from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parent / "corpus"

#: inputs run per target in this process (printed by conftest.py)
EXECUTIONS: Counter = Counter()
#: lines the live test reports (printed by conftest.py at the end of the run)
REPORT: list = []


def examples(default: int) -> int:
    """hypothesis ``max_examples`` for one test: ``default`` in the suite, ``$FLO_FUZZ_EXAMPLES`` when set."""
    v = os.environ.get("FLO_FUZZ_EXAMPLES")
    return int(v) if v else default


def long_run() -> bool:
    return bool(os.environ.get("FLO_FUZZ_EXAMPLES"))


def executed(target: str, n: int = 1) -> None:
    EXECUTIONS[target] += n


def corpus(target: str, pattern: str = "*") -> list[tuple[str, bytes]]:
    """``[(file name, bytes)]`` of ``corpus/<target>/``, sorted by name (files only)."""
    d = CORPUS / target
    return [(p.name, p.read_bytes()) for p in sorted(d.glob(pattern)) if p.is_file()]


def corpus_dirs(target: str) -> list[Path]:
    """Sub-directories of ``corpus/<target>/`` (log segments come as directories)."""
    d = CORPUS / target
    return sorted(p for p in d.iterdir() if p.is_dir())


# --- mutations ------------------------------------------------------------------------------------

#: values a length or count field is most likely to mishandle
INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF]
KINDS = ("flip", "byte", "u16", "u32", "u64", "insert", "delete", "truncate", "append", "dup")


def apply_mutations(data: bytes, steps: list[tuple[str, int, int, bytes]]) -> bytes:
    """Apply ``(kind, at, value, blob)`` steps in order; ``at`` wraps around the current length."""
    b = bytearray(data)
    for kind, at, value, blob in steps:
        n = len(b)
        i = at % n if n else 0
        if kind == "flip" and n:
            b[i] ^= 1 << (value % 8)
        elif kind == "byte" and n:
            b[i] = INTERESTING[value % len(INTERESTING)] & 0xFF if value % 2 else value & 0xFF
        elif kind in ("u16", "u32", "u64"):
            width = {"u16": 2, "u32": 4, "u64": 8}[kind]
            v = INTERESTING[value % len(INTERESTING)] & ((1 << (8 * width)) - 1)
            if value % 3 == 2:  # near an interesting value: off by one either way
                v = (v + (1 if value % 2 else -1)) & ((1 << (8 * width)) - 1)
            b[i:i + width] = v.to_bytes(width, "little")
        elif kind == "insert":
            b[i:i] = blob
        elif kind == "delete" and n:
            del b[i:i + 1 + value % 16]
        elif kind == "truncate":
            del b[i:]
        elif kind == "append":
            b += blob
        elif kind == "dup" and n:
            j = value % n
            b[i:i] = b[min(i, j):max(i, j) + 1][:64]
    return bytes(b)


def mutation_steps(max_steps: int = 4) -> st.SearchStrategy:
    """hypothesis: a list of mutation steps for :func:`apply_mutations`."""
    step = st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 20), st.integers(0, 1 << 16),
                     st.binary(max_size=24))
    return st.lists(step, min_size=1, max_size=max_steps)


def random_steps(rng: random.Random, max_steps: int = 4) -> list[tuple[str, int, int, bytes]]:
    """The same steps from a seeded ``random.Random`` (the live test: no hypothesis there)."""
    return [(rng.choice(KINDS), rng.randrange(1 << 20), rng.randrange(1 << 16), rng.randbytes(rng.randrange(24)))
            for _ in range(rng.randint(1, max_steps))]


def chunkings(max_chunks: int = 8) -> st.SearchStrategy:
    """hypothesis: cut points (fractions of the length, in 1/1000) splitting a byte string into reads."""
    return st.lists(st.integers(0, 1000), max_size=max_chunks)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (per mille of its length); the pieces join back to ``data``."""
    n = len(data)
    points = sorted({c * n // 1000 for c in cuts} | {0, n})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


# --- Flo request seeds ------------------------------------------------------------------------------


def flo_seeds() -> list[tuple[str, int, bytes]]:
    """``[(name, op, payload)]`` of ``corpus/dispatch`` (each file is ``[op u16][payload]``)."""
    return [(name, struct.unpack_from("<H", data)[0], data[2:]) for name, data in corpus("dispatch")]


def split_head(payload: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``[ns str16][key str16][rest]`` -> (ns, key, rest), or None when it does not parse."""
    if len(payload) < 4:
        return None
    nl = payload[0] | payload[1] << 8
    if 2 + nl + 2 > len(payload):
        return None
    kl = payload[2 + nl] | payload[3 + nl] << 8
    if 4 + nl + kl > len(payload):
        return None
    return payload[2:2 + nl], payload[4 + nl:4 + nl + kl], payload[4 + nl + kl:]


def head(ns: bytes, key: bytes) -> bytes:
    return struct.pack("<H", len(ns)) + ns + struct.pack("<H", len(key)) + key


# --- JSON documents and paths (jsonpath target, and the KV JSON ops) --------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)

#: texts a JSON decoder or encoder is likely to choke on
NASTY_JSON = [
    b"[" * 100_000 + b"]" * 100_000, b"[" * 3000 + b"]" * 3000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'"\\ud800"', b'{"a":"\\udc00x"}', b'["\\ud83d\\ude00", "\\ud83d"]', b"NaN", b"[Infinity,-Infinity]", b"1e400",
    b"9" * 5000, b'{"a":1,"a":2}', b'"\\u0000"', b"[1,]", b"\xff\xfe", b"\xef\xbb\xbf{}", b'"\xed\xa0\x80"', b"",
    b" ", b"{", b'{"a":[1,2,{"b":null}]}', b"[[],[[]],{}]", b'{"": {"": [0]}}', b"-0", b"0.1e-400",
]


@st.composite
def json_texts(draw) -> bytes:  # noqa: ANN001
    """JSON document bytes: valid ones, nasty ones, and mutations of both."""
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        import json

        text = json.dumps(draw(JSON_VALUES), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    else:
        text = draw(st.sampled_from(NASTY_JSON))
    if kind in (2, 5):
        text = apply_mutations(text, draw(mutation_steps(3)))
    return text


_NAME = st.from_regex(r"[A-Za-z_$][\w$-]{0,6}", fullmatch=True)
_ESCAPE = st.sampled_from(["\\n", "\\\"", "\\\\", "\\/", "\\u0041", "\\ud800", "\\udc00", "\\ud83d\\ude00", "\\u12",
                           "\\u", "\\x41", "\\q", "\\", "\x00", "\x1f", "\u00e9", "'"])
_QUOTED = st.lists(st.one_of(st.text(alphabet="ab .[]$'", max_size=3), _ESCAPE), max_size=4).map("".join)
_TOKEN = st.one_of(
    _NAME.map(lambda n: "." + n),
    st.integers(-(1 << 66), 1 << 66).map(lambda i: f"[{i}]"),
    st.sampled_from(["[0]", "[-1]", "[1]", "[" + "9" * 5000 + "]", "[00]", "[-0]"]),
    _QUOTED.map(lambda s: f'["{s}"]'),
    _QUOTED.map(lambda s: f"['{s}']"),
    st.sampled_from([".", "..", "[", "]", "[*]", ".*", "$", " ", "[\"", "['", "[a]", "@"]),
)


@st.composite
def json_path_texts(draw) -> str:  # noqa: ANN001
    """Path text: mostly grammar-shaped (``$.a[0]["b"]``), sometimes junk."""
    if draw(st.integers(0, 6)) == 0:
        return draw(st.text(max_size=30))
    start = draw(st.sampled_from(["$", "", "$", ".", " $", "a"]))
    return start + "".join(draw(st.lists(_TOKEN, max_size=5)))


# --- a journal with a real log writer (so the C fast paths run), answers never held ---------------


def scratch_base() -> str | None:
    """Where fuzz tests put throw-away log directories: /dev/shm (tmpfs) when there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class RawJournal:
    """DiskJournal's write interface over a real ``LogWriter``, without its loop, timers or fsyncs.

    ``raw_writer()`` hands the writer to ServerCore, so KV_PUT / KV_INCR / STREAM_APPEND /
    QUEUE_ENQUEUE take their C fast paths (which they only do with a log on disk). ``durable``
    is False so ``Output`` sends answers at once instead of holding them for an fsync.
    """

    durable = False

    def __init__(self, directory: str) -> None:
        from flo_core.log import LogWriter

        self.writer = LogWriter(directory, segment_bytes=1 << 20)

    @property
    def healthy(self) -> bool:
        return self.writer.accepting

    @property
    def last_lsn(self) -> int:
        return self.writer.last_lsn

    def append(self, kind: str, args) -> int:  # noqa: ANN001
        from flo_server.persistence import pack_record

        return self.writer.append(1, pack_record(kind, args))

    def raw_writer(self):  # noqa: ANN201
        return self.writer

    def flush_soon(self) -> None:
        pass

    def close(self) -> None:
        self.writer.close(sync=False)


def replayed_state_matches(srv, data_dir: str) -> tuple[int, int]:  # noqa: ANN001
    """Replay ``data_dir/log`` (what ``RawJournal(data_dir/log)`` wrote) into a fresh Server: its stores
    must equal the live ones - a request that logged a record it did not apply (or the reverse)
    shows here. Returns (records replayed, apply errors)."""
    from flo_server.app import Server
    from flo_server.persistence import recover

    srv.journal.writer.flush()
    again = Server()
    rec = recover(again, data_dir)
    for name, store in srv.stores.items():
        assert again.stores[name].dump() == store.dump(), f"store {name!r} differs after replay"
    return rec.replayed, rec.apply_errors
