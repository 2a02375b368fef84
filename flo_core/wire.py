"""The one place that picks the compiled or the pure-Python codec.

``FLO_PUREPYTHON=1`` forces the pure codec (the test suite runs both).

Example:
    >>> from flo_core.wire import encode_request, FrameReader, COMPILED
"""

from __future__ import annotations

import os

from ._pyframe import FrameError

COMPILED = False
if not os.environ.get("FLO_PUREPYTHON"):
    try:
        from .frame import (  # type: ignore[import-not-found]
            FrameReader,
            append_reply,
            crc32,
            encode_reply,
            encode_request,
            parse_options,
            split_payload,
            split_value_options,
        )

        COMPILED = True
    except ImportError:  # pragma: no cover - only without a build
        pass
if not COMPILED:
    from ._pyframe import (  # noqa: F401
        FrameReader,
        append_reply,
        crc32,
        encode_reply,
        encode_request,
        parse_options,
        split_payload,
        split_value_options,
    )

__all__ = [
    "COMPILED",
    "FrameError",
    "FrameReader",
    "append_reply",
    "encode_reply",
    "encode_request",
    "parse_options",
    "split_payload",
    "split_value_options",
]
