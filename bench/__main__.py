"""``python -m bench``: measure flo-server against redis-server and the bare ceiling.

Examples::

    python -m bench --quick                  # a one-minute look (also run by `make test`)
    python -m bench                          # the full grid, 3 repetitions (`make bench`)
    python -m bench --only 'kv/kv\\.get' --reps 5 --out /tmp/getbench
    python -m bench --only '^cluster/'       # the cluster group: shards, sync replicas, failover (`make bench-cluster`)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .harness import Options, run_bench


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--quick", action="store_true", help="a few cells, tiny loads: seconds, not minutes")
    ap.add_argument("--reps", type=int, help="repetitions per cell (default 3, quick 1)")
    ap.add_argument("--max-seconds", type=float, help="time cap of each load (default 6, quick 1.5)")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results/<date>)")
    ap.add_argument("--only", help="regex on cell ids like kv/kv.get/flo/c50/k16/v100 (skips the memory test); "
                    "cluster/shards, cluster/sync and cluster/failover run only when it names them")
    ap.add_argument("--no-install", dest="install", action="store_false", help="never apt-get redis")
    ap.add_argument("--allow-debug", action="store_true", help="run on a FLO_DEBUG build (results marked)")
    ap.add_argument("--no-plots", dest="plots", action="store_false")
    ap.add_argument("--no-flo", dest="flo", action="store_false", help="leave flo-server out (ceiling vs Redis)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory-per-key test")
    a = ap.parse_args(argv)
    if a.reps is not None and not 1 <= a.reps <= 50:
        ap.error("--reps must be in [1, 50]")
    if a.max_seconds is not None and not 0.1 <= a.max_seconds <= 600:
        ap.error("--max-seconds must be in [0.1, 600]")
    try:
        run_bench(Options(quick=a.quick, reps=a.reps, out=a.out, only=a.only, install=a.install,
                          allow_debug=a.allow_debug, plots=a.plots, flo=a.flo, memory=a.memory,
                          max_seconds=a.max_seconds))
    except KeyboardInterrupt:
        raise SystemExit("interrupted; every server started was stopped (partial results.jsonl kept)") from None


if __name__ == "__main__":
    main()
