# The counter arithmetic of the C fast paths (Flo KV_INCR in flo_core/core.pyx, RESP INCR in
# flo_core/respcore.pyx), inline: a counter is decimal ASCII i64 text read by Redis's string2ll
# rules (flo_core/resp.pxd ``_parse_ll``, the same rules as flo_server.handlers.kv.parse_counter)
# and written back with ``_fmt_ll``. Anything but COUNTER_OK goes to the Python path, which
# answers WRONG_TYPE (not a counter) or OUT_OF_RANGE (overflow).
from libc.stdint cimport uint8_t
from libc.limits cimport LLONG_MAX, LLONG_MIN

from flo_core.resp cimport _parse_ll, _fmt_ll

cdef enum:
    COUNTER_OK = 0
    COUNTER_NOT_INT = 1     # the current value is not a decimal i64
    COUNTER_OVERFLOW = 2    # current + delta leaves i64
    COUNTER_TEXT_MAX = 24   # room for any formatted i64


cdef inline int counter_add(const uint8_t *cur, Py_ssize_t n, bint present, long long delta,
                            long long *result) noexcept nogil:
    """``result = int(cur) + delta`` (0 + delta when not ``present``); a COUNTER_* code."""
    cdef long long v = 0
    if present and not _parse_ll(cur, n, &v):
        return COUNTER_NOT_INT
    if delta > 0 and v > LLONG_MAX - delta:
        return COUNTER_OVERFLOW
    if delta < 0 and v < LLONG_MIN - delta:
        return COUNTER_OVERFLOW
    result[0] = v + delta
    return COUNTER_OK


cdef inline Py_ssize_t counter_text(char *b, long long v) noexcept nogil:
    """The stored text of counter value ``v`` into ``b`` (>= COUNTER_TEXT_MAX bytes); its length."""
    return _fmt_ll(b, v)
