# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True, auto_pickle=False
"""Server-wide command counters and sampled latency histograms, kept in C.

One :class:`Metrics` per server. The C request loops count what they serve
(``count(slot, status)``: a few nanoseconds, no Python object) and time one
request in 32 (``sample()`` / ``observe_ns``); the Python paths call the same
through ``record()``. ``flo_server.metrics`` reads it all when ``/metrics`` is
scraped. Everything runs on the event loop thread: no locks.

Example:
    >>> from flo_core.metrics import Metrics
    >>> m = Metrics([(0x101, "kv_get")], ["get"])
    >>> m.record(m.slot_of_op(0x101), 0, 2500)
    >>> m.snapshot()["calls"][("flo", "kv_get", 0)]
    1
"""

from libc.string cimport memset

#: Upper bounds of the latency buckets, seconds (the last is +Inf).
BUCKET_BOUNDS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1, 1.0)
cdef int64_t _BOUNDS_NS[15]
for _i, _b in enumerate(BUCKET_BOUNDS):
    _BOUNDS_NS[_i] = <int64_t>(_b * 1e9 + 0.5)


cdef class Metrics:
    """Counters per (command, status) and a latency histogram per command.

    Args:
        flo_ops: ``(op code, name)`` of the Flo ops; each gets the next slot.
        resp_commands: names of the RESP commands, slots ``RESP_BASE`` and up.
    """

    def __init__(self, flo_ops=(), resp_commands=()):
        memset(self.calls, 0, sizeof(self.calls))
        memset(self.hist, 0, sizeof(self.hist))
        memset(self.hist_ns, 0, sizeof(self.hist_ns))
        memset(self.slot, 255, sizeof(self.slot))
        flo_ops = list(flo_ops)[:RESP_BASE]
        self.flo_names = [name for _, name in flo_ops]
        for i, (op, _) in enumerate(flo_ops):
            if 0 <= op < OP_INDEX:
                self.slot[op] = i
        self.resp_names = list(resp_commands)[:SLOTS - RESP_BASE]
        self._resp_slot = {n: RESP_BASE + i for i, n in enumerate(self.resp_names)}
        self.tick = self.bytes_in = self.bytes_out = 0

    cpdef int slot_of_op(self, int op):
        """The slot of a Flo op code (-1: none)."""
        if 0 <= op < OP_INDEX and self.slot[op] != 255:
            return self.slot[op]
        return -1

    cpdef int slot_of_command(self, name):
        """The slot of a RESP command name (lower case; -1: none)."""
        return self._resp_slot.get(name, -1)

    cdef void observe_ns(self, int slot, int64_t ns) noexcept:
        cdef int b = 0
        if not 0 <= slot < SLOTS:
            return
        while b < BUCKETS - 1 and ns > _BOUNDS_NS[b]:
            b += 1
        self.hist[slot][b] += 1
        self.hist_ns[slot] += <uint64_t>ns if ns > 0 else 0

    def record(self, int slot, int status, int64_t ns=-1):
        """Count one command (and, with ``ns`` >= 0, its duration): the Python paths' entry."""
        self.count(slot, status)
        if ns >= 0:
            self.observe_ns(slot, ns)

    def want_sample(self):
        """Should this request be timed? (one in 32)"""
        return self.sample()

    def snapshot(self):
        """Everything counted so far: ``{"calls": {(protocol, name, status): n},
        "latency": {(protocol, name): (bucket counts, sum seconds)}}``."""
        cdef int s, st, b
        calls = {}
        latency = {}
        for s in range(SLOTS):
            name = self._name(s)
            if name is None:
                continue
            for st in range(STATUSES):
                if self.calls[s][st]:
                    calls[(name[0], name[1], st)] = self.calls[s][st]
            if self.hist_ns[s] or any(self.hist[s][b] for b in range(BUCKETS)):
                latency[(name[0], name[1])] = ([self.hist[s][b] for b in range(BUCKETS)], self.hist_ns[s] / 1e9)
        return {"calls": calls, "latency": latency}

    cdef object _name(self, int s):
        if s < RESP_BASE:
            return ("flo", self.flo_names[s]) if s < len(self.flo_names) else None
        s -= RESP_BASE
        return ("resp", self.resp_names[s]) if s < len(self.resp_names) else None
