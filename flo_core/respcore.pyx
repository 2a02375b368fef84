# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""RespCore: a RESP connection's request loop with the hot string commands in C, sans-IO.

The RESP twin of :class:`flo_core.core.ServerCore`. ``run(data, now, out)``
parses ``data`` (a :class:`flo_core.resp.RespParser`) and runs each complete
command as soon as it is parsed, appending its reply to ``out`` in request
order:

* ``GET key``, ``SET key value`` (no options) and ``INCR key`` run here against
  the KV store, and ``XADD key * field value ...`` (no options) against the
  stream store: the ``s.append`` record and stored blobs of the Python XADD
  (``payload`` field as the payload, the other fields as headers), and
  ``LPUSH``/``RPUSH key value ...`` and ``LPOP``/``RPOP key`` (no count) against
  the list store (``l.push`` / ``l.pop`` records, what the appliers do). A write does what the ``kv.set`` applier does (journal record
  ``["kv.set", [now, ns, key, value, expires_at]]`` through the shared encoder
  of ``flo_core/records.pxd``, store write, wake parked readers), so live
  writes, replay and the Flo protocol stay identical.
* everything else - and any case the fast path does not cover: a key holding
  a list or a stream (WRONGTYPE, or SET replacing it), a counter that is not
  decimal text or would overflow, an oversized key/value, a namespace that
  cannot be logged here, a journal that refuses writes - goes to the Python
  command table through ``slow(argv, out)``, which appends its own reply.

``slow`` returns None to go on, or anything else to stop running (a blocking
command's coroutine, or a close request): that object is left in ``stopped``
and the commands parsed after it are returned unexecuted, for the session to
queue behind it. The session's ``ns`` / ``resp3`` are re-read after every
Python command (SELECT, USE, HELLO, RESET change them).

Like ServerCore, a RespCore takes the transport's reads once the edge knows
the connection speaks RESP: uvloop calls ``data_received`` here, and the
common read (no blocking command pending, no protocol error, no QUIT) is served
and answered without leaving C; the rest goes to the session
(``RespSession.feed`` / ``_settle``).

Example:
    >>> core = RespCore(srv, session, session._exec)    # doctest: +SKIP
    >>> out = bytearray()
    >>> core.run(b"*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$1\\r\\nv\\r\\n", now, out)   # doctest: +SKIP
    []
    >>> bytes(out)                                       # doctest: +SKIP
    b'+OK\\r\\n'
"""

cimport cython
from flo_core.metrics cimport Metrics, mono_ns
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

from flo_core.resp cimport RespParser, _bulk, _line, _header
from flo_core.counters cimport counter_add, counter_text, COUNTER_OK, COUNTER_TEXT_MAX
from flo_core.kv cimport KVStore, Namespace, kv_ent, kv_key, kv_val, entry_dead, find_live, find_stored, live_in
from flo_core.log cimport LogWriter, takes_writes
from flo_core.clock cimport unix_ms
from flo_core.records cimport log_kv_set, log_stream_append, log_list_push, log_list_pop
from flo_core.stream cimport Stream, next_id_of
from flo_core.wirefmt cimport st16, st32, utf8_ok, key_slot
from libc.string cimport memcpy
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from flo_core.output cimport Output
from flo_core.resp import RespProtocolError
from flo_core.core import now_ms

from collections import deque

from flo_core import spec

cdef Py_ssize_t MAX_KEY = spec.MAX_KEY
cdef Py_ssize_t MAX_KV_VALUE = spec.MAX_KV_VALUE
cdef Py_ssize_t MAX_LIST_LEN = 50_000_000  # flo_server.handlers.list.MAX_LIST_LEN
cdef str LIST_WAKE = "l"  # waiters' key of a list: ("l", ns, key)
cdef str KIND_SET = "kv.set"
cdef str STREAM_WAKE = "s"  # waiters' key of a stream: ("s", ns, name)
cdef enum:
    XADD_MAX_HEADERS = 1024  # more fields: the Python command


cdef inline bint _named(object name, const char *lower, Py_ssize_t n) noexcept:
    """``name`` (bytes) equals the lower-case ASCII word ``lower``, ignoring case."""
    if type(name) is not bytes or PyBytes_GET_SIZE(name) != n:
        return False
    cdef const char *p = PyBytes_AS_STRING(name)
    cdef Py_ssize_t i
    for i in range(n):
        # letters only: c | 0x20 maps 'G' to 'g' and no other byte onto a lower-case letter
        if (p[i] | 0x20) != lower[i]:
            return False
    return True


#: The commands served in C, in the order of ``which`` in ``_emit`` (their metrics slots).
FAST_COMMANDS = ("get", "set", "incr", "xadd", "lpush", "rpush", "rpop", "lpop")

#: ``stopped`` when one read's replies passed ``out_cap`` (the client's output limit): the
#: commands after that point were not run, and the session drops the connection.
OUT_FULL = object()


@cython.final  # nothing subclasses it: its cdef methods are plain C calls
cdef class RespCore(RespParser):
    """One RESP connection's parser + request loop. See the module docstring."""

    cdef public object session
    cdef public object slow
    cdef public object srv
    cdef public object stopped   # what made the last run() stop, or None
    cdef public Py_ssize_t fast_count   # commands served in C (tests, stats)
    cdef public bint fast        # False: every command goes to ``slow`` (a user whose rights are checked)
    cdef public bytearray served # on a cluster member: 1 per slot it serves (ServerCore.served); else None
    cdef KVStore kv
    cdef object waiting          # the waiters' key dict: notify only when someone waits
    cdef object journal          # srv.journal as last seen, and what run() needs of it:
    cdef bint durable
    cdef LogWriter _writer       # its raw writer (None: in memory)
    cdef bytearray out           # the reply buffer of the current run()
    cdef bint executing
    cdef LogWriter _log          # set during run() when the journal is on disk and healthy
    cdef Py_ssize_t _logged      # bytes appended through _log in this run()
    cdef bytearray _rec          # scratch buffer for one log record
    cdef int64_t _now
    cdef str _ns                 # the session's namespace ...
    cdef bytes _nsb              # ... its UTF-8 ...
    cdef bint _ns_ok             # ... and whether the C path may log it (1..255 bytes)
    cdef bint _resp3
    cdef object _lists           # ListStore.spaces  {ns: {key: deque}}
    cdef object _streams         # Streams.by_ns     {ns: {name: Stream}} or None
    cdef object _streams_obj     # srv.streams (flo_core.stream.Streams) or None
    cdef bytearray _xrec         # scratch: one XADD record in STREAM_APPEND wire form
    cdef public Output output    # the session's Output
    cdef object _clock           # srv.now
    cdef bint _c_clock           # srv.now is now_ms: read the clock in C
    cdef Metrics metrics         # srv.metrics (None: not counted)
    cdef int _slots[8]           # metrics slots of FAST_COMMANDS
    cdef public Py_ssize_t out_cap   # the client's output limit (0: none): see OUT_FULL

    def __init__(self, srv, session, slow, **limits):
        RespParser.__init__(self, **limits)
        self.srv = srv
        self.session = session
        self.slow = slow
        self.kv = srv.kv
        self.waiting = srv.waiters._by_key
        self.stopped = None
        self.fast_count = 0
        self.fast = True
        self._rec = bytearray(256)
        self._ns = None
        self._clock = getattr(srv, "now", None)  # used once this core is the protocol
        self._c_clock = self._clock is now_ms
        self.metrics = getattr(srv, "metrics", None)
        for i, c in enumerate(FAST_COMMANDS):
            self._slots[i] = self.metrics.slot_of_command(c) if self.metrics is not None else -1

    # --- the transport's data_received, once the edge handed it over -----------------------

    def data_received(self, data):
        if self.metrics is not None:
            self.metrics.bytes_in += len(data)
        s = self.session
        if s._blocked is not None or s.closed or s._close_after:
            s.feed(data)  # queued behind a blocking command, or closing
            return
        cdef bytearray out = bytearray()
        cdef int64_t now = unix_ms() if self._c_clock else self._clock()
        s.now = now
        error = None
        try:
            rest = self._run(data, now, out)
        except RespProtocolError as e:
            rest, error = e.commands, e.message
        r = self.stopped
        if r is None and error is None:
            self.output.send_c(out)
            return
        self.stopped = None
        s._settle(r, rest, out, error)

    # --- the request loop ----------------------------------------------------------------------

    def run(self, data, int64_t now, bytearray out):
        """Parse ``data`` and run every command it completes; replies go to ``out``.

        Returns the complete commands left unexecuted because a Python command
        stopped the run (see ``stopped``), as ``list[list[bytes]]``.

        Raises:
            RespProtocolError: malformed input; its ``commands`` are the ones
                left unexecuted (those before the bad bytes already ran).
        """
        return self._run(data, now, out)

    cdef object _run(self, data, int64_t now, bytearray out):
        journal = self.srv.journal
        if journal is not self.journal:
            self.journal = journal
            self._writer = journal.raw_writer()
            self.durable = bool(getattr(journal, "durable", False))
        self._now = now
        self.out = out
        self.stopped = None
        self._logged = 0
        self._refresh()
        self.executing = True
        try:
            return self.feed(data)
        finally:
            self.executing = False
            self.out = None
            if self._logged and not self._log.flush_scheduled:
                journal.flush_soon()
            self._log = None

    cdef int _refresh(self) except -1:
        """Re-read what a Python command may have changed: namespace, protocol, journal health."""
        s = self.session
        ns = s.ns
        if ns is not self._ns:
            self._ns = ns
            self._ns_ok = False
            if type(ns) is str:
                try:
                    self._nsb = (<str>ns).encode("utf-8")
                    self._ns_ok = 0 < PyBytes_GET_SIZE(self._nsb) <= 255
                except UnicodeEncodeError:
                    pass
        self._resp3 = s.resp3
        self._lists = s.lists.spaces
        streams = getattr(self.srv, "streams", None)
        self._streams = streams.by_ns if streams is not None else None
        self._streams_obj = streams
        # a disk journal that stopped taking writes: no raw writer, the Python path refuses
        self._log = self._writer if self._writer is not None and takes_writes(self._writer, self._now) else None
        return 0

    cdef int _emit(self, list args, list out) except -1:
        if not self.executing:
            out.append(args)  # stopped (or plain feed()): the session queues it
            return 0
        if self.out_cap and PyByteArray_GET_SIZE(self.out) > self.out_cap:
            self.executing = False
            self.stopped = OUT_FULL  # the session drops the connection (RespSession._settle)
            return 0
        cdef Py_ssize_t argc = PyList_GET_SIZE(args)
        cdef bint done = False
        cdef int which = -1  # index into FAST_COMMANDS
        cdef Metrics m = self.metrics
        cdef int64_t t0 = -1
        cdef bytes gkey
        if self.fast and self._ns_ok and argc >= 2 and (self.served is None or self._serves(args[1])):
            name = args[0]
            if m is not None and m.sample():
                t0 = mono_ns()
            try:
                if argc == 2 and _named(name, b"get", 3):
                    gkey = args[1]  # a TypeError (not bytes) leaves it to the Python command
                    which, done = 0, self._get(PyBytes_AS_STRING(gkey), PyBytes_GET_SIZE(gkey), gkey)
                elif argc == 3 and _named(name, b"set", 3):
                    which, done = 1, self._set(args[1], args[2])
                elif argc == 2 and _named(name, b"incr", 4):
                    which, done = 2, self._incr(args[1])
                elif argc >= 5 and _named(name, b"xadd", 4):
                    which, done = 3, self._xadd(args, argc)
                elif argc >= 3 and _named(name, b"lpush", 5):  # (without a value: the arity error, in Python)
                    which, done = 4, self._push(args, argc, True)
                elif argc >= 3 and _named(name, b"rpush", 5):
                    which, done = 5, self._push(args, argc, False)
                elif argc == 2 and _named(name, b"rpop", 4):
                    which, done = 6, self._pop(args[1], False)
                elif argc == 2 and _named(name, b"lpop", 4):
                    which, done = 7, self._pop(args[1], True)
            except Exception:
                done = False  # nothing was answered or changed: the Python command decides
        if done:
            self._served_fast(which, t0)
            return 0
        r = self.slow(args, self.out)
        self._refresh()
        if r is not None:
            self.executing = False
            self.stopped = r
        return 0

    cdef int _served_fast(self, int which, int64_t t0) except -1:
        """Count a command the C path answered (``which`` indexes FAST_COMMANDS; ``t0`` >= 0: timed)."""
        cdef Metrics m = self.metrics
        self.fast_count += 1
        if m is not None:
            m.count(self._slots[which], 0)
            if t0 >= 0:
                m.observe_ns(self._slots[which], mono_ns() - t0)
        return 0

    cdef Py_ssize_t _quick(self, const uint8_t *p, Py_ssize_t n) except -1:
        """``*2\\r\\n$3\\r\\nGET\\r\\n$<len>\\r\\n<key>\\r\\n`` whole in the read buffer: served from
        there, with no argument list and no command-name object (what redis-benchmark and every
        client send for GET). Anything else, or a GET the C path does not answer, returns 0 and
        takes the general path, which sees the same bytes."""
        cdef Py_ssize_t i = 14, klen = 0, end
        cdef int64_t t0 = -1
        cdef Metrics m = self.metrics
        if n < 19 or not self.executing or not self.fast or not self._ns_ok:
            return 0
        if (p[0] != b'*' or p[1] != b'2' or p[2] != b'\r' or p[3] != b'\n' or p[4] != b'$' or p[5] != b'3'
                or p[6] != b'\r' or p[7] != b'\n' or (p[8] | 0x20) != b'g' or (p[9] | 0x20) != b'e'
                or (p[10] | 0x20) != b't' or p[11] != b'\r' or p[12] != b'\n' or p[13] != b'$'):
            return 0
        while i < n and i < 14 + 5 and b'0' <= p[i] <= b'9':  # at most 5 digits: MAX_KEY is smaller
            klen = klen * 10 + (p[i] - 48)  # 48: '0'
            i += 1
        if i == 14 or (p[14] == b'0' and i > 15) or i + 2 > n or p[i] != b'\r' or p[i + 1] != b'\n':
            return 0
        end = i + 2 + klen + 2  # Redis skips the two bytes after a bulk unchecked; so does the parser
        if end > n or klen > MAX_KEY:
            return 0
        if self.out_cap and PyByteArray_GET_SIZE(self.out) > self.out_cap:
            return 0  # _emit stops the run
        # served from the read buffer: no key object unless the key is absent (the type check)
        if self.served is not None and not self._serves_at(<const uint8_t *>p + i + 2, klen):
            return 0
        if m is not None and m.sample():
            t0 = mono_ns()
        if not self._get(<const char *>p + i + 2, klen, None):
            return 0  # WRONGTYPE: nothing was answered or changed
        self._served_fast(0, t0)
        return end

    cdef bint _serves(self, object key) except -1:
        """A cluster member serves ``key``'s slot here (RESP routes by the key alone, as Redis Cluster)."""
        if type(key) is not bytes:
            return False
        return self._serves_at(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

    cdef bint _serves_at(self, const uint8_t *k, Py_ssize_t klen) noexcept:
        cdef int slot = key_slot(NULL, 0, k, klen)
        return slot >= 0 and (<const uint8_t *>PyByteArray_AS_STRING(self.served))[slot] != 0

    cdef bint _holds(self, bytes key, bint string, bint list_, bint stream) except -1:
        """``key`` holds one of the flagged types: the WRONGTYPE check of a command on the
        other one (RespSession.other_type). Cheapest lookups first."""
        if list_:
            sp = self._lists.get(self._ns)
            if sp and key in sp:
                return True
        if string and find_live(self.kv, self._ns, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), self._now) != NULL:
            return True
        return stream and self._is_stream(key)

    cdef bint _push(self, list args, Py_ssize_t argc, bint left) except -1:
        """``LPUSH``/``RPUSH key value ...``: ``_push`` of flo_server.resp and the ``l.push`` applier."""
        cdef bytes key = args[1]
        cdef Py_ssize_t have = 0
        if self._log is None or PyBytes_GET_SIZE(key) > MAX_KEY:
            return False
        sp = self._lists.get(self._ns)
        d = sp.get(key) if sp is not None else None
        if d is None:
            if self._holds(key, True, False, True):
                return False  # WRONGTYPE
        else:
            have = len(d)
        values = args[2:]
        if have + (argc - 2) > MAX_LIST_LEN:
            return False
        log_list_push(self._log, self._rec, <const uint8_t *>PyBytes_AS_STRING(self._nsb),
                      PyBytes_GET_SIZE(self._nsb), key, values, left, &self._logged)
        if d is None:
            if sp is None:
                sp = self._lists[self._ns] = {}
            d = sp[key] = deque()
        if left:
            d.extendleft(values)  # LPUSH a b c -> c b a
        else:
            d.extend(values)
        if self.waiting:
            self.srv.waiters.notify((LIST_WAKE, self._ns, key), argc - 2)
        _header(self.out, b':', len(d))
        return True

    cdef bint _pop(self, bytes key, bint left) except -1:
        """``LPOP``/``RPOP key`` of a list that exists: ``_pop`` of flo_server.resp and the ``l.pop`` applier."""
        cdef bytes v
        if self._log is None:
            return False
        sp = self._lists.get(self._ns)
        d = sp.get(key) if sp is not None else None
        if d is None:
            return False  # nil or WRONGTYPE: the Python command answers
        log_list_pop(self._log, self._rec, <const uint8_t *>PyBytes_AS_STRING(self._nsb),
                     PyBytes_GET_SIZE(self._nsb), key, 1, left, &self._logged)
        v = d.popleft() if left else d.pop()
        if not d:
            del sp[key]  # an empty list does not exist
        _bulk(self.out, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
        return True

    cdef bint _is_stream(self, bytes key) except -1:
        if self._streams is None:
            return False
        d = self._streams.get(self._ns)
        if not d:
            return False
        try:
            return key.decode("utf-8") in d
        except UnicodeDecodeError:
            return False

    cdef bint _get(self, const char *k, Py_ssize_t klen, object key) except -1:
        """``GET`` of ``k[:klen]``, answered from the stored version; ``key``: its bytes or None
        (made only for the type check of an absent key)."""
        cdef const kv_ent *e = find_live(self.kv, self._ns, k, klen, self._now)
        if e != NULL:
            _bulk(self.out, kv_val(e), e.vlen)
            return True
        if key is None:
            key = PyBytes_FromStringAndSize(k, klen)
        if self._holds(key, False, True, True):
            return False  # WRONGTYPE: the Python command words it
        if self._resp3:
            _line(self.out, b'_', b"", 0)
        else:
            _line(self.out, b'$', b"-1", 2)
        return True

    cdef bint _can_write(self) noexcept:
        # a disk journal that stopped taking writes gives no raw writer: the Python path refuses
        return self._log is not None or not self.durable

    cdef bint _set(self, bytes key, bytes value) except -1:
        cdef Namespace sp
        cdef const kv_ent *old
        if PyBytes_GET_SIZE(key) > MAX_KEY or PyBytes_GET_SIZE(value) > MAX_KV_VALUE or not self._can_write():
            return False
        sp = self.kv.spaces.get(self._ns)
        old = find_stored(sp, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        # a live string is what RESP sees at the key (TYPE answers "string" first): only a key
        # with no live string needs the list/stream check
        if (old == NULL or entry_dead(old, self._now)) and self._holds(key, False, True, True):
            return False  # SET replaces a list/stream: Python does that
        self._write(key, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), 0, sp)  # plain SET clears the TTL
        _line(self.out, b'+', b"OK", 2)
        return True

    cdef bint _incr(self, bytes key) except -1:
        cdef long long current = 0
        cdef int64_t expires_at = 0
        cdef char text[COUNTER_TEXT_MAX]
        cdef Namespace sp
        cdef const kv_ent *old
        if PyBytes_GET_SIZE(key) > MAX_KEY or not self._can_write():
            return False
        sp = self.kv.spaces.get(self._ns)
        old = live_in(sp, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), self._now)
        if old != NULL:
            expires_at = old.expires_at  # INCR keeps the TTL
        elif self._holds(key, False, True, True):
            return False
        # not a counter or overflow: the Python command answers the error (flo_core/counters.pxd)
        if counter_add(<const uint8_t *>kv_val(old) if old != NULL else NULL,
                       old.vlen if old != NULL else 0, old != NULL, 1, &current) != COUNTER_OK:
            return False
        self._write(key, text, counter_text(text, current), expires_at, sp)
        _header(self.out, b':', current)
        return True

    cdef bint _xadd(self, list args, Py_ssize_t argc) except -1:
        """``XADD key * field value ...``: the Python ``cmd_xadd`` for its common case, inline.

        Anything else - options, an explicit id, a key holding a string or a list, a field
        that is not UTF-8 (only ``payload`` may be binary), a journal without a raw writer - is
        left to the Python command."""
        cdef Py_ssize_t i, hc = 0, total, pos, kl, vl
        cdef bytes key, star, f, v, payload = b""
        cdef uint64_t ts, seq
        cdef uint8_t *w
        if (argc - 3) % 2 or self._log is None or self._streams_obj is None:
            return False
        key = args[1]
        star = args[2]
        if PyBytes_GET_SIZE(star) != 1 or PyBytes_AS_STRING(star)[0] != b'*' or PyBytes_GET_SIZE(key) > MAX_KEY:
            return False
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            return False  # the Python command words the refusal
        d = self._streams.get(self._ns)
        so = d.get(name) if d is not None else None
        if so is None:
            if self._holds(key, True, True, False):
                return False  # WRONGTYPE
        elif type(so) is not Stream:
            return False
        # pass 1: which field is the payload (cmd_xadd's rule), which are headers, and the size
        total = 4 + 2
        headers = []  # argv indices of the header fields
        for i in range(3, argc, 2):
            f = args[i]
            v = args[i + 1]
            if PyBytes_GET_SIZE(payload) == 0 and f == b"payload":
                payload = v
                continue
            kl = PyBytes_GET_SIZE(f)
            vl = PyBytes_GET_SIZE(v)
            if kl > 65535 or vl > 65535 or not utf8_ok(<const uint8_t *>PyBytes_AS_STRING(f), kl) or not utf8_ok(<const uint8_t *>PyBytes_AS_STRING(v), vl):
                return False
            headers.append(i)
            total += 4 + kl + vl
        hc = len(headers)
        if hc > XADD_MAX_HEADERS or PyBytes_GET_SIZE(payload) > MAX_KV_VALUE:
            return False
        total += PyBytes_GET_SIZE(payload)
        # pass 2: [payload bytes32][hc u16] hc x ([k str16][v str16])
        if self._xrec is None or PyByteArray_GET_SIZE(self._xrec) < total:
            self._xrec = bytearray(total if total > 256 else 256)
        w = <uint8_t *>PyByteArray_AS_STRING(self._xrec)
        st32(w, <uint32_t>PyBytes_GET_SIZE(payload))
        memcpy(w + 4, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
        pos = 4 + PyBytes_GET_SIZE(payload)
        st16(w + pos, <uint16_t>hc)
        pos += 2
        for i in headers:
            f = args[i]
            v = args[i + 1]
            kl = PyBytes_GET_SIZE(f)
            vl = PyBytes_GET_SIZE(v)
            st16(w + pos, <uint16_t>kl)
            memcpy(w + pos + 2, PyBytes_AS_STRING(f), kl)
            pos += 2 + kl
            st16(w + pos, <uint16_t>vl)
            memcpy(w + pos + 2, PyBytes_AS_STRING(v), vl)
            pos += 2 + vl
        next_id_of(<Stream>so, <uint64_t>self._now, 1, &ts, &seq)
        if so is not None and ((<Stream>so).last_ts or (<Stream>so).last_seq) and not (
                ts > (<Stream>so).last_ts or (ts == (<Stream>so).last_ts and seq > (<Stream>so).last_seq)):
            return False  # ids used up: cmd_xadd refuses; nothing may be logged
        # srv.write("s.append", now, ns, name, ts, seq, [[payload, headers or None]]), then the applier
        log_stream_append(self._log, self._rec, self._now,
                          <const uint8_t *>PyBytes_AS_STRING(self._nsb), PyBytes_GET_SIZE(self._nsb),
                          <const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                          ts, seq, 1, w, pos, &self._logged)
        if so is None:
            so = self._streams_obj.get_or_create(self._ns, name, self._now)
        (<Stream>so).append_wire(<uint64_t>self._now, ts, seq, 1, w, pos)
        if self.waiting:
            self.srv.waiters.notify((STREAM_WAKE, self._ns, name), 0)
        idb = b"%d-%d" % (ts, seq)
        _bulk(self.out, PyBytes_AS_STRING(idb), PyBytes_GET_SIZE(idb))
        return True

    cdef uint64_t _write(self, bytes key, const char *v, Py_ssize_t vlen, int64_t expires_at, Namespace sp) except 0:
        """The ``kv.set`` applier, inline: log, store, wake. Returns the new version.

        ``sp``: the namespace as the caller looked it up (``kv.spaces.get``; KVStore.put)."""
        cdef uint64_t lsn
        if self._log is not None:
            lsn = log_kv_set(self._log, self._rec, self._now,
                             <const uint8_t *>PyBytes_AS_STRING(self._nsb), PyBytes_GET_SIZE(self._nsb),
                             <const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                             <const uint8_t *>v, vlen, expires_at, &self._logged)
        else:
            lsn = self.journal.append(KIND_SET, (self._now, self._ns, key, PyBytes_FromStringAndSize(v, vlen),
                                                 expires_at))
            sp = self.kv.spaces.get(self._ns)  # Python ran: look again
        self.kv.put(self._ns, sp, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), v, vlen, lsn, expires_at,
                    self._now, key)
        if self.waiting:
            self.srv.waiters.notify(("kv", self._ns, key), 0)
        return lsn


__all__ = ["RespCore"]
