"""flamepy object cache: operations per second, bytes read per kind of get, and file streaming speed.

Against one flo-server (started here, or ``--endpoint``), from one client process:

* ``put_per_s`` / ``patch_per_s`` / ``get_unchanged_per_s``: ``ops`` small (100-byte) objects put,
  patches appended to one object, and gets of an object this process holds the current version of
  (the head alone is read);
* ``get_full_mb_per_s``: a ``big_mib`` object read from scratch (``version = 0``);
* ``incremental``: after another client appends ``deltas`` deltas of ``delta_kib`` KiB to that big
  object, the bytes the next get reads (``bytes_fetched`` from ``flamepy.core.cache.stats()``) against
  the size of the new deltas and of the whole object;
* ``upload_mb_per_s`` / ``download_mb_per_s``: a ``file_mib`` file through upload_object / download_object.

Usage::

    .venv/bin/python -m bench.object_cache_bench                      # starts its own flo-server
    .venv/bin/python -m bench.object_cache_bench --endpoint 127.0.0.1:9000 --ops 5000

Prints one JSON line. Every loop is bounded by ``ops`` (and the sizes), the server this script starts is
stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Optional


def run(endpoint: str, ops: int = 2000, big_mib: int = 16, deltas: int = 10, delta_kib: int = 4,
        file_mib: int = 64) -> dict:
    os.environ["FLAME_ENDPOINT"] = endpoint
    import flamepy
    from flamepy.core import ObjectRef, _runtime, cache
    from flamepy.core._store import Store

    out: dict = {"ops": ops, "load1_start": round(os.getloadavg()[0], 2)}
    app = f"bench-{os.getpid()}"
    small = os.urandom(100)

    t = time.perf_counter()
    refs = [flamepy.put_object(f"{app}/small", small) for _ in range(ops)]
    out["put_per_s"] = round(ops / (time.perf_counter() - t))
    t = time.perf_counter()
    for _ in range(ops):
        flamepy.get_object(refs[0])
    out["get_unchanged_per_s"] = round(ops / (time.perf_counter() - t))
    ref = flamepy.put_object(f"{app}/patched", [])
    t = time.perf_counter()
    for i in range(min(ops, cache.MAX_DELTAS)):
        flamepy.core.patch_object(ref, i)
    out["patch_per_s"] = round(min(ops, cache.MAX_DELTAS) / (time.perf_counter() - t))

    big = flamepy.put_object(f"{app}/big", os.urandom(big_mib << 20))
    cache.stats(reset=True)
    t = time.perf_counter()
    flamepy.get_object(ObjectRef(big.endpoint, big.key, 0))
    out["get_full_mb_per_s"] = round(big_mib / (time.perf_counter() - t), 1)
    full = cache.stats(reset=True)
    other = _runtime.run(Store(endpoint, client_options={}).connect())
    try:
        new = [cache._dumps(os.urandom(delta_kib << 10)) for _ in range(deltas)]
        for d in new:
            _runtime.run(cache._patch(other, big.key, d))
    finally:
        _runtime.run(other.close())
    flamepy.get_object(big, deserializer=lambda base, ds: len(ds))
    inc = cache.stats(reset=True)
    out["incremental"] = {"new_delta_bytes": sum(map(len, new)), "bytes_fetched": inc.bytes_fetched,
                          "object_bytes": full.bytes_fetched + sum(map(len, new)), "kind_patches": inc.patches}

    with tempfile.TemporaryDirectory(prefix="objcache-bench-") as tmp:
        src, dest = os.path.join(tmp, "src.bin"), os.path.join(tmp, "dest.bin")
        with open(src, "wb") as f:
            for _ in range(file_mib):
                f.write(os.urandom(1 << 20))
        t = time.perf_counter()
        up = flamepy.core.upload_object(f"{app}/pkg/file.bin", src)
        out["upload_mb_per_s"] = round(file_mib / (time.perf_counter() - t), 1)
        t = time.perf_counter()
        flamepy.core.download_object(up, dest)
        out["download_mb_per_s"] = round(file_mib / (time.perf_counter() - t), 1)
        if os.path.getsize(dest) != os.path.getsize(src):
            raise RuntimeError("download_object wrote a different size")
    flamepy.core.delete_objects(f"{app}/*")
    out["load1_end"] = round(os.getloadavg()[0], 2)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--endpoint", help="use this flo-server (host:port) instead of starting one")
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--big-mib", type=int, default=16)
    parser.add_argument("--deltas", type=int, default=10)
    parser.add_argument("--delta-kib", type=int, default=4)
    parser.add_argument("--file-mib", type=int, default=64)
    args = parser.parse_args(argv)
    if not (0 < args.ops <= 1_000_000 and 0 < args.big_mib <= 1024 and 0 < args.file_mib <= 4096
            and 0 < args.deltas <= 1000 and 0 < args.delta_kib <= 1024):
        parser.error("sizes out of range")
    server = None
    try:
        endpoint = args.endpoint
        if endpoint is None:
            from bench.flamepy_bench import _Server
            server = _Server()
            endpoint = server.endpoint
        print(json.dumps(run(endpoint, args.ops, args.big_mib, args.deltas, args.delta_kib, args.file_mib)))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
