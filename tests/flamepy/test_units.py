"""flamepy pieces that need no server: validation, parsing, formatting."""

from __future__ import annotations

import textwrap

import pytest

from flamepy import FlameError, FlameErrorCode, ResourceRequirement
from flamepy.cli.flmctl import format_table
from flamepy.core import records as R
from flamepy.core.config import FlameContext, normalize_endpoint
from flamepy.core.ops import short_name
from flamepy.core.types import validate_application_name
from flamepy.service import FlameInstance, Session

pytestmark = pytest.mark.unit


def test_resource_requirement_grammar():
    assert ResourceRequirement.from_string("cpu=2,mem=4g") == ResourceRequirement(2, 4 << 30, 0)
    assert ResourceRequirement.from_string(" CPU = 1 , Memory=512Mi, gpu=1") == ResourceRequirement(1, 512 << 20, 1)
    assert ResourceRequirement.from_string("mem=10") == ResourceRequirement(0, 10, 0)
    assert ResourceRequirement.from_string("mem=1kib").memory == 1024
    for bad in ["", "cpu", "cpu=", "cpu=1=2", "cpu=1,,gpu=1", "disk=1", "cpu=1.5", "mem=4x"]:
        with pytest.raises(ValueError):
            ResourceRequirement.from_string(bad)
    assert ResourceRequirement.coerce({"cpu": 2, "memory": "4g", "gpu": 0, "other": 1}) == \
        ResourceRequirement(2, 4 << 30, 0)
    assert ResourceRequirement.coerce({"mem": 1024}) == ResourceRequirement(0, 1024, 0)


def test_entrypoint_rules():
    ins = FlameInstance()

    def two(a, b):
        pass

    def kwonly(*, a):
        pass

    def star(*a):
        pass

    with pytest.raises(AssertionError, match="Entrypoint must have exactly zero or one parameter"):
        ins.entrypoint(two)
    for f in (kwonly, star):
        with pytest.raises(AssertionError, match="Parameter must be positional or keyword"):
            ins.entrypoint(f)

    def zero():
        return "z"

    async def one(req):
        return req * 2

    assert ins.entrypoint(zero) is zero
    assert ins._call(None) == "z"
    ins.entrypoint(one)  # the last one wins
    import cloudpickle
    assert ins._call(cloudpickle.dumps(21)) == 42
    assert ins.context() is None  # no session context
    ins.update_context([1])  # silently nothing
    assert ins.context() is None


def test_session_argument_errors():
    with pytest.raises(ValueError, match="Either 'name' or 'session_id' must be provided"):
        Session()
    with pytest.raises(ValueError, match="Cannot provide both 'name' and 'session_id'. They are mutually exclusive."):
        Session("a", session_id="b")


def test_flame_error_shape():
    err = FlameError(FlameErrorCode.NOT_FOUND, "nope")
    assert (err.code, err.message, str(err)) == (FlameErrorCode.NOT_FOUND, "nope", "nope (code: 5)")
    import pickle
    assert pickle.loads(pickle.dumps(err)).message == "nope"


def test_names_and_ids():
    assert validate_application_name("echo-app.v1_2") == "echo-app.v1_2"
    for bad in ["", ".x", "-x", "a..b", "a/b", "a\\b", "x" * 254, "a b"]:
        with pytest.raises(FlameError):
            validate_application_name(bad)
    sid = short_name("echo-app")
    assert sid.startswith("echo-app-") and len(sid) == len("echo-app-") + 6 and sid[-6:].isalnum()


def test_config_file_and_env(tmp_path, monkeypatch):
    conf = tmp_path / "flame.yaml"
    conf.write_text(textwrap.dedent("""\
        current-context: prod
        contexts:
          - name: prod
            cluster:
              endpoint: "http://10.1.2.3:9100"
            cache:
              endpoint: "grpc://10.1.2.3:9090"
        """))
    monkeypatch.delenv("FLAME_ENDPOINT", raising=False)
    ctx = FlameContext.load(str(conf))
    assert (ctx.name, ctx.endpoint, ctx.cache_endpoint) == ("prod", "10.1.2.3:9100", "grpc://10.1.2.3:9090")
    monkeypatch.setenv("FLAME_ENDPOINT", "127.0.0.1:9555")
    assert FlameContext.load(str(conf)).endpoint == "127.0.0.1:9555"
    assert FlameContext.load(str(conf), env=False).endpoint == "10.1.2.3:9100"
    with pytest.raises(FlameError, match="is not a file"):
        FlameContext.load(str(tmp_path / "missing.yaml"), required=True)
    conf.write_text("contexts: []\n")
    with pytest.raises(FlameError, match="current-context is not set"):
        FlameContext.load(str(conf))
    conf.write_text("current-context: x\ncontexts: []\n")
    with pytest.raises(FlameError, match="context x not found"):
        FlameContext.load(str(conf))
    assert normalize_endpoint("flo://h") == "h:9000"
    assert normalize_endpoint("h:1") == "h:1"


def test_table_format():
    out = format_table(["Name", "State"], [["echo-app", "Enabled"], ["x", "Disabled"]])
    assert out.splitlines() == [" Name      State", " echo-app  Enabled", " x         Disabled"]


def test_blob_split_roundtrip():
    small, chunks = R.split_blob(b"abc")
    assert small == ["i", b"abc"] and chunks == []
    data = bytes(range(256)) * 2000
    ref, chunks = R.split_blob(data)
    assert ref[0] == "c" and ref[2] == len(chunks) and b"".join(v for _, v in chunks) == data
    assert all(len(v) <= R.CHUNK for _, v in chunks)


def test_task_chunks_notices_and_instance_state(tmp_path):
    from flamepy.core import records as R
    from flamepy.core.service import _StateFile
    assert R.chunk_ranges(list(range(5, 5 + 130))) == [(5, 68), (69, 132), (133, 134)]
    assert [R.parse_chunk(R.chunk_payload(a, b)) for a, b in [(7, 7), (7, 70)]] == [(7, 7), (7, 70)]
    for bad in (b"", b"x", b"0", b"9-3", b"1-2000000", b"-1"):
        with pytest.raises(ValueError):
            R.parse_chunk(bad)
    # Notices: single and batched payloads decode alike; batches stay under the byte budget.
    one = R.notice_of("s", 1, 2, ["i", b"out"], None)
    assert R.notices_in(R.reply_notice("s", 1, 2, ["i", b"out"], None)) == [one]
    big = [R.notice_of("s", i, 2, ["i", b"x" * 50_000], None) for i in range(7)]
    payloads = R.reply_notices(big)
    assert len(payloads) > 1 and all(len(p) < R.NOTICE_BATCH_BYTES + 60_000 for p in payloads)
    assert [n for p in payloads for n in R.notices_in(p)] == big
    # The mapped state file, read back as the executor manager does.
    path = tmp_path / "inst.state"
    state = _StateFile(str(path))
    state.chunks("ssn-1", [[3, 1, 64]])
    state.running(17)
    assert R.decode_instance_state(path.read_bytes()) == ["ssn-1", 17, [[3, 1, 64]]]
    state.running(None)
    state.chunks("ssn-1", [])
    assert R.decode_instance_state(path.read_bytes()) == ["ssn-1", None, []]
    state.close()
    assert R.decode_instance_state(b"") is None


def test_runner_session_context_refusals_use_flames_wording():
    """Flame's own e2e suite matches these words (tests/test_runner.py, cases 32-35)."""
    import pytest

    from flamepy.runner import SessionContext

    for bad, words in (("", "cannot be empty"), ("x" * 129, "too long"), (12345, "must be a string"),
                       ("bad id", "[A-Za-z0-9._-]")):
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            SessionContext(session_id=bad)
    with pytest.raises(ValueError, match="must be a string"):
        SessionContext(application_name=12345)
    assert SessionContext(session_id="ok-1").session_id == "ok-1"
