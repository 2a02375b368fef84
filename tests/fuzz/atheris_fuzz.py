"""Coverage-guided fuzzing with atheris (libFuzzer for Python), for ``make fuzz`` - not part of pytest.

Usage (from the repository root; atheris: ``pip install atheris``)::

    .venv/bin/python -m tests.fuzz.atheris_fuzz TARGET [libFuzzer options]
    .venv/bin/python -m tests.fuzz.atheris_fuzz dispatch -max_total_time=60

TARGET is one of ``frame``, ``payload``, ``resp``, ``jsonpath``, ``dispatch``, ``log``. Each
keeps the same promise as its hypothesis test in ``tests/fuzz/test_fuzz_*.py``; a broken
promise raises, and libFuzzer writes the input to ``crash-<sha1>`` (in ``$FLO_FUZZ_ARTIFACTS``,
default the current directory). Such a file goes into ``tests/fuzz/corpus/<target>/`` as
``crash-<what>.<ext>`` with a named regression test (README.md).

The corpus is copied to a scratch directory first (libFuzzer adds what it finds to its first
corpus directory; the committed corpus stays as it is). Python code (flo_server, the pure
codec, flo_core's Python modules) is instrumented for coverage; the Cython modules are not
(they run, uninstrumented: their bugs still show as broken promises).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["flo_server", "flo_core", "flo_client"]):
    from flo_core import _pyframe as pf
    from flo_core import wire
    from flo_core.errors import Refusal, parse_refusal_body
    from flo_core.log import LogCorruption, LogReader, LogWriter
    from flo_core.resp import RespParser, RespProtocolError
    from flo_core.spec import Status
    from flo_server import jsonpath
    from flo_server.app import Server
    from flo_server.dispatch import dispatch

from tests.fuzz._fuzz import CORPUS, RawJournal, scratch_base  # noqa: E402

try:
    from flo_core import frame as cf  # type: ignore[attr-defined]
    from flo_core.core import ServerCore  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    cf = ServerCore = None

NOW = 1_700_000_000_000


# --- targets: one input -> the promise holds, or an exception -----------------------------------------


def t_frame(data: bytes) -> None:
    """Both frame readers: FrameError or frames, the same, whatever the cut."""
    cut = data[0] if data else 0
    results = []
    for mod in [pf] + ([cf] if cf is not None else []):
        r = mod.FrameReader(max_payload=4096)
        frames, err = [], None
        try:
            for chunk in (data[1:1 + cut], data[1 + cut:]):
                frames += r.feed(chunk)
        except pf.FrameError as e:
            frames, err = frames + e.frames, (e.reason, e.message)
        results.append((frames, err))
    assert all(x == results[0] for x in results), results


def t_payload(data: bytes) -> None:
    for mod in [pf] + ([cf] if cf is not None else []):
        try:
            ns, key, pos = mod.split_payload(data)
            mod.split_value_options(data, pos)
        except pf.FrameError:
            pass
        try:
            mod.parse_options(data)
        except pf.FrameError:
            pass


def t_resp(data: bytes) -> None:
    """RespParser with small limits: commands or RespProtocolError, the same in one read or two."""
    cut = data[0] if data else 0
    outcomes = []
    for chunks in ([data[1:]], [data[1:1 + cut], data[1 + cut:]]):
        p = RespParser(max_bulk=64, max_args=8, max_command=256)
        cmds, failed = [], False
        try:
            for c in chunks:
                cmds += p.feed(c)
        except RespProtocolError as e:
            cmds, failed = cmds + e.commands, True
        assert all(len(c) <= 8 for c in cmds)  # max_args binds inline commands too (max_bulk only multibulk)
        outcomes.append((cmds, failed))
    assert outcomes[0] == outcomes[1], outcomes


def t_jsonpath(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    path_text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
    doc_text = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        path = jsonpath.parse_path(path_text)
    except Refusal:
        return
    try:
        doc = jsonpath.loads(doc_text)
        jsonpath.dumps(jsonpath.get_at(doc, path))
    except (Refusal, jsonpath.Missing):
        return
    for fn in (lambda: jsonpath.set_at(doc, path, [1]), lambda: jsonpath.del_at(doc, path),
               lambda: jsonpath.dumps(doc)):
        try:
            fn()
        except (Refusal, jsonpath.Missing):
            pass


_STATE: dict = {}


def t_dispatch(data: bytes) -> None:
    """``[op u16][payload]`` through ServerCore + dispatch: never INTERNAL_ERROR, refusals parse."""
    if len(data) < 2:
        return
    op = struct.unpack_from("<H", data)[0]
    payload = data[2:]
    if _STATE.get("runs", 0) % 500 == 0:  # a fresh server now and then: state stays small
        if "srv" in _STATE:
            _STATE["srv"].journal.close()
        d = tempfile.mkdtemp(dir=_STATE["scratch"])
        srv = Server()
        srv.journal = RawJournal(d)
        srv.now = lambda: NOW
        _STATE["srv"] = srv
        _STATE["core"] = ServerCore(srv, lambda rid, o, p: dispatch(srv, rid, o, p, None, NOW)) if ServerCore else None
    _STATE["runs"] = _STATE.get("runs", 0) + 1
    srv, core = _STATE["srv"], _STATE["core"]
    loop = _STATE["loop"]
    if core is not None:
        core.run(wire.encode_request(1, op, payload), NOW)
        answers = pf.FrameReader(is_request=False, max_payload=1 << 26).feed(bytes(core.out))
        core.out = bytearray()
        deferred, core.deferred = core.deferred, []
    else:
        r = dispatch(srv, 1, op, payload, None, NOW)
        answers, deferred = ([(1,) + tuple(r)], []) if isinstance(r, tuple) else ([], [(1, r)])
    for rid, coro in deferred:
        try:
            got = loop.run_until_complete(asyncio.wait_for(coro, 0.002))
        except asyncio.TimeoutError:
            continue
        answers.append((rid,) + tuple(got))
    for _, status, body in answers:
        assert status != Status.INTERNAL_ERROR, (hex(op), payload, parse_refusal_body(body))
        if status:
            assert len(body) >= 3
            bytes(body[3:]).decode("utf-8")


def t_log(data: bytes) -> None:
    d = tempfile.mkdtemp(dir=_STATE["scratch"])
    try:
        with open(os.path.join(d, "00000000000000000001.seg"), "wb") as f:
            f.write(data)
        try:
            lsns = [lsn for lsn, _, _ in LogReader(d)]
            assert lsns == sorted(set(lsns))
        except LogCorruption:
            pass
        try:
            LogWriter(d, segment_bytes=1 << 20).close(sync=False)
        except LogCorruption:
            pass
    finally:
        shutil.rmtree(d, ignore_errors=True)


TARGETS = {"frame": (t_frame, "frame"), "payload": (t_payload, "dispatch"), "resp": (t_resp, "resp"),
           "jsonpath": (t_jsonpath, "jsonpath"), "dispatch": (t_dispatch, "dispatch"), "log": (t_log, None)}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.atheris_fuzz {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    name = sys.argv.pop(1)
    fn, corpus = TARGETS[name]
    _STATE["scratch"] = tempfile.mkdtemp(prefix=f"flo-atheris-{name}-", dir=scratch_base())
    _STATE["loop"] = asyncio.new_event_loop()
    work = os.path.join(_STATE["scratch"], "corpus")
    os.makedirs(work)
    if corpus is not None:
        for p in sorted((CORPUS / corpus).iterdir()):
            if p.is_file():
                shutil.copy(p, os.path.join(work, p.name))
    else:  # log: every segment file of every corpus directory
        for seg in sorted((CORPUS / "log").glob("*/*.seg")):
            shutil.copy(seg, os.path.join(work, f"{seg.parent.name}-{seg.name}"))
    artifacts = os.environ.get("FLO_FUZZ_ARTIFACTS", ".")
    args = [sys.argv[0], work, f"-artifact_prefix={artifacts.rstrip('/')}/"] + sys.argv[1:]
    atheris.Setup(args, fn)
    try:
        atheris.Fuzz()
    finally:
        shutil.rmtree(_STATE["scratch"], ignore_errors=True)


if __name__ == "__main__":
    main()
