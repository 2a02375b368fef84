"""Users, passwords and permissions: the one place a request's rights are decided.

Both protocols ask the same questions here: who is this connection
(:meth:`Users.authenticate`, the AUTH op / RESP ``AUTH``), and may it do this
(:meth:`User.allows` with a right, a primitive, a namespace and a key). The
Flo dispatcher and the RESP command loop each call it from one seam; no
handler checks rights itself.

A users file (``--users FILE``, TOML or YAML) names users, their password
hashes and what they may do::

    [users.admin]
    password = "scrypt$14$8$1$..."        # flo-server hash-password
    allow = ["*"]                         # every right on everything

    [users.alice]
    password = "scrypt$14$8$1$..."
    [[users.alice.allow]]
    namespaces = ["a"]                    # globs; default every namespace
    primitives = ["kv", "queue"]          # kv queue stream list action; default all
    rights = ["read", "write"]            # read write admin flame:register flame:invoke
    keys = ["user:*"]                     # key / name globs (Redis ACL ~pattern); default all

    [users.default]                       # what a connection is before AUTH
    nopass = true
    [[users.default.allow]]
    namespaces = ["public"]
    rights = ["read"]

Without a users file and without ``--requirepass`` every connection is the
unrestricted ``default`` user (a loopback development server). ``--requirepass``
gives ``default`` a password: connections must AUTH before anything else.

The flamepy namespace (``flame``) has two rights of its own: writing an
application record (``app/<name>``, the ``command`` an executor runs) needs
``flame:register``, whatever else the user may write; ``flame:invoke`` grants
reading and writing the rest of that namespace (sessions, tasks, results).

Example:
    >>> users = Users.from_password("s3cret")
    >>> users.default is None                 # connections must AUTH first
    True
    >>> u = users.verify_now("default", "s3cret")
    >>> u.allows("write", "kv", "orders", b"o:1")
    True
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable

from flo_core.errors import FloError

log = logging.getLogger("flo_server.auth")

RIGHTS = ("read", "write", "admin", "flame:register", "flame:invoke")
PRIMITIVES = ("kv", "queue", "stream", "list", "action")
FLAME_NAMESPACE = os.environ.get("FLAME_NAMESPACE", "flame")
FLAME_APP_PREFIX = b"app/"  # flamepy's application records (flamepy.core.records.k_app)

# scrypt: 2**14 x 8 x 1 is 16 MiB and ~0.1 s here; verification runs off the event loop.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 14, 8, 1
MAX_PASSWORD = 4096  # bytes: longer ones are refused before hashing
VERIFIED_CACHE = 16  # per user: digests of passwords already verified (repeat AUTH skips scrypt)
INTERNAL_PREFIX = "flo:"  # users the server makes for itself (the embedded executor manager)


class UsersFileError(FloError, ValueError):
    """The users file cannot be read or says something this server does not understand."""


# --- password hashes ----------------------------------------------------------------------


def hash_password(password: str | bytes, *, log2_n: int = SCRYPT_LOG2_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash for a users file: ``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>``.

    >>> hash_password("pw").startswith("scrypt$14$8$1$")
    True
    """
    pw = password.encode("utf-8") if isinstance(password, str) else password
    salt = os.urandom(16)
    digest = _scrypt(pw, salt, log2_n, r, p)
    return f"scrypt${log2_n}${r}${p}${_b64(salt)}${_b64(digest)}"


def check_password(stored: str, password: bytes) -> bool:
    """Does ``password`` match the stored hash? Constant time in the digest comparison."""
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(log2_n), int(r), int(p), len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def _scrypt(pw: bytes, salt: bytes, log2_n: int, r: int, p: int, dklen: int = 32) -> bytes:
    if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    n = 1 << log2_n
    return hashlib.scrypt(pw, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=dklen)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _valid_hash(h: str) -> bool:
    parts = h.split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and all(x.isdigit() for x in parts[1:4])


# --- rules and users ----------------------------------------------------------------------


def _glob(pattern: str) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern), re.S)


def _bytes_glob(pattern: bytes) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern.decode("latin-1")).encode("latin-1"), re.S)


@dataclass(frozen=True)
class Rule:
    """One ``allow`` entry: these rights on these primitives in these namespaces, for these keys."""

    namespaces: tuple[str, ...] = ("*",)
    primitives: frozenset = frozenset(PRIMITIVES)
    rights: frozenset = frozenset(RIGHTS)
    keys: tuple[bytes, ...] | None = None  # None: every key

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ns", [_glob(n) for n in self.namespaces])
        object.__setattr__(self, "_keys", None if self.keys is None else [_bytes_glob(k) for k in self.keys])

    def covers(self, right: str, prim: str | None, ns: str) -> bool:
        return right in self.rights and (prim is None or prim in self.primitives) and any(
            g.fullmatch(ns) for g in self._ns)  # type: ignore[attr-defined]

    @property
    def everything(self) -> bool:
        return (self.rights == frozenset(RIGHTS) and self.primitives == frozenset(PRIMITIVES)
                and self.keys is None and "*" in self.namespaces)

    def describe(self) -> str:
        """Redis-ACL-like text for ``ACL LIST``: ``ns=a kv,queue +read +write ~user:*``."""
        if self.everything:
            return "~* &* +@all"
        keys = "~*" if self.keys is None else " ".join("~" + k.decode("latin-1") for k in self.keys)
        prims = "all" if self.primitives == frozenset(PRIMITIVES) else ",".join(sorted(self.primitives))
        rights = " ".join("+" + r for r in RIGHTS if r in self.rights)
        return f"ns={','.join(self.namespaces)} {prims} {rights} {keys}"


@dataclass
class User:
    """A user: passwords (hashes), whether it needs one, and its rules."""

    name: str
    hashes: tuple[str, ...] = ()
    nopass: bool = False
    enabled: bool = True
    rules: tuple[Rule, ...] = ()
    _verified: dict = field(default_factory=dict, repr=False)  # sha256(password) -> True (bounded)
    _grants: dict = field(default_factory=dict, repr=False)  # (right, prim, ns) -> None | True | [rules with keys]

    @property
    def superuser(self) -> bool:
        """Every right on everything: the connection may use the C fast paths unchecked."""
        return any(r.everything for r in self.rules)

    def allows(self, right: str, prim: str | None, ns: str, key: bytes | None) -> bool:
        """May this user exercise ``right`` on ``prim`` in ``ns`` for ``key``?

        ``key`` None asks about the namespace as a whole (list ops): key patterns are not
        applied, as Redis applies none to SCAN/KEYS.

        >>> u = User("u", rules=(Rule(namespaces=("a",), rights=frozenset({"read"})),))
        >>> u.allows("read", "kv", "a", b"k"), u.allows("write", "kv", "a", b"k"), u.allows("read", "kv", "b", b"k")
        (True, False, False)
        """
        if ns == FLAME_NAMESPACE and right in ("read", "write"):
            if right == "write" and prim == "kv" and key is not None and key.startswith(FLAME_APP_PREFIX):
                right = "flame:register"  # an application record names a command to run
            elif self._grant("flame:invoke", prim, ns, key):
                return True
        return self._grant(right, prim, ns, key)

    def allows_prefix(self, right: str, prim: str, ns: str, prefix: bytes) -> bool:
        """May the user list keys starting with ``prefix`` (KV scan)? Only if every such key is allowed."""
        if ns == FLAME_NAMESPACE and right == "read" and self._grant_entry("flame:invoke", prim, ns) is True:
            return True
        g = self._grant_entry(right, prim, ns)
        if g is None or g is True:
            return g is True
        for rule in g:
            for k in rule.keys:
                lit = k[:-1]  # a pattern "lit*" covers every key of a prefix that starts with lit
                if k.endswith(b"*") and not any(c in b"*?[\\" for c in lit) and prefix.startswith(lit):
                    return True
        return False

    def _grant(self, right: str, prim: str | None, ns: str, key: bytes | None) -> bool:
        g = self._grant_entry(right, prim, ns)
        if g is None or g is True:
            return g is True
        if key is None:
            return True
        return any(m.fullmatch(key) for rule in g for m in rule._keys)

    def _grant_entry(self, right: str, prim: str | None, ns: str) -> Any:
        k = (right, prim, ns)
        try:
            return self._grants[k]
        except KeyError:
            pass
        g: Any = None
        for rule in self.rules:
            if rule.covers(right, prim, ns):
                if rule.keys is None:
                    g = True
                    break
                g = (g or []) + [rule]
        if len(self._grants) > 4096:
            self._grants.clear()
        self._grants[k] = g
        return g

    def describe(self) -> str:
        """One ``ACL LIST`` line (no password material)."""
        state = "on" if self.enabled else "off"
        pw = "nopass" if self.nopass else f"{len(self.hashes)} password(s)"
        rules = " | ".join(r.describe() for r in self.rules) or "-@all"
        return f"user {self.name} {state} {pw} {rules}"


ROOT_RULE = Rule()


class Users:
    """Every user the server knows and who a new connection starts as."""

    def __init__(self, users: Iterable[User], *, required: bool) -> None:
        self.by_name: dict[str, User] = {u.name: u for u in users}
        self.required = required  # connections must (or may) authenticate: auth is configured
        d = self.by_name.get("default")
        self.default: User | None = d if d is not None and d.enabled and (d.nopass or not required) else None
        self.failures = 0  # failed AUTH attempts, server-wide (INFO / metrics)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def open_access(cls) -> "Users":
        """No auth configured: everyone is the unrestricted ``default`` user."""
        return cls([User("default", nopass=True, rules=(ROOT_RULE,))], required=False)

    @classmethod
    def from_password(cls, password: str) -> "Users":
        """``--requirepass``: one password for the unrestricted ``default`` user (hashed in memory)."""
        return cls([User("default", hashes=(hash_password(password, log2_n=10),), rules=(ROOT_RULE,))], required=True)

    @classmethod
    def load(cls, path: str, requirepass: str | None = None) -> "Users":
        """Read a users file (``.toml``, ``.yaml``/``.yml``); ``requirepass`` sets ``default``'s password."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise UsersFileError(f"cannot read users file {path}: {e.strerror}") from None
        try:
            if path.endswith((".yaml", ".yml")):
                import yaml

                doc = yaml.safe_load(raw.decode("utf-8")) or {}
            else:
                import tomllib

                doc = tomllib.loads(raw.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 - any parse error: say where, never the contents
            raise UsersFileError(f"users file {path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'TOML'}: "
                                 f"{type(e).__name__}") from None
        users = _parse_users(doc, path)
        if requirepass:
            d = users.get("default")
            users["default"] = User("default", hashes=(hash_password(requirepass, log2_n=10),),
                                    rules=d.rules if d is not None else (ROOT_RULE,))
        return cls(users.values(), required=True)

    @classmethod
    def from_config(cls, cfg: Any) -> "Users":
        if cfg.users_file:
            return cls.load(cfg.users_file, cfg.requirepass)
        if cfg.requirepass:
            return cls.from_password(cfg.requirepass)
        return cls.open_access()

    def add_internal(self, name: str, rules: tuple[Rule, ...]) -> str:
        """A user only this process knows (a random password, never written anywhere); returns the password."""
        password = secrets.token_urlsafe(24)
        self.by_name[INTERNAL_PREFIX + name] = User(INTERNAL_PREFIX + name, hashes=(hash_password(password, log2_n=10),),
                                                    rules=rules)
        return password

    # --- authentication ---------------------------------------------------------------------

    def lookup(self, name: str, password: bytes) -> tuple[User | None, bool]:
        """``(user, known)``: ``known`` when the answer needs no scrypt (cached or impossible)."""
        u = self.by_name.get(name)
        if u is None or not u.enabled or len(password) > MAX_PASSWORD:
            return None, True
        if u.nopass:
            return u, True
        if hashlib.sha256(password).digest() in u._verified:
            return u, True
        return u, False

    def verify_now(self, name: str, password: str | bytes) -> User | None:
        """Check a password here and now (scrypt on this thread: off the event loop, or in tests)."""
        pw = password.encode("utf-8") if isinstance(password, str) else password
        u, known = self.lookup(name, pw)
        if known:
            return u
        assert u is not None
        if any(check_password(h, pw) for h in u.hashes):
            if len(u._verified) >= VERIFIED_CACHE:
                u._verified.clear()
            u._verified[hashlib.sha256(pw).digest()] = True
            return u
        return None

    def acl_list(self) -> list[str]:
        return [u.describe() for n, u in sorted(self.by_name.items()) if not n.startswith(INTERNAL_PREFIX)]


def _parse_users(doc: Any, path: str) -> dict[str, User]:
    if not isinstance(doc, dict) or not isinstance(doc.get("users"), dict) or not doc["users"]:
        raise UsersFileError(f"users file {path}: expected a 'users' table with at least one user")
    out: dict[str, User] = {}
    for name, spec in doc["users"].items():
        where = f"users file {path}, user {name!r}"
        if not isinstance(name, str) or not name or name.startswith(INTERNAL_PREFIX) or any(c.isspace() for c in name):
            raise UsersFileError(f"{where}: bad user name")
        if not isinstance(spec, dict):
            raise UsersFileError(f"{where}: expected a table")
        unknown = set(spec) - {"password", "passwords", "nopass", "enabled", "allow"}
        if unknown:
            raise UsersFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        hashes = list(spec.get("passwords") or []) + ([spec["password"]] if spec.get("password") else [])
        for h in hashes:
            if not isinstance(h, str) or not _valid_hash(h):
                # Never echo the value: it may be a plain password typed by mistake.
                raise UsersFileError(f"{where}: a password is not a scrypt hash (make one with: flo-server hash-password)")
        nopass = bool(spec.get("nopass", False))
        if not hashes and not nopass:
            raise UsersFileError(f"{where}: give a password hash or nopass = true")
        out[name] = User(name, hashes=tuple(hashes), nopass=nopass, enabled=bool(spec.get("enabled", True)),
                         rules=tuple(_parse_rule(r, where) for r in _as_list(spec.get("allow", []))))
    return out


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _parse_rule(r: Any, where: str) -> Rule:
    if r == "*":
        return ROOT_RULE
    if not isinstance(r, dict):
        raise UsersFileError(f"{where}: an allow entry is \"*\" or a table")
    unknown = set(r) - {"namespaces", "primitives", "rights", "keys"}
    if unknown:
        raise UsersFileError(f"{where}: unknown allow field(s) {', '.join(sorted(unknown))}")
    ns = tuple(_strings(r.get("namespaces", ["*"]), where, "namespaces"))
    prims = _strings(r.get("primitives", ["*"]), where, "primitives")
    rights = _strings(r.get("rights", ["*"]), where, "rights")
    prims = list(PRIMITIVES) if "*" in prims else prims
    rights = list(RIGHTS) if "*" in rights else rights
    for p in prims:
        if p not in PRIMITIVES:
            raise UsersFileError(f"{where}: unknown primitive {p!r} (one of {', '.join(PRIMITIVES)})")
    for x in rights:
        if x not in RIGHTS:
            raise UsersFileError(f"{where}: unknown right {x!r} (one of {', '.join(RIGHTS)})")
    keys = r.get("keys")
    kb = None if keys is None or "*" in _strings(keys, where, "keys") else tuple(
        k.encode("utf-8") for k in _strings(keys, where, "keys"))
    return Rule(ns, frozenset(prims), frozenset(rights), kb)


def _strings(v: Any, where: str, what: str) -> list[str]:
    v = _as_list(v)
    if not all(isinstance(x, str) and x for x in v):
        raise UsersFileError(f"{where}: {what} must be non-empty strings")
    return v


# --- the Flo protocol's seam (flo_server.dispatch calls check_flo once per request) ---------

# The refusals' messages (status UNAUTHORIZED, reason UNCLASSIFIED: the reason list is fixed by the
# table hash the public SDK checks). Clients tell them apart by these opening words.
NOT_AUTHENTICATED = "authentication required: send AUTH with a user name and password"
NO_PERMISSION = "no permission"
AUTH_FAILED = "invalid username-password pair or user is disabled."


def unauthorized(message: str) -> Exception:
    from flo_core.errors import Refusal
    from flo_core.spec import Reason, Status

    return Refusal(Reason.UNCLASSIFIED, message, status=Status.UNAUTHORIZED)


def _flo_access() -> dict[int, tuple[str | None, str | None]]:
    """op -> (primitive, right): from the op's range and its spec flags (read unless it writes)."""
    from flo_core.spec import SPEC, Flag, Op

    table: dict[int, tuple[str | None, str | None]] = {}
    for op, s in SPEC.items():
        right = "write" if s.flags & Flag.WRITE else "read"
        if op < 0x010 or op == Op.CLUSTER_SLOTS:
            table[op] = (None, None)  # PING, SERVER_INFO, AUTH, the slot map: any authenticated connection
        elif op < 0x100:
            table[op] = (None, "admin")  # namespaces, cluster
        elif op < 0x130:
            table[op] = ("kv", right)
        elif op < 0x170:
            table[op] = ("stream", right)
        elif op < 0x1A0:
            table[op] = ("queue", right)
        elif op < 0x300:
            table[op] = ("kv", right)  # time series (not served): as KV
        else:
            table[op] = ("action", right)
    table[int(Op.AUTH)] = ("auth", None)
    return table


FLO_ACCESS = _flo_access()


def _namespace_ops() -> frozenset[int]:
    """Ops checked against the namespace, not a key: list ops (no key patterns, as Redis's SCAN),
    and commit / rollback (their key field is empty; each buffered write was checked when sent)."""
    from flo_core.spec import Op

    return frozenset(int(o) for o in (Op.STREAM_LIST, Op.QUEUE_LIST, Op.ACTION_LIST, Op.ACTION_LIST_RUNS, Op.WORKER_LIST,
                                      Op.KV_COMMIT_TXN, Op.KV_ROLLBACK_TXN))


NAMESPACE_OPS = _namespace_ops()


def flo_keys(req: Any) -> list[bytes]:
    """The keys a Flo request touches: its key field, or the keys inside an MGET / MPUT body."""
    from flo_core.body import Reader
    from flo_core.spec import Op

    if req.op == Op.KV_MGET:
        r = Reader(req.body)
        return [r.bytes16() for _ in range(r.u16())]
    if req.op == Op.KV_MPUT:
        r = Reader(req.value)
        keys = []
        for _ in range(r.u16()):
            keys.append(r.bytes16())
            r.bytes32()
            r.opt_u64()
            r.opt_u64()
        return keys
    return [req.key]


def check_flo(user: User | None, req: Any) -> None:
    """Raise the refusal a Flo request gets from this connection's user, or return."""
    from flo_core.spec import Op

    prim, right = FLO_ACCESS.get(req.op, (None, "admin"))
    if prim == "auth":
        return
    if user is None:
        raise unauthorized(NOT_AUTHENTICATED)
    if right is None:
        return
    ns = req.ns
    keys: list[bytes] = []
    if right == "admin":
        ok = user.allows("admin", None, ns, None)
    elif req.op in NAMESPACE_OPS:
        ok = user.allows(right, prim, ns, None)
    elif req.op == Op.KV_SCAN:
        ok = user.allows_prefix(right, prim, ns, req.key)
    else:
        keys = flo_keys_safe(req)
        ok = all(user.allows(right, prim, ns, k) for k in keys)
    if not ok:
        if ns == FLAME_NAMESPACE and prim == "kv" and right == "write" and any(k.startswith(FLAME_APP_PREFIX) for k in keys):
            what = "register flamepy applications (needs flame:register)"
        else:
            what = f"{right} {prim or 'the server'} in namespace {ns!r}" + (" (this key)" if keys else "")
        raise unauthorized(f"{NO_PERMISSION}: user {user.name!r} may not {what}")


def flo_keys_safe(req: Any) -> list[bytes]:
    """:func:`flo_keys`, or just the key field when the body is malformed (the handler refuses it)."""
    try:
        return flo_keys(req)
    except Exception:  # noqa: BLE001
        return [req.key]


# --- the RESP seam (RespSession._exec calls check_resp once per command) ---------------------

NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS " + AUTH_FAILED
NOPERM_KEYS = "NOPERM this user has no permissions to access one of the keys used as arguments"
RESP_NO_AUTH_NEEDED = frozenset({"auth", "hello", "quit", "reset"})  # what an unauthenticated client may send
RESP_PRIMITIVE = {"string": "kv", "keyspace": "kv", "json": "kv", "generic": "kv", "list": "list", "stream": "stream"}


def resp_keys(cmd: Any, argv: list) -> list[bytes]:
    """The keys a RESP command names (its table's key positions; XREAD/XREADGROUP after STREAMS)."""
    if cmd.name in ("xread", "xreadgroup"):
        up = [a.upper() for a in argv]
        if b"STREAMS" in up:
            rest = argv[up.index(b"STREAMS") + 1:]
            return rest[: len(rest) // 2]
        return []
    first, last, step = cmd.first_key, cmd.last_key, cmd.step
    if first <= 0 or len(argv) <= first:
        return []
    end = len(argv) + last if last < 0 else min(last, len(argv) - 1)
    return argv[first:end + 1:max(step, 1)]


def check_resp(user: User | None, cmd: Any, argv: list, ns: str) -> str | None:
    """The Redis error a command gets from this user, or None when it may run."""
    if user is None:
        return None if cmd.name in RESP_NO_AUTH_NEEDED else NOAUTH
    if "admin" in cmd.flags or (cmd.name == "acl" and argv[1].upper() != b"WHOAMI") or (
            cmd.name in ("client", "slowlog", "latency") and argv[1].upper() in (b"KILL", b"RESET")):
        # FLUSHDB is the selected namespace's; FLUSHALL and CONFIG are the whole server's.
        scope = ns if cmd.name == "flushdb" else "*"
        return None if user.allows("admin", None, scope, None) else _noperm(cmd)
    prim = RESP_PRIMITIVE.get(cmd.group)
    if prim is None:
        return None  # connection and server commands: any authenticated user
    right = "write" if "write" in cmd.flags else "read"
    keys = resp_keys(cmd, argv)
    if not keys:
        return None if user.allows(right, prim, ns, None) else _noperm(cmd)
    if all(user.allows(right, prim, ns, k) for k in keys):
        return None
    # Redis's two wordings: the command as a whole, or one of its keys.
    return NOPERM_KEYS if user.allows(right, prim, ns, None) or ns == FLAME_NAMESPACE else _noperm(cmd)


def _noperm(cmd: Any) -> str:
    return f"NOPERM this user has no permissions to run the '{cmd.name}' command"


# --- logging in: both protocols ---------------------------------------------------------------

MAX_AUTH_FAILURES = 10  # a connection that fails this many times is closed
AUTH_DELAY_S = 0.05  # after a failure, the next answer waits this long, doubling per failure (at most 1 s)


def login(srv: Any, conn: Any, name: str, password: bytes) -> Any:
    """Check a user name and password for ``conn``.

    Returns the :class:`User` (or None) right away when no scrypt is needed and the
    connection has not failed before; otherwise a coroutine that verifies off the event
    loop (one thread call) after the rate-limit wait, and yields the user or None. On
    success ``conn.set_user(user)`` has been called; a connection that fails
    :data:`MAX_AUTH_FAILURES` times is closed after its answer.
    """
    users = srv.users
    u, known = users.lookup(name, password)
    if known and u is not None and not conn.auth_failures:
        conn.set_user(u)
        return u

    async def verify() -> User | None:
        import asyncio

        loop = asyncio.get_running_loop()
        if conn.auth_failures:
            await asyncio.sleep(min(AUTH_DELAY_S * 2 ** (conn.auth_failures - 1), 1.0))
        user = u if known else await loop.run_in_executor(_scrypt_pool(), users.verify_now, name, password)
        if u is None and known:
            # an unknown user costs the same time as a wrong password: no user enumeration by timing
            await loop.run_in_executor(_scrypt_pool(), check_password, _dummy_hash(), password[:MAX_PASSWORD])
        if user is None:
            conn.auth_failures += 1
            users.failures += 1
            if conn.auth_failures >= MAX_AUTH_FAILURES:
                peer = conn.transport.get_extra_info("peername")
                log.warning("closing the connection from %s after %d failed AUTH attempts", peer, conn.auth_failures)
                loop.call_soon(conn.transport.close)  # after this answer is written
            return None
        conn.set_user(user)
        return user

    return verify()


_DUMMY: list[str] = []
_POOL: list[Any] = []


def _scrypt_pool() -> Any:
    """The threads that check passwords: two. Each scrypt takes 16 MiB that the thread's malloc
    arena keeps after it returns, and a flood of failing AUTHs (anyone may send them) would
    otherwise occupy every thread of the loop's default executor: memory and cores both
    bounded here (the live fuzz test measured +96 MiB RSS with the default executor's 6)."""
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="flo-scrypt"))
    return _POOL[0]


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_bytes(8)))
    return _DUMMY[0]
