# Types for the compiled flo_server/actions.py (flo_core/compiled.py): Run and Actions become
# extension types, so a run's fields and the store's tables are C members, not slot or dict
# lookups. The .py is the source; this file only declares. Every field stays public (readable
# and writable from Python as before).
cimport cython

# (module constants declared here are C globals of the compiled module, not its attributes)
cdef object _PENDING, _RUNNING, _COMPLETED, _FAILED, _CANCELLED, _TIMED_OUT


cdef class Run:
    cdef public str run_id, ns, action
    cdef public long long seq
    cdef public object payload
    cdef public str label_sig
    cdef public long long priority
    cdef public object idempotency_key
    cdef public long long created_at, max_attempts, lease_ms
    cdef public object status
    cdef public long long attempt
    cdef public object started_at, completed_at, output, outcome, error, worker_id
    cdef public long long lease_until, ready_at, token


cpdef bint held_by(Run run, worker_id, long long now) except -1


cdef class Actions:
    cdef public dict actions, _actions_per_ns, runs, _ready
    cdef public list _delays, _leases
    cdef public dict _by_action, _idem
    cdef public list _idem_expiry
    cdef public object _finished
    cdef public Py_ssize_t unfinished
    cdef public dict workers
    cdef public list _worker_expiry
    cdef public dict _sig_labels
    cdef public list events

    @cython.locals(delays=list, leases=list, expiry=list, idem=list, run=Run, token=cython.longlong)
    cpdef settle(self, long long now)
    cpdef _lapse(self, Run run, long long lease_until)
    cpdef list drain_events(self)
    @cython.locals(heaps=dict)
    cpdef _push_ready(self, Run run)
    cpdef _push_delay(self, Run run)
    cpdef _push_lease(self, Run run)
    cpdef _release_holder(self, Run run)
    cpdef _finish(self, Run run, status, long long now)
    @cython.locals(run=Run)
    cpdef _forget(self, run_id)
    @cython.locals(run=Run)
    cpdef Run run(self, ns, run_id)
    @cython.locals(run=Run)
    cpdef invoke(self, lsn, long long now, ns, name, payload, labels_sig, priority, idempotency_key)
    @cython.locals(run=Run)
    cpdef Run select(self, ns, list names, labels, long long now)
    @cython.locals(picked=list, run=Run, heap=list, aside=list)
    cpdef list select_many(self, ns, list names, labels, long long now, Py_ssize_t n)
    @cython.locals(picked=list, aside=list, run=Run, entry=tuple)
    cpdef list _first_of(self, list heap, Py_ssize_t n)
    @cython.locals(run=Run)
    cpdef Run take(self, long long now, ns, worker_id, run_id)
    @cython.locals(run=Run)
    cpdef Run holds(self, ns, worker_id, run_id, long long now)
    cpdef _count(self, ns, worker_id, bint completed)
    @cython.locals(run=Run)
    cpdef bint complete(self, long long now, ns, worker_id, run_id, outcome, output) except -1
