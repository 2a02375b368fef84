"""The ceiling: a bare uvloop server on the same Flo wire v2 framing, nothing else.

It parses frames with :class:`flo_core.wire.FrameReader` (CRC checked, like
flo-server), answers KV_GET / KV_PUT / KV_INCR from a dict with the same answer
layouts as flo-server (flo-wire-v2 §3.1), and makes one ``transport.write`` per
``data_received``. No log, no types, no TTL, no namespaces table, no stats:
"Python and this framing, and nothing else". flo-server's throughput is reported
as a ratio of this one, measured in the same run.

Run::

    taskset -c 0 python -m bench.ceiling --port 7400 --max-seconds 600

It prints ``ready <port>`` once listening and stops on SIGTERM/SIGINT or after
``--max-seconds`` (it never outlives a benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct

from flo_core.spec import Op, Reason, Status
from flo_core.wire import FrameError, FrameReader, append_reply, split_payload

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_OPT_U64 = struct.Struct("<BQ")
_GET_OK = struct.Struct("<QI")  # [version u64][value len u32], then the value
_INCR_OK = struct.Struct("<BQBq")  # opt(u64 version) opt(i64 value)

_NOT_FOUND = _U32.pack(Reason.NOT_FOUND)[:2] + b"\x00key not found"
_UNKNOWN_OP = _U32.pack(Reason.UNKNOWN_OP)[:2] + b"\x00the ceiling server answers KV get/put/incr only"
_MALFORMED = _U32.pack(Reason.MALFORMED)[:2] + b"\x00malformed body"
_WRONG_TYPE = _U32.pack(Reason.WRONG_TYPE)[:2] + b"\x00value is not a counter"

STORE: dict[tuple[str, bytes], tuple[int, bytes]] = {}
_version = [0]


class CeilingProtocol(asyncio.Protocol):
    __slots__ = ("transport", "reader")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(is_request=True)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        out = bytearray()
        try:
            frames = self.reader.feed(data)
        except FrameError as e:
            append_reply(out, 0, Status.BAD_REQUEST, _U32.pack(e.reason)[:2] + b"\x00" + e.message.encode())
            self.transport.write(bytes(out))  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
            return
        store = STORE
        for rid, op, payload in frames:
            try:
                ns, key, pos = split_payload(payload)
                if op == Op.KV_GET:
                    item = store.get((ns, key))
                    if item is None:
                        append_reply(out, rid, Status.NOT_FOUND, _NOT_FOUND)
                    else:
                        append_reply(out, rid, Status.OK, _GET_OK.pack(item[0], len(item[1])) + item[1])
                elif op == Op.KV_PUT:
                    (n,) = _U32.unpack_from(payload, pos)
                    value = payload[pos + 4 : pos + 4 + n]
                    _version[0] += 1
                    store[(ns, key)] = (_version[0], value)
                    append_reply(out, rid, Status.OK, _OPT_U64.pack(1, _version[0]))
                elif op == Op.KV_INCR:
                    delta = _I64.unpack_from(payload, pos + 1)[0] if pos < len(payload) and payload[pos] else 1
                    item = store.get((ns, key))
                    try:
                        value = int(item[1]) + delta if item is not None else delta
                    except ValueError:
                        append_reply(out, rid, Status.CONFLICT, _WRONG_TYPE)
                        continue
                    _version[0] += 1
                    store[(ns, key)] = (_version[0], b"%d" % value)
                    append_reply(out, rid, Status.OK, _INCR_OK.pack(1, _version[0], 1, value))
                else:
                    append_reply(out, rid, Status.BAD_REQUEST, _UNKNOWN_OP)
            except (FrameError, struct.error):
                append_reply(out, rid, Status.BAD_REQUEST, _MALFORMED)
        if out:
            self.transport.write(out)  # a fresh buffer per call: safe to hand over without a copy  # type: ignore[union-attr]


async def serve(port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(CeilingProtocol, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.call_later(max_seconds, stop.set)  # never outlive the benchmark
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ceiling", description="bare uvloop Flo v2 KV server")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    a = ap.parse_args(argv)
    import uvloop

    uvloop.run(serve(a.port, a.max_seconds))


if __name__ == "__main__":
    main()
