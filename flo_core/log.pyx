# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# distutils: libraries = z
"""The append-only log file: segments, record framing, CRC checks, torn tails.

Layout: ``DIR/NNNNNNNNNNNNNNNNNNNN.seg`` (20 digits = the LSN of the segment's
first record). A segment is a run of records::

    [len u32][crc32 u32][lsn u64][kind u8][payload: len bytes]     (little endian)

and the open one is followed by zeros: the writer keeps up to 1 MiB of
zero-filled room ahead of its data and writes records into it with ``pwrite``,
so an fdatasync has no file size to commit (see ``LogWriter._zero_ahead``).
Readers stop at the zeros; rotation and a clean close cut them off.

``crc32`` (zlib) covers ``len``, ``lsn``, ``kind`` and the payload. LSNs rise
strictly through the whole log (gaps are allowed: after a snapshot newer than
the log's tail the next record takes the snapshot's LSN + 1).

Why Cython: every write of the server passes :meth:`LogWriter.append` (a copy
into one pending buffer, no syscall) and start-up reads every record through
:class:`LogReader`; both touch bytes in C, and the two syscalls (``write``,
``fdatasync``) run with the GIL released so ``sync()`` can run in a worker
thread while the event loop keeps serving.

The syncer: :meth:`LogWriter.start_syncer` starts one C thread that never
takes the GIL. The loop asks it for a ``fdatasync`` with
:meth:`LogWriter.request_sync` (a mutex and a condition signal, no Python
objects); when the fdatasync returns the thread writes to an eventfd that the
loop watches, and the loop takes the result with :meth:`LogWriter.collect`.
Requests that arrive while one fdatasync runs are served by the next one
(group commit). A ThreadPoolExecutor did the same job before, but each round
trip cost several futex waits and GIL hand-offs, which is most of what
``fsync=always`` spends besides the disk.

Threading contract: ``append``, ``flush``, ``request_sync``, ``collect`` and
``close`` from one thread (the event loop); ``sync`` from at most one other
thread at a time.

Example:
    >>> import tempfile
    >>> from flo_core.log import LogWriter, LogReader
    >>> d = tempfile.mkdtemp()
    >>> w = LogWriter(d)
    >>> w.append(1, b"hello"), w.append(1, b"world")
    (1, 2)
    >>> w.flush(), w.sync()
    (44, 2)
    >>> w.close()
    >>> [(lsn, payload) for lsn, kind, payload in LogReader(d)]
    [(1, b'hello'), (2, b'world')]
"""

import os
import re

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset, strerror
from libc.errno cimport errno, EINTR
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from posix.unistd cimport write as c_write, fdatasync, ftruncate, close as c_close

from flo_core.wirefmt cimport crc32, ld32, ld64, st32, st64
from flo_core.metrics cimport mono_ns

from posix.unistd cimport read as c_read, pwrite
from posix.types cimport off_t

cdef uint8_t _ZEROS[65536]  # zero-initialised (static storage): the source of _zero_ahead's writes


# --- test hooks: crash points and injected I/O errors ------------------------------
# flo_server/faults.py arms them from FLO_CRASHPOINT / FLO_FAULT at start-up and lists
# every point in its POINTS / FAULTS tables. Disarmed, each site costs one test of
# _hooks_on, a C global that is false.

cdef extern from "<signal.h>" nogil:
    int kill(int pid, int sig)
    enum: SIGKILL

cdef extern from "<unistd.h>" nogil:
    int getpid()

cdef extern from "<fcntl.h>" nogil:
    int fallocate(int fd, int mode, off_t offset, off_t length)

cdef enum:
    CP_WRITE_BEFORE = 0      # group commit: records pending, nothing of them written
    CP_WRITE_TORN = 1        # half of the pending bytes written: a torn record in the file
    CP_WRITE_AFTER = 2       # written (page cache), no fdatasync yet
    CP_FSYNC_AFTER = 3       # the syncer's fdatasync returned, the loop not told (no answer sent)
    CP_ROLL_BEFORE_SYNC = 4  # rotation: the old segment not yet cut and synced
    CP_ROLL_AFTER_SYNC = 5   # the old segment synced and closed, the new one not created
    CP_ROLL_AFTER_CREATE = 6 # the new segment created, the directory not fsynced
    CP_ROLL_AFTER_DIRSYNC = 7  # the new segment durable, nothing written to it
    CP_TRUNCATE_MID = 8      # dropping segments below a snapshot: one unlinked, the rest not
    CP_OPEN_AFTER_CUT = 9    # start-up cut the open segment's tail (ftruncate), not yet fsynced
    CP_CLOSE_AFTER_CUT = 10  # clean close cut the zero room, not yet fsynced
    CP_REWRITE_AFTER = 11    # after a failed fdatasync: the unsynced bytes written again, not yet synced
    N_CRASH_POINTS = 12
    FP_WRITE = 0             # the pwrite of records (flush, and the rewrite after a failed fsync)
    FP_FSYNC = 1             # every fdatasync of the open segment
    FP_ROLL = 2              # rotation's cut + fdatasync of the old segment
    FP_ROLL_CREATE = 3       # rotation's creation of the new segment
    N_FAULT_POINTS = 4

#: Crash points in this module, by id (flo_server.faults.POINTS names each one).
CRASH_POINTS = ("log.write.before", "log.write.torn", "log.write.after", "log.fsync.after",
                "log.roll.before_sync", "log.roll.after_sync", "log.roll.after_create", "log.roll.after_dirsync",
                "log.truncate.mid", "log.open.after_cut", "log.close.after_cut", "log.rewrite.after")
#: Fault (injected errno) points in this module, by id (flo_server.faults.FAULTS).
FAULT_POINTS = ("log.write", "log.fsync", "log.roll", "log.roll.create")

cdef bint _hooks_on = False
cdef int _crash_id = -1
cdef uint64_t _crash_at = 0, _crash_hits = 0
cdef int _server_pid = 0
cdef char _crash_msg[256]
cdef Py_ssize_t _crash_msg_len = 0
cdef int _fault_errno[N_FAULT_POINTS]
cdef uint64_t _fault_from[N_FAULT_POINTS]
cdef uint64_t _fault_until[N_FAULT_POINTS]
cdef uint64_t _fault_hits[N_FAULT_POINTS]


cdef void _die() noexcept nogil:
    """Die at once, as a power cut would stop us: no flush, no atexit, no unwinding."""
    c_write(2, _crash_msg, _crash_msg_len)
    if getpid() != _server_pid:  # a forked child (snapshot): the server goes with it
        kill(_server_pid, SIGKILL)
    kill(getpid(), SIGKILL)


cdef bint _crash_due(int cp) noexcept nogil:
    """This hit of ``cp`` is the armed crash point's N-th (each point is hit from one thread only)."""
    global _crash_hits
    if cp != _crash_id:
        return False
    _crash_hits += 1
    return _crash_hits == _crash_at


cdef inline void _crash_point(int cp) noexcept nogil:
    if _crash_due(cp):
        _die()


cdef int _fault(int fp) noexcept nogil:
    """The errno to inject at this hit of ``fp`` (0 = none)."""
    _fault_hits[fp] += 1
    if _fault_errno[fp] and _fault_from[fp] <= _fault_hits[fp] < _fault_until[fp]:
        return _fault_errno[fp]
    return 0


def arm_crash_point(str name, uint64_t nth, int server_pid):
    """Die at the ``nth`` hit of crash point ``name`` (a test hook: flo_server.faults calls it at start)."""
    global _hooks_on, _crash_id, _crash_at, _crash_hits, _server_pid, _crash_msg_len
    cdef bytes msg = (f"flo-server: crash point {name} hit {nth}: dying now (FLO_CRASHPOINT test hook)\n"
                      .encode()[:255])
    _crash_id = CRASH_POINTS.index(name)
    _crash_at = nth
    _crash_hits = 0
    _server_pid = server_pid
    memcpy(_crash_msg, PyBytes_AS_STRING(msg), len(msg))
    _crash_msg_len = len(msg)
    _hooks_on = True


def arm_fault(str name, int err, uint64_t first, uint64_t times, int server_pid):
    """Fail hits ``first .. first + times - 1`` of fault point ``name`` with ``err`` (a test hook)."""
    global _hooks_on, _server_pid
    cdef int fp = FAULT_POINTS.index(name)
    _fault_errno[fp] = err
    _fault_from[fp] = first
    _fault_until[fp] = first + times
    _fault_hits[fp] = 0
    _server_pid = server_pid
    _hooks_on = True


def crash_point_hits():
    """How often the armed crash point was reached (0 when none is armed)."""
    return _crash_hits


cdef int64_t[15] _FSYNC_BOUNDS_NS = [1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000,
                                     2500000, 5000000, 10000000, 100000000, 1000000000]  # metrics.BUCKET_BOUNDS


cdef int _timed_fdatasync(Syncer *ss, int fd) noexcept nogil:
    """fdatasync, counted and timed into the syncer's histogram (for /metrics); 0 or the errno."""
    cdef int64_t t0 = mono_ns()
    cdef int rc = fdatasync(fd)
    if rc != 0:
        rc = errno
    elif _hooks_on:
        rc = _fault(FP_FSYNC)
    cdef int64_t ns = mono_ns() - t0
    cdef int b = 0
    while b < 15 and ns > _FSYNC_BOUNDS_NS[b]:
        b += 1
    pthread_mutex_lock(&ss.mu)
    ss.fsyncs += 1
    ss.fsync_ns += <uint64_t>ns
    ss.fsync_hist[b] += 1
    pthread_mutex_unlock(&ss.mu)
    return rc


cdef void *_syncer_main(void *arg) noexcept nogil:
    cdef Syncer *ss = <Syncer *>arg
    cdef uint64_t lsn, size, gen, one = 1
    cdef int fd, e
    pthread_mutex_lock(&ss.mu)
    while True:
        while not ss.want and not ss.stop:
            pthread_cond_wait(&ss.cv, &ss.mu)
        if ss.stop:
            break
        ss.want = False
        pthread_mutex_unlock(&ss.mu)
        pthread_mutex_lock(&ss.fd_mu)
        pthread_mutex_lock(&ss.mu)
        # Everything flushed up to req_lsn is in this fd, or in an older segment that
        # rotation already synced before switching fd.
        lsn = ss.req_lsn
        size = ss.req_size
        gen = ss.req_gen
        fd = ss.fd
        pthread_mutex_unlock(&ss.mu)
        e = _timed_fdatasync(ss, fd) if fd >= 0 else 0
        pthread_mutex_unlock(&ss.fd_mu)
        if e == 0 and _hooks_on:
            _crash_point(CP_FSYNC_AFTER)
        pthread_mutex_lock(&ss.mu)
        if e != 0:
            ss.err = e
        elif lsn > ss.done_lsn:
            ss.done_lsn = lsn
            ss.done_size = size
            ss.done_gen = gen
        c_write(ss.efd, &one, 8)
    pthread_mutex_unlock(&ss.mu)
    return NULL

from flo_core.errors import FloError

cdef enum:
    HDR = 17
    ROTATE_UNSYNCED_MAX = 4 * 1024 * 1024  # rotate once at most this much of the old segment is unsynced
    OK = 0
    ERR_EOF_HEADER = 1
    ERR_EOF_PAYLOAD = 2
    ERR_LENGTH = 3
    ERR_CRC = 4
    ERR_LSN = 5
    ERR_KIND = 6
    DAMAGE_END = 0
    DAMAGE_TORN = 1
    DAMAGE_CORRUPT = 2
    PAGE = 4096
    ZERO_AHEAD = 1024 * 1024  # zero-filled room the writer keeps ahead of its data (at most segment_bytes)

#: Largest payload of one record (the frame limit is far below this).
MAX_PAYLOAD = 256 * 1024 * 1024
cdef uint32_t _MAX_PAYLOAD = MAX_PAYLOAD
#: Default rotation size of a segment.
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
#: Size of a record's header.
RECORD_HEADER = HDR

_REASONS = {
    ERR_EOF_HEADER: "record header cut short by the end of the file",
    ERR_EOF_PAYLOAD: "record payload cut short by the end of the file",
    ERR_LENGTH: "record length out of range",
    ERR_CRC: "record CRC mismatch",
    ERR_LSN: "record LSN does not rise",
    ERR_KIND: "record kind 0",
}
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")


class LogCorruption(FloError):
    """A damaged record that is not a torn tail: valid records follow it.

    Attributes: ``path`` (segment file), ``offset`` (byte offset of the bad
    record in that file), ``reason`` (what is wrong).
    """

    def __init__(self, path, offset, reason):
        super().__init__(f"log corrupt in {path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


def segment_name(lsn):
    """File name of the segment whose first record has ``lsn``.

    >>> segment_name(42)
    '00000000000000000042.seg'
    """
    return f"{lsn:020d}.seg"


def list_segments(directory):
    """``[(first_lsn, path)]`` of the segment files in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(directory, name)))
    out.sort()
    return out


def fsync_dir(directory):
    """Make file creations, renames and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_log(directory, path, offset):
    """Cut the log at ``path``/``offset``: truncate that file, delete later segments.

    Returns the paths removed. Every record from the cut on is lost; this is
    the operator's explicit choice after a :class:`LogCorruption`.
    """
    removed = []
    seen = False
    for _, seg in list_segments(directory):
        if seen:
            os.unlink(seg)
            removed.append(seg)
        elif os.path.samefile(seg, path):
            seen = True
    if not seen:
        raise FileNotFoundError(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)
    return removed


# --- byte helpers (little-endian loads/stores come from wirefmt.pxd) -----------

cdef inline uint32_t record_crc(const uint8_t *h, const uint8_t *payload, uint32_t n) noexcept nogil:
    cdef unsigned long c = crc32(0, h, 4)          # len
    c = crc32(c, h + 8, 9)                          # lsn, kind
    if n:
        c = crc32(c, payload, n)
    return <uint32_t>c


cdef int parse_at(const uint8_t *p, Py_ssize_t n, Py_ssize_t pos, uint64_t prev_lsn,
                  uint64_t *lsn, uint32_t *plen) noexcept nogil:
    """Check the record at ``pos``; OK or the first thing wrong with it."""
    cdef const uint8_t *h
    cdef uint32_t length
    if n - pos < HDR:
        return ERR_EOF_HEADER
    h = p + pos
    length = ld32(h)
    if length > _MAX_PAYLOAD:
        return ERR_LENGTH
    if <Py_ssize_t>(n - pos - HDR) < <Py_ssize_t>length:
        return ERR_EOF_PAYLOAD
    if record_crc(h, h + HDR, length) != ld32(h + 4):
        return ERR_CRC
    if ld64(h + 8) <= prev_lsn:
        return ERR_LSN
    if h[16] == 0:
        return ERR_KIND
    lsn[0] = ld64(h + 8)
    plen[0] = length
    return OK


cdef Py_ssize_t next_valid_record(const uint8_t *p, Py_ssize_t n, Py_ssize_t start, uint64_t prev_lsn) noexcept nogil:
    """Offset of the first intact record (rising LSN) at or after ``start``, or -1.

    Cheap checks first; the CRC runs only on plausible candidates.
    """
    cdef Py_ssize_t q
    cdef const uint8_t *h
    cdef uint32_t length
    cdef uint64_t lsn
    q = start
    while n - q >= HDR:
        h = p + q
        length = ld32(h)
        lsn = ld64(h + 8)
        if (length <= _MAX_PAYLOAD and <Py_ssize_t>(n - q - HDR) >= <Py_ssize_t>length
                and lsn > prev_lsn and lsn - prev_lsn < (<uint64_t>1 << 40) and h[16] != 0
                and record_crc(h, h + HDR, length) == ld32(h + 4)):
            return q
        q += 1
    return -1


cdef bint _zeros(const uint8_t *p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while a < b:
        if p[a] != 0:
            return False
        a += 1
    return True


cdef int damage_at(const uint8_t *p, Py_ssize_t n, Py_ssize_t pos, uint64_t prev_lsn) noexcept nogil:
    """What a record that does not parse at ``pos`` means.

    * DAMAGE_END: only zero bytes follow - the zero-filled room the writer keeps
      ahead of its data (never written): the segment simply ends here.
    * DAMAGE_TORN: nothing intact follows, or an all-zero page (aligned 4 KiB)
      lies between ``pos`` and the next intact record. A page the writer wrote
      before later records can only still read as zeros if no fdatasync
      completed after it (a power loss with pages written back out of order), so
      none of those later records was acknowledged as durable: cut here.
    * DAMAGE_CORRUPT: intact records follow damage that is not an unwritten page.
    """
    cdef Py_ssize_t q, page
    if _zeros(p, pos, n):
        return DAMAGE_END
    q = next_valid_record(p, n, pos + 1, prev_lsn)
    if q < 0:
        return DAMAGE_TORN
    page = (pos + PAGE - 1) // PAGE * PAGE
    while page + PAGE <= q:
        if _zeros(p, page, page + PAGE):
            return DAMAGE_TORN
        page += PAGE
    return DAMAGE_CORRUPT


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


# --- reading -----------------------------------------------------------------

cdef class LogReader:
    """Iterate ``(lsn, kind, payload)`` over the log from ``from_lsn`` on, checking every CRC.

    A damaged tail of the newest segment (nothing intact after it) ends the
    iteration and is reported in :attr:`torn` as ``(path, offset, reason)``;
    damage anywhere else raises :class:`LogCorruption`. After the iteration,
    :attr:`last_lsn` is the last intact LSN seen; while iterating,
    :attr:`path`/:attr:`offset` locate the record just returned.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> list(LogReader(d))
    []
    """

    def __init__(self, directory, from_lsn=1):
        self.directory = directory
        self._segments = list_segments(directory)
        self._seg_index = 0
        self._buf = None
        self._pos = 0
        self._prev_lsn = 0
        self._from_lsn = from_lsn
        self.path = None
        self.offset = 0
        self.last_lsn = 0
        self.first_lsn = 0
        self.records = 0
        self.bytes_read = 0
        self.torn = None
        self.done = False

    @property
    def segments(self):
        """``[(first_lsn, path)]`` of the segments this reader walks."""
        return list(self._segments)

    def __iter__(self):
        return self

    cdef bint _open_next(self) except -1:
        cdef Py_ssize_t count = len(self._segments)
        # Skip segments wholly below from_lsn: every record of segment i is
        # below the first LSN of segment i + 1.
        while self._seg_index + 1 < count and self._segments[self._seg_index + 1][0] <= self._from_lsn:
            self._seg_index += 1
        if self._seg_index >= count:
            return False
        base, path = self._segments[self._seg_index]
        self._seg_index += 1
        self._seg_base = base
        self._seg_limit = self._segments[self._seg_index][0] if self._seg_index < count else 0
        self._buf = _read_file(path)
        self.bytes_read += PyBytes_GET_SIZE(self._buf)
        self._pos = 0
        self.path = path
        return True

    def __next__(self):
        cdef const uint8_t *p
        cdef Py_ssize_t n, at
        cdef uint64_t lsn = 0
        cdef uint32_t plen = 0
        cdef int err, damage
        cdef uint8_t kind
        while True:
            if self.done:
                raise StopIteration
            if self._buf is None:
                if not self._open_next():
                    self.done = True
                    raise StopIteration
            p = <const uint8_t *>PyBytes_AS_STRING(self._buf)
            n = PyBytes_GET_SIZE(self._buf)
            if self._pos >= n:
                self._buf = None
                continue
            err = parse_at(p, n, self._pos, self._prev_lsn, &lsn, &plen)
            if err != OK:
                at = self._pos
                damage = damage_at(p, n, at, self._prev_lsn)
                if damage == DAMAGE_END:
                    self._buf = None  # the zero-filled room after the last record
                    continue
                if self._seg_index >= len(self._segments) and damage == DAMAGE_TORN:
                    self.torn = (self.path, at, _REASONS[err])
                    self._buf = None
                    self.done = True
                    raise StopIteration
                raise LogCorruption(self.path, at, _REASONS[err])
            if lsn < self._seg_base or (self._seg_limit and lsn >= self._seg_limit):
                raise LogCorruption(self.path, self._pos,
                                    f"record LSN {lsn} outside its segment's range")
            at = self._pos
            kind = p[at + 16]
            self._pos = at + HDR + plen
            self._prev_lsn = lsn
            self.last_lsn = lsn
            if lsn < self._from_lsn:
                continue
            if self.first_lsn == 0:
                self.first_lsn = lsn
            self.records += 1
            self.offset = at
            return (lsn, kind, PyBytes_FromStringAndSize(<const char *>p + at + HDR, plen))


cdef int _pwrite_all(int fd, const uint8_t *p, Py_ssize_t n, off_t at, Py_ssize_t *done) noexcept nogil:
    """Write ``p[done:n]`` at ``at + done``, through short writes and EINTR; 0 or the errno (``done`` says how far)."""
    cdef ssize_t r
    while done[0] < n:
        r = pwrite(fd, p + done[0], n - done[0], at + done[0])
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        done[0] += r
    return 0


def frame_record(uint64_t lsn, int kind, bytes payload):
    """One record framed as :class:`LogWriter` frames it (header + payload), e.g. to ship it to a replica."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    out = PyBytes_FromStringAndSize(NULL, HDR + n)
    cdef uint8_t *h = <uint8_t *>PyBytes_AS_STRING(out)
    st32(h, <uint32_t>n)
    st64(h + 8, lsn)
    h[16] = <uint8_t>kind
    if n:
        memcpy(h + HDR, PyBytes_AS_STRING(payload), n)
    st32(h + 4, record_crc(h, h + HDR, <uint32_t>n))
    return out


# --- writing -----------------------------------------------------------------

cdef class LogWriter:
    """Append records to the newest segment; rotate by size.

    ``append`` only copies into a pending buffer and returns the record's LSN;
    ``flush`` writes everything pending with one ``write`` (GIL released);
    ``sync`` makes everything flushed durable with one ``fdatasync`` (GIL
    released, may run in a worker thread) and returns the LSN it covers.

    Opening scans the newest segment: a torn tail is cut off (see
    :attr:`truncated`), damage followed by intact records raises
    :class:`LogCorruption` unless ``repair`` is true (then the log is cut
    there too). ``next_lsn`` is a floor for the next LSN (a snapshot's LSN + 1).
    """

    def __cinit__(self):
        self._fd = -1
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._closed = True
        self._gen = 0
        self._syncing = False
        self.zero_fill = True
        self._ss = <Syncer *>malloc(sizeof(Syncer))
        if self._ss == NULL:
            raise MemoryError()
        memset(self._ss, 0, sizeof(Syncer))
        self._ss.fd = -1
        self._ss.efd = -1
        pthread_mutex_init(&self._ss.mu, NULL)
        pthread_mutex_init(&self._ss.fd_mu, NULL)
        pthread_cond_init(&self._ss.cv, NULL)

    def __init__(self, directory, next_lsn=1, segment_bytes=DEFAULT_SEGMENT_BYTES, bint repair=False):
        cdef const uint8_t *p
        cdef Py_ssize_t n, pos = 0
        cdef uint64_t prev = 0, lsn = 0
        cdef uint32_t plen = 0
        cdef int err, damage
        if next_lsn < 1:
            raise ValueError("next_lsn must be >= 1")
        if segment_bytes < 4096:
            raise ValueError("segment_bytes must be >= 4096")
        self.directory = os.fspath(directory)
        self.segment_bytes = segment_bytes
        self.truncated = None
        self.bytes_appended = 0
        self.accepting = True
        self.flush_scheduled = False
        self.holders = []
        os.makedirs(self.directory, exist_ok=True)
        segs = list_segments(self.directory)
        if not segs:
            self.last_lsn = next_lsn - 1
            self._open_segment(next_lsn, True)
        else:
            base, path = segs[len(segs) - 1]
            data = _read_file(path)
            p = <const uint8_t *>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
            damage = DAMAGE_END
            while pos < n:
                err = parse_at(p, n, pos, prev, &lsn, &plen)
                if err != OK:
                    damage = damage_at(p, n, pos, prev)
                    if damage == DAMAGE_CORRUPT and not repair:
                        raise LogCorruption(path, pos, _REASONS[err])
                    break
                if lsn < base:
                    raise LogCorruption(path, pos, f"record LSN {lsn} outside its segment's range")
                prev = lsn
                pos += HDR + plen
            if pos < n:
                if damage != DAMAGE_END:  # zero-filled room is not news; anything else is
                    self.truncated = (path, pos, n - pos)
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, pos)
                    if _hooks_on:
                        _crash_point(CP_OPEN_AFTER_CUT)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.last_lsn = max(prev, base - 1, next_lsn - 1)
            self._open_segment(base, False)
            self.segment_size = pos
            self._zeroed = pos  # the file ends at its last record now
            # Whatever an earlier process wrote may sit only in the page cache.
            os.fsync(self._fd)
            self.synced_size = pos
        self.flushed_lsn = self.last_lsn
        self.synced_lsn = self.last_lsn
        self._closed = False

    def __dealloc__(self):
        self._stop_syncer()
        if self._buf != NULL:
            free(self._buf)
            self._buf = NULL
        if self._fd >= 0:
            c_close(self._fd)
            self._fd = -1
        if self._ss != NULL:
            pthread_mutex_destroy(&self._ss.mu)
            pthread_mutex_destroy(&self._ss.fd_mu)
            pthread_cond_destroy(&self._ss.cv)
            free(self._ss)
            self._ss = NULL

    @property
    def pending_bytes(self):
        """Bytes appended but not yet flushed."""
        return self._len

    @property
    def closed(self):
        return self._closed

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t want = self._len + extra
        cdef Py_ssize_t cap = self._cap if self._cap else 65536
        cdef uint8_t *nb
        if want <= self._cap:
            return 0
        while cap < want:
            cap *= 2
        nb = <uint8_t *>realloc(self._buf, cap)
        if nb == NULL:
            raise MemoryError()
        self._buf = nb
        self._cap = cap
        return 0

    cdef int _open_segment(self, uint64_t first_lsn, bint create) except -1:
        path = os.path.join(self.directory, segment_name(first_lsn))
        rotating = self.segment_path is not None  # a segment was open before: this is a rotation
        # Not O_APPEND: records are written with pwrite into zero-filled room (flush)
        flags = os.O_WRONLY | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT  # not O_EXCL: a rotation that failed after creating it may retry
        fd = os.open(path, flags, 0o644)
        if create and os.fstat(fd).st_size:
            os.close(fd)  # no segment of ours is named after an LSN not yet written
            raise FileExistsError(f"segment {path} exists and is not empty")
        self._fd = fd
        self._zeroed = 0
        self._ss.fd = self._fd  # callers hold fd_mu once the syncer runs
        self._gen += 1
        if create:
            if rotating and _hooks_on:
                _crash_point(CP_ROLL_AFTER_CREATE)
            fsync_dir(self.directory)
            if rotating and _hooks_on:
                _crash_point(CP_ROLL_AFTER_DIRSYNC)
        self.segment_path = path
        self.segment_first_lsn = first_lsn
        self.segment_size = 0
        self.synced_size = 0
        return 0

    cdef int _rotate(self, uint64_t first_lsn, bint wait) except -1:
        """Close the open segment durably and open the next; 1 when done, 0 when ``wait`` is
        false and the syncer is in an fdatasync (it holds fd_mu): the caller writes on into
        the old segment and rotates at a later flush. Why: waiting for that fdatasync held the
        loop up to 40 ms (4 KiB SETs, perf trace: 85 ms of futex waits in 4 s)."""
        cdef int fd, e = 0
        # The old segment is made durable before the new one exists, so only
        # the newest segment can ever have a torn tail. Each step can fail (disk full,
        # I/O error) and be retried: a closed old segment (_fd < 0) is not closed again.
        if wait:
            with nogil:
                pthread_mutex_lock(&self._ss.fd_mu)
        elif pthread_mutex_trylock(&self._ss.fd_mu) != 0:
            return 0
        try:
            fd = self._fd
            if fd >= 0:
                if _hooks_on:
                    e = _fault(FP_ROLL)
                    _crash_point(CP_ROLL_BEFORE_SYNC)
                if e == 0:
                    with nogil:
                        if ftruncate(fd, <off_t>self.segment_size) != 0:  # a closed segment ends at its data
                            e = errno
                        else:
                            e = _timed_fdatasync(self._ss, fd)
                if e != 0:
                    raise OSError(e, strerror(e).decode(), self.segment_path)
                self._fd = -1
                self._ss.fd = -1
                c_close(fd)
                if self.flushed_lsn > self.synced_lsn:
                    self.synced_lsn = self.flushed_lsn
                self.synced_size = self.segment_size
                if _hooks_on:
                    _crash_point(CP_ROLL_AFTER_SYNC)
            if _hooks_on:
                e = _fault(FP_ROLL_CREATE)
                if e != 0:
                    raise OSError(e, strerror(e).decode(), os.path.join(self.directory, segment_name(first_lsn)))
            self._open_segment(first_lsn, True)
        finally:
            pthread_mutex_unlock(&self._ss.fd_mu)
        return 1

    def append(self, int kind, bytes payload):
        """Queue one record; returns its LSN. No syscall."""
        if kind < 1 or kind > 255:
            raise ValueError("record kind must be 1..255")
        return self.append_c(<uint8_t>kind, <const uint8_t *>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))

    cdef uint64_t append_c(self, uint8_t kind, const uint8_t *payload, Py_ssize_t n) except 0:
        cdef uint8_t *h
        cdef uint64_t lsn
        if self._closed:
            raise ValueError("log is closed")
        if kind < 1:
            raise ValueError("record kind must be 1..255")
        if n > MAX_PAYLOAD:
            raise ValueError(f"record of {n} bytes exceeds the limit of {MAX_PAYLOAD}")
        self._reserve(HDR + n)
        lsn = self.last_lsn + 1
        h = self._buf + self._len
        st32(h, <uint32_t>n)
        st64(h + 8, lsn)
        h[16] = <uint8_t>kind
        if n:
            memcpy(h + HDR, payload, n)
        st32(h + 4, record_crc(h, h + HDR, <uint32_t>n))
        if self._len == 0:
            self._pending_first_lsn = lsn
        self._len += HDR + n
        self.last_lsn = lsn
        self.bytes_appended += HDR + n
        return lsn

    def flush(self):
        """Write everything pending with one ``write``; returns the bytes written.

        On an I/O error the file is cut back to where this flush started and
        the records stay pending, so a later flush can retry.
        """
        cdef Py_ssize_t done = 0, total = self._len
        cdef ssize_t r = 0
        cdef int fd, err = 0
        if total == 0:
            return 0
        if self._closed:
            raise ValueError("log is closed")
        if self._fd < 0 or (self.segment_size > 0 and self.segment_size + total > self.segment_bytes
                and (self.segment_size - self.synced_size < ROTATE_UNSYNCED_MAX
                     or self.segment_size + total > 2 * self.segment_bytes)):
            # Rotation fsyncs the old segment on this thread; the journal syncs a full
            # segment in the background first (rotation_due), so this sync is short.
            # It waits for a running fdatasync only when it must: the old segment is
            # closed already (_fd < 0: a rotation failed after closing it; finish it),
            # or twice its size.
            self._rotate(self._pending_first_lsn,
                         self._fd < 0 or self.segment_size + total > 2 * self.segment_bytes)
        fd = self._fd
        if self.segment_size + total > self._zeroed:
            self._zero_ahead(self.segment_size + total)
        if _hooks_on:
            err = _fault(FP_WRITE)
            _crash_point(CP_WRITE_BEFORE)
            if _crash_due(CP_WRITE_TORN):  # half the bytes reach the file, then the power goes
                pwrite(fd, self._buf, total // 2 or 1, <off_t>self.segment_size)
                _die()
        if err == 0:
            with nogil:
                err = _pwrite_all(fd, self._buf, total, <off_t>self.segment_size, &done)
        if err:
            if done:
                ftruncate(fd, <off_t>self.segment_size)  # back to where this flush started
                self._zeroed = self.segment_size
            raise OSError(err, strerror(err).decode(), self.segment_path)
        if _hooks_on:
            _crash_point(CP_WRITE_AFTER)
        self.segment_size += total
        self._len = 0
        self.flushed_lsn = self.last_lsn
        if self.tap is not None:  # a cluster leader: replicas are served these very bytes
            self.tap(self._pending_first_lsn, self.last_lsn, PyBytes_FromStringAndSize(<char *>self._buf, total))
        return total

    def raise_floor(self, uint64_t lsn):
        """Make the next record's LSN larger than ``lsn``.

        LSNs rise but need not be consecutive: slots that moved here from another shard bring
        versions of that shard's log, and every version this log gives those keys later must be
        larger (``cluster.import``). Readers, replicas and recovery all accept the gap.
        """
        if lsn > self.last_lsn:
            self.last_lsn = lsn

    def append_framed(self, bytes data):
        """Queue records framed as this writer frames them (a replica's copy of its leader's log);
        returns how many. Every CRC is checked and the LSNs must rise above ours (a leader's log
        may skip LSNs: :meth:`raise_floor`)."""
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), pos = 0
        cdef uint64_t prev = self.last_lsn, lsn = 0, first = self.last_lsn + 1
        cdef uint32_t plen = 0
        cdef Py_ssize_t count = 0
        cdef int err
        if self._closed:
            raise ValueError("log is closed")
        while pos < n:
            err = parse_at(p, n, pos, prev, &lsn, &plen)
            if err != OK:  # parse_at also refuses an LSN that does not rise
                raise ValueError(f"replicated record at offset {pos}: {_REASONS.get(err, 'bad record')}"
                                 f" (expected an LSN above {prev})")
            prev = lsn
            pos += HDR + plen
            count += 1
        if count == 0:
            return 0
        self._reserve(n)
        memcpy(self._buf + self._len, p, n)
        if self._len == 0:
            self._pending_first_lsn = first
        self._len += n
        self.last_lsn = prev
        self.bytes_appended += n
        return count

    cdef int _zero_ahead(self, uint64_t need) except -1:
        """Zero-fill the open segment from ``_zeroed`` to past ``need``.

        Why: an fdatasync of data written over zeros that are already on disk has
        no file size to commit to the journal (ext4 does one device flush instead
        of two): measured here, fsync=always serves 12-21 % more writes. The other
        policies want the room too: a write that extends the file changes its size, which
        ext4 journals on every write (without the room, 4 KiB SETs at K=1 under everysec
        ran 10-20 % slower in A/B runs). But written zeros double the bytes copied into the
        page cache: under everysec, 4 KiB SETs at K=16 spent 38 % of the server's time in
        that copy. So unless ``zero_fill`` is set (the journal sets it for fsync=always),
        the room is ``fallocate``'d instead: the file is as long, reads as zeros, and
        nothing is copied; its extents are converted at the next fdatasync, once a second.
        A file system without fallocate gets written zeros. The zeros are never data:
        readers stop at them (``damage_at``: DAMAGE_END), rotation and close cut them off,
        and a power loss that leaves a page of them before intact records is a torn tail,
        not corruption.
        """
        cdef uint64_t room = ZERO_AHEAD if ZERO_AHEAD < self.segment_bytes else self.segment_bytes
        cdef uint64_t end = need + room
        cdef uint64_t at = self._zeroed if self._zeroed > self.segment_size else self.segment_size  # never below data
        cdef Py_ssize_t k
        cdef ssize_t r = 0
        cdef int fd = self._fd, err = 0
        if at < end and not self.zero_fill and fallocate(fd, 0, <off_t>at, <off_t>(end - at)) == 0:
            self._zeroed = end
            return 0
        with nogil:
            while at < end:
                k = <Py_ssize_t>(end - at) if end - at < sizeof(_ZEROS) else <Py_ssize_t>sizeof(_ZEROS)
                r = pwrite(fd, _ZEROS, k, <off_t>at)
                if r < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                at += r
        if err:
            raise OSError(err, strerror(err).decode(), self.segment_path)
        self._zeroed = end
        return 0

    def sync(self):
        """``fdatasync`` what is flushed; returns the LSN now durable. Thread-safe against ``flush``."""
        cdef int fd, rc
        cdef uint64_t target, size
        with nogil:
            pthread_mutex_lock(&self._ss.fd_mu)
        try:
            if self._fd < 0:
                return self.synced_lsn
            target = self.flushed_lsn
            if target <= self.synced_lsn:
                return self.synced_lsn
            size = self.segment_size
            fd = self._fd
            with nogil:
                rc = _timed_fdatasync(self._ss, fd)
            if rc != 0:
                raise OSError(rc, strerror(rc).decode(), self.segment_path)
            if target > self.synced_lsn:
                self.synced_lsn = target
                self.synced_size = size
            return self.synced_lsn
        finally:
            pthread_mutex_unlock(&self._ss.fd_mu)

    def rewrite_unsynced(self):
        """After a failed fdatasync: write the open segment's unsynced bytes again; returns how many.

        Why: once an fdatasync has failed, the kernel may have marked the pages it could not
        write clean, and a second fdatasync reports success without writing them. Writing
        the bytes again dirties them, so the next fdatasync really covers them. The bytes
        come back from the page cache and must read back as the records we wrote (CRCs,
        rising LSNs ending at ``flushed_lsn``); if they do not, the kernel dropped them and
        :class:`LogCorruption` says so (the journal then stops the server). No-op when
        everything flushed is synced.
        """
        cdef const uint8_t *p
        cdef Py_ssize_t n, pos = 0
        cdef uint64_t prev, lsn = 0
        cdef uint32_t plen = 0
        cdef Py_ssize_t done = 0
        cdef ssize_t r
        cdef int fd, err = 0
        cdef uint64_t start
        with nogil:
            pthread_mutex_lock(&self._ss.fd_mu)
        try:
            if self._fd < 0 or self.synced_size >= self.segment_size or self.flushed_lsn <= self.synced_lsn:
                return 0
            start = self.synced_size
            with open(self.segment_path, "rb") as f:
                f.seek(start)
                data = f.read(self.segment_size - start)
            p = <const uint8_t *>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
            prev = self.synced_lsn
            while pos < n:
                if parse_at(p, n, pos, prev, &lsn, &plen) != OK:
                    break
                prev = lsn
                pos += HDR + plen
            if n != <Py_ssize_t>(self.segment_size - start) or pos != n or prev != self.flushed_lsn:
                raise LogCorruption(self.segment_path, start + pos,
                                    "the unsynced records no longer read back as written after a failed fdatasync")
            fd = self._fd
            if _hooks_on:
                err = _fault(FP_WRITE)
            if err == 0:
                with nogil:
                    err = _pwrite_all(fd, p, n, <off_t>start, &done)
            if err:
                raise OSError(err, strerror(err).decode(), self.segment_path)
            if _hooks_on:
                _crash_point(CP_REWRITE_AFTER)
            return n
        finally:
            pthread_mutex_unlock(&self._ss.fd_mu)

    # --- the syncer thread (see the module docstring) ---------------------------------------

    def fsync_stats(self):
        """``(count, seconds, bucket counts)`` of every fdatasync so far (flo_core.metrics.BUCKET_BOUNDS)."""
        cdef list hist
        with nogil:
            pthread_mutex_lock(&self._ss.mu)
        hist = [self._ss.fsync_hist[i] for i in range(16)]
        count, ns = self._ss.fsyncs, self._ss.fsync_ns
        pthread_mutex_unlock(&self._ss.mu)
        return count, ns / 1e9, hist

    def start_syncer(self):
        """Start the syncer thread; returns the eventfd that turns readable after each fdatasync."""
        cdef int efd, rc
        if self._syncing:
            return self._ss.efd
        if self._closed:
            raise ValueError("log is closed")
        efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if efd < 0:
            raise OSError(errno, strerror(errno).decode())
        self._ss.efd = efd
        self._ss.stop = False
        rc = pthread_create(&self._thread, NULL, _syncer_main, self._ss)
        if rc != 0:
            c_close(efd)
            self._ss.efd = -1
            raise OSError(rc, strerror(rc).decode())
        self._syncing = True
        return efd

    def request_sync(self):
        """Ask the syncer for an fdatasync of everything flushed so far.

        Returns False (and asks nothing) when that is already durable. Never blocks on the disk.
        """
        if not self._syncing:
            raise ValueError("the syncer is not running")
        if self.flushed_lsn <= self.synced_lsn:
            return False
        pthread_mutex_lock(&self._ss.mu)  # never held across a syscall: short
        self._ss.req_lsn = self.flushed_lsn
        self._ss.req_size = self.segment_size
        self._ss.req_gen = self._gen
        self._ss.want = True
        pthread_cond_signal(&self._ss.cv)
        pthread_mutex_unlock(&self._ss.mu)
        return True

    def collect(self):
        """Take the syncer's results (call when its eventfd is readable).

        Advances ``synced_lsn``; returns 0, or the errno of a failed fdatasync.
        """
        cdef uint64_t counter, lsn, size, gen
        cdef int err
        if not self._syncing:
            return 0
        c_read(self._ss.efd, &counter, 8)  # reset the eventfd (non-blocking)
        pthread_mutex_lock(&self._ss.mu)
        lsn = self._ss.done_lsn
        size = self._ss.done_size
        gen = self._ss.done_gen
        err = self._ss.err
        self._ss.err = 0
        pthread_mutex_unlock(&self._ss.mu)
        if lsn > self.synced_lsn:
            self.synced_lsn = lsn
            if gen == self._gen and size > self.synced_size:
                self.synced_size = size
        return err

    @property
    def safe_lsn(self):
        """The last LSN an answer may be sent for (see ``ack_on_sync``)."""
        return safe_lsn_of(self)

    @property
    def syncer_fd(self):
        """The syncer's eventfd, or -1 when it is not running."""
        return self._ss.efd if self._syncing else -1

    cdef int _stop_syncer(self) except -1:
        if not self._syncing:
            return 0
        pthread_mutex_lock(&self._ss.mu)
        self._ss.stop = True
        pthread_cond_signal(&self._ss.cv)
        pthread_mutex_unlock(&self._ss.mu)
        with nogil:
            pthread_join(self._thread, NULL)
        self._syncing = False
        c_close(self._ss.efd)
        self._ss.efd = -1
        return 0

    @property
    def rotation_due(self):
        """The open segment is full but much of it is not yet synced: sync it (off the loop)
        so the rotation's own fdatasync finds little left to do."""
        return (self.segment_size + ROTATE_UNSYNCED_MAX > self.segment_bytes
                and self.segment_size - self.synced_size >= ROTATE_UNSYNCED_MAX)

    def segments(self):
        """``[(first_lsn, path)]`` of the segment files, oldest first."""
        return list_segments(self.directory)

    def drop_segments_below(self, lsn):
        """Delete segments whose every record is below ``lsn`` (never the open one)."""
        segs = list_segments(self.directory)
        removed = []
        for i in range(len(segs) - 1):
            if segs[i + 1][0] <= lsn and segs[i][1] != self.segment_path:
                os.unlink(segs[i][1])
                removed.append(segs[i][1])
                if _hooks_on:
                    _crash_point(CP_TRUNCATE_MID)
        if removed:
            fsync_dir(self.directory)
        return removed

    def close(self, bint sync=True, bint discard=False):
        """Flush, optionally sync, and close the segment.

        ``discard``: drop what is pending instead of writing it (the journal's last resort
        when the disk still fails at shutdown: those records were never acknowledged).
        """
        cdef int fd
        if self._closed:
            return
        self._stop_syncer()  # waits for an fdatasync in flight
        if discard:
            self._len = 0
            self.last_lsn = self.flushed_lsn
        self.flush()
        if self._fd >= 0 and self._zeroed > self.segment_size:
            os.ftruncate(self._fd, self.segment_size)  # a clean close leaves no zero room
            self._zeroed = self.segment_size
            if _hooks_on:
                _crash_point(CP_CLOSE_AFTER_CUT)
            if sync:
                os.fsync(self._fd)  # the data and the new size: sync() below has nothing left
                self.synced_lsn = self.flushed_lsn
                self.synced_size = self.segment_size
        if sync:
            self.sync()
        with nogil:
            pthread_mutex_lock(&self._ss.fd_mu)
        self._closed = True
        fd = self._fd
        self._fd = -1
        self._ss.fd = -1
        if fd >= 0:
            c_close(fd)
        pthread_mutex_unlock(&self._ss.fd_mu)
        if self._buf != NULL:
            free(self._buf)
            self._buf = NULL
            self._cap = 0
            self._len = 0
