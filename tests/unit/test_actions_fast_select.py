"""``Actions.select_many`` (a batch await's choice) hands out exactly what repeated select + take would, in order."""

from __future__ import annotations

import random

import pytest

from flo_server.actions import Actions


@pytest.mark.parametrize("seed", range(12))
def test_select_many_matches_select_then_take(seed: int) -> None:
    rnd = random.Random(seed)
    labelled = seed % 2 == 1  # odd seeds mix labelled runs in (the general path), even ones do not (the fast one)
    batch, single = Actions(), Actions()
    for st in (batch, single):
        st.register_action(1, "d", "x", 0, 60_000, 3, "")
    for step in range(300):
        now, op = 10 + step, rnd.random()
        if op < 0.5:
            priority = rnd.choice([1, 5, 10])
            sig = rnd.choice([None, None, '{"g":1}']) if labelled else None
            for st in (batch, single):
                st.invoke(step + 1, now, "d", "x", b"", sig, priority, None)
        elif op < 0.6:
            open_ids = [rid for rid, run in batch.runs.items() if not run.finished]
            if open_ids:
                victim = rnd.choice(open_ids)
                for st in (batch, single):
                    st.cancel(now, "d", victim)
        else:
            k, labels = rnd.randint(1, 5), rnd.choice([{}, {"g": 1}])
            got = [run.run_id for run in batch.select_many("d", ["x"], labels, now, k)]
            expected = []
            for _ in range(k):
                run = single.select("d", ["x"], labels, now)
                if run is None:
                    break
                expected.append(run.run_id)
                single.take(now, "d", "w", run.run_id)
            assert got == expected, f"step {step}"
            for rid in got:
                assert batch.take(now, "d", "w", rid) is not None
    assert {r: run.status for r, run in batch.runs.items()} == {r: run.status for r, run in single.runs.items()}
