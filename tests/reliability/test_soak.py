"""The soak program (``tests/reliability/soak.py``) run as users run it, for ``FLO_SOAK_SECONDS`` (default 120).

``make soak`` runs it for 30 minutes; here it is the short version, plus a check of
its checks: with acknowledged records cut off the log at a kill it must fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = float(os.environ.get("FLO_SOAK_SECONDS", "120"))
KILL_EVERY = float(os.environ.get("FLO_SOAK_KILL_EVERY", "20"))


def soak(tmp_path, *args: str, timeout: float) -> tuple[int, dict, str]:
    report = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "tests.reliability.soak", "--json", str(report),
                           "--data-dir", str(tmp_path / "data"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert report.exists(), out[-5000:]
    return proc.returncode, json.loads(report.read_text()), out


@pytest.mark.timeout(SECONDS + 400)
def test_soak_with_kill9_loses_nothing(tmp_path):
    rc, report, out = soak(tmp_path, "--seconds", str(SECONDS), "--kill-every", str(KILL_EVERY),
                           timeout=SECONDS + 360)
    summary = {k: report[k] for k in ("ops", "ops_per_s", "kills", "recovery_s", "errors_in_kill_windows",
                                      "errors_unexpected", "verified_items", "rss_mib")}
    print(json.dumps(summary, indent=1))
    assert rc == 0 and report["ok"], out[-8000:]
    assert report["ops"] > 1000 and report["verified_items"] > 0 and not report["errors_unexpected"]
    assert report["kills"] >= int(SECONDS // (1.5 * KILL_EVERY)), report["kills"]
    assert set(report["ops_by_kind"]) >= {"kv.put", "queue.enqueue", "stream.append", "stream.group_read",
                                         "resp.set", "action.invoke"}
    assert report["check_log"][-1] == "OK"


@pytest.mark.timeout(300)
def test_soak_fails_when_acknowledged_writes_are_lost(tmp_path):
    rc, report, out = soak(tmp_path, "--seconds", "5", "--kill-every", "2", "--cut-log-at-first-kill", "50",
                           timeout=240)
    assert rc == 1 and not report["ok"], out[-5000:]
    assert report["failures"]["lost write"]["count"] > 0
    assert "self-test: cut 50 acknowledged records off the log" in out
