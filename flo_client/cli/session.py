"""What every ``flo`` command shares: where to connect, how to run, how to print.

* :class:`ConnectOptions` resolves the connection from the command line, the
  environment, the config file and the default, in that order.
* :class:`Session` (``ctx.obj``) runs a command's coroutine on a connected
  :class:`~flo_client.FloClient` and turns failures into ``flo: <message>`` and
  an exit code: 1 for a refused request, 2 for a server it could not reach.
* :func:`flo_command` makes ``async def cmd(session, client, **params)`` a click
  callback; :meth:`Session.emit` prints a result as text or, with ``--json``, as
  one JSON document.

Example::

    @kv.command("get")
    @click.argument("key")
    @flo_command
    async def kv_get(session: Session, client: FloClient, key: str) -> None:
        got = await client.kv.get(key)
        session.emit({"key": key, "value": json_bytes(got.value)}, text_of(got.value))
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import functools
import importlib
import json
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import click

from flo_core.errors import ConnectionClosedError, FloError, RequestTimeoutError, ServerError
from flo_core.spec import DEFAULT_NAMESPACE

from ..client import FloClient, parse_url

DEFAULT_ENDPOINT = "127.0.0.1:9000"
EXIT_REFUSED = 1  # the server (or this side's argument checks) said no
EXIT_UNREACHABLE = 2  # no connection, or no answer in time
EXIT_INTERRUPTED = 130  # Ctrl-C, like a shell
EXIT_BROKEN_PIPE = 141  # the reader went away (SIGPIPE), like a shell
CONFIG_KEYS = ("url", "user", "password", "namespace", "ca_file", "tls")


class CliError(click.ClickException):
    """An error the user should read: printed as ``flo: <message>``, exits ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"flo: {self.message}", err=True)


# --- where to connect -----------------------------------------------------------------------------


def default_config_path() -> Path:
    """``$FLO_CONFIG``, else ``$XDG_CONFIG_HOME/flo/config.toml`` (``~/.config`` without it)."""
    if os.environ.get("FLO_CONFIG"):
        return Path(os.environ["FLO_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "flo" / "config.toml"


def load_config(path: Path, required: bool) -> dict[str, Any]:
    """The config file's keys; a missing default file is no config at all, a missing ``--config`` an error."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise CliError(f"config file {path} does not exist", EXIT_UNREACHABLE) from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise CliError(f"cannot read config file {path}: {e}", EXIT_UNREACHABLE) from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise CliError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})",
                       EXIT_UNREACHABLE)
    return data


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None and v != ""), None)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Target:
    """A resolved connection: everything FloClient needs."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    ca_file: str | None
    namespace: str
    timeout_ms: int

    @property
    def address(self) -> str:
        return ("flos://" if self.tls or self.ca_file else "") + _join_host_port(self.host, self.port)

    def client(self) -> FloClient:
        """A new, not yet connected client for this target."""
        return FloClient(_join_host_port(self.host, self.port), namespace=self.namespace, timeout_ms=self.timeout_ms,
                         username=self.username, password=self.password, tls=self.tls or None, ca_file=self.ca_file)


@dataclass
class ConnectOptions:
    """The connection options as given on the command line (None: not given)."""

    url: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    tls: bool | None = None
    ca_file: str | None = None
    namespace: str | None = None
    config_path: str | None = None
    timeout: float = 5.0

    def resolve(self) -> Target:
        """Each setting from the first place that has it: option, the URL in use, environment, config file, default.

        The endpoint is ``--url``, else ``--host``/``--port``, else ``$FLO_URL``, else the config's
        ``url``, else 127.0.0.1:9000; credentials in that URL beat ``$FLO_USER``/``$FLO_PASSWORD``
        and the config's ``user``/``password``.
        """
        path = Path(self.config_path).expanduser() if self.config_path else default_config_path()
        cfg = load_config(path, required=self.config_path is not None)
        env = os.environ
        if self.url:
            url = self.url
        elif self.host or self.port:
            url = _join_host_port(self.host or "127.0.0.1", self.port or 9000)
        else:
            url = _first(env.get("FLO_URL"), cfg.get("url"), DEFAULT_ENDPOINT)
        try:
            host, port, url_user, url_password, url_tls = parse_url(url)
        except FloError as e:
            raise CliError(str(e), EXIT_UNREACHABLE) from None
        user = _first(self.user, url_user, env.get("FLO_USER"), cfg.get("user"))
        password = _first(self.password, url_password, env.get("FLO_PASSWORD"), cfg.get("password"))
        if user is not None and password is None:
            if not sys.stdin.isatty():
                raise CliError(f"user {user!r} needs a password: --password, $FLO_PASSWORD or the config file",
                               EXIT_UNREACHABLE)
            password = click.prompt(f"password for {user}", hide_input=True, err=True)
        tls = _first(self.tls, url_tls or None, cfg.get("tls"))
        return Target(host=host, port=port, username=user, password=password, tls=bool(tls),
                      ca_file=_first(self.ca_file, env.get("FLO_CA_FILE"), cfg.get("ca_file")),
                      namespace=_first(self.namespace, env.get("FLO_NAMESPACE"), cfg.get("namespace"),
                                       DEFAULT_NAMESPACE),
                      timeout_ms=int(self.timeout * 1000))


# --- running a command ---------------------------------------------------------------------------


def run_coroutine(coro: Awaitable[Any]) -> Any:
    """Run on uvloop when it is installed (it is a dependency; plain asyncio otherwise)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


Command = Callable[..., Awaitable[None]]


class Session:
    """One ``flo`` invocation: the connection options and the output mode."""

    def __init__(self, connect: ConnectOptions, json_output: bool = False) -> None:
        self.connect = connect
        self.json_output = json_output
        self._target: Target | None = None

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = self.connect.resolve()
        return self._target

    def run(self, command: Command, params: dict[str, Any]) -> None:
        """Connect, run ``command(self, client, **params)``, close; failures become CliError."""
        target = self.target

        async def main() -> None:
            client = target.client()
            try:
                try:
                    await client.connect()
                except ServerError as e:  # AUTH refused
                    raise CliError(f"{target.address} refused the login: {e.message}") from None
                await command(self, client, **params)
            finally:
                await client.close()

        try:
            run_coroutine(main())
        except KeyboardInterrupt:
            raise SystemExit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # The reader (head, less) went away: stop quietly, without Python's second error at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        except (ConnectionClosedError, RequestTimeoutError) as e:
            where = _join_host_port(target.host, target.port)
            raise CliError(str(e) if where in str(e) else f"{e} (server {target.address})", EXIT_UNREACHABLE) from None
        except FloError as e:
            raise CliError(getattr(e, "message", "") or str(e) or type(e).__name__) from None

    # --- output --------------------------------------------------------------------------------

    def emit(self, doc: Any, text: str | None) -> None:
        """Print one result: ``doc`` as one JSON line with ``--json``, else ``text`` (None: nothing)."""
        if self.json_output:
            click.echo(json_line(doc))
        elif text is not None:
            click.echo(text)

    def write_raw(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def note(self, message: str) -> None:
        """A remark for a human (stderr, so it never mixes with results)."""
        if not self.json_output:
            click.echo(message, err=True)


def json_line(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def flo_command(fn: Command) -> Callable[..., None]:
    """Turn ``async def fn(session, client, **params)`` into a click callback that connects and runs it."""

    @functools.wraps(fn)
    def callback(**params: Any) -> None:
        click.get_current_context().find_object(Session).run(fn, params)

    return callback


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Session).json_output = True


def _with_json_option(cmd: click.Command) -> click.Command:
    if not isinstance(cmd, click.Group) and not any(p.name == "json_flag" for p in cmd.params):
        cmd.params.append(click.Option(["--json", "json_flag"], is_flag=True, expose_value=False,
                                       callback=_set_json, help="Machine-readable output (JSON)."))
    return cmd


class FloGroup(click.Group):
    """A group whose commands (and its subgroups' commands) all take ``--json`` too.

    ``lazy`` maps command names to ``"module:attribute"``, imported only when that
    command runs (or ``--help`` lists them): ``flo kv get`` never loads the stream,
    action or bench code, which keeps a one-shot command quick to start.
    """

    group_class = type  # subgroups are FloGroups as well

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lazy = dict(lazy or {})

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(_with_json_option(cmd), name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


# --- arguments and formatting -----------------------------------------------------------------------


class PayloadType(click.ParamType):
    """A value given as text (sent as UTF-8), or ``-``: read the bytes from stdin."""

    name = "payload"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bytes:
        if isinstance(value, bytes):
            return value
        return sys.stdin.buffer.read() if value == "-" else str(value).encode("utf-8")


PAYLOAD = PayloadType()


def text_of(data: bytes | None) -> str:
    """Bytes for a terminal: UTF-8, with undecodable bytes as ``\\xNN``."""
    return "" if data is None else data.decode("utf-8", "backslashreplace")


def json_bytes(data: bytes | None) -> Any:
    """Bytes for JSON: the UTF-8 text, or ``{"base64": ...}`` when they are not UTF-8."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def when(ms: int | None) -> str:
    """Unix ms -> local time with ms, ``-`` for none."""
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="milliseconds")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns left-aligned to their widest cell, two spaces apart."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
