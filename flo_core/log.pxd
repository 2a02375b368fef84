from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef class LogReader:
    cdef readonly object directory
    cdef list _segments          # [(first_lsn, path)], sorted
    cdef Py_ssize_t _seg_index
    cdef bytes _buf
    cdef Py_ssize_t _pos
    cdef uint64_t _prev_lsn
    cdef uint64_t _from_lsn
    cdef uint64_t _seg_base
    cdef uint64_t _seg_limit     # first LSN of the next segment (0 = none)
    cdef readonly object path     # segment of the record just yielded
    cdef readonly Py_ssize_t offset
    cdef readonly uint64_t last_lsn
    cdef readonly uint64_t first_lsn
    cdef readonly Py_ssize_t records
    cdef readonly Py_ssize_t bytes_read
    cdef readonly object torn      # None or (path, offset, reason)
    cdef readonly bint done

    cdef bint _open_next(self) except -1


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_create(pthread_t *t, const void *attr, void *(*fn)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC



cdef struct Syncer:
    # shared between the loop thread and the syncer thread
    pthread_mutex_t mu        # guards every field below except fd
    pthread_cond_t cv
    pthread_mutex_t fd_mu     # held across an fdatasync, and by the loop while it changes fd
    int fd                    # the open segment (changed under fd_mu)
    int efd                   # eventfd: the thread adds 1 after each fdatasync
    bint want                 # a request is waiting
    bint stop
    uint64_t req_lsn, req_size, req_gen     # what the loop has flushed (to make durable)
    uint64_t done_lsn, done_size, done_gen  # what the thread has made durable
    int err                   # errno of a failed fdatasync, 0 = none
    uint64_t fsyncs, fsync_ns    # every fdatasync of the log (both threads), and their time
    uint64_t fsync_hist[16]      # ... by duration (flo_core.metrics.BUCKET_BOUNDS)


cdef class LogWriter:
    cdef readonly object directory
    cdef readonly object segment_path
    cdef readonly uint64_t segment_bytes
    cdef readonly uint64_t segment_first_lsn
    cdef readonly uint64_t segment_size
    cdef readonly uint64_t synced_size   # bytes of the open segment covered by the last fdatasync
    cdef readonly uint64_t last_lsn
    cdef readonly uint64_t flushed_lsn
    cdef readonly uint64_t synced_lsn
    cdef readonly uint64_t bytes_appended
    cdef readonly object truncated   # None or (path, offset, dropped_bytes) of a torn tail cut at open
    cdef int _fd
    cdef Syncer *_ss             # shared with the syncer thread (log.pyx)
    cdef pthread_t _thread       # the syncer thread
    cdef bint _syncing           # the syncer thread runs
    cdef uint64_t _gen           # bumped at each segment opened
    cdef uint64_t _zeroed        # the open segment is zero-filled (or data) up to here
    cdef public bint ack_on_sync # answers wait for the fdatasync (fsync=always), else for the write
    cdef public bint zero_fill   # the room ahead is written zeros (fsync=always), else fallocate'd
    # Kept by the journal (flo_server.persistence), read and set from C by the request loops:
    cdef public bint accepting       # the journal takes writes (not failed, not closed)
    cdef public bint flush_scheduled # a flush is queued for the end of this loop iteration
    cdef public list holders         # Outputs (flo_core.output) holding answers until this log covers them
    # Kept by the cluster (flo_server.cluster), zero-cost when unset:
    cdef public object tap           # None, or called (first_lsn, last_lsn, bytes) after each write (replication)
    cdef public bint replica_gate    # answers also wait until replica_lsn covers them (--sync-replicas)
    cdef public uint64_t replica_lsn # the last LSN enough replicas have acknowledged
    cdef public int64_t fence_at_ms  # 0, or the unix ms from which writes are refused (a leader's lease end)
    cdef uint8_t *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef uint64_t _pending_first_lsn
    cdef bint _closed

    cdef int _reserve(self, Py_ssize_t extra) except -1
    # one record from C (ServerCore's fast path); same checks as append()
    cdef uint64_t append_c(self, uint8_t kind, const uint8_t *payload, Py_ssize_t n) except 0
    cdef int _open_segment(self, uint64_t first_lsn, bint create) except -1
    cdef int _rotate(self, uint64_t first_lsn, bint wait) except -1
    cdef int _stop_syncer(self) except -1
    cdef int _zero_ahead(self, uint64_t need) except -1


cdef inline uint64_t safe_lsn_of(LogWriter w) noexcept:
    """The last LSN an answer may be sent for: synced under ``ack_on_sync``, else written; with
    ``replica_gate``, also acknowledged by enough replicas."""
    cdef uint64_t s = w.synced_lsn if w.ack_on_sync else w.flushed_lsn
    if w.replica_gate and w.replica_lsn < s:
        return w.replica_lsn
    return s


cdef inline bint takes_writes(LogWriter w, int64_t now) noexcept:
    """The request loops may log a write now: the journal accepts and no lease fence has passed."""
    return w.accepting and (w.fence_at_ms == 0 or now < w.fence_at_ms)
