"""The JSON path subset of the KV JSON ops: ``$``, ``.field``, ``.a.b``, ``[index]``, ``["field"]``.

Example:
    >>> parse_path("$.items[0].name")
    ['items', 0, 'name']
    >>> get_at({"a": {"b": [1, 2]}}, ["a", "b", 1])
    2
"""

from __future__ import annotations

import json
import re
from typing import Any

from flo_core.errors import Refusal
from flo_core.spec import Reason

_TOKEN = re.compile(r"""\.([A-Za-z_$][\w$-]*)|\[(-?\d+)\]|\[(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\]""")

Path = list  # list[str | int]


class Missing(Exception):
    """The path does not lead to a value."""


def parse_path(path: str) -> Path:
    """``$.a[0].b`` -> ``['a', 0, 'b']``; the leading ``$`` is optional."""
    p = path.strip()
    if p.startswith("$"):
        p = p[1:]
    elif p and p[0] not in ".[":
        p = "." + p
    out: Path = []
    pos = 0
    while pos < len(p):
        m = _TOKEN.match(p, pos)
        if m is None:
            raise Refusal(Reason.MALFORMED, f"bad JSON path {path!r} at offset {pos}")
        name, index, dq, sq = m.groups()
        try:
            if name is not None:
                out.append(name)
            elif index is not None:
                out.append(int(index))  # ValueError past Python's 4300-digit limit
            else:
                out.append(json.loads(f'"{dq}"') if dq is not None else sq)  # ValueError: a bad escape
        except ValueError:
            raise Refusal(Reason.MALFORMED, f"bad JSON path {path!r} at offset {pos}") from None
        pos = m.end()
    return out


def loads(doc: bytes) -> Any:
    try:
        return json.loads(doc)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        raise Refusal(Reason.WRONG_TYPE, "value is not a JSON document") from None


def dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in a document or path): keep it escaped
        return json.dumps(value, separators=(",", ":")).encode("ascii")
    except RecursionError:
        raise Refusal(Reason.OUT_OF_RANGE, "JSON document nested too deeply") from None


def _step(node: Any, tok: Any) -> Any:
    if isinstance(tok, int):
        if not isinstance(node, list) or not -len(node) <= tok < len(node):
            raise Missing
        return node[tok]
    if not isinstance(node, dict) or tok not in node:
        raise Missing
    return node[tok]


def get_at(doc: Any, path: Path) -> Any:
    for tok in path:
        doc = _step(doc, tok)
    return doc


def set_at(doc: Any, path: Path, value: Any) -> Any:
    """Return the document with ``value`` at ``path`` (the parent must exist)."""
    if not path:
        return value
    parent = get_at(doc, path[:-1])
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(parent, list):
            raise Refusal(Reason.WRONG_TYPE, "index into a non-array")
        if last == len(parent):
            parent.append(value)
        elif -len(parent) <= last < len(parent):
            parent[last] = value
        else:
            raise Refusal(Reason.OUT_OF_RANGE, "array index out of range")
    else:
        if not isinstance(parent, dict):
            raise Refusal(Reason.WRONG_TYPE, "field of a non-object")
        parent[last] = value
    return doc


def del_at(doc: Any, path: Path) -> bool:
    """Delete the value at ``path``; False if there was none. The root (``[]``) is the caller's to delete."""
    if not path:
        raise Refusal(Reason.MALFORMED, "the document root cannot be deleted in place")
    try:
        parent = get_at(doc, path[:-1])
        _step(parent, path[-1])
    except Missing:
        return False
    del parent[path[-1]]
    return True
