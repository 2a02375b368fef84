# Types for the compiled flo_server/waiters.py (flo_core/compiled.py): Parked and Waiters become
# extension types, so their fields are struct members, not instance-dict or slot lookups. The .py
# is the source; this file only declares. Fields are public: the C loops read ``_by_key``.
cimport cython

cdef class Parked:
    cdef public Waiters _waiters
    cdef public list _keys
    cdef public Py_ssize_t _wid
    cdef public object _step
    cdef public double _deadline
    cdef public object _loop
    cdef public int _state
    cdef public object _answer
    cdef public object _rid
    cdef public object _fut
    cdef public object conn, metrics
    cdef public int op

    cpdef bint done(self)
    cpdef set_result(self, woken)
    cpdef start(self, conn, rid)
    cpdef _park(self)
    cpdef _unpark(self)
    cpdef _run(self, bint woken)
    cpdef _end(self, tuple answer)
    cpdef _deliver(self)


cdef class Waiters:
    cdef public dict _by_key
    cdef public Py_ssize_t _count, _limit, _ids
    cdef public list _deadlines
    cdef public object _timer
    cdef public double _timer_at
    cdef public object _timer_loop

    @cython.locals(heap=list, at=cython.double, loop=object)
    cpdef _time_out_at(self, Parked parked)
    @cython.locals(heap=list, now=cython.double, at=cython.double, parked=Parked)
    cpdef _expire(self)
    @cython.locals(wid=Py_ssize_t, by_key=dict, d=dict)
    cpdef Py_ssize_t _add(self, list keys, waiter) except -1
    @cython.locals(by_key=dict, d=dict)
    cpdef _remove(self, list keys, Py_ssize_t wid)
    @cython.locals(d=dict, woken=Py_ssize_t)
    cpdef notify(self, key, Py_ssize_t n=*)
    cpdef bint has_waiters(self, key)


@cython.locals(parked=Parked)
cpdef bint _waits(tuple entry)
