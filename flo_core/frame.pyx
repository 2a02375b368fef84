# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# distutils: libraries = z
"""Compiled Flo wire v2 codec; same names and behaviour as ``flo_core._pyframe``.

Why Cython here: the reader is touched once per byte and the encoder once per
answer, so header checks, CRC-32 (zlib's, folded with PCLMULQDQ: flo_core/fastcrc.h) and reassembly run in C
on (pointer, length) views with one bounds check each.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.string cimport memcpy, memmove
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from flo_core._pyframe import FrameError
from flo_core.spec import Reason

from flo_core.wirefmt cimport grow_by, HEADER, VERSION, MAGIC, table_hash, ld16, ld32, ld64, st32, st64, frame_crc
from flo_core.wirefmt cimport request_header
from flo_core.wirefmt cimport crc32 as _crc32


def crc32(data, unsigned long value=0):
    """``zlib.crc32(data, value)``, the same number, folded with PCLMULQDQ (flo_core/fastcrc.h):
    several times faster on big buffers (a snapshot's frames)."""
    cdef Py_buffer view
    cdef unsigned long c
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            c = _crc32(value, <const unsigned char *>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return c


cdef _bad(list out, reason, message):
    # the frames before the bad one still get answers: they travel with the error
    e = FrameError(reason, message)
    e.frames = out
    return e


cdef class FrameReader:
    """Reassemble frames from a byte stream: ``feed(data) -> [(id, code, payload)]``.

    ``code`` is the op for requests and the status for replies.
    """

    def __init__(self, bint is_request=True, max_payload=16 * 1024 * 1024 + 65536, bint check_crc=True):
        self._buf = bytearray()
        self._start = 0
        self._is_request = is_request
        self._check_crc = check_crc
        self._max = max_payload

    @property
    def buffered(self):
        return PyByteArray_GET_SIZE(self._buf) - self._start

    cpdef list feed(self, data):
        # (cpdef: the compiled request loops feed every read through a C call, not a Python one)
        cdef Py_buffer view
        cdef list out = []
        cdef Py_ssize_t have = PyByteArray_GET_SIZE(self._buf) - self._start
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if have == 0:
                # Common case: nothing buffered, parse straight from the input.
                rest = self._parse(<const uint8_t *>view.buf, view.len, out)
                if rest < view.len:
                    self._buf = bytearray((<const char *>view.buf)[rest:view.len])
                    self._start = 0
                return out
            self._buf += (<const char *>view.buf)[:view.len]
        finally:
            PyBuffer_Release(&view)
        cdef Py_ssize_t total = PyByteArray_GET_SIZE(self._buf)
        cdef const uint8_t *base = <const uint8_t *>PyByteArray_AS_STRING(self._buf)
        used = self._parse(base + self._start, total - self._start, out)
        self._start += used
        if self._start == total:
            self._buf = bytearray()
            self._start = 0
        elif self._start > 65536:
            del self._buf[:self._start]
            self._start = 0
        return out

    cdef Py_ssize_t _parse(self, const uint8_t *p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t pos = 0
        cdef uint32_t length, code, version
        cdef const uint8_t *h
        while n - pos >= HEADER:
            h = p + pos
            if ld32(h) != MAGIC:
                raise _bad(out, Reason.MALFORMED, "bad magic")
            if self._is_request:
                code = ld16(h + 20)
                version = h[22]
            else:
                version = h[20]
                code = h[21]
            if version != VERSION or ld64(h + 24) != table_hash():
                raise _bad(out, Reason.TABLE_MISMATCH, "protocol version or table hash mismatch")
            length = ld32(h + 4)
            if length > self._max:
                raise _bad(out, Reason.FIELD_TOO_LONG, f"frame of {length} bytes exceeds the limit of {self._max}")
            if n - pos - HEADER < length:
                break
            if self._check_crc and frame_crc(h, h + HEADER, length) != ld32(h + 16):
                raise _bad(out, Reason.MALFORMED, "crc mismatch")
            pos += HEADER + length
            self._on_frame(ld64(h + 8), code, h + HEADER, length, out)
        return pos

    cdef int _on_frame(self, uint64_t rid, uint32_t code, const uint8_t *payload, uint32_t n, list out) except -1:
        out.append((rid, code, PyBytes_FromStringAndSize(<const char *>payload, n)))
        return 0


cdef inline void _write_header(uint8_t *h, uint64_t rid, uint32_t n) noexcept nogil:
    st32(h, MAGIC)
    st32(h + 4, n)
    st64(h + 8, rid)
    st64(h + 24, table_hash())


def encode_request(uint64_t request_id, uint32_t op, payload, uint32_t flags=0):
    """One request frame."""
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, HEADER + view.len)
        h = <uint8_t *>PyBytes_AS_STRING(out)
        request_header(h, request_id, op, <uint8_t>flags, <uint32_t>view.len)
        if view.len:
            memcpy(h + HEADER, view.buf, view.len)
        st32(h + 16, frame_crc(h, h + HEADER, view.len))
        return out
    finally:
        PyBuffer_Release(&view)


def encode_reply(uint64_t request_id, uint32_t status, data):
    """One reply frame."""
    cdef bytearray b = bytearray()
    append_reply(b, request_id, status, data)
    return bytes(b)


cpdef append_reply(bytearray buf, uint64_t request_id, uint32_t status, data):
    """Append one reply frame to ``buf`` (the connection's output buffer)."""
    cdef Py_buffer view
    cdef uint8_t *h
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        h = grow_by(buf, HEADER + view.len)
        _write_header(h, request_id, <uint32_t>view.len)
        h[20] = VERSION; h[21] = status; h[22] = 0; h[23] = 0
        if view.len:
            memcpy(h + HEADER, view.buf, view.len)
        st32(h + 16, frame_crc(h, h + HEADER, view.len))
    finally:
        PyBuffer_Release(&view)


def split_payload(bytes payload):
    """``[ns str16][key str16]...`` -> (namespace, key, offset of the rest)."""
    cdef Py_ssize_t n = len(payload)
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(payload)
    cdef Py_ssize_t nslen, klen, pos
    if n < 4:
        raise FrameError(Reason.MALFORMED, "payload shorter than namespace and key")
    nslen = ld16(p)
    pos = 2 + nslen
    if pos + 2 > n:
        raise FrameError(Reason.MALFORMED, "namespace overruns the payload")
    try:
        ns = (<const char *>p)[2:pos].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(Reason.MALFORMED, "namespace is not UTF-8") from None
    klen = ld16(p + pos)
    pos += 2
    if pos + klen > n:
        raise FrameError(Reason.MALFORMED, "key overruns the payload")
    return ns, PyBytes_FromStringAndSize(<const char *>p + pos, klen), pos + klen


def split_value_options(bytes payload, Py_ssize_t pos):
    """``[value bytes32][options_len u16][TLV...]`` from ``pos`` -> (value, options)."""
    cdef Py_ssize_t n = len(payload)
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(payload)
    cdef Py_ssize_t vlen, olen
    if pos < 0 or pos + 4 > n:
        raise FrameError(Reason.MALFORMED, "missing value length")
    vlen = ld32(p + pos)
    pos += 4
    if pos + vlen > n:
        raise FrameError(Reason.MALFORMED, "value overruns the payload")
    value = PyBytes_FromStringAndSize(<const char *>p + pos, vlen)
    pos += vlen
    if pos + 2 > n:
        return value, {}
    olen = ld16(p + pos)
    pos += 2
    if pos + olen > n:
        raise FrameError(Reason.MALFORMED, "options overrun the payload")
    return value, _parse_options(p + pos, olen)


cdef dict _parse_options(const uint8_t *p, Py_ssize_t n):
    cdef dict out = {}
    cdef Py_ssize_t pos = 0, ln
    while pos + 2 <= n:
        tag = p[pos]
        ln = p[pos + 1]
        pos += 2
        if pos + ln > n:
            raise FrameError(Reason.MALFORMED, "option overruns the options block")
        out[tag] = PyBytes_FromStringAndSize(<const char *>p + pos, ln)
        pos += ln
    if pos != n:
        raise FrameError(Reason.MALFORMED, "truncated option")
    return out


def parse_options(block):
    """TLV ``[tag u8][len u8][data]``... -> ``{tag: data}`` (last one wins)."""
    cdef bytes b = bytes(block)
    return _parse_options(<const uint8_t *>PyBytes_AS_STRING(b), len(b))
