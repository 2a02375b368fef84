from libc.stdint cimport int64_t
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME


cdef inline int64_t unix_ms() noexcept nogil:
    """Unix time in ms, the clock every store sees (``Server.now`` is ``flo_core.core.now_ms``)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000
