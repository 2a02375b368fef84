"""Redis protocol (RESP2/RESP3) on the Flo port: one session per connection, one command table.

The edge (:mod:`flo_server.protocol`) hands a connection whose first bytes are
not ``FLO\\0`` to :class:`RespSession`. Commands operate on the same stores as
the Flo protocol and change them through the same write path
(``srv.write(kind, ...)`` with the KV appliers of :mod:`flo_server.handlers.kv`),
so a key written by ``redis-cli SET`` reads back byte for byte through
``flo_client`` and the other way round. See ``docs/resp.md`` for the mapping
(databases -> namespaces, lists, streams) and the differences from Redis.

The command table is declared once (:data:`COMMANDS`): name, arity (Redis
convention: ``n`` exact, ``-n`` at least n, name included), flags and key
positions. Lookup and the arity check happen once in :meth:`RespSession._run`;
handlers append their reply to the batch's output buffer, or return a
coroutine for a command that may block (BLPOP, XREAD BLOCK): the session then
holds later commands of that connection until it finishes, so replies keep
request order.

Example:
    $ redis-cli -p 9000 SET greeting hello
    OK
    $ redis-cli -p 9000 GET greeting
    "hello"
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import logging
import os
import re
import sys
from collections import deque
from time import monotonic_ns
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from flo_core.errors import Refusal, ServerError
from flo_core.resp import (
    RespParser,
    RespProtocolError,
    Simple,
    add_array,
    add_bulk,
    add_bulks,
    add_error,
    add_int,
    add_null,
    add_null_array,
    add_ok,
    add_simple,
    add_value,
    parse_int,
)
from flo_core.spec import DEFAULT_NAMESPACE, MAX_KEY, MAX_KV_VALUE, Reason
from flo_core.stream import next_id_for  # type: ignore[import-not-found]
from flo_server import auth, jsonpath
from flo_server.handlers import kv as kvh
from flo_server.handlers.list import MAX_LIST_LEN, lists_of
from flo_core.output import Output  # type: ignore[import-not-found]

try:  # the compiled request loop (GET/SET/INCR in C); FLO_NO_FASTPATH=1 turns it off per connection
    from flo_core.respcore import OUT_FULL, RespCore
except ImportError:  # pragma: no cover - an old build without it
    RespCore = None
    OUT_FULL = object()

log = logging.getLogger("flo_server.resp")

__all__ = ["RespSession", "COMMANDS", "RespError", "db_namespace"]

# --- Redis's error wording ---------------------------------------------------------------

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INT = "ERR value is not an integer or out of range"
NOT_FLOAT = "ERR value is not a valid float"
SYNTAX = "ERR syntax error"
OVERFLOW = "ERR increment or decrement would overflow"

_ERROR_MARKS = (ord("-"), ord("!"))  # first byte of a RESP2 / RESP3 error reply
REDIS_VERSION = "7.0.15"  # what we claim in HELLO/INFO: the command surface we follow
NUM_DATABASES = 16
MAX_BLOCK_S = 365 * 24 * 3600  # "0 = forever" is waited in chunks of this
MAX_BACKLOG = 100_000  # commands queued behind a blocking one before reading pauses
MAX_SCAN_COUNT = 100_000
MAX_SCAN_CURSORS = 1024  # remembered per connection


class RespError(Exception):
    """A Redis error reply; ``message`` is the whole line (``ERR ...``, ``WRONGTYPE ...``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def db_namespace(db: int) -> str:
    """SELECT's database number -> Flo namespace: 0 is ``default``, n is ``db<n>``.

    >>> db_namespace(0), db_namespace(3)
    ('default', 'db3')
    """
    return DEFAULT_NAMESPACE if db == 0 else f"db{db}"


# --- the command table -----------------------------------------------------------------

Handler = Callable[["RespSession", list, bytearray], "Awaitable[bytearray] | None"]


@dataclass(frozen=True)
class Command:
    name: str  # lower case, as Redis reports it
    fn: Handler
    arity: int
    flags: tuple[str, ...]
    first_key: int
    last_key: int
    step: int
    group: str
    summary: str


COMMANDS: dict[bytes, Command] = {}


def command(
    name: str,
    arity: int,
    flags: str = "",
    keys: tuple[int, int, int] = (0, 0, 0),
    group: str = "generic",
    summary: str = "",
) -> Callable[[Handler], Handler]:
    """Register a command (one entry per name; upper and lower case are both indexed)."""

    def deco(fn: Handler) -> Handler:
        cmd = Command(name, fn, arity, tuple(flags.split()), keys[0], keys[1], keys[2], group, summary or (fn.__doc__ or "").strip().split("\n")[0])
        for variant in (name.upper().encode(), name.lower().encode()):
            if variant in COMMANDS:
                raise RuntimeError(f"command {name} registered twice")
            COMMANDS[variant] = cmd
        return fn

    return deco


# --- argument helpers ------------------------------------------------------------------


def _int(b: bytes, message: str = NOT_INT) -> int:
    v = parse_int(b)
    if v is None:
        raise RespError(message)
    return v


def _float(b: bytes, message: str = NOT_FLOAT) -> float:
    try:
        v = float(b)
    except ValueError:
        raise RespError(message) from None
    if v != v:
        raise RespError(message)
    return v


def _upper(b: bytes) -> bytes:
    return b.upper()


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _check_key(key: bytes) -> None:
    if len(key) > MAX_KEY:
        raise RespError(f"ERR key longer than {MAX_KEY} bytes")


def _refusal_message(e: ServerError) -> str:
    if e.reason == Reason.WRONG_TYPE:
        return WRONGTYPE
    if e.reason == Reason.OUT_OF_RANGE and "overflow" in e.message:
        return OVERFLOW
    resp_message = getattr(e, "resp_message", None)  # persistence.StorageRefusal: Redis's MISCONF words
    if resp_message:
        return resp_message
    return "ERR " + e.message


_GLOB_SPECIAL = re.compile(rb"[*?\[\\]")


def glob_matcher(pattern: bytes) -> tuple[bytes, Callable[[bytes], bool] | None]:
    """Redis glob (``* ? [abc] [^a-z] \\x``) -> (literal prefix, matcher or None when any key matches).

    >>> prefix, match = glob_matcher(b"user:*:name")
    >>> prefix, match(b"user:1:name"), match(b"user:1:age")
    (b'user:', True, False)
    """
    m = _GLOB_SPECIAL.search(pattern)
    prefix = pattern if m is None else pattern[: m.start()]
    if pattern == b"*" or (m is not None and pattern[m.start() :] == b"*" and b"\\" not in prefix):
        return prefix, None
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i : i + 1]))
        elif c == b"[":
            j = pattern.find(b"]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                neg = body[:1] == b"^"
                if neg:
                    body = body[1:]
                body = body.replace(b"\\", b"\\\\")
                out.append(b"[" + (b"^" if neg else b"") + body + b"]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    try:
        rx = re.compile(b"".join(out) + rb"\Z", re.S)
    except re.error:
        rx = re.compile(re.escape(pattern) + rb"\Z")
    return prefix, lambda k: rx.match(k) is not None


_ids = itertools.count(1)
_CLOSE = object()  # RespSession._exec after QUIT: stop running this batch


# --- the session ---------------------------------------------------------------------------


class RespSession:
    """One RESP connection: ``feed(bytes)`` runs every complete command, one write per call.

    Args:
        srv: the :class:`flo_server.app.Server` (stores, ``write``, ``now``, ``waiters``).
        transport: the asyncio transport replies are written to.
    """

    def __init__(self, srv: Any, transport: Any, conn: Any = None) -> None:
        self.srv = srv
        self.transport = transport
        self.conn = conn  # the edge (FloProtocol): who the connection is, failed AUTH count
        self.user = conn.user if conn is not None else srv.users.default
        self.trusted = self.user is not None and self.user.superuser
        self.id = conn.id if conn is not None else next(_ids)
        self.db = 0
        self.ns = DEFAULT_NAMESPACE
        self.resp3 = False
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.closed = False
        self.now = 0
        self.lists = lists_of(srv)
        self._core: Any = None  # flo_core.respcore.RespCore: parser + C fast path
        if RespCore is not None and not os.environ.get("FLO_NO_FASTPATH"):
            self._core = self._parser = RespCore(srv, self, self._exec)
            self._core.fast = self.trusted
            if srv.cluster is not None:
                self._core.served = srv.cluster.served  # the fast paths take only the slots this member serves
        else:
            self._parser = RespParser()
        self._blocked: asyncio.Task | None = None
        self._backlog: deque = deque()
        self._backlog_error: str | None = None
        self._paused = False
        self._close_after = False
        self._output = Output(srv, transport)
        self.out_cap = 0  # the client's output limit (FloProtocol sets it): one batch's replies past it drop the client
        self._metrics = getattr(srv, "metrics", None)
        self._scans: dict[int, tuple[int, bytes]] = {}
        self._scan_ids = itertools.count(1)

    # --- input ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Run every command completed by ``data``; replies leave in one ``transport.write``."""
        if self.closed or self._close_after:
            return
        error = None
        if self._core is not None and self._blocked is None:
            # C request loop: GET/SET/INCR served in C, the rest through self._exec, in order
            out = bytearray()
            self.now = now = self.srv.now()
            core = self._core
            try:
                rest = core.run(data, now, out)
            except RespProtocolError as e:
                rest, error = e.commands, e.message
            r, core.stopped = core.stopped, None
            self._settle(r, rest, out, error)
            return
        try:
            cmds = self._parser.feed(data)
        except RespProtocolError as e:
            cmds, error = e.commands, e.message
        if self._blocked is not None:
            # a blocking command is waiting: later commands run after it, in order
            self._backlog.extend(cmds)
            if error is not None:
                self._backlog_error = error
            if len(self._backlog) > MAX_BACKLOG and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        out = bytearray()
        self._run(cmds, out, error)

    def peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{peer[0]}:{peer[1]}" if peer else ""

    def set_user(self, user: Any) -> None:
        """AUTH succeeded or RESET (``FloProtocol.set_user``): this user's rights from the next command on."""
        self.user = user
        self.trusted = user is not None and user.superuser
        if self._core is not None:
            self._core.fast = self.trusted

    def connection_lost(self) -> None:
        """The peer went away: stop a blocked command (it takes nothing)."""
        self.closed = True
        self._output.closed = True
        if self._blocked is not None:
            self._blocked.cancel()
            self._blocked = None
        self._backlog.clear()
        # freed at once rather than by the cyclic collector (thousands of connections closing)
        self._output.on_full = self._output.on_drained = None
        if self._core is not None:
            self._core.session = self._core.slow = None
        self.conn = None

    def _run(self, cmds: list, out: bytearray, error: str | None) -> None:
        """Run parsed commands in order (the Python path; also the backlog after a blocking command)."""
        self.now = self.srv.now()
        n = len(cmds)
        i = 0
        cap = self.out_cap
        while i < n:
            if cap and len(out) > cap:
                self._settle(OUT_FULL, [], out, error)
                return
            r = self._exec(cmds[i], out)
            i += 1
            if r is not None:
                self._settle(r, cmds[i:], out, error)
                return
        self._settle(None, [], out, error)

    def _exec(self, argv: list, out: bytearray) -> Any:
        """Run one command, its reply appended to ``out``.

        Returns None to go on, a coroutine for a command that blocks, or
        :data:`_CLOSE` after QUIT: either stops the batch (``RespCore`` calls this too).
        Counted in the server's metrics, ok or error by its reply (the C paths count their own).
        """
        m = self._metrics
        if m is None:
            return self._exec_one(argv, out)
        at = len(out)
        t0 = monotonic_ns()
        r = self._exec_one(argv, out)
        ns = monotonic_ns() - t0
        error = len(out) > at and out[at] in _ERROR_MARKS
        m.record(m.slot_of_command(argv[0].decode("latin-1").lower()), 1 if error else 0,
                 ns if r is None and m.want_sample() else -1)
        if self.srv.slowlog.wants(ns):
            self.srv.slowlog.add(ns, argv, self.peer(), self.name)
        return r

    def _exec_one(self, argv: list, out: bytearray) -> Any:
        name = argv[0]
        cmd = COMMANDS.get(name)
        if cmd is None:
            cmd = COMMANDS.get(name.upper())
            if cmd is None:
                add_error(out, _unknown_command(argv))
                return None
        arity = cmd.arity
        if (arity > 0 and len(argv) != arity) or len(argv) < -arity:
            add_error(out, f"ERR wrong number of arguments for '{cmd.name}' command")
            return None
        if not self.trusted:
            refused = auth.check_resp(self.user, cmd, argv, self.ns)  # the one permission check
            if refused is not None:
                add_error(out, refused)
                return None
        router = self.srv.router
        if router is not None and cmd.group in auth.RESP_PRIMITIVE:
            moved = router.resp_redirect(auth.resp_keys(cmd, argv))  # the one routing check
            if moved is not None:
                add_error(out, moved)
                return None
        try:
            r = cmd.fn(self, argv, out)
        except RespError as e:
            add_error(out, e.message)
            return None
        except ServerError as e:
            add_error(out, _refusal_message(e))
            return None
        except Exception:  # noqa: BLE001 - never crash on client input
            log.exception("RESP command %r failed", cmd.name)
            add_error(out, f"ERR internal error in '{cmd.name}'")
            return None
        if r is not None:
            return r
        return _CLOSE if self._close_after else None

    def _settle(self, r: Any, rest: list, out: bytearray, error: str | None) -> None:
        """End of a batch: park behind a blocking command, or answer a protocol error; then send."""
        if r is OUT_FULL:
            # this batch's replies passed the client's output limit: drop the client, not them on the wire
            if self.conn is not None:
                self.conn._output_full(len(out))
            else:
                self.closed = self._output.closed = True
                self.transport.abort()
            return
        if r is not None and r is not _CLOSE:
            # A blocking command: send what is ready, hold the rest until it answers.
            self._flush(out)
            self._backlog.extend(rest)
            if error is not None:
                self._backlog_error = error
            self._blocked = asyncio.ensure_future(self._finish_blocked(r))
            return
        if error is not None and not self._close_after:
            add_error(out, "ERR " + error)
            self._close_after = True
        self._flush(out)
        if self._close_after:
            self._close_when_sent()

    def _close_when_sent(self) -> None:
        """QUIT / protocol error: close once every reply (possibly held for an fsync) is written."""
        if not self._output.holding:
            self.closed = True
            self._output.closed = True
            self.transport.close()
        else:
            self._output.on_drained = self._sent  # called once the held replies are out

    async def _finish_blocked(self, coro: Awaitable[bytearray]) -> None:
        try:
            out = await coro
        except asyncio.CancelledError:
            return
        except RespError as e:
            out = bytearray()
            add_error(out, e.message)
        except ServerError as e:
            out = bytearray()
            add_error(out, _refusal_message(e))
        except Exception:  # noqa: BLE001
            log.exception("blocking RESP command failed")
            out = bytearray()
            add_error(out, "ERR internal error")
        self._blocked = None
        if self.closed:
            return
        cmds = list(self._backlog)
        self._backlog.clear()
        error, self._backlog_error = self._backlog_error, None
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._run(cmds, out, error)

    # --- output (group commit aware: flo_core.output) ------------------------------------------

    def _flush(self, out: bytearray) -> None:
        self._output.send(out)  # ``out`` is not touched again by the caller
        if self.conn is not None and self.conn._paused:
            self.conn._check_output()  # a blocked command's reply to a client that does not read

    def _sent(self) -> None:
        if self._close_after and not self.closed:
            self._close_when_sent()

    # --- helpers for handlers ------------------------------------------------------------

    def key_type(self, key: bytes) -> bytes:
        if self.srv.kv.get(self.ns, key, self.now) is not None:
            return b"string"
        if self.lists.get(self.ns, key) is not None:
            return b"list"
        if self.stream(key) is not None:
            return b"stream"
        return b"none"

    def other_type(self, key: bytes) -> bool:
        """True when ``key`` holds a list or a stream (a string command must answer WRONGTYPE)."""
        return self.lists.get(self.ns, key) is not None or self.stream(key) is not None

    def string_entry(self, key: bytes) -> Any:
        e = self.srv.kv.get(self.ns, key, self.now)
        if e is None and self.other_type(key):
            raise RespError(WRONGTYPE)
        return e

    def stream(self, key: bytes) -> Any:
        streams = getattr(self.srv, "streams", None)
        if streams is None:
            return None
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return streams.get(self.ns, name)

    def delete_keys(self, keys: list[bytes]) -> int:
        """DEL/UNLINK: remove keys of any type; returns how many existed."""
        srv, ns, now = self.srv, self.ns, self.now
        kv_gone = [k for k in dict.fromkeys(keys) if srv.kv.get(ns, k, now) is not None]
        count = 0
        if kv_gone:
            srv.write("kv.batch", now, ns, [["del", k] for k in kv_gone])
            count += len(kv_gone)
        list_gone = [k for k in dict.fromkeys(keys) if self.lists.get(ns, k) is not None]
        if list_gone:
            count += srv.write("l.del", ns, list_gone)
        for k in dict.fromkeys(keys):
            if self.stream(k) is not None:
                _delete_stream(self, k)
                count += 1
        return count


def _unknown_command(argv: list) -> str:
    args = ""
    for a in argv[1:]:
        if len(args) >= 128:
            break
        args += "'%s' " % _text(a)[: 128 - len(args)]
    return "ERR unknown command '%s', with args beginning with: %s" % (_text(argv[0])[:128], args)


def _unknown_subcommand(argv: list) -> RespError:
    return RespError(
        "ERR unknown subcommand '%s'. Try %s HELP." % (_text(argv[1])[:128], _text(argv[0]).upper())
    )


def _delete_stream(s: RespSession, key: bytes) -> None:
    """Remove a stream and its groups through the stream store's own record."""
    s.srv.write("s.delete", s.ns, key.decode("utf-8"))
    s.srv.waiters.notify(("s", s.ns, key.decode("utf-8")), 0)


# ============================================================================================
# connection and server
# ============================================================================================


@command("ping", -1, "fast", group="connection")
def cmd_ping(s: RespSession, argv: list, out: bytearray) -> None:
    """Ping the server."""
    if len(argv) > 2:
        raise RespError("ERR wrong number of arguments for 'ping' command")
    if len(argv) == 2:
        add_bulk(out, argv[1])
    else:
        add_simple(out, b"PONG")


@command("echo", 2, "fast", group="connection")
def cmd_echo(s: RespSession, argv: list, out: bytearray) -> None:
    """Echo the given string."""
    add_bulk(out, argv[1])


@command("quit", -1, "fast", group="connection")
def cmd_quit(s: RespSession, argv: list, out: bytearray) -> None:
    """Close the connection."""
    add_ok(out)
    s._close_after = True


@command("reset", 1, "fast", group="connection")
def cmd_reset(s: RespSession, argv: list, out: bytearray) -> None:
    """Reset the connection: database 0, RESP2, no name, and (as Redis) back to the default user."""
    s.db, s.ns, s.resp3, s.name = 0, DEFAULT_NAMESPACE, False, b""
    if s.conn is not None and s.srv.users.required:
        s.conn.set_user(s.srv.users.default)
    add_simple(out, b"RESET")


@command("auth", -2, "fast", group="connection")
def cmd_auth(s: RespSession, argv: list, out: bytearray) -> Any:
    """AUTH [username] password: become that user (``default`` with one argument)."""
    if len(argv) > 3:
        raise RespError(SYNTAX)
    if not s.srv.users.required:
        raise RespError(
            "ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        )
    r = _login(s, argv[1] if len(argv) == 3 else b"default", argv[-1])
    if r is True:
        add_ok(out)
        return None
    if r is False:
        raise RespError(auth.WRONGPASS)

    async def later() -> bytearray:
        if not await r:
            add_error(out, auth.WRONGPASS)
        else:
            add_ok(out)
        return out

    return later()


def _login(s: RespSession, user: bytes, password: bytes) -> Any:
    """True / False now, or a coroutine yielding it (scrypt runs off the loop; see auth.login)."""
    if s.conn is None:
        return False
    r = auth.login(s.srv, s.conn, user.decode("utf-8", "replace"), password)
    if r is None or isinstance(r, auth.User):
        return r is not None

    async def done() -> bool:
        return await r is not None

    return done()


def _hello_map(s: RespSession) -> dict:
    return {
        b"server": b"redis",
        b"version": REDIS_VERSION.encode(),
        b"proto": 3 if s.resp3 else 2,
        b"id": s.id,
        b"mode": b"standalone",
        b"role": b"master",
        b"modules": [],
    }


@command("hello", -1, "fast", group="connection")
def cmd_hello(s: RespSession, argv: list, out: bytearray) -> Any:
    """Handshake: HELLO [protover [AUTH user pass] [SETNAME name]]."""
    proto = None
    if len(argv) >= 2:
        proto = parse_int(argv[1])
        if proto is None:
            raise RespError("ERR Protocol version is not an integer or out of range")
        if proto not in (2, 3):
            raise RespError("NOPROTO unsupported protocol version")
    i = 2
    name = None
    credentials = None
    while i < len(argv):
        opt = _upper(argv[i])
        if opt == b"AUTH" and i + 2 < len(argv):
            credentials = (argv[i + 1], argv[i + 2])
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(argv):
            name = argv[i + 1]
            _check_client_name(name)
            i += 2
        else:
            raise RespError("ERR Syntax error in HELLO option '%s'" % _text(argv[i]))

    def finish(authenticated: bool) -> None:
        if not authenticated:
            raise RespError(auth.WRONGPASS if credentials is not None else (
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> "
                "AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol "
                "version at the same time"))
        if proto is not None:
            s.resp3 = proto == 3
        if name is not None:
            s.name = name
        add_value(out, _hello_map(s), s.resp3)

    if credentials is None or not s.srv.users.required:
        if credentials is not None:
            cmd_auth(s, [b"AUTH", *credentials], bytearray())  # Redis's answer when no password is set
        finish(s.user is not None)
        return None
    r = _login(s, *credentials)
    if not isinstance(r, bool):
        async def later() -> bytearray:
            try:
                finish(await r)
            except RespError as e:
                add_error(out, e.message)
            return out

        return later()
    finish(r)
    return None


@command("acl", -2, "", group="connection")
def cmd_acl(s: RespSession, argv: list, out: bytearray) -> None:
    """ACL WHOAMI | LIST | USERS (users and rules come from --users / --requirepass)."""
    sub = _upper(argv[1])
    if sub == b"WHOAMI" and len(argv) == 2:
        add_bulk(out, (s.user.name if s.user is not None else "default").encode())
    elif sub == b"LIST" and len(argv) == 2:
        add_value(out, [line.encode() for line in s.srv.users.acl_list()], s.resp3)
    elif sub == b"USERS" and len(argv) == 2:
        add_value(out, [n.encode() for n in sorted(s.srv.users.by_name) if not n.startswith(auth.INTERNAL_PREFIX)],
                  s.resp3)
    else:
        raise _unknown_subcommand(argv)


@command("select", 2, "fast", group="connection")
def cmd_select(s: RespSession, argv: list, out: bytearray) -> None:
    """Change the database: db n is the Flo namespace ``default`` (n=0) or ``db<n>``."""
    db = parse_int(argv[1])
    if db is None:
        raise RespError(NOT_INT)
    if not 0 <= db < NUM_DATABASES:
        raise RespError("ERR DB index is out of range")
    s.db, s.ns = db, db_namespace(db)
    add_ok(out)


@command("use", 2, "fast", group="connection")
def cmd_use(s: RespSession, argv: list, out: bytearray) -> None:
    """Flo extension: switch to a namespace by name (USE orders)."""
    try:
        ns = argv[1].decode("utf-8")
    except UnicodeDecodeError:
        raise RespError("ERR namespace must be UTF-8") from None
    if not 0 < len(argv[1]) <= 255:
        raise RespError("ERR namespace must be 1..255 bytes")
    s.ns = ns
    s.db = int(ns[2:]) if ns.startswith("db") and ns[2:].isdigit() and int(ns[2:]) < NUM_DATABASES else (
        0 if ns == DEFAULT_NAMESPACE else -1)
    add_ok(out)


def _check_client_name(name: bytes) -> None:
    if any(c <= 32 or c > 126 for c in name):
        raise RespError("ERR Client names cannot contain spaces, newlines or special characters.")


def _client_info(s: RespSession) -> bytes:
    line = _client_line(s.conn) if s.conn is not None else f"id={s.id} addr=? name={_text(s.name)}"
    return line.encode() + b"\n"


def _client_line(conn: Any) -> str:
    """One CLIENT LIST line for a connection of either protocol (Redis's fields; what we do not track is 0)."""
    def addr(key: str) -> str:
        a = conn.transport.get_extra_info(key) if conn.transport is not None else None
        return f"{a[0]}:{a[1]}" if a else "?"

    r = conn.resp
    user = conn.user.name if conn.user is not None else "(none)"
    age = max(0, (conn.srv.now() - conn.created_ms) // 1000)
    name = _text(r.name) if r is not None else ""
    db = max(r.db, 0) if r is not None else 0
    proto = (3 if r.resp3 else 2) if r is not None else 0
    lib = (f"lib-name={_text(r.lib_name)} lib-ver={_text(r.lib_ver)}" if r is not None
           else f"lib-name={'flo' if conn.reader is not None else ''} lib-ver=")
    return (f"id={conn.id} addr={addr('peername')} laddr={addr('sockname')} fd=-1 name={name} age={age} idle=0 "
            f"flags=N db={db} sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 "
            f"obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={'resp' if r is not None else 'flo'} user={user} redir=-1 "
            f"resp={proto} {lib} flo-protocol={'resp' if r is not None else ('flo' if conn.reader is not None else '?')}")


def _client_kill(s: RespSession, argv: list) -> int | None:
    """CLIENT KILL addr (old form: None if no such client) or filters ID / ADDR / LADDR / USER / SKIPME."""
    conns = list(s.srv.connections)
    if len(argv) == 3:
        hits = [c for c in conns if _client_line(c).split(" ")[1] == "addr=" + _text(argv[2])]
        for c in hits:
            c.transport.close()
        return 1 if hits else None
    if len(argv) % 2:
        raise RespError(SYNTAX)
    skipme = True
    tests = []
    for i in range(2, len(argv), 2):
        field, value = _upper(argv[i]), _text(argv[i + 1])
        if field == b"ID":
            cid = parse_int(argv[i + 1])
            if cid is None:
                raise RespError("ERR client-id should be greater than 0")
            tests.append(lambda c, cid=cid: c.id == cid)
        elif field in (b"ADDR", b"LADDR"):
            key = "addr=" if field == b"ADDR" else "laddr="
            tests.append(lambda c, want=key + value, k=key: any(f == want for f in _client_line(c).split(" ")))
        elif field == b"USER":
            tests.append(lambda c, u=value: c.user is not None and c.user.name == u)
        elif field == b"SKIPME":
            skipme = value.lower() != "no"
        else:
            raise RespError(SYNTAX)
    killed = 0
    for c in conns:
        if (skipme and c is s.conn) or not all(t(c) for t in tests):
            continue
        c.transport.close()
        killed += 1
    return killed


@command("client", -2, "", group="connection")
def cmd_client(s: RespSession, argv: list, out: bytearray) -> None:
    """CLIENT SETNAME|GETNAME|ID|INFO|LIST|SETINFO|NO-EVICT|NO-TOUCH|REPLY."""
    sub = _upper(argv[1])
    if sub == b"SETNAME" and len(argv) == 3:
        _check_client_name(argv[2])
        s.name = argv[2]
        add_ok(out)
    elif sub == b"GETNAME" and len(argv) == 2:
        if s.name:
            add_bulk(out, s.name)
        else:
            add_null(out, s.resp3)
    elif sub == b"ID" and len(argv) == 2:
        add_int(out, s.id)
    elif sub == b"INFO" and len(argv) == 2:
        add_bulk(out, _client_info(s))
    elif sub == b"LIST":
        add_bulk(out, "".join(_client_line(c) + "\n" for c in sorted(s.srv.connections, key=lambda c: c.id)
                              if c.transport is not None).encode())
    elif sub == b"KILL" and len(argv) >= 3:
        n = _client_kill(s, argv)
        if len(argv) == 3:
            if n is None:
                raise RespError("ERR No such client")
            add_ok(out)
        else:
            add_int(out, n)
    elif sub == b"SETINFO" and len(argv) == 4:
        attr = _upper(argv[2])
        if attr == b"LIB-NAME":
            _check_client_name(argv[3])
            s.lib_name = argv[3]
        elif attr == b"LIB-VER":
            s.lib_ver = argv[3]
        else:
            raise RespError("ERR Unrecognized option '%s'" % _text(argv[2]))
        add_ok(out)
    elif sub in (b"NO-EVICT", b"NO-TOUCH") and len(argv) == 3:
        add_ok(out)
    elif sub in (b"SETNAME", b"GETNAME", b"ID", b"INFO", b"SETINFO", b"NO-EVICT", b"NO-TOUCH"):
        raise RespError(f"ERR wrong number of arguments for 'client|{_text(argv[1]).lower()}' command")
    else:
        raise _unknown_subcommand(argv)


def _command_info(c: Command) -> list:
    return [
        c.name.encode(),
        c.arity,
        [Simple(f.encode()) for f in c.flags],
        c.first_key,
        c.last_key,
        c.step,
        [Simple(b"@" + c.group.encode())],
        [],
        [],
        [],
    ]


def _unique_commands() -> list[Command]:
    seen: dict[str, Command] = {}
    for c in COMMANDS.values():
        seen.setdefault(c.name, c)
    return sorted(seen.values(), key=lambda c: c.name)


@command("command", -1, "", group="server")
def cmd_command(s: RespSession, argv: list, out: bytearray) -> None:
    """COMMAND [COUNT|DOCS|INFO|LIST|GETKEYS]: the table as redis-cli and redis-py read it."""
    if len(argv) == 1:
        add_value(out, [_command_info(c) for c in _unique_commands()], s.resp3)
        return
    sub = _upper(argv[1])
    if sub == b"COUNT":
        add_int(out, len(_unique_commands()))
    elif sub == b"LIST":
        add_value(out, [c.name.encode() for c in _unique_commands()], s.resp3)
    elif sub == b"INFO":
        names = argv[2:] or [c.name.encode() for c in _unique_commands()]
        add_value(out, [_command_info(COMMANDS[n.lower()]) if n.lower() in COMMANDS else None for n in names], s.resp3)
    elif sub == b"DOCS":
        wanted = [c for c in _unique_commands()] if len(argv) == 2 else [
            COMMANDS[n.lower()] for n in argv[2:] if n.lower() in COMMANDS
        ]
        docs = {
            c.name.encode(): {b"summary": c.summary.encode(), b"since": b"1.0.0", b"group": c.group.encode(),
                              b"complexity": b"O(1)", b"arguments": []}
            for c in wanted
        }
        add_value(out, docs, s.resp3)
    elif sub == b"GETKEYS" and len(argv) >= 3:
        c = COMMANDS.get(argv[2].lower())
        if c is None:
            raise RespError("ERR Invalid command specified")
        args = argv[2:]
        if c.first_key == 0:
            raise RespError("ERR The command has no key arguments")
        last = c.last_key if c.last_key >= 0 else len(args) + c.last_key
        add_value(out, [args[i] for i in range(c.first_key, last + 1, c.step or 1) if i < len(args)], s.resp3)
    else:
        raise _unknown_subcommand(argv)


def _config_values(s: RespSession) -> dict[bytes, bytes]:
    cfg = s.srv.config
    fsync = getattr(cfg, "fsync", "everysec")
    return {
        b"save": b"",
        b"appendonly": b"no" if getattr(cfg, "data_dir", None) is None else b"yes",
        b"appendfsync": {"always": b"always", "no": b"no"}.get(fsync, b"everysec"),
        b"databases": str(NUM_DATABASES).encode(),
        b"maxmemory": b"0",
        b"maxmemory-policy": b"noeviction",
        b"port": str(getattr(s.srv, "port", 9000)).encode(),
        b"bind": str(getattr(cfg, "host", "")).encode(),
        b"timeout": b"0",
        b"proto-max-bulk-len": str(16 * 1024 * 1024).encode(),
        b"maxclients": str(getattr(cfg, "max_connections", 10000)).encode(),
        b"dir": str(getattr(cfg, "data_dir", "") or "").encode(),
        b"protected-mode": b"no" if getattr(cfg, "insecure_bind", False) else b"yes",
        b"slowlog-log-slower-than": str(s.srv.slowlog.threshold_us).encode(),
        b"slowlog-max-len": str(s.srv.slowlog.max_len).encode(),
        b"flo-fsync": str(fsync).encode(),
        b"flo-http-port": str(getattr(s.srv, "http_port", None) or 0).encode(),
        b"flo-snapshot-bytes": str(getattr(cfg, "snapshot_bytes", 0)).encode(),
        b"flo-history-bytes": str(getattr(cfg, "history_bytes", 0)).encode(),
        b"flo-max-frame": str(getattr(cfg, "max_frame", 0)).encode(),
        b"flo-queue-lease-ms": str(getattr(cfg, "queue_lease_ms", 0)).encode(),
        b"flo-queue-max-deliveries": str(getattr(cfg, "queue_max_deliveries", 0)).encode(),
        b"flo-executor": b"yes" if getattr(cfg, "executor", False) else b"no",
        b"flo-auth": b"required" if s.srv.users.required else b"off",
        b"tls-port": str(getattr(s.srv, "tls_port", None) or 0).encode(),
        # requirepass and the users file are never shown (Redis shows requirepass; we do not)
    }


@command("config", -2, "admin", group="server")
def cmd_config(s: RespSession, argv: list, out: bytearray) -> None:
    """CONFIG GET pattern... | SET (the slow log's two settings only) | RESETSTAT (a no-op)."""
    sub = _upper(argv[1])
    if sub == b"GET" and len(argv) >= 3:
        values = _config_values(s)
        found: dict[bytes, bytes] = {}
        for pat in argv[2:]:
            pat = pat.lower()
            for k, v in values.items():
                if fnmatch.fnmatchcase(k.decode(), pat.decode("utf-8", "replace")):
                    found[k] = v
        add_value(out, found, s.resp3)
    elif sub == b"SET" and len(argv) >= 4 and len(argv) % 2 == 0:
        sl = s.srv.slowlog
        changes = {}
        for name, value in zip(argv[2::2], argv[3::2]):
            key, n = name.lower(), parse_int(value)
            if key not in (b"slowlog-log-slower-than", b"slowlog-max-len"):
                raise RespError(f"ERR CONFIG SET of '{_text(name)}' is not supported by flo-server; "
                                "use its command line options")
            if n is None or n < (-1 if key == b"slowlog-log-slower-than" else 0):
                raise RespError(f"ERR CONFIG SET failed (possibly related to argument '{_text(name)}') - "
                                "argument must be a number")
            changes[key] = n
        for key, n in changes.items():
            if key == b"slowlog-log-slower-than":
                sl.threshold_us = n
            else:
                sl.resize(n)
        add_ok(out)
    elif sub == b"RESETSTAT" and len(argv) == 2:
        add_ok(out)
    elif sub in (b"GET", b"SET", b"RESETSTAT"):
        raise RespError(f"ERR wrong number of arguments for 'config|{_text(argv[1]).lower()}' command")
    else:
        raise _unknown_subcommand(argv)


# --- snapshots (Redis's RDB commands; flo-server's snapshot also compacts its log, as an AOF rewrite) ---

NO_DATA_DIR = "ERR flo-server runs without a data directory (--no-persist): there is nowhere to save"
SAVE_RUNNING = "ERR Background save already in progress"
_SAVE_ANSWERS = {"started": b"Background saving started", "scheduled": b"Background saving scheduled",
                 "current": b"Background saving skipped: nothing was written since the last snapshot"}


def _disk_journal(s: RespSession) -> Any:
    journal = s.srv.journal
    if not hasattr(journal, "snapshot_in_background"):
        raise RespError(NO_DATA_DIR)
    return journal


@command("bgsave", -1, "admin", group="server")
def cmd_bgsave(s: RespSession, argv: list, out: bytearray) -> None:
    """BGSAVE [SCHEDULE]: snapshot the stores now in a forked child; the log behind it is dropped.

    Like Redis: refused while a snapshot runs, unless SCHEDULE asks for another once it is done."""
    if len(argv) > 2 or (len(argv) == 2 and _upper(argv[1]) != b"SCHEDULE"):
        raise RespError(SYNTAX)
    journal = _disk_journal(s)
    state = journal.snapshot_in_background(again=len(argv) == 2)
    if state == "running":
        raise RespError(SAVE_RUNNING)
    add_simple(out, _SAVE_ANSWERS[state])


@command("bgrewriteaof", 1, "admin", group="server")
def cmd_bgrewriteaof(s: RespSession, argv: list, out: bytearray) -> None:
    """Compact the log: in flo-server that is a snapshot (BGSAVE), after which older segments go."""
    state = _disk_journal(s).snapshot_in_background(again=True)
    add_simple(out, _SAVE_ANSWERS[state].replace(b"saving", b"append only file rewriting"))


@command("save", 1, "admin", group="server")
def cmd_save(s: RespSession, argv: list, out: bytearray) -> None:
    """Snapshot synchronously: the server serves nothing else until the snapshot is on disk (as Redis)."""
    journal = _disk_journal(s)
    if journal.snapshot_in_progress:
        raise RespError(SAVE_RUNNING)
    journal.snapshot_now()
    add_ok(out)


@command("lastsave", 1, "admin fast", group="server")
def cmd_lastsave(s: RespSession, argv: list, out: bytearray) -> None:
    """Unix time of the last snapshot put in place (the server's start until there is one)."""
    add_int(out, int(getattr(s.srv.journal, "last_save_time", s.srv.started_at)))


@command("info", -1, "", group="server")
def cmd_info(s: RespSession, argv: list, out: bytearray) -> None:
    """INFO [section ...]: server, clients, memory, persistence, stats, replication, keyspace (Redis's fields
    where flo-server has the fact, flo_* fields for its own)."""
    wanted = {a.decode("utf-8", "replace").lower() for a in argv[1:]}
    everything = not wanted or bool(wanted & {"all", "everything", "default"})
    sections = _info_sections(s, keyspace=everything or "keyspace" in wanted)
    if everything:
        wanted = set(sections)
    lines = []
    for name, rows in sections.items():
        if name not in wanted:
            continue
        lines.append(f"# {name.capitalize()}")
        lines.extend(f"{k}:{v}" for k, v in rows)
        lines.append("")
    add_bulk(out, "\r\n".join(lines).encode())


def _info_sections(s: RespSession, keyspace: bool = True) -> dict[str, list]:
    """INFO's sections; ``keyspace`` only when asked for: it counts every key (15 % of a core
    when a client polled ``INFO persistence`` every 10 ms over 100k keys)."""
    from flo_server.metrics import rss_bytes

    srv = s.srv
    cfg = srv.config
    info = srv.info()
    journal = info.get("journal") or {}
    snap = srv.metrics.snapshot() if srv.metrics is not None else {"calls": {}}
    total = sum(snap["calls"].values())
    errors = sum(n for (proto, _, st), n in snap["calls"].items() if st != 0 and (proto == "resp" or st != 2))
    rss = rss_bytes()
    uptime = int(srv.uptime())
    fsyncs = srv.journal.writer.fsync_stats()[0] if getattr(srv.journal, "writer", None) is not None else 0
    sections = {
        "server": [
            ("redis_version", REDIS_VERSION), ("redis_mode", "standalone"), ("flo_version", info.get("version", "")),
            ("os", f"{os.uname().sysname} {os.uname().release} {os.uname().machine}"), ("arch_bits", 64),
            ("process_id", os.getpid()), ("tcp_port", getattr(srv, "port", 0)),
            ("tls_port", getattr(srv, "tls_port", None) or 0), ("flo_http_port", getattr(srv, "http_port", None) or 0),
            ("uptime_in_seconds", uptime), ("uptime_in_days", uptime // 86400),
            ("executable", sys.executable), ("flo_auth", "required" if srv.users.required else "off"),
        ],
        "clients": [
            ("connected_clients", len(srv.connections)), ("maxclients", cfg.max_connections),
            ("blocked_clients", len(srv.waiters)), ("flo_resp_clients", sum(1 for c in srv.connections if c.resp)),
        ],
        "memory": [
            ("used_memory", rss), ("used_memory_human", _human(rss)), ("used_memory_rss", rss),
            ("used_memory_rss_human", _human(rss)), ("maxmemory", 0), ("maxmemory_policy", "noeviction"),
            ("flo_history_budget_bytes", cfg.history_bytes),
        ],
        "persistence": [
            ("loading", 0), ("aof_enabled", 1 if cfg.data_dir else 0),
            ("aof_last_write_status", "err" if journal.get("failed") else "ok"), ("flo_fsync", cfg.fsync),
            ("flo_last_lsn", info.get("last_lsn", 0)), ("flo_log_bytes_appended", journal.get("bytes_appended", 0)),
            ("flo_log_segments", journal.get("segments", 0)), ("flo_fsyncs", fsyncs),
            ("rdb_saves", journal.get("snapshots", 0)),
            ("rdb_bgsave_in_progress", int(bool(journal.get("snapshot_in_progress")))),
            ("rdb_changes_since_last_save", max(0, info.get("last_lsn", 0) - (journal.get("snapshot_lsn") or 0))),
            ("rdb_last_save_time", int(journal.get("last_save_time", srv.started_at))),
            ("aof_rewrite_in_progress", int(bool(journal.get("snapshot_in_progress")))),
            ("aof_rewrite_scheduled", int(bool(journal.get("snapshot_scheduled")))),
            ("rdb_last_bgsave_status", "err" if journal.get("last_snapshot_error") else "ok"),
            ("flo_storage_failures", journal.get("storage_failures", 0)),
            ("rdb_last_bgsave_time_sec", round(journal.get("last_snapshot_seconds") or 0, 3)),
            ("flo_snapshot_lsn", journal.get("snapshot_lsn") or 0),
            ("flo_snapshot_size", journal.get("last_snapshot_size") or 0),
        ],
        "stats": [
            ("total_connections_received", srv.connections_received), ("total_commands_processed", total),
            ("total_net_input_bytes", srv.metrics.bytes_in if srv.metrics is not None else 0),
            ("total_net_output_bytes", srv.metrics.bytes_out if srv.metrics is not None else 0),
            ("rejected_connections", srv.connections_rejected), ("total_error_replies", errors),
            ("client_output_buffer_limit_disconnections", getattr(srv, "clients_dropped_output_limit", 0)),
            ("flo_auth_failures", srv.users.failures), ("flo_slowlog_len", len(srv.slowlog)),
        ],
        "replication": [("role", "master"), ("connected_slaves", 0)],
    }
    if keyspace:
        rows = []
        for db in range(NUM_DATABASES):
            n = _dbsize(s, db_namespace(db))
            if n:
                expires = srv.kv.count(db_namespace(db), s.now, True)
                rows.append((f"db{db}", f"keys={n},expires={expires},avg_ttl=0"))
        sections["keyspace"] = rows
    return sections


def _human(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.2f}{unit}" if unit != "B" else f"{n}B"
        n /= 1024
    return str(n)


@command("slowlog", -2, "", group="server")
def cmd_slowlog(s: RespSession, argv: list, out: bytearray) -> None:
    """SLOWLOG GET [count] | LEN | RESET: commands slower than slowlog-log-slower-than (10 ms)."""
    sub = _upper(argv[1])
    sl = s.srv.slowlog
    if sub == b"GET" and len(argv) <= 3:
        count = 10 if len(argv) == 2 else parse_int(argv[2])
        if count is None or count < -1:
            raise RespError("ERR count should be greater than or equal to -1")
        add_value(out, [[i, ts, us, args, client, name] for i, ts, us, args, client, name in sl.entries(count)], s.resp3)
    elif sub == b"LEN" and len(argv) == 2:
        add_int(out, len(sl))
    elif sub == b"RESET" and len(argv) == 2:
        sl.reset()
        add_ok(out)
    else:
        raise _unknown_subcommand(argv)


@command("latency", -2, "", group="server")
def cmd_latency(s: RespSession, argv: list, out: bytearray) -> None:
    """LATENCY LATEST | HISTORY event | RESET [event ...]: the "command" event (slow commands, see SLOWLOG)."""
    sub = _upper(argv[1])
    events = s.srv.slowlog.latency
    if sub == b"LATEST" and len(argv) == 2:
        add_value(out, [[name.encode(), ev[-1][0], ev[-1][1], max(ms for _, ms in ev)]
                        for name, ev in sorted(events.items()) if ev], s.resp3)
    elif sub == b"HISTORY" and len(argv) == 3:
        add_value(out, [[ts, ms] for ts, ms in events.get(_text(argv[2]), [])], s.resp3)
    elif sub == b"RESET":
        names = [_text(a) for a in argv[2:]] or list(events)
        n = sum(1 for name in names if events.pop(name, None) is not None)
        add_int(out, n)
    else:
        raise _unknown_subcommand(argv)


def _dbsize(s: RespSession, ns: str) -> int:
    srv = s.srv
    n = srv.kv.count(ns, s.now) + s.lists.count(ns)
    streams = getattr(srv, "streams", None)
    if streams is not None:
        n += len(streams.names(ns))
    return n


@command("dbsize", 1, "readonly fast", group="server")
def cmd_dbsize(s: RespSession, argv: list, out: bytearray) -> None:
    """Number of keys (strings, lists and streams) in the selected database."""
    add_int(out, _dbsize(s, s.ns))


def _flush_ns(s: RespSession, ns: str) -> None:
    srv = s.srv
    srv.write("kv.flush", s.now, ns)
    if s.lists.count(ns):
        srv.write("l.flush", ns)
    streams = getattr(srv, "streams", None)
    if streams is not None:
        for name in list(streams.names(ns)):
            _delete_stream(s, name.encode())


@command("flushdb", -1, "write admin", group="server")
def cmd_flushdb(s: RespSession, argv: list, out: bytearray) -> None:
    """Delete every key of the selected database (namespace)."""
    if len(argv) > 2 or (len(argv) == 2 and _upper(argv[1]) not in (b"ASYNC", b"SYNC")):
        raise RespError(SYNTAX)
    _flush_ns(s, s.ns)
    add_ok(out)


@command("flushall", -1, "write admin", group="server")
def cmd_flushall(s: RespSession, argv: list, out: bytearray) -> None:
    """Delete every key of every namespace."""
    if len(argv) > 2 or (len(argv) == 2 and _upper(argv[1]) not in (b"ASYNC", b"SYNC")):
        raise RespError(SYNTAX)
    srv = s.srv
    spaces = set(srv.kv.namespaces()) | set(s.lists.spaces)
    streams = getattr(srv, "streams", None)
    if streams is not None:
        spaces |= set(streams.namespaces())
    saved = s.ns
    for ns in spaces:
        s.ns = ns
        _flush_ns(s, ns)
    s.ns = saved
    add_ok(out)


@command("time", 1, "fast", group="server")
def cmd_time(s: RespSession, argv: list, out: bytearray) -> None:
    """Server time: [seconds, microseconds]."""
    now = s.srv.now()
    add_value(out, [str(now // 1000).encode(), str((now % 1000) * 1000).encode()], s.resp3)


# ============================================================================================
# keys and strings (the Flo KV store, through the KV appliers)
# ============================================================================================


@command("get", 2, "readonly fast", (1, 1, 1), "string")
def cmd_get(s: RespSession, argv: list, out: bytearray) -> None:
    """Get the value of a key."""
    e = s.srv.kv.get(s.ns, argv[1], s.now)
    if e is not None:
        add_bulk(out, e.value)
    elif s.other_type(argv[1]):
        raise RespError(WRONGTYPE)
    else:
        add_null(out, s.resp3)


def _expiry_arg(s: RespSession, unit: bytes, arg: bytes, cmd: str) -> int:
    """EX/PX/EXAT/PXAT argument -> absolute expiry in unix ms."""
    v = _int(arg)
    if v <= 0:
        raise RespError(f"ERR invalid expire time in '{cmd}' command")
    if unit == b"EX":
        ms = v * 1000
        at = s.now + ms
    elif unit == b"PX":
        at = s.now + v
    elif unit == b"EXAT":
        at = v * 1000
    else:
        at = v
    if at > (1 << 62) or (unit in (b"EX", b"EXAT") and v > (1 << 62) // 1000):
        raise RespError(f"ERR invalid expire time in '{cmd}' command")
    return at


def _write_string(s: RespSession, key: bytes, value: bytes, expires_at: int | None, keep_ttl: bool = False) -> None:
    """The one string write: the KV put helper (same applier as Flo KV_PUT); a list/stream there is replaced."""
    if len(value) > MAX_KV_VALUE:
        raise RespError(f"ERR string exceeds maximum allowed size ({MAX_KV_VALUE} bytes)")
    _check_key(key)
    if s.lists.get(s.ns, key) is not None:
        s.srv.write("l.del", s.ns, [key])
    if s.stream(key) is not None:
        _delete_stream(s, key)
    if expires_at is not None and expires_at <= s.now:
        # an absolute time in the past: Redis stores nothing and deletes the key
        if s.srv.kv.get(s.ns, key, s.now) is not None:
            s.srv.write("kv.del", s.now, s.ns, key)
        return
    ttl_ms = expires_at - s.now if expires_at is not None else None
    kvh.put(s.srv, s.ns, key, value, s.now, ttl_ms, keep_ttl=keep_ttl)


@command("set", -3, "write", (1, 1, 1), "string")
def cmd_set(s: RespSession, argv: list, out: bytearray) -> None:
    """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ts|KEEPTTL]."""
    key, value = argv[1], argv[2]
    if len(argv) == 3:  # the hot path
        if len(value) <= MAX_KV_VALUE and len(key) <= MAX_KEY and not s.other_type(key):
            kvh.put(s.srv, s.ns, key, value, s.now)
        else:
            _write_string(s, key, value, None)
        add_ok(out)
        return
    nx = xx = get = keepttl = False
    expires_at = None
    i = 3
    while i < len(argv):
        opt = _upper(argv[i])
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            get = True
        elif opt == b"KEEPTTL" and expires_at is None:
            keepttl = True
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and expires_at is None and not keepttl and i + 1 < len(argv):
            expires_at = _expiry_arg(s, opt, argv[i + 1], "set")
            i += 1
        else:
            raise RespError(SYNTAX)
        i += 1
    old = s.string_entry(key) if get else s.srv.kv.get(s.ns, key, s.now)
    exists = old is not None or (not get and s.other_type(key))
    if (nx and exists) or (xx and not exists):
        if get:
            add_bulk(out, old.value) if old is not None else add_null(out, s.resp3)
        else:
            add_null(out, s.resp3)
        return
    _write_string(s, key, value, expires_at, keep_ttl=keepttl)
    if get:
        add_bulk(out, old.value) if old is not None else add_null(out, s.resp3)
    else:
        add_ok(out)


@command("setnx", 3, "write fast", (1, 1, 1), "string")
def cmd_setnx(s: RespSession, argv: list, out: bytearray) -> None:
    """Set the value only if the key does not exist."""
    if s.key_type(argv[1]) != b"none":
        add_int(out, 0)
        return
    _write_string(s, argv[1], argv[2], None)
    add_int(out, 1)


@command("setex", 4, "write", (1, 1, 1), "string")
def cmd_setex(s: RespSession, argv: list, out: bytearray) -> None:
    """Set the value and an expiry in seconds."""
    _write_string(s, argv[1], argv[3], _expiry_arg(s, b"EX", argv[2], "setex"))
    add_ok(out)


@command("psetex", 4, "write", (1, 1, 1), "string")
def cmd_psetex(s: RespSession, argv: list, out: bytearray) -> None:
    """Set the value and an expiry in milliseconds."""
    _write_string(s, argv[1], argv[3], _expiry_arg(s, b"PX", argv[2], "psetex"))
    add_ok(out)


@command("getset", 3, "write fast", (1, 1, 1), "string")
def cmd_getset(s: RespSession, argv: list, out: bytearray) -> None:
    """Set a value and return the old one (clears the TTL)."""
    old = s.string_entry(argv[1])
    _write_string(s, argv[1], argv[2], None)
    add_bulk(out, old.value) if old is not None else add_null(out, s.resp3)


@command("getdel", 2, "write fast", (1, 1, 1), "string")
def cmd_getdel(s: RespSession, argv: list, out: bytearray) -> None:
    """Return the value and delete the key."""
    old = s.string_entry(argv[1])
    if old is None:
        add_null(out, s.resp3)
        return
    s.srv.write("kv.del", s.now, s.ns, argv[1])
    add_bulk(out, old.value)


@command("getex", -2, "write fast", (1, 1, 1), "string")
def cmd_getex(s: RespSession, argv: list, out: bytearray) -> None:
    """GETEX key [EX|PX|EXAT|PXAT t|PERSIST]: get and change the expiry."""
    old = s.string_entry(argv[1])
    expires_at = None
    persist = False
    if len(argv) == 3 and _upper(argv[2]) == b"PERSIST":
        persist = True
    elif len(argv) == 4 and _upper(argv[2]) in (b"EX", b"PX", b"EXAT", b"PXAT"):
        expires_at = _expiry_arg(s, _upper(argv[2]), argv[3], "getex")
    elif len(argv) != 2:
        raise RespError(SYNTAX)
    if old is None:
        add_null(out, s.resp3)
        return
    if persist and old.expires_at:
        s.srv.write("kv.exp", s.now, s.ns, argv[1], 0)
    elif expires_at is not None:
        if expires_at <= s.now:
            s.srv.write("kv.del", s.now, s.ns, argv[1])
        else:
            s.srv.write("kv.exp", s.now, s.ns, argv[1], expires_at)
    add_bulk(out, old.value)


@command("mget", -2, "readonly fast", (1, -1, 1), "string")
def cmd_mget(s: RespSession, argv: list, out: bytearray) -> None:
    """Values of several keys (nil for missing keys and non-strings)."""
    get, ns, now = s.srv.kv.get, s.ns, s.now
    add_array(out, len(argv) - 1)
    for key in argv[1:]:
        e = get(ns, key, now)
        if e is None:
            add_null(out, s.resp3)
        else:
            add_bulk(out, e.value)


def _mset_ops(s: RespSession, argv: list) -> list:
    if len(argv) % 2 != 1:
        raise RespError(f"ERR wrong number of arguments for '{_text(argv[0]).lower()}' command")
    ops = {}
    for i in range(1, len(argv), 2):
        key, value = argv[i], argv[i + 1]
        _check_key(key)
        if len(value) > MAX_KV_VALUE:
            raise RespError(f"ERR string exceeds maximum allowed size ({MAX_KV_VALUE} bytes)")
        ops[key] = ["set", key, value, 0]
    return list(ops.values())


def _mset_write(s: RespSession, ops: list) -> None:
    """Every key at one version (one ``kv.batch`` record, the KV transaction applier)."""
    stale_lists = [op[1] for op in ops if s.lists.get(s.ns, op[1]) is not None]
    if stale_lists:
        s.srv.write("l.del", s.ns, stale_lists)
    for op in ops:
        if s.stream(op[1]) is not None:
            _delete_stream(s, op[1])
    s.srv.write("kv.batch", s.now, s.ns, ops)


@command("mset", -3, "write", (1, -1, 2), "string")
def cmd_mset(s: RespSession, argv: list, out: bytearray) -> None:
    """Set several keys atomically."""
    _mset_write(s, _mset_ops(s, argv))
    add_ok(out)


@command("msetnx", -3, "write", (1, -1, 2), "string")
def cmd_msetnx(s: RespSession, argv: list, out: bytearray) -> None:
    """Set several keys only if none of them exists."""
    ops = _mset_ops(s, argv)
    if any(s.key_type(op[1]) != b"none" for op in ops):
        add_int(out, 0)
        return
    _mset_write(s, ops)
    add_int(out, 1)


@command("del", -2, "write", (1, -1, 1), "keyspace")
def cmd_del(s: RespSession, argv: list, out: bytearray) -> None:
    """Delete keys of any type; answers how many existed."""
    add_int(out, s.delete_keys(argv[1:]))


@command("unlink", -2, "write fast", (1, -1, 1), "keyspace")
def cmd_unlink(s: RespSession, argv: list, out: bytearray) -> None:
    """Same as DEL (deletion is O(1) per key here)."""
    add_int(out, s.delete_keys(argv[1:]))


@command("exists", -2, "readonly fast", (1, -1, 1), "keyspace")
def cmd_exists(s: RespSession, argv: list, out: bytearray) -> None:
    """How many of the keys exist (a key named twice counts twice)."""
    add_int(out, sum(1 for k in argv[1:] if s.key_type(k) != b"none"))


def _incr(s: RespSession, key: bytes, delta: int, out: bytearray) -> None:
    if s.other_type(key):
        raise RespError(WRONGTYPE)
    _check_key(key)
    try:
        _, n = kvh.incr(s.srv, s.ns, key, delta, s.now)
    except Refusal as e:
        if e.reason == Reason.WRONG_TYPE:
            raise RespError(NOT_INT) from None
        raise
    add_int(out, n)


@command("incr", 2, "write fast", (1, 1, 1), "string")
def cmd_incr(s: RespSession, argv: list, out: bytearray) -> None:
    """Add 1 to a counter (decimal text, shared with Flo's kv incr)."""
    _incr(s, argv[1], 1, out)


@command("decr", 2, "write fast", (1, 1, 1), "string")
def cmd_decr(s: RespSession, argv: list, out: bytearray) -> None:
    """Subtract 1 from a counter."""
    _incr(s, argv[1], -1, out)


@command("incrby", 3, "write fast", (1, 1, 1), "string")
def cmd_incrby(s: RespSession, argv: list, out: bytearray) -> None:
    """Add an integer to a counter."""
    _incr(s, argv[1], _int(argv[2]), out)


@command("decrby", 3, "write fast", (1, 1, 1), "string")
def cmd_decrby(s: RespSession, argv: list, out: bytearray) -> None:
    """Subtract an integer from a counter."""
    d = _int(argv[2])
    if d == -(1 << 63):
        raise RespError("ERR decrement would overflow")
    _incr(s, argv[1], -d, out)


@command("append", 3, "write fast", (1, 1, 1), "string")
def cmd_append(s: RespSession, argv: list, out: bytearray) -> None:
    """Append to a string (created when missing); answers the new length."""
    old = s.string_entry(argv[1])
    value = (old.value if old is not None else b"") + argv[2]
    if len(value) > MAX_KV_VALUE:
        raise RespError(f"ERR string exceeds maximum allowed size ({MAX_KV_VALUE} bytes)")
    _check_key(argv[1])
    kvh.put(s.srv, s.ns, argv[1], value, s.now, keep_ttl=True)
    add_int(out, len(value))


@command("strlen", 2, "readonly fast", (1, 1, 1), "string")
def cmd_strlen(s: RespSession, argv: list, out: bytearray) -> None:
    """Length of a string (0 when missing)."""
    e = s.string_entry(argv[1])
    add_int(out, len(e.value) if e is not None else 0)


def _expire(s: RespSession, argv: list, out: bytearray, unit: bytes, cmd: str) -> None:
    key = argv[1]
    v = _int(argv[2])
    flags = {_upper(a) for a in argv[3:]}
    if not flags <= {b"NX", b"XX", b"GT", b"LT"}:
        raise RespError("ERR Unsupported option " + _text(next(iter(flags - {b"NX", b"XX", b"GT", b"LT"}))))
    if b"NX" in flags and flags & {b"XX", b"GT", b"LT"}:
        raise RespError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"GT" in flags and b"LT" in flags:
        raise RespError("ERR GT and LT options at the same time are not compatible")
    scale = 1000 if unit in (b"EX", b"EXAT") else 1
    if abs(v) > (1 << 62) // scale:
        raise RespError(f"ERR invalid expire time in '{cmd}' command")
    at = v * scale if unit in (b"EXAT", b"PXAT") else s.now + v * scale
    e = s.srv.kv.get(s.ns, key, s.now)
    if e is None:
        if s.other_type(key):
            raise RespError("ERR flo-server keeps TTLs on strings only; this key holds a list or stream")
        add_int(out, 0)
        return
    cur = e.expires_at  # 0 = persistent (infinite)
    if (b"NX" in flags and cur) or (b"XX" in flags and not cur):
        add_int(out, 0)
        return
    if b"GT" in flags and (not cur or at <= cur):
        add_int(out, 0)
        return
    if b"LT" in flags and cur and at >= cur:
        add_int(out, 0)
        return
    if at <= s.now:
        s.srv.write("kv.del", s.now, s.ns, key)
    else:
        s.srv.write("kv.exp", s.now, s.ns, key, at)
    add_int(out, 1)


@command("expire", -3, "write fast", (1, 1, 1), "keyspace")
def cmd_expire(s: RespSession, argv: list, out: bytearray) -> None:
    """Set a key's time to live in seconds."""
    _expire(s, argv, out, b"EX", "expire")


@command("pexpire", -3, "write fast", (1, 1, 1), "keyspace")
def cmd_pexpire(s: RespSession, argv: list, out: bytearray) -> None:
    """Set a key's time to live in milliseconds."""
    _expire(s, argv, out, b"PX", "pexpire")


@command("expireat", -3, "write fast", (1, 1, 1), "keyspace")
def cmd_expireat(s: RespSession, argv: list, out: bytearray) -> None:
    """Set a key's expiry as a unix time in seconds."""
    _expire(s, argv, out, b"EXAT", "expireat")


@command("pexpireat", -3, "write fast", (1, 1, 1), "keyspace")
def cmd_pexpireat(s: RespSession, argv: list, out: bytearray) -> None:
    """Set a key's expiry as a unix time in milliseconds."""
    _expire(s, argv, out, b"PXAT", "pexpireat")


def _ttl(s: RespSession, key: bytes) -> int:
    """Remaining ms, -1 without expiry, -2 when missing."""
    e = s.srv.kv.get(s.ns, key, s.now)
    if e is None:
        return -1 if s.other_type(key) else -2
    if not e.expires_at:
        return -1
    return max(e.expires_at - s.now, 0)


@command("ttl", 2, "readonly fast", (1, 1, 1), "keyspace")
def cmd_ttl(s: RespSession, argv: list, out: bytearray) -> None:
    """Time to live in seconds (-1 none, -2 missing)."""
    t = _ttl(s, argv[1])
    add_int(out, t if t < 0 else (t + 500) // 1000)


@command("pttl", 2, "readonly fast", (1, 1, 1), "keyspace")
def cmd_pttl(s: RespSession, argv: list, out: bytearray) -> None:
    """Time to live in milliseconds (-1 none, -2 missing)."""
    add_int(out, _ttl(s, argv[1]))


@command("expiretime", 2, "readonly fast", (1, 1, 1), "keyspace")
def cmd_expiretime(s: RespSession, argv: list, out: bytearray) -> None:
    """Absolute expiry in unix seconds (-1 none, -2 missing)."""
    e = s.srv.kv.get(s.ns, argv[1], s.now)
    add_int(out, -2 if e is None and not s.other_type(argv[1]) else (e.expires_at // 1000 if e and e.expires_at else -1))


@command("persist", 2, "write fast", (1, 1, 1), "keyspace")
def cmd_persist(s: RespSession, argv: list, out: bytearray) -> None:
    """Remove a key's expiry: 1 if it had one."""
    e = s.srv.kv.get(s.ns, argv[1], s.now)
    if e is None or not e.expires_at:
        add_int(out, 0)
        return
    s.srv.write("kv.exp", s.now, s.ns, argv[1], 0)
    add_int(out, 1)


@command("type", 2, "readonly fast", (1, 1, 1), "keyspace")
def cmd_type(s: RespSession, argv: list, out: bytearray) -> None:
    """string, list, stream or none."""
    add_simple(out, s.key_type(argv[1]))


def _all_keys(s: RespSession, prefix: bytes, after: bytes, limit: int, kinds: tuple) -> tuple[list, bytes | None]:
    """Key names of every type in byte order after ``after``; (names, last name or None when done)."""
    srv, ns = s.srv, s.ns
    names: list[bytes] = []
    if "string" in kinds:
        names, more = srv.kv.scan(ns, prefix, after, limit, s.now)
        if not more:
            names = list(names)
    others: list[bytes] = []
    if "list" in kinds:
        others += [k for k in s.lists.keys(ns) if k.startswith(prefix) and k > after]
    streams = getattr(srv, "streams", None)
    if streams is not None and "stream" in kinds:
        for name in streams.names(ns):
            k = name.encode()
            if k.startswith(prefix) and k > after:
                others.append(k)
    merged = sorted(set(names) | set(others))
    if len(merged) > limit:
        merged = merged[:limit]
        return merged, merged[-1]
    if "string" in kinds and len(names) >= limit:
        return merged, merged[-1] if merged else None
    return merged, None


@command("keys", 2, "readonly", group="keyspace")
def cmd_keys(s: RespSession, argv: list, out: bytearray) -> None:
    """Every key matching a glob pattern."""
    prefix, match = glob_matcher(argv[1])
    found: list[bytes] = []
    after = b""
    while True:
        names, last = _all_keys(s, prefix, after, 10_000, ("string", "list", "stream"))
        found += [k for k in names if match is None or match(k)]
        if last is None:
            break
        after = last
    add_bulks(out, found, s.resp3)


@command("scan", -2, "readonly", group="keyspace")
def cmd_scan(s: RespSession, argv: list, out: bytearray) -> None:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]: every key present throughout is returned once."""
    cursor = parse_int(argv[1])
    if cursor is None or cursor < 0:
        raise RespError("ERR invalid cursor")
    pattern, count, kinds = b"*", 10, ("string", "list", "stream")
    i = 2
    while i < len(argv):
        opt = _upper(argv[i])
        if i + 1 >= len(argv):
            raise RespError(SYNTAX)
        if opt == b"MATCH":
            pattern = argv[i + 1]
        elif opt == b"COUNT":
            count = _int(argv[i + 1])
            if count < 1:
                raise RespError(SYNTAX)
            count = min(count, MAX_SCAN_COUNT)
        elif opt == b"TYPE":
            kinds = (_text(argv[i + 1]).lower(),)
        else:
            raise RespError(SYNTAX)
        i += 2
    after = b""
    if cursor:
        state = s._scans.pop(cursor, None)
        if state is None or state[0] != hash(s.ns):
            raise RespError("ERR invalid cursor")
        after = state[1]
    prefix, match = glob_matcher(pattern)
    names, last = _all_keys(s, prefix, after, count, kinds)
    nxt = 0
    if last is not None:
        nxt = next(s._scan_ids)
        if len(s._scans) >= MAX_SCAN_CURSORS:
            s._scans.pop(next(iter(s._scans)))
        s._scans[nxt] = (hash(s.ns), last)
    keys = [k for k in names if match is None or match(k)]
    add_array(out, 2)
    add_bulk(out, str(nxt).encode())
    add_bulks(out, keys, s.resp3)


@command("randomkey", 1, "readonly", group="keyspace")
def cmd_randomkey(s: RespSession, argv: list, out: bytearray) -> None:
    """A key of the database (the first in byte order), or nil."""
    names, _ = _all_keys(s, b"", b"", 1, ("string", "list", "stream"))
    add_bulk(out, names[0]) if names else add_null(out, s.resp3)


# --- JSON (RedisJSON's commands on the KV store, same documents as Flo's kv.json_*) ---------------


def _json_path(arg: bytes | None) -> tuple[list, bool]:
    """RedisJSON path -> (Flo path, whether it is a ``$`` JSONPath that answers an array of matches)."""
    text = "$" if arg is None else _text(arg)
    if text in (".", "$"):
        return [], text == "$"
    return jsonpath.parse_path(text), text.startswith("$")


def _json_doc(s: RespSession, key: bytes) -> Any:
    e = s.string_entry(key)
    if e is None:
        return None, None
    try:
        return e, jsonpath.loads(e.value)
    except ServerError:
        raise RespError(WRONGTYPE) from None


@command("json.get", -2, "readonly", (1, 1, 1), "json")
def cmd_json_get(s: RespSession, argv: list, out: bytearray) -> None:
    """JSON.GET key [path]: the JSON text at path (``$`` paths answer an array of matches)."""
    paths = [a for a in argv[2:] if _upper(a) not in (b"INDENT", b"NEWLINE", b"SPACE")]
    e, doc = _json_doc(s, argv[1])
    if e is None:
        add_null(out, s.resp3)
        return
    if not paths:
        add_bulk(out, e.value)  # the stored bytes, exactly what Flo's kv get returns
        return
    path, dollar = _json_path(paths[0])
    try:
        value = jsonpath.get_at(doc, path)
    except jsonpath.Missing:
        if dollar:
            add_bulk(out, b"[]")
            return
        raise RespError(f"ERR Path '{_text(paths[0])}' does not exist") from None
    add_bulk(out, jsonpath.dumps([value] if dollar else value))


@command("json.set", -4, "write", (1, 1, 1), "json")
def cmd_json_set(s: RespSession, argv: list, out: bytearray) -> None:
    """JSON.SET key path json [NX|XX]."""
    key, raw = argv[1], argv[3]
    cond = _upper(argv[4]) if len(argv) == 5 else None
    if len(argv) > 5 or cond not in (None, b"NX", b"XX"):
        raise RespError(SYNTAX)
    path, _ = _json_path(argv[2])
    try:
        value = jsonpath.loads(raw)
    except ServerError:
        raise RespError("ERR expected value") from None
    e, doc = _json_doc(s, key)
    if not path:
        if (cond == b"NX" and e is not None) or (cond == b"XX" and e is None):
            add_null(out, s.resp3)
            return
        _write_string(s, key, raw, None)
        add_ok(out)
        return
    if e is None:
        raise RespError("ERR new objects must be created at the root")
    try:
        jsonpath.get_at(doc, path)
        present = True
    except jsonpath.Missing:
        present = False
    if (cond == b"NX" and present) or (cond == b"XX" and not present):
        add_null(out, s.resp3)
        return
    try:
        new = jsonpath.dumps(jsonpath.set_at(doc, path, value))
    except jsonpath.Missing:
        add_null(out, s.resp3)
        return
    kvh.put(s.srv, s.ns, key, new, s.now, keep_ttl=True)
    add_ok(out)


@command("json.del", -2, "write", (1, 1, 1), "json")
def cmd_json_del(s: RespSession, argv: list, out: bytearray) -> None:
    """JSON.DEL key [path]: how many values were deleted."""
    if len(argv) > 3:
        raise RespError(SYNTAX)
    e, doc = _json_doc(s, argv[1])
    if e is None:
        add_int(out, 0)
        return
    path, _ = _json_path(argv[2] if len(argv) == 3 else None)
    if not path:
        s.srv.write("kv.del", s.now, s.ns, argv[1])
        add_int(out, 1)
        return
    if not jsonpath.del_at(doc, path):
        add_int(out, 0)
        return
    kvh.put(s.srv, s.ns, argv[1], jsonpath.dumps(doc), s.now, keep_ttl=True)
    add_int(out, 1)


@command("json.forget", -2, "write", (1, 1, 1), "json")
def cmd_json_forget(s: RespSession, argv: list, out: bytearray) -> None:
    """Alias of JSON.DEL."""
    cmd_json_del(s, argv, out)


@command("json.type", -2, "readonly", (1, 1, 1), "json")
def cmd_json_type(s: RespSession, argv: list, out: bytearray) -> None:
    """JSON.TYPE key [path]: object, array, string, integer, number, boolean or null."""
    e, doc = _json_doc(s, argv[1])
    if e is None:
        add_null(out, s.resp3)
        return
    path, _ = _json_path(argv[2] if len(argv) > 2 else None)
    try:
        v = jsonpath.get_at(doc, path)
    except jsonpath.Missing:
        add_null(out, s.resp3)
        return
    name = ("null" if v is None else "boolean" if isinstance(v, bool) else "integer" if isinstance(v, int)
            else "number" if isinstance(v, float) else "string" if isinstance(v, str)
            else "array" if isinstance(v, list) else "object")
    add_simple(out, name.encode())


# ============================================================================================
# lists (flo_server.handlers.list: a deque per key, records l.*)
# ============================================================================================


def _list_or_wrongtype(s: RespSession, key: bytes) -> Any:
    d = s.lists.get(s.ns, key)
    if d is None and (s.srv.kv.get(s.ns, key, s.now) is not None or s.stream(key) is not None):
        raise RespError(WRONGTYPE)
    return d


def _push(s: RespSession, argv: list, out: bytearray, left: bool, only_existing: bool) -> None:
    key = argv[1]
    d = _list_or_wrongtype(s, key)
    if only_existing and d is None:
        add_int(out, 0)
        return
    _check_key(key)
    values = argv[2:]
    if (len(d) if d is not None else 0) + len(values) > MAX_LIST_LEN:
        raise RespError(f"ERR list would exceed {MAX_LIST_LEN} elements")
    add_int(out, s.srv.write("l.push", s.ns, key, values, left))


@command("lpush", -3, "write fast", (1, 1, 1), "list")
def cmd_lpush(s: RespSession, argv: list, out: bytearray) -> None:
    """Prepend elements (LPUSH k a b c leaves c b a)."""
    _push(s, argv, out, True, False)


@command("rpush", -3, "write fast", (1, 1, 1), "list")
def cmd_rpush(s: RespSession, argv: list, out: bytearray) -> None:
    """Append elements."""
    _push(s, argv, out, False, False)


@command("lpushx", -3, "write fast", (1, 1, 1), "list")
def cmd_lpushx(s: RespSession, argv: list, out: bytearray) -> None:
    """Prepend only when the list exists."""
    _push(s, argv, out, True, True)


@command("rpushx", -3, "write fast", (1, 1, 1), "list")
def cmd_rpushx(s: RespSession, argv: list, out: bytearray) -> None:
    """Append only when the list exists."""
    _push(s, argv, out, False, True)


def _pop(s: RespSession, argv: list, out: bytearray, left: bool) -> None:
    if len(argv) > 3:
        raise RespError(SYNTAX)
    count = None
    if len(argv) == 3:
        count = parse_int(argv[2])
        if count is None or count < 0:
            raise RespError("ERR value is out of range, must be positive")
    d = _list_or_wrongtype(s, argv[1])
    if d is None:
        if count is None:
            add_null(out, s.resp3)
        else:
            add_null_array(out, s.resp3)
        return
    if count is None:
        add_bulk(out, s.srv.write("l.pop", s.ns, argv[1], 1, left)[0])
    elif count == 0:
        add_array(out, 0)
    else:
        add_bulks(out, s.srv.write("l.pop", s.ns, argv[1], count, left), s.resp3)


@command("lpop", -2, "write fast", (1, 1, 1), "list")
def cmd_lpop(s: RespSession, argv: list, out: bytearray) -> None:
    """Remove and return the first element(s): LPOP key [count]."""
    _pop(s, argv, out, True)


@command("rpop", -2, "write fast", (1, 1, 1), "list")
def cmd_rpop(s: RespSession, argv: list, out: bytearray) -> None:
    """Remove and return the last element(s): RPOP key [count]."""
    _pop(s, argv, out, False)


@command("llen", 2, "readonly fast", (1, 1, 1), "list")
def cmd_llen(s: RespSession, argv: list, out: bytearray) -> None:
    """Length of a list (0 when missing)."""
    d = _list_or_wrongtype(s, argv[1])
    add_int(out, len(d) if d is not None else 0)


@command("lrange", 4, "readonly", (1, 1, 1), "list")
def cmd_lrange(s: RespSession, argv: list, out: bytearray) -> None:
    """Elements from start to stop (inclusive; negative counts from the end)."""
    start, stop = _int(argv[2]), _int(argv[3])
    _list_or_wrongtype(s, argv[1])
    add_bulks(out, s.lists.range(s.ns, argv[1], start, stop), s.resp3)


@command("lindex", 3, "readonly", (1, 1, 1), "list")
def cmd_lindex(s: RespSession, argv: list, out: bytearray) -> None:
    """The element at an index."""
    i = _int(argv[2])
    d = _list_or_wrongtype(s, argv[1])
    if d is None or not -len(d) <= i < len(d):
        add_null(out, s.resp3)
    else:
        add_bulk(out, d[i])


def _timeout_s(arg: bytes) -> float:
    try:
        t = float(arg)
    except ValueError:
        raise RespError("ERR timeout is not a float or out of range") from None
    if t != t or t in (float("inf"), float("-inf")):
        raise RespError("ERR timeout is not a float or out of range")
    if t < 0:
        raise RespError("ERR timeout is negative")
    return t


def _bpop(s: RespSession, argv: list, out: bytearray, left: bool) -> Any:
    keys = argv[1:-1]
    timeout = _timeout_s(argv[-1])
    for key in keys:
        if _list_or_wrongtype(s, key) is not None:
            v = s.srv.write("l.pop", s.ns, key, 1, left)
            add_array(out, 2)
            add_bulk(out, key)
            add_bulk(out, v[0])
            return None
    return _bpop_wait(s, keys, timeout, left)


async def _bpop_wait(s: RespSession, keys: list, timeout: float, left: bool) -> bytearray:
    srv, ns = s.srv, s.ns
    lists = s.lists

    def attempt() -> Any:
        if s.closed:
            return None
        for key in keys:
            if lists.get(ns, key) is not None:
                return key, srv.write("l.pop", ns, key, 1, left)[0]
        return None

    forever = timeout == 0
    remaining_ms = int(timeout * 1000) if not forever else MAX_BLOCK_S * 1000
    while True:
        got = await srv.waiters.poll([("l", ns, k) for k in keys], s, max(remaining_ms, 1), attempt)
        if got is not None or not forever or s.closed:
            break
    out = bytearray()
    if got is None:
        add_null_array(out, s.resp3)
    else:
        add_array(out, 2)
        add_bulk(out, got[0])
        add_bulk(out, got[1])
    return out


@command("blpop", -3, "write blocking", (1, -2, 1), "list")
def cmd_blpop(s: RespSession, argv: list, out: bytearray) -> Any:
    """BLPOP key [key ...] timeout: pop the first element of the first non-empty list, waiting up to timeout s."""
    return _bpop(s, argv, out, True)


@command("brpop", -3, "write blocking", (1, -2, 1), "list")
def cmd_brpop(s: RespSession, argv: list, out: bytearray) -> Any:
    """BRPOP key [key ...] timeout: like BLPOP from the tail."""
    return _bpop(s, argv, out, False)

# ============================================================================================
# streams (the Flo stream store through its s.* records; Redis ids ms-seq are StreamIDs)
# ============================================================================================

U64_MAX = (1 << 64) - 1
MAX_STREAM_COUNT = 100_000  # entries per XRANGE/XREAD answer when COUNT is absent or larger


def _stream_name(key: bytes) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise RespError("ERR flo-server stream keys must be UTF-8") from None


def _parse_id(arg: bytes, missing_seq: int = 0, what: str = "") -> tuple[int, int]:
    """``ms-seq`` / ``ms`` / ``-`` / ``+`` -> (ms, seq)."""
    if arg == b"-":
        return 0, 0
    if arg == b"+":
        return U64_MAX, U64_MAX
    ms_b, dash, seq_b = arg.partition(b"-")
    try:
        ms = int(ms_b)
        seq = int(seq_b) if dash else missing_seq
    except ValueError:
        raise RespError("ERR Invalid stream ID specified as stream command argument") from None
    if not (0 <= ms <= U64_MAX and 0 <= seq <= U64_MAX) or not ms_b.isdigit() or (dash and not seq_b.isdigit()):
        raise RespError("ERR Invalid stream ID specified as stream command argument")
    return ms, seq


def _fmt_id(ts: int, seq: int) -> bytes:
    return b"%d-%d" % (ts, seq)


def _fields_of(payload: bytes, headers: dict | None) -> list[bytes]:
    """A Flo record as Redis fields: ``payload`` (when non-empty or alone) then the headers."""
    out: list[bytes] = []
    if payload or not headers:
        out += [b"payload", payload]
    if headers:
        for k, v in headers.items():
            out += [k.encode("utf-8"), v.encode("utf-8")]
    return out


def _entry(stream: Any, ordinal: int) -> list:
    ts, seq, payload, headers = stream.record(ordinal)
    return [_fmt_id(ts, seq), _fields_of(payload, headers)]


def _stream_or_wrongtype(s: RespSession, key: bytes) -> Any:
    st = s.stream(key)
    if st is None and (s.srv.kv.get(s.ns, key, s.now) is not None or s.lists.get(s.ns, key) is not None):
        raise RespError(WRONGTYPE)
    return st


def _trim_count(st: Any, strategy: bytes, arg: bytes) -> int:
    if strategy == b"MAXLEN":
        n = _int(arg)
        if n < 0:
            raise RespError("ERR The MAXLEN argument must be >= 0.")
        return st.trim_count_max_len(n)
    ts, seq = _parse_id(arg)
    return st.trim_count_before(ts, seq)


def _trim_args(argv: list, i: int) -> tuple[bytes, bytes, int]:
    """[MAXLEN|MINID [=|~] threshold [LIMIT n]] at argv[i] -> (strategy, threshold, next index)."""
    strategy = _upper(argv[i])
    i += 1
    if i < len(argv) and argv[i] in (b"=", b"~"):
        i += 1
    if i >= len(argv):
        raise RespError(SYNTAX)
    threshold = argv[i]
    i += 1
    if i + 1 < len(argv) and _upper(argv[i]) == b"LIMIT":
        _int(argv[i + 1])
        i += 2
    return strategy, threshold, i


@command("xadd", -5, "write fast", (1, 1, 1), "stream")
def cmd_xadd(s: RespSession, argv: list, out: bytearray) -> None:
    """XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] n] <*|id> field value [field value ...]."""
    key = argv[1]
    i = 2
    nomk = False
    trim = None
    while True:
        opt = _upper(argv[i])
        if opt == b"NOMKSTREAM":
            nomk = True
            i += 1
        elif opt in (b"MAXLEN", b"MINID"):
            strategy, threshold, i = _trim_args(argv, i)
            trim = (strategy, threshold)
        else:
            break
        if i >= len(argv):
            raise RespError(SYNTAX)
    id_arg = argv[i]
    fields = argv[i + 1 :]
    if not fields or len(fields) % 2:
        raise RespError("ERR wrong number of arguments for 'xadd' command")
    st = _stream_or_wrongtype(s, key)
    if st is None and nomk:
        add_null(out, s.resp3)
        return
    name = _stream_name(key)
    payload = b""
    headers = []
    for j in range(0, len(fields), 2):
        f, v = fields[j], fields[j + 1]
        if f == b"payload" and not payload:
            payload = v
            continue
        try:
            headers.append([f.decode("utf-8"), v.decode("utf-8")])
        except UnicodeDecodeError:
            raise RespError("ERR flo-server stream fields other than 'payload' must be UTF-8") from None
    if len(payload) > MAX_KV_VALUE:
        raise RespError(f"ERR stream entry exceeds {MAX_KV_VALUE} bytes")
    now = s.now
    last = st.last_id if st is not None else (0, 0)
    if id_arg == b"*":
        ts, seq = next_id_for(st, now)
        if st is not None and last != (0, 0) and (ts, seq) <= tuple(last):  # the top is the largest id
            raise RespError("ERR The stream has exhausted the last possible ID, unable to add more items")
    else:
        ms_b, dash, seq_b = id_arg.partition(b"-")
        if dash and seq_b == b"*":
            ts = _parse_id(ms_b)[0]
            seq = last[1] + 1 if ts == last[0] else (0 if ts else 1)
            if ts < last[0] or seq > U64_MAX:
                raise RespError("ERR The ID specified in XADD is equal or smaller than the target stream top item")
        else:
            ts, seq = _parse_id(id_arg)
        if (ts, seq) == (0, 0):
            raise RespError("ERR The ID specified in XADD must be greater than 0-0")
        if (ts, seq) <= tuple(last):
            raise RespError("ERR The ID specified in XADD is equal or smaller than the target stream top item")
    s.srv.write("s.append", now, s.ns, name, ts, seq, [[payload, headers or None]])
    if trim is not None:
        st = s.stream(key)
        k = _trim_count(st, trim[0], trim[1])
        if k:
            s.srv.write("s.trim", s.ns, name, k)
    s.srv.waiters.notify(("s", s.ns, name), 0)
    add_bulk(out, _fmt_id(ts, seq))


@command("xlen", 2, "readonly fast", (1, 1, 1), "stream")
def cmd_xlen(s: RespSession, argv: list, out: bytearray) -> None:
    """Number of entries in a stream."""
    st = _stream_or_wrongtype(s, argv[1])
    if st is None:
        add_int(out, 0)
        return
    add_int(out, st.end_ord - st.visible_ord(s.now))


def _range(s: RespSession, st: Any, lo: tuple, hi: tuple, count: int, reverse: bool) -> list:
    start = max(st.lower_bound(*lo), st.visible_ord(s.now))
    end = st.upper_bound(*hi)
    if end <= start:
        return []
    if reverse:
        ords = range(end - 1, max(start, end - count) - 1, -1)
    else:
        ords = range(start, min(end, start + count))
    return [_entry(st, o) for o in ords]


def _range_cmd(s: RespSession, argv: list, out: bytearray, reverse: bool) -> None:
    if len(argv) not in (4, 6):
        raise RespError(SYNTAX)
    a, b = (argv[3], argv[2]) if reverse else (argv[2], argv[3])
    lo = _exclusive_start(a)
    hi = _exclusive_end(b)
    count = MAX_STREAM_COUNT
    if len(argv) == 6:
        if _upper(argv[4]) != b"COUNT":
            raise RespError(SYNTAX)
        count = max(0, min(_int(argv[5]), MAX_STREAM_COUNT))
    st = _stream_or_wrongtype(s, argv[1])
    if st is None or count == 0 or lo is None or hi is None:
        add_array(out, 0)
        return
    add_value(out, _range(s, st, lo, hi, count, reverse), s.resp3)


def _exclusive_start(arg: bytes) -> tuple | None:
    if arg.startswith(b"("):
        ts, seq = _parse_id(arg[1:])
        if seq == U64_MAX:
            return None if ts == U64_MAX else (ts + 1, 0)
        return ts, seq + 1
    return _parse_id(arg, 0)


def _exclusive_end(arg: bytes) -> tuple | None:
    if arg.startswith(b"("):
        ts, seq = _parse_id(arg[1:], U64_MAX)
        if seq == 0:
            return None if ts == 0 else (ts - 1, U64_MAX)
        return ts, seq - 1
    return _parse_id(arg, U64_MAX)


@command("xrange", -4, "readonly", (1, 1, 1), "stream")
def cmd_xrange(s: RespSession, argv: list, out: bytearray) -> None:
    """XRANGE key start end [COUNT n]."""
    _range_cmd(s, argv, out, False)


@command("xrevrange", -4, "readonly", (1, 1, 1), "stream")
def cmd_xrevrange(s: RespSession, argv: list, out: bytearray) -> None:
    """XREVRANGE key end start [COUNT n]."""
    _range_cmd(s, argv, out, True)


def _read_opts(argv: list, i: int, group: bool) -> tuple[int, int | None, bool, list, list]:
    count = MAX_STREAM_COUNT
    block = None
    noack = False
    while i < len(argv):
        opt = _upper(argv[i])
        if opt == b"COUNT" and i + 1 < len(argv):
            count = max(1, min(_int(argv[i + 1]), MAX_STREAM_COUNT))
            i += 2
        elif opt == b"BLOCK" and i + 1 < len(argv):
            block = _int(argv[i + 1], "ERR timeout is not an integer or out of range")
            if block < 0:
                raise RespError("ERR timeout is negative")
            i += 2
        elif opt == b"NOACK" and group:
            noack = True
            i += 1
        elif opt == b"STREAMS":
            rest = argv[i + 1 :]
            if not rest or len(rest) % 2:
                raise RespError(
                    "ERR Unbalanced '%s' list of streams: for each stream key an ID or '%s' must be specified."
                    % ("xreadgroup" if group else "xread", ">" if group else "$")
                )
            half = len(rest) // 2
            return count, block, noack, rest[:half], rest[half:]
        else:
            raise RespError(SYNTAX)
    raise RespError(SYNTAX)


def _reply_streams(s: RespSession, found: list) -> bytearray:
    """[[key, entries], ...] -> an array (RESP2) or a map (RESP3), nil when nothing."""
    out = bytearray()
    if not found:
        add_null_array(out, s.resp3)
    elif s.resp3:
        add_value(out, {k: v for k, v in found}, True)
    else:
        add_value(out, [[k, v] for k, v in found], False)
    return out


@command("xread", -4, "readonly blocking", (0, 0, 0), "stream")
def cmd_xread(s: RespSession, argv: list, out: bytearray) -> Any:
    """XREAD [COUNT n] [BLOCK ms] STREAMS key... id... ($ = only entries added after the call)."""
    count, block, _, keys, ids = _read_opts(argv, 1, False)
    starts = []
    for key, id_arg in zip(keys, ids):
        st = _stream_or_wrongtype(s, key)
        if id_arg == b"$":
            starts.append(st.last_id if st is not None else (0, 0))
        else:
            starts.append(_parse_id(id_arg, 0))

    def attempt() -> list:
        found = []
        for key, after in zip(keys, starts):
            st = s.stream(key)
            if st is None:
                continue
            ts, seq = after
            if (ts, seq) == (U64_MAX, U64_MAX):
                continue  # nothing can come after the largest id
            lo = (ts, seq + 1) if seq < U64_MAX else (ts + 1, 0)
            entries = _range(s, st, lo, (U64_MAX, U64_MAX), count, False)
            if entries:
                found.append([key, entries])
        return found

    found = attempt()
    if found or block is None:
        out += _reply_streams(s, found)
        return None
    return _block_streams(s, keys, block, attempt)


async def _block_streams(s: RespSession, keys: list, block_ms: int, attempt: Callable[[], list]) -> bytearray:
    srv = s.srv
    forever = block_ms == 0
    wkeys = [("s", s.ns, _stream_name(k)) for k in keys]

    def try_once() -> list | None:
        if s.closed:
            return None
        s.now = srv.now()
        return attempt() or None

    while True:
        found = await srv.waiters.poll(wkeys, s, MAX_BLOCK_S * 1000 if forever else block_ms, try_once)
        if found is not None or not forever or s.closed:
            break
    return _reply_streams(s, found or [])


def _group_of(s: RespSession, key: bytes, group: bytes) -> tuple[Any, Any]:
    st = _stream_or_wrongtype(s, key)
    g = st.group(_text(group)) if st is not None else None
    if g is None:
        raise RespError(
            "NOGROUP No such key '%s' or consumer group '%s' in XREADGROUP with GROUP option" % (_text(key), _text(group))
        )
    return st, g


@command("xgroup", -2, "write", (2, 2, 1), "stream")
def cmd_xgroup(s: RespSession, argv: list, out: bytearray) -> None:
    """XGROUP CREATE key group <id|$> [MKSTREAM] | DESTROY key group | CREATECONSUMER | DELCONSUMER."""
    sub = _upper(argv[1])
    if sub == b"CREATE" and len(argv) >= 5:
        key, group, id_arg = argv[2], argv[3], argv[4]
        mk = any(_upper(a) == b"MKSTREAM" for a in argv[5:])
        st = _stream_or_wrongtype(s, key)
        if st is None and not mk:
            raise RespError("ERR The XGROUP subcommand requires the key to exist. "
                            "Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.")
        if st is not None and st.group(_text(group)) is not None:
            raise RespError("BUSYGROUP Consumer Group name already exists")
        start: Any = "$" if id_arg == b"$" else None
        if start is None:
            ts, seq = _parse_id(id_arg)
            if (ts, seq) == (U64_MAX, U64_MAX):  # no id comes after it: the group's start cannot be stored
                raise RespError("ERR Invalid stream ID specified as stream command argument")
            start = None if (ts, seq) == (0, 0) else ([ts, seq + 1] if seq < U64_MAX else [ts + 1, 0])
        # Redis groups never redeliver on their own: no ack timeout, no delivery limit.
        s.srv.write("s.gcreate", s.now, s.ns, _stream_name(key), _text(group), start, 0, 0)
        add_ok(out)
    elif sub == b"DESTROY" and len(argv) == 4:
        st = _stream_or_wrongtype(s, argv[2])
        if st is None:
            raise RespError("ERR The XGROUP subcommand requires the key to exist.")
        add_int(out, 1 if s.srv.write("s.gdelete", s.ns, _stream_name(argv[2]), _text(argv[3])) else 0)
    elif sub == b"CREATECONSUMER" and len(argv) == 5:
        _group_of(s, argv[2], argv[3])
        add_int(out, 1 if s.srv.write("s.join", s.now, s.ns, _stream_name(argv[2]), _text(argv[3]), _text(argv[4])) else 0)
    elif sub == b"DELCONSUMER" and len(argv) == 5:
        _, g = _group_of(s, argv[2], argv[3])
        pending = sum(1 for p in g.pending(_text(argv[4]), 0, MAX_STREAM_COUNT, s.now))
        s.srv.write("s.leave", s.ns, _stream_name(argv[2]), _text(argv[3]), _text(argv[4]))
        add_int(out, pending)
    else:
        raise _unknown_subcommand(argv)


@command("xreadgroup", -7, "write blocking", (0, 0, 0), "stream")
def cmd_xreadgroup(s: RespSession, argv: list, out: bytearray) -> Any:
    """XREADGROUP GROUP g consumer [COUNT n] [BLOCK ms] [NOACK] STREAMS key... id... (> = new entries)."""
    if _upper(argv[1]) != b"GROUP":
        raise RespError(SYNTAX)
    group, consumer = _text(argv[2]), _text(argv[3])
    count, block, noack, keys, ids = _read_opts(argv, 4, True)
    for key in keys:
        _group_of(s, key, argv[2])

    def attempt() -> list:
        found = []
        for key, id_arg in zip(keys, ids):
            st = s.stream(key)
            if st is None:
                continue
            name = _stream_name(key)
            if id_arg == b">":
                g = st.group(group)
                if g is None or not g.has_deliverable(st, s.now):
                    continue
                ords = s.srv.write("s.gread", s.now, s.ns, name, group, consumer, count)
                if ords:
                    entries = [_entry(st, o) for o in ords]
                    if noack:
                        s.srv.write("s.ack", s.ns, name, group, [_parse_id(e[0]) for e in entries])
                    found.append([key, entries])
            else:
                ts, seq = _parse_id(id_arg)
                g = st.group(group)
                from flo_core.stream import id_int

                rows = g.pending(consumer, id_int(ts, seq) + 1, count, s.now) if g is not None else []
                entries = []
                for r in rows:
                    o = st.lower_bound(r[0], r[1])
                    if o < st.end_ord and tuple(st.id_at(o)) == (r[0], r[1]):
                        entries.append(_entry(st, o))
                    else:
                        entries.append([_fmt_id(r[0], r[1]), None])
                found.append([key, entries])
        return found

    found = attempt()
    if found or block is None or any(i != b">" for i in ids):
        out += _reply_streams(s, found)
        return None
    return _block_streams(s, keys, block, attempt)


@command("xack", -4, "write fast", (1, 1, 1), "stream")
def cmd_xack(s: RespSession, argv: list, out: bytearray) -> None:
    """XACK key group id...: how many entries left the pending list."""
    ids = [list(_parse_id(a)) for a in argv[3:]]
    st = _stream_or_wrongtype(s, argv[1])
    if st is None or st.group(_text(argv[2])) is None:
        add_int(out, 0)
        return
    add_int(out, s.srv.write("s.ack", s.ns, _stream_name(argv[1]), _text(argv[2]), ids))


@command("xpending", -3, "readonly", (1, 1, 1), "stream")
def cmd_xpending(s: RespSession, argv: list, out: bytearray) -> None:
    """XPENDING key group [[IDLE ms] start end count [consumer]]."""
    from flo_core.stream import id_int

    st, g = _group_of(s, argv[1], argv[2])
    if len(argv) == 3:
        rows = g.pending(None, 0, MAX_STREAM_COUNT, s.now)
        if not rows:
            add_value(out, [0, None, None, None], s.resp3)
            return
        per: dict[str, int] = {}
        for r in rows:
            per[r[3]] = per.get(r[3], 0) + 1
        add_value(out, [len(rows), _fmt_id(rows[0][0], rows[0][1]), _fmt_id(rows[-1][0], rows[-1][1]),
                        [[c.encode(), str(n).encode()] for c, n in per.items()]], s.resp3)
        return
    i = 3
    min_idle = 0
    if _upper(argv[i]) == b"IDLE":
        min_idle = _int(argv[i + 1])
        i += 2
    if len(argv) - i not in (3, 4):
        raise RespError(SYNTAX)
    lo, hi = _exclusive_start(argv[i]), _exclusive_end(argv[i + 1])
    count = max(0, min(_int(argv[i + 2]), MAX_STREAM_COUNT))
    consumer = _text(argv[i + 3]) if len(argv) - i == 4 else None
    res = []
    if lo is not None and hi is not None:
        for r in g.pending(consumer, id_int(*lo), MAX_STREAM_COUNT, s.now):
            if len(res) >= count or (r[0], r[1]) > hi:
                break
            if r[4] >= min_idle:
                res.append([_fmt_id(r[0], r[1]), r[3].encode(), r[4], r[2]])
    add_value(out, res, s.resp3)


def _claim(s: RespSession, key: bytes, group: bytes, consumer: bytes, min_idle: int, start: tuple, count: int) -> tuple:
    st, _ = _group_of(s, key, group)
    min_idle = max(0, min_idle)  # Redis takes a negative min-idle-time as 0 (the store's field is unsigned)
    # Flo's claim with min_idle 0 takes only the caller's own entries; Redis's takes anyone's.
    ords, nxt = s.srv.write("s.claim", s.now, s.ns, _stream_name(key), _text(group), _text(consumer),
                            min_idle, list(start), count, True)
    return st, ords, nxt


@command("xautoclaim", -6, "write", (1, 1, 1), "stream")
def cmd_xautoclaim(s: RespSession, argv: list, out: bytearray) -> None:
    """XAUTOCLAIM key group consumer min-idle start [COUNT n] [JUSTID]."""
    min_idle = _int(argv[4])
    start = _parse_id(argv[5])
    count, justid = 100, False
    i = 6
    while i < len(argv):
        opt = _upper(argv[i])
        if opt == b"COUNT" and i + 1 < len(argv):
            count = _int(argv[i + 1])
            if not 1 <= count <= MAX_STREAM_COUNT:
                raise RespError("ERR COUNT must be > 0")
            i += 2
        elif opt == b"JUSTID":
            justid = True
            i += 1
        else:
            raise RespError(SYNTAX)
    st, ords, nxt = _claim(s, argv[1], argv[2], argv[3], min_idle, start, count)
    from flo_core.stream import id_split

    cursor = b"0-0" if nxt is None or nxt == (U64_MAX << 64 | U64_MAX) else _fmt_id(*id_split(nxt))
    entries = [st.id_at(o) for o in ords] if justid else [_entry(st, o) for o in ords]
    if justid:
        entries = [_fmt_id(*e) for e in entries]
    add_value(out, [cursor, entries, []], s.resp3)


@command("xclaim", -6, "write fast", (1, 1, 1), "stream")
def cmd_xclaim(s: RespSession, argv: list, out: bytearray) -> None:
    """XCLAIM key group consumer min-idle id... [JUSTID]: take the listed pending entries."""
    from flo_core.stream import id_int

    min_idle = _int(argv[4])
    ids, justid = [], False
    for a in argv[5:]:
        if _upper(a) == b"JUSTID":
            justid = True
        elif _upper(a) in (b"FORCE", b"IDLE", b"TIME", b"RETRYCOUNT", b"LASTID"):
            raise RespError("ERR flo-server supports XCLAIM ... [JUSTID] only")
        else:
            ids.append(_parse_id(a))
    st, g = _group_of(s, argv[1], argv[2])
    got = []
    for ts, seq in ids:
        rows = g.pending(None, id_int(ts, seq), 1, s.now)
        if not rows or (rows[0][0], rows[0][1]) != (ts, seq) or rows[0][4] < min_idle:
            continue
        _, ords, _ = _claim(s, argv[1], argv[2], argv[3], min_idle, (ts, seq), 1)
        for o in ords:
            got.append(_fmt_id(*st.id_at(o)) if justid else _entry(st, o))
    add_value(out, got, s.resp3)


@command("xtrim", -4, "write", (1, 1, 1), "stream")
def cmd_xtrim(s: RespSession, argv: list, out: bytearray) -> None:
    """XTRIM key MAXLEN|MINID [=|~] threshold [LIMIT n]: how many entries went."""
    if _upper(argv[2]) not in (b"MAXLEN", b"MINID"):
        raise RespError(SYNTAX)
    strategy, threshold, i = _trim_args(argv, 2)
    if i != len(argv):
        raise RespError(SYNTAX)
    st = _stream_or_wrongtype(s, argv[1])
    if st is None:
        add_int(out, 0)
        return
    k = _trim_count(st, strategy, threshold)
    add_int(out, s.srv.write("s.trim", s.ns, _stream_name(argv[1]), k) if k else 0)


@command("xdel", -3, "write fast", (1, 1, 1), "stream")
def cmd_xdel(s: RespSession, argv: list, out: bytearray) -> None:
    """XDEL key id...: the Flo stream store removes entries from the front only (XTRIM)."""
    raise RespError("ERR XDEL is not supported: flo-server streams are append-only logs; use XTRIM")
