"""A flo-server killed (-9) while its embedded executor's instance runs a task: when it starts again,
its executor manager (same node name, no instances of its own any more) fails that task — as if the
instance had exited — instead of leaving it RUNNING for ever, and the session goes on."""

from __future__ import annotations

import sys

import pytest

import flamepy
from flamepy.core import records as R
from flamepy.core.types import TaskState
from tests.helpers import ServerProc, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SLOW = '''\
import time
import flamepy

class Slow(flamepy.FlameService):
    def on_task_invoke(self, ctx):
        if ctx.input == b"hang":
            time.sleep(600)
        return ctx.input

flamepy.run(Slow())
'''


def test_a_restarted_manager_fails_what_its_previous_instances_were_running(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW)
    env = {"FLAME_EXECUTOR_NODE": "restart-node", "FLAME_EXECUTOR_CPU": "2"}
    sp = ServerProc(tmp_path / "data", executor=True, fsync="always", env=env).start()
    conn = None
    try:
        wait_until(lambda: "executor manager restart-node serving" in sp.log(), timeout=30)
        conn = flamepy.connect(sp.endpoint)
        conn.register_application("restart-slow", {"command": sys.executable, "arguments": ["slow.py"],
                                                   "working_directory": str(tmp_path)})
        ssn = conn.create_session(flamepy.SessionAttributes(application="restart-slow", id="restart-s"))
        ssn.run(b"hang")

        def state():
            got = conn._call(conn.store.get(R.k_task("restart-s", 1)))
            return R.unpack(got[0])["state"] if got else None
        wait_until(lambda: state() == int(TaskState.RUNNING), timeout=60)
        conn.close()
        conn = None
        sp.kill()
        sp.start()
        conn = flamepy.connect(sp.endpoint)
        ssn = conn.open_session("restart-s")
        wait_until(lambda: ssn.get_task("1").state == TaskState.FAILED, timeout=60)
        assert "was lost" in ssn.get_task("1").events[-1].message
        assert ssn.invoke(b"after") == b"after"
        assert conn.get_session("restart-s").running == 0
        ssn.close()
    finally:
        if conn is not None:
            conn.close()
        sp.stop()
