# Types for the compiled flo_server/handlers/action.py (flo_core/compiled.py): the round trip's
# helpers see runs, the store and the waiters as the extension types they are (actions.pxd,
# waiters.pxd). The .py is the source; this file only declares. (Decorated handlers and
# appliers, and functions with closures, stay plain Python functions.)
cimport cython
from flo_server.actions cimport Actions, Run
from flo_server.waiters cimport Waiters

@cython.locals(waiters=Waiters, ev=tuple)
cpdef _flush(srv)
@cython.locals(out=object, worker=object, outcome=object)
cpdef bytes _result_answer(Run run)
cpdef bytes _assignment_head(Run run)
@cython.locals(run=Run, parts=list)
cpdef bytes assignments_answer(list runs)
@cython.locals(store=Actions, run=Run)
cpdef _holder_refusal(srv, ns, worker_id, action, run_id, long long now)
cpdef bytes _run_id_field(run_id)
cpdef bytes _invoke_answer(run_id)
