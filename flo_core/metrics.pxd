cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

# Command slots: Flo ops take the slots of their index in flo_core.spec, RESP commands
# RESP_BASE and up (flo_core.metrics.Metrics.slot_of). Statuses are Flo's 0..12.
cdef enum:
    SLOTS = 256
    STATUSES = 13
    BUCKETS = 16
    RESP_BASE = 128
    OP_INDEX = 0x400      # Flo op codes below this have a slot
    SAMPLE_MASK = 31      # one request in 32 is timed


cdef inline int64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


@cython.final
cdef class Metrics:
    cdef uint64_t calls[256][13]
    cdef uint64_t hist[256][16]   # cumulative counts are made at scrape time
    cdef uint64_t hist_ns[256]          # sum of the sampled durations
    cdef uint8_t slot[OP_INDEX]            # Flo op code -> slot (255: none)
    cdef public uint64_t tick               # requests seen, for the 1-in-32 sample
    cdef public uint64_t bytes_in
    cdef public uint64_t bytes_out
    cdef public list flo_names
    cdef public list resp_names
    cdef dict _resp_slot

    cdef inline bint sample(self) noexcept:
        self.tick += 1
        return (self.tick & SAMPLE_MASK) == 0

    cdef inline void count(self, int slot, int status) noexcept:
        if 0 <= slot < SLOTS and 0 <= status < STATUSES:
            self.calls[slot][status] += 1

    cdef inline int op_slot(self, uint32_t op) noexcept:
        """The slot of a Flo op code (-1: none), without a call: the C loops' lookup."""
        return self.slot[op] if op < OP_INDEX and self.slot[op] != 255 else -1

    cdef void observe_ns(self, int slot, int64_t ns) noexcept
    cpdef int slot_of_op(self, int op)
    cpdef int slot_of_command(self, name)
    cdef object _name(self, int s)
