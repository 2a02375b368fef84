from libc.stdint cimport uint64_t

from flo_core.log cimport LogWriter
from flo_core.metrics cimport Metrics


cdef class Output:
    cdef public object transport
    cdef object _write       # transport.write, looked up once
    cdef public bint closed
    cdef LogWriter _log      # None: an in-memory journal, answers never wait
    cdef list _held          # [[lsn, bytearray], ...] oldest first
    cdef Py_ssize_t _head    # index of the oldest chunk still held
    cdef bint _registered    # listed in the log writer's holders
    cdef public object on_drained  # called after held answers went out (None: nothing to do)
    cdef Metrics _metrics    # srv.metrics: bytes out (None: not counted)
    cdef Py_ssize_t _held_bytes  # bytes of the chunks still held
    cdef public Py_ssize_t limit  # the client's output limit (0: none): see on_full
    cdef public object on_full    # on_full(bytes): held answers plus the transport's buffer passed ``limit``
    cdef public bint unheld       # a cluster replica's connection: its answers carry log records, not acknowledgements

    cdef int send_c(self, object data) except -1
    cdef bint release_c(self, uint64_t safe) except -1
    cdef int _drain(self, uint64_t safe) except -1
    cdef int _check_full(self) except -1
