"""Drive the server's real connection edge (``FloProtocol``) in process, and check RESP replies.

``Edge`` is one connection of an in-memory :class:`flo_server.app.Server`: a
``FloProtocol`` with a fake transport, so bytes go exactly where a socket's would
(protocol sniffing, ``RespSession``, the C ``RespCore`` / ``ServerCore`` loops,
``Output``). ``parse_replies`` reads RESP2/RESP3 replies strictly (a malformed reply
is an ``AssertionError``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from flo_server.app import Server
from flo_server.protocol import FloProtocol


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.paused = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        assert not self.closed or True  # a write after close is dropped by the real transport too
        if not self.closed:
            self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


class Edge:
    """One client connection to ``srv`` through the real edge."""

    def __init__(self, srv: Server | None = None) -> None:
        self.srv = srv if srv is not None else Server()
        self.transport = FakeTransport()
        self.proto = FloProtocol(self.srv)
        self.proto.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        if not self.transport.closed:
            self.proto.data_received(data)  # (shadowed by the C loop's data_received once chosen)

    def take(self) -> bytes:
        out, self.transport.data = bytes(self.transport.data), bytearray()
        return out

    def close(self) -> None:
        self.transport.closed = True
        self.proto.connection_lost(None)


async def settle(rounds: int = 3) -> None:
    """Let tasks the commands started (blocking commands, delayed AUTH answers) run a little."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --- RESP replies -----------------------------------------------------------------------------------


class Reply(list):
    """An aggregate reply (array, map, set, push, attribute)."""


def _line(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\r\n", pos)
    assert end >= 0, f"reply line without CRLF at {pos}: {buf[pos:pos + 40]!r}"
    return buf[pos:end], end + 2


def parse_one(buf: bytes, pos: int = 0, depth: int = 0) -> tuple[Any, int]:
    """One reply at ``pos`` -> (value, next pos); errors come back as ``("ERR", text)``."""
    assert depth < 64, "reply nested too deeply"
    assert pos < len(buf), "truncated reply"
    kind = buf[pos:pos + 1]
    line, nxt = _line(buf, pos + 1)
    if kind in (b"+",):
        return line, nxt
    if kind in (b"-", b"!"):
        if kind == b"!":
            n = int(line)
            text = buf[nxt:nxt + n]
            nxt += n + 2
            line = text
        return ("ERR", line.decode("utf-8", "replace")), nxt
    if kind == b":" or kind == b"(":
        return int(line), nxt
    if kind == b",":
        float(line.replace(b"inf", b"Infinity")) if line not in (b"inf", b"-inf", b"nan") else None
        return line, nxt
    if kind == b"#":
        assert line in (b"t", b"f"), line
        return line == b"t", nxt
    if kind == b"_":
        assert line == b"", line
        return None, nxt
    if kind in (b"$", b"="):
        n = int(line)
        if n == -1:
            return None, nxt
        assert n >= 0 and buf[nxt + n:nxt + n + 2] == b"\r\n", f"bad bulk length {n}"
        return buf[nxt:nxt + n], nxt + n + 2
    if kind in (b"*", b"~", b">", b"%", b"|"):
        n = int(line)
        if n == -1:
            return None, nxt
        assert n >= 0
        count = n * 2 if kind in (b"%", b"|") else n
        items = Reply()
        for _ in range(count):
            v, nxt = parse_one(buf, nxt, depth + 1)
            items.append(v)
        if kind == b"|":  # an attribute precedes the real reply
            return parse_one(buf, nxt, depth + 1)
        return items, nxt
    raise AssertionError(f"unknown reply type {kind!r} at {pos}")


def parse_replies(buf: bytes) -> list:
    out = []
    pos = 0
    while pos < len(buf):
        v, pos = parse_one(buf, pos)
        out.append(v)
    return out


def errors_of(replies: list) -> list[str]:
    """Every error text in ``replies`` (nested ones too: EXEC-like arrays)."""
    found: list[str] = []
    for r in replies:
        if isinstance(r, tuple) and r and r[0] == "ERR":
            found.append(r[1])
        elif isinstance(r, list):
            found += errors_of(r)
    return found
