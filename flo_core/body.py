"""Field readers and writers for op bodies (little-endian, flo-wire-v2 §0).

:class:`Reader` raises :class:`~flo_core.errors.Refusal` with reason MALFORMED
on any overrun, so handlers never check lengths themselves. :class:`Writer`
builds answers and requests.

Example:
    >>> w = Writer().u64(7).opt_u64(None).str16("hi")
    >>> r = Reader(w.getvalue())
    >>> r.u64(), r.opt_u64(), r.str16()
    (7, None, 'hi')
"""

from __future__ import annotations

import struct

from .errors import Refusal
from .spec import Reason

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_BE_ID = struct.Struct(">QQ")


class Reader:
    """Sequential field reader over a bytes-like object."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def _need(self, n: int) -> int:
        p = self.pos
        if p + n > self.end:
            raise Refusal(Reason.MALFORMED, "body is shorter than its fields")
        self.pos = p + n
        return p

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def at_end(self) -> bool:
        return self.pos >= self.end

    def u8(self) -> int:
        return self.buf[self._need(1)]

    def flag(self) -> bool:
        v = self.u8()
        if v > 1:
            raise Refusal(Reason.MALFORMED, "flag byte is not 0 or 1")
        return bool(v)

    def u16(self) -> int:
        return _U16.unpack_from(self.buf, self._need(2))[0]

    def u32(self) -> int:
        return _U32.unpack_from(self.buf, self._need(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self.buf, self._need(8))[0]

    def i64(self) -> int:
        return _I64.unpack_from(self.buf, self._need(8))[0]

    def raw(self, n: int) -> bytes:
        p = self._need(n)
        return bytes(self.buf[p : p + n])

    def rest(self) -> bytes:
        p = self.pos
        self.pos = self.end
        return bytes(self.buf[p : self.end])

    def bytes8(self) -> bytes:
        return self.raw(self.u8())

    def bytes16(self) -> bytes:
        return self.raw(self.u16())

    def bytes32(self) -> bytes:
        return self.raw(self.u32())

    def str16(self) -> str:
        try:
            return self.bytes16().decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(Reason.MALFORMED, "string is not UTF-8") from None

    def str32(self) -> str:
        try:
            return self.bytes32().decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(Reason.MALFORMED, "string is not UTF-8") from None

    def present(self) -> bool:
        """Read an ``opt()`` presence byte. An exhausted body counts as absent."""
        if self.pos >= self.end:
            return False
        v = self.u8()
        if v > 1:
            raise Refusal(Reason.MALFORMED, "presence byte is not 0 or 1")
        return bool(v)

    def opt_u8(self) -> int | None:
        return self.u8() if self.present() else None

    def opt_u32(self) -> int | None:
        return self.u32() if self.present() else None

    def opt_u64(self) -> int | None:
        return self.u64() if self.present() else None

    def opt_i64(self) -> int | None:
        return self.i64() if self.present() else None

    def opt_str16(self) -> str | None:
        return self.str16() if self.present() else None

    def opt_bytes16(self) -> bytes | None:
        return self.bytes16() if self.present() else None

    def id_le(self) -> tuple[int, int]:
        """StreamID as LE ``[ts u64][seq u64]`` (group ack/nack/claim/pending)."""
        ts = self.u64()
        return ts, self.u64()


class Writer:
    """Append-only field writer; every method returns ``self`` for chaining."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self.buf)

    def u8(self, v: int) -> "Writer":
        self.buf.append(v)
        return self

    def flag(self, v: bool) -> "Writer":
        self.buf.append(1 if v else 0)
        return self

    def u16(self, v: int) -> "Writer":
        self.buf += _U16.pack(v)
        return self

    def u32(self, v: int) -> "Writer":
        self.buf += _U32.pack(v)
        return self

    def u64(self, v: int) -> "Writer":
        self.buf += _U64.pack(v)
        return self

    def i64(self, v: int) -> "Writer":
        self.buf += _I64.pack(v)
        return self

    def raw(self, b: bytes) -> "Writer":
        self.buf += b
        return self

    def bytes8(self, b: bytes) -> "Writer":
        self.buf.append(len(b))
        self.buf += b
        return self

    def bytes16(self, b: bytes) -> "Writer":
        self.buf += _U16.pack(len(b))
        self.buf += b
        return self

    def bytes32(self, b: bytes) -> "Writer":
        self.buf += _U32.pack(len(b))
        self.buf += b
        return self

    def str16(self, s: str) -> "Writer":
        return self.bytes16(s.encode("utf-8"))

    def str32(self, s: str) -> "Writer":
        return self.bytes32(s.encode("utf-8"))

    def absent(self) -> "Writer":
        self.buf.append(0)
        return self

    def opt_u8(self, v: int | None) -> "Writer":
        return self.absent() if v is None else self.u8(1).u8(v)

    def opt_u32(self, v: int | None) -> "Writer":
        return self.absent() if v is None else self.u8(1).u32(v)

    def opt_u64(self, v: int | None) -> "Writer":
        return self.absent() if v is None else self.u8(1).u64(v)

    def opt_i64(self, v: int | None) -> "Writer":
        return self.absent() if v is None else self.u8(1).i64(v)

    def opt_str16(self, v: str | None) -> "Writer":
        return self.absent() if v is None else self.u8(1).str16(v)

    def opt_bytes8(self, v: bytes | None) -> "Writer":
        return self.absent() if v is None else self.u8(1).bytes8(v)

    def opt_bytes16(self, v: bytes | None) -> "Writer":
        return self.absent() if v is None else self.u8(1).bytes16(v)

    def id_le(self, ts: int, seq: int) -> "Writer":
        return self.u64(ts).u64(seq)

    def options(self, opts: dict[int, bytes]) -> "Writer":
        """``[options_len u16][tag u8][len u8][data]...``."""
        block = bytearray()
        for tag, data in opts.items():
            block.append(tag)
            block.append(len(data))
            block += data
        self.buf += _U16.pack(len(block))
        self.buf += block
        return self


def bare_request(value: bytes = b"") -> bytes:
    """A value+options request with no namespace, no key and no options (server-level and cluster ops).

    >>> bare_request(b"2")
    b'\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x002\\x00\\x00'
    """
    return Writer().u16(0).u16(0).bytes32(value).options({}).getvalue()


def id_be(ts: int, seq: int) -> bytes:
    """StreamID as the 16-byte big-endian option value (STREAM_START / STREAM_END)."""
    return _BE_ID.pack(ts, seq)


def parse_id_be(b: bytes) -> tuple[int, int]:
    if len(b) != 16:
        raise Refusal(Reason.MALFORMED, "stream id option must be 16 bytes")
    return _BE_ID.unpack(b)


def opt_uint(opts: dict[int, bytes], tag: int, default: int | None = None) -> int | None:
    """An integer option of any natural width (1, 2, 4 or 8 bytes, LE)."""
    b = opts.get(tag)
    if b is None:
        return default
    if len(b) not in (1, 2, 4, 8):
        raise Refusal(Reason.MALFORMED, f"option 0x{tag:02x} has a bad width")
    return int.from_bytes(b, "little")


def opt_str(opts: dict[int, bytes], tag: int, default: str | None = None) -> str | None:
    b = opts.get(tag)
    if b is None:
        return default
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(Reason.MALFORMED, f"option 0x{tag:02x} is not UTF-8") from None
