"""The console's JSON API: ``/api/...`` on the HTTP side port (flo_server.http routes here).

Everything is read-only but the DLQ requeue, and everything is bounded: a page
holds at most :data:`MAX_ITEMS` items, values are previewed (at most
:data:`PREVIEW_BYTES`), and each answer is computed whole on the event loop
from the stores as they are (a console refreshing once a second costs little).
What a user may not read is left out: namespaces, queues, streams and actions
it has no ``read`` right on are skipped in lists, and asked for by name they
are a 403. Server-wide figures (``/overview``) are for any authenticated user,
as ``/metrics`` is; other users' connections only for an admin of ``*``.

=====================  =========================================================
GET                    what
=====================  =========================================================
/session               who you are, whether you may requeue, the CSRF token
/overview              ops/s, p50/p99, connections, memory, log, fsync, uptime
/connections           open client connections (protocol, peer, user, age)
/namespaces            every namespace with what it holds
/kv                    ``ns, prefix, after (base64), limit``: key names
/kv/key                ``ns, key`` (or ``key_b64``): value, version, TTL, history
/queues                ``ns`` (optional): queues with ready/in-flight/delayed/DLQ
/queue                 ``ns, name, peek, dlq``: counters, next ready, DLQ entries
/streams               ``ns`` (optional): length, last id, groups with lag/pending
/actions               ``ns`` (optional): actions, runs by state, workers, recent runs
/flame                 flamepy applications, sessions and counters, failed tasks
/flame/session         ``id``: one session's record and tasks
=====================  =========================================================

=====================  =========================================================
POST                   what
=====================  =========================================================
/queue/requeue         ``{ns, name, seqs, csrf}``: DLQ -> ready (``admin`` right)
=====================  =========================================================

The requeue goes through the server's write path exactly as QUEUE_DLQ_REQUEUE
does (:func:`flo_server.handlers.queue.write_seqs`: one ``q.requeue`` record).
POSTs carry the token of ``/session`` (``csrf``): another site's page cannot read
it, so it cannot make a logged-in browser requeue.

Example:
    $ curl -s -u default:pw '127.0.0.1:9001/api/queue?ns=default&name=jobs&peek=5'
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
import time
import weakref
from collections import deque
from typing import Any, Callable

from flo_server.http import HttpError
from flo_server.metrics import each_named, rss_bytes

MAX_ITEMS = 1000  # items of one list in one answer
PREVIEW_BYTES = 4096  # of a value, a message payload
SHORT_PREVIEW = 160  # in tables (history rows, peeked messages)
MAX_DECODED = 64 * 1024  # values up to this size are tried as msgpack when not text
WINDOW_S = 1.0  # rates and quantiles of /overview: over about this much time
MAX_REQUEUE = 100_000  # seqs in one requeue (flo_server.handlers.queue.MAX_SEQS)
MAX_FLAME_SCAN = 2000  # flamepy task records read by one /flame answer


# --- entry point --------------------------------------------------------------------------------------------


def handle(srv: Any, user: Any, method: str, path: str, query: dict, body: Any) -> Any:
    """Answer ``method path`` for ``user``: a JSON-serialisable value, or raise HttpError."""
    path = path.rstrip("/") or "/"
    if method in ("GET", "HEAD"):
        fn = GET.get(path)
    elif method == "POST":
        fn = POST.get(path)
    else:
        fn = None
    if fn is None:
        if path in GET or path in POST:
            raise HttpError(405, f"{method} is not allowed on /api{path}")
        raise HttpError(404, f"no API endpoint /api{path}")
    if user is None:
        raise HttpError(401, "authentication required")
    if method == "POST":
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        if not secrets.compare_digest(str(body.get("csrf", "")), _state(srv).csrf):
            raise HttpError(403, "missing or stale console token (reload the page)")
        return fn(srv, user, body)
    return fn(srv, user, query)


# --- helpers ------------------------------------------------------------------------------------------------


class _State:
    """What the API keeps per server: recent metric samples (rates) and the CSRF token."""

    def __init__(self) -> None:
        self.samples: deque = deque(maxlen=64)
        self.csrf = secrets.token_urlsafe(24)


_states: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()


def _state(srv: Any) -> _State:
    st = _states.get(srv)
    if st is None:
        st = _states[srv] = _State()
    return st


def _int(query: dict, name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        v = int(raw)
    except (TypeError, ValueError):
        raise HttpError(400, f"{name} must be an integer") from None
    return max(lo, min(hi, v))


def _str(query: dict, name: str, required: bool = False) -> str:
    v = query.get(name)
    if v is None or v == "":
        if required:
            raise HttpError(400, f"{name} is required")
        return ""
    if not isinstance(v, str):
        raise HttpError(400, f"{name} must be a string")
    return v


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str, what: str) -> bytes:
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{what} is not base64") from None


def _name_text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _readable(user: Any, prim: str, ns: str) -> bool:
    return user.allows("read", prim, ns, None)


def _need(user: Any, prim: str, ns: str, key: bytes | None = None) -> None:
    if not user.allows("read", prim, ns, key):
        what = prim if key is None else f"{prim} {_name_text(key)!r}"
        raise HttpError(403, f"user {user.name!r} may not read {what} in namespace {ns!r}")


def _preview(data: bytes, limit: int = PREVIEW_BYTES) -> dict:
    """A value as the console shows it: UTF-8 text when it is text, else base64; cut at ``limit``."""
    cut = data[:limit]
    out: dict = {"size": len(data), "truncated": len(data) > limit}
    text = _as_text(cut, len(data) > limit)
    if text is not None:
        out.update(encoding="text", data=text)
    else:
        out.update(encoding="base64", data=_b64(cut))
    return out


def _as_text(b: bytes, cut: bool) -> str | None:
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (cut and e.start >= len(b) - 3 and e.reason == "unexpected end of data"):
            return None
        text = b[:e.start].decode("utf-8")  # a character cut by the limit
    bad = sum(1 for c in text if (c < " " and c not in "\t\n\r") or c == "\x7f")
    return text if bad == 0 or bad * 20 < len(text) else None


def _jsonable(obj: Any, depth: int = 0) -> Any:
    """A decoded msgpack value for JSON: bytes as text or base64, everything bounded."""
    if depth > 8:
        return "..."
    if isinstance(obj, (bytes, bytearray)):
        p = _preview(bytes(obj), SHORT_PREVIEW)
        return p["data"] if p["encoding"] == "text" and not p["truncated"] else {"$bytes": p}
    if isinstance(obj, str):
        return obj if len(obj) <= 1000 else obj[:1000] + "..."
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, dict):
        items = list(obj.items())[:200]
        return {str(k): _jsonable(v, depth + 1) for k, v in items}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in obj[:200]]
    return repr(obj)[:200]


def _decoded(data: bytes) -> Any:
    """A binary value read as msgpack (flamepy's records are), or None when it is not that."""
    if not data or len(data) > MAX_DECODED:
        return None
    import msgpack

    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - not msgpack: shown as base64 only
        return None
    if not isinstance(obj, (dict, list)):
        return None  # one scalar byte decodes too: not worth saying
    return _jsonable(obj)


def _is_server_admin(user: Any) -> bool:
    return bool(user.superuser) or user.allows("admin", None, "*", None)


# --- /session -----------------------------------------------------------------------------------------------


def session(srv: Any, user: Any, query: dict) -> dict:
    ns = _str(query, "ns") or "default"
    return {
        "user": user.name,
        "auth_required": bool(srv.users.required),
        "server_admin": _is_server_admin(user),
        "admin": user.allows("admin", None, ns, None),  # may requeue in ``ns``
        "csrf": _state(srv).csrf,
    }


# --- /overview ----------------------------------------------------------------------------------------------


def _buckets() -> tuple:
    from flo_core.metrics import BUCKET_BOUNDS  # type: ignore[import-not-found]

    return tuple(BUCKET_BOUNDS)


def quantile(counts: list[int], q: float, bounds: tuple | None = None) -> float | None:
    """The ``q`` quantile (seconds) of a histogram of ``bounds`` (+Inf last), interpolated in its bucket.

    >>> quantile([0, 10, 0], 0.5, (1.0, 2.0))
    1.5
    >>> quantile([0, 0, 0], 0.5, (1.0, 2.0)) is None
    True
    """
    bounds = _buckets() if bounds is None else bounds
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]  # the +Inf bucket: at least the last bound
            lo = bounds[i - 1] if i else 0.0
            return lo + (bounds[i] - lo) * max(0.0, rank - seen) / n
        seen += n
    return bounds[-1]


def _sample(srv: Any, now: float) -> dict:
    """Every counter the overview turns into rates, at ``now`` (monotonic seconds)."""
    m = srv.metrics
    calls: dict = {}
    hist: list[int] = [0] * (len(_buckets()) + 1)
    lat_sum = 0.0
    total = errors = 0
    bytes_in = bytes_out = 0
    if m is not None:
        snap = m.snapshot()
        for (proto, name, status), n in snap["calls"].items():
            total += n
            # NOT_FOUND (2) is an answer, not a failure (a KV miss)
            if status != 0 and not (proto == "flo" and status == 2):
                errors += n
            k = f"{proto}:{name}"
            calls[k] = calls.get(k, 0) + n
        for counts, seconds in snap["latency"].values():
            for i, n in enumerate(counts[: len(hist)]):
                hist[i] += n
            lat_sum += seconds
        bytes_in, bytes_out = m.bytes_in, m.bytes_out
    j = srv.journal
    fs = (0, 0.0, [0] * len(hist))
    writer = getattr(j, "writer", None)
    if writer is not None and hasattr(writer, "fsync_stats"):
        fs = writer.fsync_stats()
    return {"t": now, "total": total, "errors": errors, "calls": calls, "hist": hist, "lat_sum": lat_sum,
            "bytes_in": bytes_in, "bytes_out": bytes_out, "lsn": j.last_lsn,
            "fsyncs": fs[0], "fsync_s": fs[1], "fsync_hist": list(fs[2])}


def _zero_sample(t: float, width: int) -> dict:
    return {"t": t, "total": 0, "errors": 0, "calls": {}, "hist": [0] * width, "lat_sum": 0.0, "bytes_in": 0,
            "bytes_out": 0, "lsn": 0, "fsyncs": 0, "fsync_s": 0.0, "fsync_hist": [0] * width}


def _diff(a: list[int], b: list[int]) -> list[int]:
    return [max(0, x - y) for x, y in zip(a, b)]


def overview(srv: Any, user: Any, query: dict) -> dict:
    st = _state(srv)
    now = time.monotonic()
    cur = _sample(srv, now)
    samples = st.samples
    # The baseline: the newest sample at least WINDOW_S old (several consoles may poll at once),
    # else the oldest we have, else the server's start (rates since start).
    base = None
    for s in reversed(samples):
        if now - s["t"] >= WINDOW_S * 0.9:
            base = s
            break
    if base is None:
        base = samples[0] if samples else _zero_sample(now - max(srv.uptime(), 1e-3), len(cur["hist"]))
    if not samples or now - samples[-1]["t"] >= 0.25:
        samples.append(cur)
    dt = max(now - base["t"], 1e-3)

    def rate(k: str) -> float:
        return max(0, cur[k] - base[k]) / dt

    win = _diff(cur["hist"], base["hist"])
    top = []
    for name, n in cur["calls"].items():
        d = n - base["calls"].get(name, 0)
        if d > 0:
            top.append((d / dt, name))
    top.sort(reverse=True)
    fs_win = _diff(cur["fsync_hist"], base["fsync_hist"])
    fs_n = max(0, cur["fsyncs"] - base["fsyncs"])

    by_proto = {"flo": 0, "resp": 0, "unknown": 0}
    for c in list(srv.connections):
        by_proto["resp" if c.resp is not None else ("flo" if c.reader is not None else "unknown")] += 1
    j = srv.journal
    info = srv.info()
    return {
        "window_s": round(dt, 3),
        "ops_per_s": rate("total"),
        "errors_per_s": rate("errors"),
        "bytes_in_per_s": rate("bytes_in"),
        "bytes_out_per_s": rate("bytes_out"),
        "writes_per_s": rate("lsn"),
        "top_commands": [{"command": name, "per_s": r} for r, name in top[:10]],
        "latency": {  # sampled: one request in 32
            "p50_s": quantile(win, 0.5), "p99_s": quantile(win, 0.99), "samples": sum(win),
            "all_time": {"p50_s": quantile(cur["hist"], 0.5), "p99_s": quantile(cur["hist"], 0.99),
                         "samples": sum(cur["hist"])},
        },
        "commands_total": cur["total"],
        "connections": {"total": len(srv.connections), **by_proto, "waiters": len(srv.waiters),
                        "received": getattr(srv, "connections_received", None),
                        "rejected": getattr(srv, "connections_rejected", None)},
        "memory": {"rss_bytes": rss_bytes()},
        "log": {"last_lsn": j.last_lsn, **(j.stats() if hasattr(j, "stats") else {})},
        "fsync": {
            "count": cur["fsyncs"], "seconds": cur["fsync_s"], "per_s": fs_n / dt,
            "p50_s": quantile(fs_win, 0.5) if fs_n else None, "p99_s": quantile(fs_win, 0.99) if fs_n else None,
            "mean_s": (cur["fsync_s"] / cur["fsyncs"]) if cur["fsyncs"] else None,
        } if getattr(j, "writer", None) is not None else None,
        "uptime_s": srv.uptime(),
        "ready": bool(getattr(srv, "ready", True)),
        "info": {k: v for k, v in info.items() if k != "journal"},
    }


# --- /connections -------------------------------------------------------------------------------------------


def connections(srv: Any, user: Any, query: dict) -> dict:
    everyone = _is_server_admin(user)
    now = srv.now()
    out = []
    hidden = 0
    for c in sorted(list(srv.connections), key=lambda c: getattr(c, "id", 0)):
        who = c.user.name if c.user is not None else None
        if not everyone and who != user.name:
            hidden += 1
            continue
        if len(out) >= MAX_ITEMS:
            continue
        peer = c.transport.get_extra_info("peername") if c.transport is not None else None
        r = c.resp
        out.append({
            "id": getattr(c, "id", None),
            "protocol": "resp" if r is not None else ("flo" if c.reader is not None else "unknown"),
            "peer": f"{peer[0]}:{peer[1]}" if peer and len(peer) >= 2 else (str(peer) if peer else None),
            "user": who,
            "age_s": max(0, (now - getattr(c, "created_ms", now)) // 1000),
            "name": _name_text(r.name) if r is not None and r.name else None,
            "namespace": r.ns if r is not None else None,
            "tls": c.transport.get_extra_info("ssl_object") is not None if c.transport is not None else False,
        })
    return {"connections": out, "total": len(srv.connections), "hidden": hidden, "all_shown": everyone}


# --- /namespaces --------------------------------------------------------------------------------------------


def namespaces(srv: Any, user: Any, query: dict) -> dict:
    found: dict[str, dict] = {}

    def entry(ns: str) -> dict:
        e = found.get(ns)
        if e is None:
            e = found[ns] = {"name": ns, "kv_keys": 0, "queues": 0, "streams": 0, "actions": 0, "workers": 0,
                             "lists": 0}
        return e

    for ns, space in list(srv.kv.spaces.items()):
        if _readable(user, "kv", ns):
            entry(ns)["kv_keys"] = len(space.keys)
    for ns in srv.queues.namespaces():
        if _readable(user, "queue", ns):
            entry(ns)["queues"] = len(srv.queues.names(ns))
    for ns in srv.streams.namespaces():
        if _readable(user, "stream", ns):
            entry(ns)["streams"] = len(srv.streams.names(ns))
    acts: dict[str, int] = {}
    for ns, _ in list(srv.actions.actions):
        acts[ns] = acts.get(ns, 0) + 1
    for ns, n in acts.items():
        if _readable(user, "action", ns):
            entry(ns)["actions"] = n
    for ns, table in list(srv.actions.workers.items()):
        if _readable(user, "action", ns):
            entry(ns)["workers"] = len(table)
    for ns, sp in list(getattr(srv.lists, "spaces", {}).items()):
        if _readable(user, "list", ns):
            entry(ns)["lists"] = len(sp)
    names = sorted(found)
    return {"namespaces": [found[n] for n in names[:MAX_ITEMS]], "more": len(names) > MAX_ITEMS}


# --- /kv, /kv/key -------------------------------------------------------------------------------------------


def kv_list(srv: Any, user: Any, query: dict) -> dict:
    ns = _str(query, "ns") or "default"
    prefix = _str(query, "prefix").encode("utf-8")
    after = _unb64(_str(query, "after"), "after") if query.get("after") else b""
    limit = _int(query, "limit", 200, 1, MAX_ITEMS)
    if not user.allows_prefix("read", "kv", ns, prefix):
        raise HttpError(403, f"user {user.name!r} may not list keys {_name_text(prefix)!r}* in namespace {ns!r}")
    now = srv.now()
    names, more = srv.kv.scan(ns, prefix, after, limit, now)
    keys = []
    for k in names:
        e = srv.kv.get(ns, k, now)
        keys.append({"key": _name_text(k), "b64": _b64(k), "size": e.size if e is not None else None,
                     "version": e.version if e is not None else None,
                     "ttl_ms": (e.expires_at - now) if e is not None and e.expires_at else None})
    space = srv.kv.spaces.get(ns)
    return {"ns": ns, "prefix": _name_text(prefix), "keys": keys, "more": more,
            "next": _b64(names[-1]) if more and names else None,
            "namespace_keys": len(space.keys) if space is not None else 0}  # expired, not yet reclaimed, included


def kv_key(srv: Any, user: Any, query: dict) -> dict:
    ns = _str(query, "ns") or "default"
    if query.get("key_b64"):
        key = _unb64(_str(query, "key_b64"), "key_b64")
    else:
        key = _str(query, "key", required=True).encode("utf-8")
    _need(user, "kv", ns, key)
    limit = _int(query, "history", 20, 0, 100)
    now = srv.now()
    e = srv.kv.get(ns, key, now)
    if e is None:
        raise HttpError(404, f"no key {_name_text(key)!r} in namespace {ns!r}")
    value = _preview(e.value)
    if value["encoding"] == "base64":
        value["decoded"] = _decoded(e.value)
    history = []
    for version, at, val in srv.kv.history(ns, key, limit + 1, now)[1:limit + 1]:  # [0] is the live value
        history.append({"version": version, "written_at_ms": at, "value": _preview(val, SHORT_PREVIEW)})
    return {
        "ns": ns, "key": _name_text(key), "b64": _b64(key), "size": e.size, "version": e.version,
        "written_at_ms": e.written_at, "expires_at_ms": e.expires_at or None,
        "ttl_ms": (e.expires_at - now) if e.expires_at else None, "value": value, "history": history,
    }


# --- /queues, /queue, /queue/requeue ------------------------------------------------------------------------


def _namespaces_of(user: Any, prim: str, all_ns: list[str], ns: str) -> list[str]:
    if ns:
        _need(user, prim, ns)
        return [ns]
    return [n for n in all_ns if _readable(user, prim, n)]


def _visible(store: Any, user: Any, prim: str, query: dict) -> tuple[list, bool]:
    """``(ns, name, object)`` of a queue or stream store the user may read, at most MAX_ITEMS;
    and whether more were left out."""
    wanted = set(_namespaces_of(user, prim, store.namespaces(), _str(query, "ns")))
    found = list(each_named(store, MAX_ITEMS + 1,
                            lambda ns, name: ns in wanted and user.allows("read", prim, ns, name.encode("utf-8"))))
    return found[:MAX_ITEMS], len(found) > MAX_ITEMS


def _message(m: Any, limit: int = SHORT_PREVIEW) -> dict:
    return {"seq": m.seq, "priority": m.priority, "enqueued_at_ms": m.enqueued_at_ms,
            "delivery_count": m.delivery_count, "due_ms": m.due or None, "payload": _preview(m.payload, limit)}


def queues(srv: Any, user: Any, query: dict) -> dict:
    now = srv.now()
    out = []
    found, more = _visible(srv.queues, user, "queue", query)
    for ns, name, q in found:
        s = q.stats(now)
        out.append({"ns": ns, "name": name, "ready": s["ready"], "inflight": s["leased"],
                    "delayed": s["delayed"], "dlq": s["dlq"], "last_seq": s["last_seq"],
                    "total_enqueued": s["total_enqueued"], "total_acked": s["total_acked"],
                    "total_dead": s["total_dead"]})
    return {"queues": out, "more": more}


def queue(srv: Any, user: Any, query: dict) -> dict:
    ns = _str(query, "ns") or "default"
    name = _str(query, "name", required=True)
    _need(user, "queue", ns, name.encode("utf-8"))
    q = srv.queues.get(ns, name)
    if q is None:
        raise HttpError(404, f"no queue {name!r} in namespace {ns!r}")
    now = srv.now()
    peek = _int(query, "peek", 20, 0, MAX_ITEMS)
    dlq = _int(query, "dlq", 100, 0, MAX_ITEMS)
    s = q.stats(now)
    return {
        "ns": ns, "name": name, "stats": {**s, "inflight": s["leased"]},
        "max_deliveries": q.max_deliveries,
        "ready": [_message(m) for m in q.peek(peek, now)] if peek else [],
        "dlq": [_message(m) for m in q.dlq_list(dlq, now)] if dlq else [],
        "can_requeue": user.allows("admin", None, ns, None),
    }


def queue_requeue(srv: Any, user: Any, body: dict) -> dict:
    from flo_server.handlers.queue import write_seqs

    ns, name, seqs = body.get("ns") or "default", body.get("name"), body.get("seqs")
    if not isinstance(ns, str) or not isinstance(name, str) or not name:
        raise HttpError(400, "ns and name must be strings")
    if not isinstance(seqs, list) or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s < 1 << 64
                                             for s in seqs):
        raise HttpError(400, "seqs must be a list of message seqs")
    if len(seqs) > MAX_REQUEUE:
        raise HttpError(400, f"at most {MAX_REQUEUE} seqs per requeue")
    if not user.allows("admin", None, ns, None):
        raise HttpError(403, f"user {user.name!r} may not requeue in namespace {ns!r}: that needs the admin right")
    if srv.queues.get(ns, name) is None:
        raise HttpError(404, f"no queue {name!r} in namespace {ns!r}")
    from flo_core.errors import Refusal

    try:
        n = write_seqs(srv, "q.requeue", ns, name, seqs, srv.now())
    except Refusal as e:  # the write path refused (the log stopped taking writes, ...): say why
        raise HttpError(503, str(e) or "the server refused the write") from None
    return {"ns": ns, "name": name, "requeued": n}


# --- /streams -----------------------------------------------------------------------------------------------


def streams(srv: Any, user: Any, query: dict) -> dict:
    now = srv.now()
    out = []
    found, more = _visible(srv.streams, user, "stream", query)
    for ns, name, s in found:
        first_ts, first_seq, last_ts, last_seq, count, size = s.info(now)
        groups = []
        for gname, g in list(s.groups.items())[:100]:
            by_consumer = g.pending_by_consumer()
            groups.append({"name": gname, "consumers": len(g.consumers), "lag": g.lag(s, now),
                           "pending": sum(by_consumer.values()),
                           "pending_by_consumer": dict(sorted(by_consumer.items())[:50]),
                           "delivered": g.delivered, "acked": g.acked, "dead": g.dead_count,
                           "last_delivered_id": f"{g.last_ts}-{g.last_seq}"})
        out.append({"ns": ns, "name": name, "length": count, "bytes": size,
                    "first_id": f"{first_ts}-{first_seq}" if count else None,
                    "last_id": f"{last_ts}-{last_seq}" if (last_ts or last_seq) else None,
                    "retention": {"max_len": s.max_len or None, "max_age_ms": s.max_age_ms or None,
                                  "max_bytes": s.max_bytes or None},
                    "groups": groups, "more_groups": len(s.groups) > 100})
    return {"streams": out, "more": more}


# --- /actions -----------------------------------------------------------------------------------------------


def _run(run: Any) -> dict:
    return {"run_id": run.run_id, "action": run.action, "status": run.status.name.lower(), "attempt": run.attempt,
            "max_attempts": run.max_attempts, "priority": run.priority, "created_at_ms": run.created_at,
            "started_at_ms": run.started_at, "completed_at_ms": run.completed_at, "worker": run.worker_id,
            "error": run.error[:500] if run.error else None, "outcome": run.outcome}


def actions(srv: Any, user: Any, query: dict) -> dict:
    a = srv.actions
    now = srv.now()
    all_ns = sorted({ns for ns, _ in list(a.actions)} | set(a.workers))
    out_actions: list[dict] = []
    out_workers: list[dict] = []
    recent: list[dict] = []
    for ns in _namespaces_of(user, "action", all_ns, _str(query, "ns")):
        page, _ = a.list_actions(ns, "", None, MAX_ITEMS)
        states: dict[str, dict[str, int]] = {}
        for run in list(a.runs.values()):  # as /metrics counts them
            if run.ns == ns:
                d = states.setdefault(run.action, {})
                k = run.status.name.lower()
                d[k] = d.get(k, 0) + 1
        for d in page:
            if len(out_actions) >= MAX_ITEMS or not user.allows("read", "action", ns, d.name.encode("utf-8")):
                continue
            out_actions.append({"ns": ns, "name": d.name, "type": d.action_type, "timeout_ms": d.timeout_ms,
                                "max_attempts": d.max_retries, "version": d.version, "updated_at_ms": d.updated_at,
                                "runs": states.get(d.name, {})})
        workers, _ = a.list_workers(ns, None, MAX_ITEMS, now)
        for w in workers:
            if len(out_workers) >= MAX_ITEMS:
                break
            out_workers.append({"ns": ns, "id": w.worker_id, "status": w.status(now).name.lower(),
                                "load": w.current_load, "max_concurrency": w.max_concurrency,
                                "actions": list(w.actions)[:50], "completed": w.tasks_completed,
                                "failed": w.tasks_failed, "last_heartbeat_ms": w.last_heartbeat,
                                "machine": w.machine_id, "labels": _jsonable(w.labels)})
        runs, _ = a.list_runs(ns, None, None, 50)
        for r in runs:
            if user.allows("read", "action", ns, r.action.encode("utf-8")):
                recent.append({"ns": ns, **_run(r)})
    recent.sort(key=lambda r: r["created_at_ms"], reverse=True)
    return {"actions": out_actions, "workers": out_workers, "recent_runs": recent[:100]}


# --- /flame, /flame/session ---------------------------------------------------------------------------------


def _flame_ns(user: Any) -> str:
    from flamepy.core import records as R

    if not user.allows_prefix("read", "kv", R.NAMESPACE, b""):
        raise HttpError(403, f"user {user.name!r} may not read flamepy's namespace {R.NAMESPACE!r}")
    return R.NAMESPACE


def _record(srv: Any, ns: str, key: str, now: int) -> Any:
    from flamepy.core import records as R

    e = srv.kv.get(ns, key.encode("utf-8"), now)
    if e is None:
        return None
    try:
        return R.unpack(e.value)
    except Exception:  # noqa: BLE001 - a record we cannot read is left out
        return None


def _counters(srv: Any, ns: str, sid: str, now: int) -> dict:
    from flamepy.core import records as R

    out = {}
    for c in R.COUNTERS:
        e = srv.kv.get(ns, R.k_cnt(sid, c).encode("utf-8"), now)
        out[c] = int(e.value) if e is not None and e.value.isdigit() else 0
    return out


def _events(rec: dict, n: int = 5) -> list:
    return [{"code": e[0], "message": str(e[1])[:500], "at_ms": e[2]}
            for e in (rec.get("events") or [])[-n:] if isinstance(e, (list, tuple)) and len(e) >= 3]


def _session(srv: Any, ns: str, rec: dict, now: int) -> dict:
    from flamepy.core.types import SessionState

    sid = rec.get("id", "")
    try:
        state = SessionState(rec.get("state", 0)).name.lower()
    except ValueError:
        state = str(rec.get("state"))
    return {"id": sid, "app": rec.get("app"), "state": state, "created_ms": rec.get("ctime"),
            "closed_ms": rec.get("dtime"), "priority": rec.get("priority"), "min": rec.get("min"),
            "max": rec.get("max"), "batch": rec.get("batch"), "resreq": _jsonable(rec.get("resreq")),
            "counters": _counters(srv, ns, sid, now), "events": _events(rec),
            "broken": _jsonable(rec.get("broken"))}


def _task(rec: dict) -> dict:
    from flamepy.core import records as R
    from flamepy.core.types import TaskState

    try:
        state = TaskState(rec.get("state", 0)).name.lower()
    except ValueError:
        state = str(rec.get("state"))
    failed = state in ("failed", "cancelled")
    return {"session": rec.get("ssn"), "id": rec.get("id"), "state": state, "created_ms": rec.get("ctime"),
            "completed_ms": rec.get("dtime"), "instance": rec.get("instance"),
            "message": R.failure_message(rec)[:2000] if failed else None,
            "last_event": _events(rec, 1)[0] if rec.get("events") else None}


def _scan_records(srv: Any, ns: str, prefix: str, limit: int, now: int) -> tuple[list[tuple[bytes, Any]], bool]:
    names, more = srv.kv.scan(ns, prefix.encode("utf-8"), b"", limit, now)
    from flamepy.core import records as R

    out = []
    for k in names:
        e = srv.kv.get(ns, k, now)
        if e is None:
            continue
        try:
            out.append((k, R.unpack(e.value)))
        except Exception:  # noqa: BLE001
            continue
    return out, more


def flame(srv: Any, user: Any, query: dict) -> dict:
    from flamepy.core import records as R
    from flamepy.core.types import TaskState

    ns = _flame_ns(user)
    now = srv.now()
    limit = _int(query, "limit", 200, 1, MAX_ITEMS)
    apps = []
    app_recs, more_apps = _scan_records(srv, ns, "app/", MAX_ITEMS, now)
    for _, rec in app_recs:
        if not isinstance(rec, dict):
            continue
        apps.append({"name": rec.get("name"), "state": "enabled" if rec.get("state", 0) == 0 else "disabled",
                     "shim": rec.get("shim"), "command": rec.get("command"),
                     "arguments": _jsonable(rec.get("arguments") or []), "description": rec.get("description"),
                     "max_instances": rec.get("max_instances"), "created_ms": rec.get("ctime"),
                     "working_directory": rec.get("working_directory")})
    # Open sessions (open/<id>) first, then the newest closed ones of the first MAX_ITEMS records.
    open_ids, more_open = srv.kv.scan(ns, b"open/", b"", MAX_ITEMS, now)
    sessions = []
    seen = set()
    for k in open_ids[:limit]:
        sid = R.tagged_id(k.decode("utf-8", "replace"))
        rec = _record(srv, ns, R.k_ssn(sid), now)
        if isinstance(rec, dict):
            sessions.append(_session(srv, ns, rec, now))
            seen.add(sid)
    closed = []
    if len(sessions) < limit:
        for _, rec in _scan_records(srv, ns, "ssn/", MAX_ITEMS, now)[0]:
            if isinstance(rec, dict) and rec.get("id") not in seen:
                closed.append(rec)
        closed.sort(key=lambda r: r.get("ctime") or 0, reverse=True)
        sessions += [_session(srv, ns, rec, now) for rec in closed[: limit - len(sessions)]]
    # Tasks with errors: read the task records of sessions whose counters say some failed.
    errors: list[dict] = []
    budget = MAX_FLAME_SCAN
    for s in sessions:
        c = s["counters"]
        if not (c.get("failed") or c.get("cancelled")) or budget <= 0:
            continue
        after = b""
        prefix = R.p_tasks(s['id']).encode("utf-8")
        while budget > 0 and len(errors) < MAX_ITEMS:
            names, more = srv.kv.scan(ns, prefix, after, min(budget, 500), now)
            budget -= len(names)
            for k in names:
                rec = _record(srv, ns, k.decode("utf-8", "replace"), now)
                if isinstance(rec, dict) and rec.get("state") in (int(TaskState.FAILED), int(TaskState.CANCELLED)):
                    errors.append(_task(rec))
            if not more or not names:
                break
            after = names[-1]
    errors.sort(key=lambda t: t.get("completed_ms") or 0, reverse=True)
    return {"namespace": ns, "applications": apps, "more_applications": more_apps, "sessions": sessions,
            "open_sessions": len(open_ids), "more_open_sessions": more_open, "task_errors": errors[:limit],
            "task_records_scanned": MAX_FLAME_SCAN - budget}


def flame_session(srv: Any, user: Any, query: dict) -> dict:
    from flamepy.core import records as R

    ns = _flame_ns(user)
    sid = _str(query, "id", required=True)
    now = srv.now()
    rec = _record(srv, ns, R.k_ssn(sid), now)
    if not isinstance(rec, dict):
        raise HttpError(404, f"no flamepy session {sid!r}")
    limit = _int(query, "limit", 200, 1, MAX_ITEMS)
    tasks, more = _scan_records(srv, ns, R.p_tasks(sid), limit, now)
    rows = [_task(r) for _, r in tasks if isinstance(r, dict)]
    rows.sort(key=lambda t: t["id"] if isinstance(t["id"], int) else 0)
    return {"session": {**_session(srv, ns, rec, now), "events": _events(rec, 50)}, "tasks": rows,
            "more_tasks": more}


# --- routes -------------------------------------------------------------------------------------------------

GET: dict[str, Callable[[Any, Any, dict], Any]] = {
    "/session": session,
    "/overview": overview,
    "/connections": connections,
    "/namespaces": namespaces,
    "/kv": kv_list,
    "/kv/key": kv_key,
    "/queues": queues,
    "/queue": queue,
    "/streams": streams,
    "/actions": actions,
    "/flame": flame,
    "/flame/session": flame_session,
}

POST: dict[str, Callable[[Any, Any, dict], Any]] = {
    "/queue/requeue": queue_requeue,
}
