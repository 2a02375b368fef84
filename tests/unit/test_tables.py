"""The one table of ops is complete: every op has exactly one handler, every record kind one applier,
and every extension is documented."""

import pathlib

import pytest

import flo_server.app  # noqa: F401 - imports every handler module
from flo_core.spec import SPEC, Flag, Op, Tag
from flo_server.dispatch import HANDLERS
from flo_server.journal import APPLIERS

pytestmark = pytest.mark.unit

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
EXT_TAGS = [t for t in Tag if t >= 0x40]


def test_every_op_in_the_spec_has_a_handler_and_no_handler_is_outside_it():
    assert set(HANDLERS) == set(SPEC)


def test_the_sdk_ops_we_do_not_serve_are_refused_not_handled():
    for op in (Op.TS_WRITE, Op.WORKFLOW_CREATE, Op.PROCESSING_SUBMIT, Op.NAMESPACE_CREATE, Op.CLUSTER_STATUS):
        assert op not in HANDLERS


def test_appliers_cover_every_primitive():
    prefixes = {k.split(".")[0] for k in APPLIERS}
    assert {"kv", "q", "s", "a", "w", "l"} <= prefixes


def _doc_text() -> str:
    return "\n".join(p.read_text() for p in DOCS.glob("*.md"))


@pytest.mark.parametrize("op", [s.op for s in SPEC.values() if s.flags & Flag.EXT], ids=lambda o: o.name)
def test_every_extension_op_is_documented(op):
    text = _doc_text()
    assert op.name in text and f"0x{int(op):03x}" in text.lower(), op.name


@pytest.mark.parametrize("tag", EXT_TAGS, ids=lambda t: t.name)
def test_every_extension_tag_is_documented(tag):
    text = _doc_text()
    assert tag.name in text and f"0x{int(tag):02x}" in text.lower(), tag.name
