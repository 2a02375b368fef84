"""flo_core.gctune: what a serving process (flo-server, a flamepy instance) does to its collector."""

from __future__ import annotations

import subprocess
import sys

from flo_core import compiled


def test_a_serving_process_freezes_its_start_up_and_collects_less_often() -> None:
    code = ("import gc; from flo_core import gctune; before = gc.get_freeze_count(); gctune.settle(); "
            "print(gc.get_threshold() == gctune.SERVING_THRESHOLDS, gc.get_freeze_count() > before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=compiled._ROOT)
    assert out.stdout.split() == ["True", "True"]
