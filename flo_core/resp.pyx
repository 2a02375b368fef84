# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Sans-IO RESP (Redis serialization protocol) parser and reply encoders.

Requests: ``RespParser().feed(data)`` returns every complete command in
``data`` (plus what was buffered before) as a list of ``list[bytes]``
(``[b"SET", b"k", b"v"]``). Both request forms Redis accepts are handled:
multibulk (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``) and inline
(``GET k\\r\\n``, with Redis's quoting rules). A partially received command is
kept as parse state, so a large value arriving in many reads costs O(total),
not O(reads x size).

Bounds (server limits, smaller than Redis's own 512 MiB): one bulk argument
<= ``max_bulk`` (16 MiB), one command <= ``max_args`` (1M) arguments and
<= ``max_command`` bytes of arguments, an inline line or a ``*``/``$`` header
line <= 64 KiB. A violation raises :class:`RespProtocolError` whose message is
Redis's own wording (``Protocol error: invalid bulk length``) and whose
``commands`` holds the commands parsed before the bad bytes: the server runs
those, answers ``-ERR <message>`` and closes the connection, as Redis does.

Replies: ``add_*`` functions append one RESP2 or RESP3 value to a bytearray,
so a whole batch of replies leaves in one ``transport.write``.

Example:
    >>> from flo_core.resp import RespParser, add_bulk, add_int
    >>> p = RespParser()
    >>> p.feed(b"*2\\r\\n$3\\r\\nGET\\r\\n$1\\r")
    []
    >>> p.feed(b"\\nk\\r\\nPING\\r\\n")
    [[b'GET', b'k'], [b'PING']]
    >>> out = bytearray(); add_bulk(out, b"v"); add_int(out, 7); bytes(out)
    b'$1\\r\\nv\\r\\n:7\\r\\n'
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.list cimport PyList_GET_SIZE
from libc.string cimport memcpy, memchr
from libc.stdint cimport uint8_t, int64_t

cdef enum:
    INLINE_MAX = 65536

#: Largest bulk argument accepted (Redis allows 512 MiB; the KV value limit is 16 MiB).
MAX_BULK = 16 * 1024 * 1024
#: Most arguments in one command (Redis: INT_MAX).
MAX_ARGS = 1024 * 1024
#: Most argument bytes in one command (bounds the memory one client can pin).
MAX_COMMAND = 64 * 1024 * 1024
#: Longest inline command line or ``*``/``$`` header line (Redis's PROTO_INLINE_MAX_SIZE).
MAX_INLINE = INLINE_MAX


class RespProtocolError(Exception):
    """The peer broke RESP framing; ``str(e)`` is Redis's wording, without the ``ERR `` prefix.

    ``commands`` holds the complete commands parsed before the bad bytes.
    """

    def __init__(self, message, commands=None):
        super().__init__(message)
        self.message = message
        self.commands = commands if commands is not None else []


def parse_int(b):
    """Parse a Redis integer argument strictly (``string2ll``); ``None`` if it is not one.

    >>> parse_int(b"-12"), parse_int(b"012"), parse_int(b"1 ")
    (-12, None, None)
    """
    cdef bytes s = bytes(b)
    cdef long long v = 0
    if _parse_ll(<const uint8_t *>PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s), &v):
        return v
    return None


cdef inline int _hexval(uint8_t c) noexcept nogil:
    if b'0' <= c <= b'9':
        return c - 48
    if b'a' <= c <= b'f':
        return c - 97 + 10
    if b'A' <= c <= b'F':
        return c - 65 + 10
    return -1


cdef inline bint _isspace(uint8_t c) noexcept nogil:
    return c == b' ' or c == b'\t' or c == b'\n' or c == b'\r' or c == b'\v' or c == b'\f'


cdef list _split_inline(const uint8_t *p, Py_ssize_t n):
    """Redis's sdssplitargs: whitespace separated, "..." with C escapes, '...' with \\'.

    Returns None on unbalanced quotes.
    """
    cdef list out = []
    cdef Py_ssize_t i = 0
    cdef bytearray cur
    cdef uint8_t c
    cdef int h1, h2
    while True:
        while i < n and _isspace(p[i]):
            i += 1
        if i >= n:
            return out
        cur = bytearray()
        if p[i] == b'"':
            i += 1
            while True:
                if i >= n:
                    return None  # unterminated
                c = p[i]
                if c == b'\\' and i + 3 < n and p[i + 1] == b'x' and _hexval(p[i + 2]) >= 0 and _hexval(p[i + 3]) >= 0:
                    h1 = _hexval(p[i + 2])
                    h2 = _hexval(p[i + 3])
                    cur.append(h1 * 16 + h2)
                    i += 4
                elif c == b'\\' and i + 1 < n:
                    i += 1
                    c = p[i]
                    if c == b'n':
                        cur.append(10)
                    elif c == b'r':
                        cur.append(13)
                    elif c == b't':
                        cur.append(9)
                    elif c == b'b':
                        cur.append(8)
                    elif c == b'a':
                        cur.append(7)
                    else:
                        cur.append(c)
                    i += 1
                elif c == b'"':
                    i += 1
                    # the closing quote must be followed by a space or the end
                    if i < n and not _isspace(p[i]):
                        return None
                    break
                else:
                    cur.append(c)
                    i += 1
        elif p[i] == b"'":
            i += 1
            while True:
                if i >= n:
                    return None
                c = p[i]
                if c == b'\\' and i + 1 < n and p[i + 1] == b"'":
                    cur.append(39)
                    i += 2
                elif c == b"'":
                    i += 1
                    if i < n and not _isspace(p[i]):
                        return None
                    break
                else:
                    cur.append(c)
                    i += 1
        else:
            while i < n and not _isspace(p[i]):
                cur.append(p[i])
                i += 1
        out.append(bytes(cur))


cdef class RespParser:
    """Incremental RESP request parser: ``feed(data) -> list[list[bytes]]``.

    Args:
        max_bulk: largest single argument in bytes.
        max_args: most arguments per command.
        max_command: most argument bytes per command.
    """

    # attributes: flo_core/resp.pxd

    def __init__(self, Py_ssize_t max_bulk=MAX_BULK, Py_ssize_t max_args=MAX_ARGS,
                 Py_ssize_t max_command=MAX_COMMAND):
        self._buf = bytearray()
        self._start = 0
        self._max_bulk = max_bulk
        self._max_args = max_args
        self._max_command = max_command
        self._args = None
        self._left = 0
        self._bulk = -1
        self._size = 0

    @property
    def buffered(self):
        """Bytes received and not yet consumed (a partial command's header or bulk)."""
        return PyByteArray_GET_SIZE(self._buf) - self._start

    @property
    def in_command(self):
        """True while a multibulk command is partly received."""
        return self._args is not None

    def feed(self, data):
        """Consume ``data``; return every command it completes, in order.

        Raises:
            RespProtocolError: malformed or oversized input; ``.commands`` has
                the commands completed before it. The parser is then unusable.
        """
        cdef Py_buffer view
        cdef list out = []
        cdef Py_ssize_t used, total
        cdef Py_ssize_t have = PyByteArray_GET_SIZE(self._buf) - self._start
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if have == 0:
                # Common case: nothing buffered, parse straight from the input.
                used = self._parse(<const uint8_t *>view.buf, view.len, out)
                if used < view.len:
                    self._buf = bytearray((<const char *>view.buf)[used:view.len])
                    self._start = 0
                return out
            self._buf += (<const char *>view.buf)[:view.len]
        finally:
            PyBuffer_Release(&view)
        total = PyByteArray_GET_SIZE(self._buf)
        used = self._parse(<const uint8_t *>PyByteArray_AS_STRING(self._buf) + self._start,
                           total - self._start, out)
        self._start += used
        if self._start == total:
            self._buf = bytearray()
            self._start = 0
        elif self._start > 65536:
            del self._buf[:self._start]
            self._start = 0
        return out

    cdef int _emit(self, list args, list out) except -1:
        out.append(args)
        return 0

    cdef Py_ssize_t _quick(self, const uint8_t *p, Py_ssize_t n) except -1:
        return 0  # the plain parser has no shortcut: RespCore serves GET this way

    cdef _fail(self, str message, list out):
        self._args = None
        raise RespProtocolError("Protocol error: " + message, out)

    cdef Py_ssize_t _parse(self, const uint8_t *p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t pos = 0, line_end, ln
        cdef const uint8_t *nl
        cdef long long v = 0
        cdef list args
        while pos < n:
            if self._args is None:
                # between commands: '*' starts a multibulk, anything else is inline
                if p[pos] != b'*':
                    nl = <const uint8_t *>memchr(p + pos, b'\n', n - pos)
                    if nl == NULL:
                        if n - pos > INLINE_MAX:
                            self._fail("too big inline request", out)
                        break
                    line_end = nl - p
                    ln = line_end - pos
                    if ln > INLINE_MAX:
                        self._fail("too big inline request", out)
                    if ln > 0 and p[line_end - 1] == b'\r':
                        ln -= 1
                    args = _split_inline(p + pos, ln)
                    if args is None:
                        self._fail("unbalanced quotes in request", out)
                    if len(args) > self._max_args:
                        self._fail("invalid multibulk length", out)
                    pos = line_end + 1
                    if PyList_GET_SIZE(args):
                        self._emit(args, out)
                    continue
                ln = self._quick(p + pos, n - pos)
                if ln:
                    pos += ln
                    continue
                nl = <const uint8_t *>memchr(p + pos, b'\r', n - pos)
                if nl == NULL or nl + 1 >= p + n:
                    if n - pos > INLINE_MAX:
                        self._fail("too big mbulk count string", out)
                    break
                line_end = nl - p
                if line_end - pos > INLINE_MAX:
                    self._fail("too big mbulk count string", out)
                if not _parse_ll(p + pos + 1, line_end - pos - 1, &v) or v > self._max_args:
                    self._fail("invalid multibulk length", out)
                pos = line_end + 2
                if v <= 0:
                    continue  # "*0" / "*-1": an empty command, skipped like Redis
                self._args = []
                self._left = <Py_ssize_t>v
                self._bulk = -1
                self._size = 0
                continue
            # inside a multibulk command
            if self._bulk < 0:
                if p[pos] != b'$':
                    self._fail("expected '$', got '%s'" % chr(p[pos]), out)
                nl = <const uint8_t *>memchr(p + pos, b'\r', n - pos)
                if nl == NULL or nl + 1 >= p + n:
                    if n - pos > INLINE_MAX:
                        self._fail("too big bulk count string", out)
                    break
                line_end = nl - p
                if line_end - pos > INLINE_MAX:
                    self._fail("too big bulk count string", out)
                if not _parse_ll(p + pos + 1, line_end - pos - 1, &v) or v < 0 or v > self._max_bulk:
                    self._fail("invalid bulk length", out)
                if self._size + v > self._max_command:
                    self._fail("command exceeds the size limit", out)
                self._bulk = <Py_ssize_t>v
                pos = line_end + 2
                continue
            if n - pos < self._bulk + 2:
                break
            # Redis skips the two bytes after the bulk without checking them; so do we.
            self._args.append(PyBytes_FromStringAndSize(<const char *>p + pos, self._bulk))
            self._size += self._bulk
            pos += self._bulk + 2
            self._bulk = -1
            self._left -= 1
            if self._left == 0:
                args = self._args
                self._args = None
                self._emit(args, out)
        return pos


# ------------------------------------------------------------------ replies

cpdef add_bulk(bytearray buf, value):
    """``$<len>\\r\\n<bytes>\\r\\n`` (``value``: bytes, bytearray or memoryview)."""
    cdef Py_buffer view
    if type(value) is bytes:
        _bulk(buf, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        return
    PyObject_GetBuffer(value, &view, PyBUF_SIMPLE)
    try:
        _bulk(buf, <const char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cpdef add_int(bytearray buf, long long value):
    """``:<n>\\r\\n``."""
    _header(buf, b':', value)


cpdef add_simple(bytearray buf, bytes text):
    """``+<text>\\r\\n`` (text must not contain CR/LF)."""
    _line(buf, b'+', PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))


cpdef add_ok(bytearray buf):
    """``+OK\\r\\n``."""
    _line(buf, b'+', b"OK", 2)


cpdef add_error(bytearray buf, str message):
    """``-<message>\\r\\n``; CR/LF in the message become spaces (Redis does the same)."""
    cdef bytes b = message.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")
    _line(buf, b'-', PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cpdef add_null(bytearray buf, bint resp3):
    """The null bulk: ``$-1`` (RESP2) or ``_`` (RESP3)."""
    if resp3:
        _line(buf, b'_', b"", 0)
    else:
        _line(buf, b'$', b"-1", 2)


cpdef add_null_array(bytearray buf, bint resp3):
    """The null array: ``*-1`` (RESP2) or ``_`` (RESP3); e.g. a BLPOP timeout."""
    if resp3:
        _line(buf, b'_', b"", 0)
    else:
        _line(buf, b'*', b"-1", 2)


cpdef add_array(bytearray buf, Py_ssize_t n):
    """Array header ``*<n>``; the n elements follow."""
    _header(buf, b'*', n)


cpdef add_map(bytearray buf, Py_ssize_t n, bint resp3):
    """Map header of n pairs: ``%<n>`` (RESP3) or ``*<2n>`` (RESP2)."""
    if resp3:
        _header(buf, b'%', n)
    else:
        _header(buf, b'*', 2 * n)


cpdef add_set(bytearray buf, Py_ssize_t n, bint resp3):
    """Set header: ``~<n>`` (RESP3) or ``*<n>`` (RESP2)."""
    _header(buf, b'~' if resp3 else b'*', n)


cpdef add_double(bytearray buf, double value, bint resp3):
    """``,<v>`` (RESP3) or the same text as a bulk (RESP2)."""
    cdef bytes t
    if value == <long long>value and -1e17 < value < 1e17:
        t = str(<long long>value).encode()
    else:
        t = repr(value).encode()
    if resp3:
        _line(buf, b',', PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t))
    else:
        _bulk(buf, PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t))


cpdef add_bool(bytearray buf, bint value, bint resp3):
    """``#t``/``#f`` (RESP3) or ``:1``/``:0`` (RESP2)."""
    if resp3:
        _line(buf, b'#', b"t" if value else b"f", 1)
    else:
        _line(buf, b':', b"1" if value else b"0", 1)


cpdef add_bulks(bytearray buf, list items, bint resp3):
    """An array of bulks; ``None`` items become nulls (MGET, LRANGE, KEYS)."""
    _header(buf, b'*', PyList_GET_SIZE(items))
    for it in items:
        if it is None:
            add_null(buf, resp3)
        else:
            add_bulk(buf, it)


class Simple(bytes):
    """A value :func:`add_value` writes as a simple string (``+OK``), not a bulk."""


class Verbatim(bytes):
    """Text :func:`add_value` writes as RESP3 verbatim ``=<n>\\r\\ntxt:...`` (bulk in RESP2)."""


class ErrorReply(str):
    """A value :func:`add_value` writes as an error line (a nested error, e.g. in EXEC)."""


cdef int _add_value(bytearray buf, object v, bint resp3, int depth) except -1:
    cdef bytes t
    if depth > 32:
        raise ValueError("reply nested too deeply")
    tv = type(v)
    if tv is bytes:
        _bulk(buf, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
    elif v is None:
        add_null(buf, resp3)
    elif tv is int:
        _header(buf, b':', v)
    elif tv is list or tv is tuple:
        _header(buf, b'*', len(v))
        for x in v:
            _add_value(buf, x, resp3, depth + 1)
    elif tv is dict:
        add_map(buf, len(v), resp3)
        for k, x in (<dict>v).items():
            _add_value(buf, k, resp3, depth + 1)
            _add_value(buf, x, resp3, depth + 1)
    elif tv is bool:
        add_bool(buf, v, resp3)
    elif tv is float:
        add_double(buf, v, resp3)
    elif tv is str:
        t = (<str>v).encode("utf-8")
        _bulk(buf, PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t))
    elif isinstance(v, Simple):
        _line(buf, b'+', PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
    elif isinstance(v, Verbatim):
        if resp3:
            t = b"txt:" + bytes(v)
            _header(buf, b'=', len(t))
            w = _grow(buf, PyBytes_GET_SIZE(t) + 2)
            memcpy(w, PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t))
            w[PyBytes_GET_SIZE(t)] = b'\r'
            w[PyBytes_GET_SIZE(t) + 1] = b'\n'
        else:
            _bulk(buf, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
    elif isinstance(v, ErrorReply):
        add_error(buf, str(v))
    elif isinstance(v, (bytes, bytearray, memoryview)):
        add_bulk(buf, v)
    elif isinstance(v, set) or isinstance(v, frozenset):
        add_set(buf, len(v), resp3)
        for x in v:
            _add_value(buf, x, resp3, depth + 1)
    elif isinstance(v, int):
        _header(buf, b':', int(v))
    else:
        raise TypeError(f"cannot encode {tv.__name__} as RESP")
    return 0


cpdef add_value(bytearray buf, object value, bint resp3=False):
    """Append any reply value: bytes → bulk, int → integer, None → null, list/tuple → array,
    dict → map, set → set, float → double, bool → boolean, str → bulk (UTF-8),
    :class:`Simple` → simple string, :class:`ErrorReply` → error, :class:`Verbatim` → verbatim text.

    >>> b = bytearray(); add_value(b, [b"a", 1, None, Simple(b"OK")]); bytes(b)
    b'*4\\r\\n$1\\r\\na\\r\\n:1\\r\\n$-1\\r\\n+OK\\r\\n'
    """
    _add_value(buf, value, resp3, 0)


def encode_command(*args):
    """A request as a client sends it (multibulk of bulks); for tests and tools.

    >>> encode_command(b"GET", "k")
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n'
    """
    cdef bytearray b = bytearray()
    _header(b, b'*', len(args))
    for a in args:
        if isinstance(a, str):
            a = a.encode("utf-8")
        elif isinstance(a, int):
            a = str(a).encode()
        add_bulk(b, a)
    return bytes(b)
