"""hypothesis profiles for the fuzz tests, and the per-target execution counts at the end of a run.

``flo-fuzz`` (the default here): derandomized (the same examples every run, so a
failure in CI reproduces), no example database, no deadline (a slow example is
not a bug; a hang is caught by pytest-timeout). With ``FLO_FUZZ_EXAMPLES`` set
(``make fuzz``) the profile ``flo-fuzz-long`` draws fresh random examples each
run instead (a failure prints the seed and a ``@reproduce_failure`` blob).
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings

from tests.fuzz._fuzz import EXECUTIONS, REPORT, long_run

_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)
settings.register_profile("flo-fuzz", derandomize=True, **_COMMON)
settings.register_profile("flo-fuzz-long", derandomize=False, **_COMMON)
settings.load_profile("flo-fuzz-long" if long_run() else "flo-fuzz")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not EXECUTIONS:
        return
    total = sum(EXECUTIONS.values())
    terminalreporter.write_sep("-", f"fuzz executions: {total}")
    for target, n in sorted(EXECUTIONS.items()):
        terminalreporter.write_line(f"  {target:<24} {n}")
    for line in REPORT:
        terminalreporter.write_line(line)
    path = os.environ.get("FLO_FUZZ_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(dict(EXECUTIONS), f, indent=1, sort_keys=True)
