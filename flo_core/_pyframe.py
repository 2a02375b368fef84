"""Pure-Python Flo wire v2 codec: the reference the Cython codec is tested against.

The compiled twin is ``flo_core.frame``; ``flo_core.wire`` picks one of them
(``FLO_PUREPYTHON=1`` forces this one). Both expose the same names:

* :class:`FrameReader` - reassembles frames from any split of the byte stream.
* :func:`encode_request`, :func:`encode_reply`, :func:`append_reply`.
* :func:`split_payload` - ``ns``, ``key`` and the rest of a request payload.
* :func:`parse_options` - TLV options into ``{tag: bytes}``.

Example:
    >>> r = FrameReader(is_request=True)
    >>> frame = encode_request(1, 0x101, b"\\x00\\x00\\x01\\x00k")
    >>> r.feed(frame[:5]) + r.feed(frame[5:])
    [(1, 257, b'\\x00\\x00\\x01\\x00k')]
"""

from __future__ import annotations

import struct
import zlib

from .spec import DEFAULT_MAX_FRAME, HEADER_SIZE, MAGIC, TABLE_HASH, VERSION, Reason

_HDR = struct.Struct("<IIQIHBBQ")  # request: magic len id crc op ver flags hash
_RHDR = struct.Struct("<IIQIBBBBQ")  # reply: magic len id crc ver status flags pad hash
_crc32 = zlib.crc32


class FrameError(Exception):
    """A frame that cannot be parsed: answer with request id 0 and close."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.frames: list = []  # good frames parsed before the bad one, still to be answered


class FrameReader:
    """Reassemble frames from a byte stream.

    ``feed()`` returns every complete frame as ``(request_id, code, payload)``
    where ``code`` is the op (requests) or the status (replies). After a
    :class:`FrameError` the stream cannot be resynchronised.
    """

    def __init__(self, is_request: bool = True, max_payload: int = DEFAULT_MAX_FRAME, check_crc: bool = True) -> None:
        self._buf = bytearray()
        self._is_request = is_request
        self._max = max_payload
        self._check_crc = check_crc

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        out: list = []
        try:
            pos = self._parse(buf, out)
        except FrameError as e:
            e.frames = out
            raise
        if pos:
            del buf[:pos]
        return out

    def _parse(self, buf: bytearray, out: list) -> int:
        pos = 0
        n = len(buf)
        while n - pos >= HEADER_SIZE:
            magic, length, rid, crc = struct.unpack_from("<IIQI", buf, pos)
            if magic != MAGIC:
                raise FrameError(Reason.MALFORMED, "bad magic")
            if self._is_request:
                code = buf[pos + 20] | (buf[pos + 21] << 8)
                version = buf[pos + 22]
            else:
                version = buf[pos + 20]
                code = buf[pos + 21]
            (thash,) = struct.unpack_from("<Q", buf, pos + 24)
            if version != VERSION or thash != TABLE_HASH:
                raise FrameError(Reason.TABLE_MISMATCH, "protocol version or table hash mismatch")
            if length > self._max:
                raise FrameError(Reason.FIELD_TOO_LONG, f"frame of {length} bytes exceeds the limit of {self._max}")
            end = pos + HEADER_SIZE + length
            if end > n:
                break
            payload = bytes(buf[pos + HEADER_SIZE : end])
            if self._check_crc:
                c = _crc32(buf[pos : pos + 16])
                c = _crc32(buf[pos + 20 : pos + 32], c)
                c = _crc32(payload, c)
                if c != crc:
                    raise FrameError(Reason.MALFORMED, "crc mismatch")
            out.append((rid, code, payload))
            pos = end
        return pos


crc32 = zlib.crc32  # (the compiled module's is the same function, faster)


def encode_request(request_id: int, op: int, payload: bytes, flags: int = 0) -> bytes:
    """One request frame."""
    head = struct.pack("<IIQ", MAGIC, len(payload), request_id)
    tail = struct.pack("<HBBQ", op, VERSION, flags, TABLE_HASH)
    crc = _crc32(payload, _crc32(tail, _crc32(head)))
    return head + struct.pack("<I", crc) + tail + payload


def encode_reply(request_id: int, status: int, data: bytes) -> bytes:
    """One reply frame."""
    head = struct.pack("<IIQ", MAGIC, len(data), request_id)
    tail = struct.pack("<BBBBQ", VERSION, status, 0, 0, TABLE_HASH)
    crc = _crc32(data, _crc32(tail, _crc32(head)))
    return head + struct.pack("<I", crc) + tail + data


def append_reply(buf: bytearray, request_id: int, status: int, data: bytes) -> None:
    """Append one reply frame to ``buf``."""
    buf += encode_reply(request_id, status, data)


def split_payload(payload: bytes) -> tuple[str, bytes, int]:
    """``[ns str16][key str16]...`` -> (namespace, key, offset of the rest)."""
    n = len(payload)
    if n < 4:
        raise FrameError(Reason.MALFORMED, "payload shorter than namespace and key")
    nslen = payload[0] | (payload[1] << 8)
    p = 2 + nslen
    if p + 2 > n:
        raise FrameError(Reason.MALFORMED, "namespace overruns the payload")
    try:
        ns = payload[2:p].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(Reason.MALFORMED, "namespace is not UTF-8") from None
    klen = payload[p] | (payload[p + 1] << 8)
    p += 2
    if p + klen > n:
        raise FrameError(Reason.MALFORMED, "key overruns the payload")
    return ns, bytes(payload[p : p + klen]), p + klen


def split_value_options(payload: bytes, pos: int) -> tuple[bytes, dict[int, bytes]]:
    """``[value bytes32][options_len u16][TLV...]`` from ``pos`` -> (value, options)."""
    n = len(payload)
    if pos + 4 > n:
        raise FrameError(Reason.MALFORMED, "missing value length")
    (vlen,) = struct.unpack_from("<I", payload, pos)
    pos += 4
    if pos + vlen > n:
        raise FrameError(Reason.MALFORMED, "value overruns the payload")
    value = bytes(payload[pos : pos + vlen])
    pos += vlen
    if pos + 2 > n:
        return value, {}  # options block absent: tolerated
    olen = payload[pos] | (payload[pos + 1] << 8)
    pos += 2
    if pos + olen > n:
        raise FrameError(Reason.MALFORMED, "options overrun the payload")
    return value, parse_options(payload[pos : pos + olen])


def parse_options(block: bytes) -> dict[int, bytes]:
    """TLV ``[tag u8][len u8][data]``... -> ``{tag: data}`` (last one wins)."""
    out: dict[int, bytes] = {}
    p = 0
    n = len(block)
    while p + 2 <= n:
        tag = block[p]
        ln = block[p + 1]
        p += 2
        if p + ln > n:
            raise FrameError(Reason.MALFORMED, "option overruns the options block")
        out[tag] = bytes(block[p : p + ln])
        p += ln
    if p != n:
        raise FrameError(Reason.MALFORMED, "truncated option")
    return out
