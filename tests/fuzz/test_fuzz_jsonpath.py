"""Fuzz flo_server.jsonpath: parse_path / get_at / set_at / del_at / loads / dumps.

Promises: on any path text and any document the module raises only its own error
types - :class:`flo_core.errors.Refusal` (bad path, not JSON, wrong type, out of range)
and :class:`flo_server.jsonpath.Missing` (the path leads nowhere) - never ``ValueError``,
``IndexError``, ``RecursionError`` or ``UnicodeEncodeError``; what ``dumps`` writes
``loads`` reads back equal; a successful ``set_at`` is seen by ``get_at`` at the same path.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flo_core.errors import Refusal
from flo_server import jsonpath
from flo_server.jsonpath import Missing
from tests.fuzz._fuzz import JSON_VALUES, corpus, examples, executed, json_path_texts, json_texts

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

OWN_ERRORS = (Refusal, Missing)


def _parse(text: str) -> list | None:
    try:
        path = jsonpath.parse_path(text)
    except Refusal:
        return None
    assert isinstance(path, list) and all(type(t) in (str, int) for t in path)
    return path


def _equal(a, b) -> bool:  # noqa: ANN001 - JSON equality where NaN equals NaN
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def exercise(doc_text: bytes, path_text: str, value_text: bytes) -> None:
    """Everything the KV JSON ops do with one document, path and value; only the module's errors."""
    executed("jsonpath")
    path = _parse(path_text)
    try:
        doc = jsonpath.loads(doc_text)
    except Refusal:
        return
    try:
        out = jsonpath.dumps(doc)
    except Refusal:
        return  # too deep to write back: refused, not crashed
    assert _equal(jsonpath.loads(out), doc)
    if path is None:
        return
    try:
        got = jsonpath.get_at(doc, path)
        jsonpath.dumps(got)
    except OWN_ERRORS:
        pass
    try:
        value = jsonpath.loads(value_text)
    except Refusal:
        value = None
    try:
        new = jsonpath.set_at(copy.deepcopy(doc), path, value)
    except OWN_ERRORS:
        pass
    else:
        if path:
            assert _equal(jsonpath.get_at(new, path), value)
        try:
            jsonpath.dumps(new)
        except Refusal:
            pass
    d2 = copy.deepcopy(doc)
    try:
        if jsonpath.del_at(d2, path):
            jsonpath.dumps(d2)
    except OWN_ERRORS:
        pass


# --- the corpus first ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,data", corpus("jsonpath"), ids=[n for n, _ in corpus("jsonpath")])
def test_corpus(name: str, data: bytes) -> None:
    entry = json.loads(data)
    if "doc_text" in entry:  # a document as raw text (one json.dumps could not write)
        doc = entry["doc_text"].encode("utf-8", "surrogatepass")
    else:
        doc = json.dumps(entry["doc"], ensure_ascii=False).encode("utf-8", "surrogatepass")
    for p in entry["paths"]:
        exercise(doc, p, entry.get("value", "1").encode() if isinstance(entry.get("value"), str) else b"1")


# --- generated -------------------------------------------------------------------------------------


@settings(max_examples=examples(200))
@given(text=st.one_of(json_path_texts(), st.text(max_size=40)))
def test_parse_path_any_text(text: str) -> None:
    executed("jsonpath")
    _parse(text)


@settings(max_examples=examples(150))
@given(doc=json_texts(), path=json_path_texts(), value=json_texts())
def test_documents_and_paths(doc: bytes, path: str, value: bytes) -> None:
    exercise(doc, path, value)


@settings(max_examples=examples(150))
@given(doc=JSON_VALUES, path=st.lists(st.one_of(st.text(max_size=4), st.integers(-5, 5)), max_size=4),
       value=JSON_VALUES)
def test_structured_paths(doc, path: list, value) -> None:  # noqa: ANN001
    """Paths as token lists, straight into get/set/del (every shape the parser can produce)."""
    executed("jsonpath")
    for fn in (lambda: jsonpath.get_at(doc, path), lambda: jsonpath.set_at(copy.deepcopy(doc), path, value),
               lambda: jsonpath.del_at(copy.deepcopy(doc), path)):
        try:
            fn()
        except OWN_ERRORS:
            pass


# --- regressions: inputs that once raised something else ------------------------------------------


@pytest.mark.parametrize("path", ['$["\\u12"]', '$["\\x41"]', '$["\x00"]', "$[" + "9" * 5000 + "]"])
def test_regression_bad_escape_or_huge_index_is_a_refusal(path: str) -> None:
    """Were ValueError (JSONDecodeError / int's digit limit) out of parse_path: INTERNAL_ERROR."""
    with pytest.raises(Refusal):
        jsonpath.parse_path(path)


def test_regression_lone_surrogate_writes_escaped() -> None:
    """``"\\ud800"`` decodes to a lone surrogate; dumps raised UnicodeEncodeError (INTERNAL_ERROR on KV_JSON_GET)."""
    doc = jsonpath.loads(b'{"a":"\\ud800","\\udc00":1}')
    out = jsonpath.dumps(doc)
    assert jsonpath.loads(out) == doc
    key = jsonpath.parse_path('$["\\ud800"]')
    assert jsonpath.dumps(jsonpath.set_at(doc, key, 2))


def test_regression_deep_nesting_is_refused() -> None:
    """100000 nested arrays: json raised RecursionError (INTERNAL_ERROR on KV_JSON_SET)."""
    with pytest.raises(Refusal):
        jsonpath.loads(b"[" * 100_000 + b"]" * 100_000)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(Refusal):
        jsonpath.dumps(deep)


def test_regression_delete_root_path() -> None:
    """del_at with the empty path (``$``) indexed path[-1]: IndexError."""
    with pytest.raises(OWN_ERRORS):
        jsonpath.del_at({"a": 1}, [])
