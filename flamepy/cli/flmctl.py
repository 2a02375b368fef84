"""``flmctl``: Flame's command line over a flo-server.

Examples::

    flmctl register --file echo-app.yaml
    flmctl list --application
    flmctl list --session
    flmctl view -s echo-app-a1b2c3 -o json
    flmctl create -a echo-app -r "cpu=1,mem=1g"
    flmctl close -s echo-app-a1b2c3

The config file is ``--config`` (must exist) or ``~/.flame/flame.yaml``. Unlike
Flame 0.6.0, whose flmctl refuses to start without that file, a missing default
file falls back to ``FLAME_ENDPOINT`` or ``127.0.0.1:9000`` (what ``make run``
serves), so the seed guide's ``flmctl register --file`` works on a fresh machine;
``FLAME_ENDPOINT`` also overrides the file, as it does for flamepy.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from typing import Optional, Sequence

import click
import yaml

from ..core.client import Connection
from ..core.config import FlameContext
from ..core.types import Application, FlameError, ResourceRequirement, SessionAttributes, Shim, format_memory

__all__ = ["main", "format_table"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Borderless table: each cell padded by one space each side, columns left-aligned to the widest value."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    return "\n".join("".join(f" {str(c):<{widths[i]}} " for i, c in enumerate(r)).rstrip()
                     for r in [header, *rows])


def _hms(ms: Optional[int]) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).strftime("%H:%M:%S")


def _hms_ms(ms: int) -> str:
    t = _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc)
    return t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _duration(seconds: Optional[int]) -> str:
    if seconds is None:
        return "-"
    d, rem = divmod(int(seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    parts = [f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if v]
    return " ".join(parts) or "0s"


def _resources(r: Optional[ResourceRequirement]) -> str:
    return "-" if r is None else f"cpu={r.cpu},mem={format_memory(r.memory)},gpu={r.gpu}"


def _schema_type(text: Optional[str]) -> str:
    if not text:
        return "-"
    try:
        return str(json.loads(text).get("type", "-"))
    except (ValueError, AttributeError):
        return "-"


class _Ctx:
    def __init__(self, config: Optional[str]) -> None:
        self.config = config
        self._conn: Optional[Connection] = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            ctx = FlameContext.load(self.config or os.path.join(os.path.expanduser("~"), ".flame", "flame.yaml"),
                                    env=True, required=self.config is not None)
            self._conn = Connection(ctx.endpoint, client_options=ctx.client_options())
        return self._conn


def _fail(exc: Exception) -> None:
    click.echo(f"Error: {exc!r}" if not isinstance(exc, FlameError) else f"Error: {exc}", err=True)
    sys.exit(1)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FlameError, OSError, ValueError, yaml.YAMLError) as exc:
            _fail(exc)


@click.group(cls=_Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", default=None, help="flame config file (default ~/.flame/flame.yaml)")
@click.version_option("0.6.0", prog_name="flmctl")
@click.pass_context
def cli(ctx: click.Context, config: Optional[str]) -> None:
    """Flame command line (flamepy on Flo)."""
    ctx.obj = _Ctx(config)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _app_attrs(spec: dict) -> dict:
    spec = spec or {}
    schema = spec.get("schema") or None
    for key in ("input", "output", "common_data"):
        if schema and schema.get(key) is not None and not isinstance(schema.get(key), str):
            schema[key] = json.dumps(schema[key])
    return {
        "shim": Shim.parse(spec.get("shim")), "image": spec.get("image"), "description": spec.get("description"),
        "labels": list(spec.get("labels") or []), "command": spec.get("command"),
        "arguments": [str(a) for a in spec.get("arguments") or []],
        "environments": {str(k): str(v) for k, v in (spec.get("environments") or {}).items()},
        "working_directory": spec.get("working_directory"), "max_instances": spec.get("max_instances"),
        "delay_release": spec.get("delay_release"), "schema": schema, "url": spec.get("url"),
        "installer": spec.get("installer"),
    }


def _read_docs(path: str, single: bool = False) -> list[dict]:
    if not os.path.isfile(path):
        raise FlameError(2, f"{path} is not a file")
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if single and len(docs) != 1:
        raise FlameError(2, f"{path} must contain exactly one application")
    for doc in docs:
        if not isinstance(doc, dict) or not (doc.get("metadata") or {}).get("name"):
            raise FlameError(2, f"{path}: each document needs metadata.name")
    return docs


@cli.command()
@click.option("-f", "--file", "path", required=True, help="application YAML (several documents allowed)")
@click.pass_obj
def register(obj: _Ctx, path: str) -> None:
    """Register the application(s) of a YAML file."""
    for doc in _read_docs(path):
        obj.conn.register_application(doc["metadata"]["name"], _app_attrs(doc.get("spec")))


@cli.command()
@click.option("-a", "--application", "--app", "application", required=True)
@click.pass_obj
def unregister(obj: _Ctx, application: str) -> None:
    """Unregister an application (refused while it has open sessions)."""
    obj.conn.unregister_application(application)


@cli.command()
@click.option("-a", "--application", "--app", "path", required=True, help="application YAML file")
@click.pass_obj
def update(obj: _Ctx, path: str) -> None:
    """Update an application from a YAML file (refused while it has open sessions)."""
    doc = _read_docs(path, single=True)[0]
    obj.conn.update_application(doc["metadata"]["name"], _app_attrs(doc.get("spec")))


@cli.command(name="list")
@click.option("-a", "--application", "--app", "application", is_flag=True)
@click.option("-s", "--session", "session", is_flag=True)
@click.option("-e", "--executor", "executor", is_flag=True)
@click.option("-n", "--node", "node", is_flag=True)
@click.pass_obj
def list_cmd(obj: _Ctx, application: bool, session: bool, executor: bool, node: bool) -> None:
    """List applications, sessions, executors or nodes."""
    if application:
        rows = [[a.name, a.state.name.capitalize() if a.state.name != "ENABLED" else "Enabled",
                 a.shim.label(), ", ".join(a.labels), _hms(a.creation_time), a.command or "-"]
                for a in obj.conn.list_applications()]
        click.echo(format_table(["Name", "State", "Shim", "Tags", "Created", "Command"], rows))
    elif session:
        rows = [[s.id, s.state.name.capitalize(), s.application, _resources(s.resreq), str(s.priority),
                 str(s.pending), str(s.running), str(s.succeed), str(s.failed), _hms(s.creation_time)]
                for s in obj.conn.list_sessions()]
        click.echo(format_table(["ID", "State", "App", "Resources", "Priority", "Pending", "Running", "Succeed",
                                 "Failed", "Created"], rows))
    elif executor:
        click.echo(format_table(["ID", "State", "Session", "Node"], _executors(obj.conn)))
    elif node:
        click.echo(format_table(["NAME", "HOSTNAME", "STATUS", "CPU", "MEMORY", "ARCH", "OS"],
                                [[n["name"], n["name"], "Ready", str(n["cpu"]), format_memory(n["memory"]),
                                  os.uname().machine, "linux"] for n in _nodes(obj.conn)]))
    else:
        raise FlameError(2, "unsupported parameters")


def _nodes(conn: Connection) -> list[dict]:
    from ..core import _runtime
    from ..core import records as R
    keys = _runtime.run(conn.store.scan("node/"))
    vals = _runtime.run(conn.store.mget(keys))
    return [dict(R.unpack(v[0]), name=k[len("node/"):]) for k, v in zip(keys, vals) if v]


def _executors(conn: Connection) -> list[list[str]]:
    """Instances currently serving sessions (their ``cur``/``ready`` keys)."""
    from ..core import _runtime
    keys = _runtime.run(conn.store.scan("ready/"))
    rows = []
    for key in keys:
        iid = key[len("ready/"):]
        node = iid.rsplit("-", 1)[0]
        rows.append([iid, "Bound", "-", node])
    return rows


@cli.command()
@click.option("-a", "--application", "--app", "application", default=None)
@click.option("-s", "--session", "session", default=None)
@click.option("-t", "--task", "task", default=None)
@click.option("-n", "--node", "node", default=None)
@click.option("-o", "--output-format", "output", default=None, type=click.Choice(["json"]))
@click.pass_obj
def view(obj: _Ctx, application, session, task, node, output) -> None:
    """Show one application, session, task or node."""
    conn = obj.conn
    if application and not (session or task or node):
        app = conn.get_application(application)
        if app is None:
            raise FlameError(5, f"application <{application}> not found")
        click.echo(_view_app(app))
    elif session and task and not (application or node):
        ssn = conn.get_session(session)
        t = ssn.get_task(task)
        lines = [_row("Task", t.id), _row("Session", t.session_id), _row("Application", ssn.application),
                 _row("State", t.state.name.capitalize()), "Events:"]
        lines += [f"  {_hms_ms(e.creation_time)}: {e.message} ({e.code})" for e in t.events]
        click.echo("\n".join(lines))
    elif session and not (application or node):
        ssn = conn.get_session(session)
        if output == "json":
            click.echo(json.dumps(_session_json(ssn), indent=2))
            return
        lines = [_row("Session", ssn.id), _row("Application", ssn.application),
                 _row("State", ssn.state.name.capitalize()), _row("Resources", _resources(ssn.resreq)),
                 _row("Creation Time", _hms(ssn.creation_time)),
                 _row("Tasks", f"{ssn.pending} pending, {ssn.running} running, {ssn.succeed} succeed, "
                               f"{ssn.failed} failed" + (f", {ssn.cancelled} cancelled" if ssn.cancelled else "")),
                 "Events:"]
        lines += [f"  {_hms_ms(e.creation_time)}: {e.message} ({e.code})" for e in ssn.events]
        click.echo("\n".join(lines))
    elif node and not (application or session or task):
        for n in _nodes(conn):
            if n["name"] == node:
                click.echo("\n".join([_row("Name", n["name"]), _row("Hostname", n["name"]), _row("Status", "Ready"),
                                      "Capacity:", f"  {'CPU':<13}{n['cpu']}",
                                      f"  {'Memory':<13}{format_memory(n['memory'])}", "Info:",
                                      f"  {'Arch':<13}{os.uname().machine}", f"  {'OS':<13}linux"]))
                return
        raise FlameError(5, f"node <{node}> not found")
    else:
        raise FlameError(2, "unsupported parameters")


def _row(label: str, value) -> str:
    return f"{label + ':':<15}{value}"


def _view_app(app: Application) -> str:
    lines = [_row("Name", app.name), _row("Description", app.description or "-"), _row("Shim", app.shim.label()),
             _row("Image", app.image or "-"), _row("URL", app.url or "-"), _row("Installer", app.installer or "-"),
             "Labels:"]
    lines += [f"\t{label}" for label in app.labels]
    lines += [_row("Command", app.command or "-"), "Arguments:"]
    lines += [f"\t{a}" for a in app.arguments]
    lines += ["Environments:"]
    lines += [f"\t{k}: {v}" for k, v in app.environments.items()]
    schema = app.schema
    lines += [_row("WorkingDir", app.working_directory or "-"), _row("Max Instances", app.max_instances),
              _row("Delay Release", _duration(app.delay_release)), "Schema:",
              f"\t{'Input:':<13}{_schema_type(schema.input if schema else None)}",
              f"\t{'Output:':<13}{_schema_type(schema.output if schema else None)}",
              f"\t{'Common Data:':<13}{_schema_type(schema.common_data if schema else None)}"]
    return "\n".join(lines)


def _session_json(ssn) -> dict:
    cd = ssn.common_data()
    tasks = []
    for t in ssn.list_tasks():
        tasks.append({"id": int(t.id), "ssn_id": t.session_id, "state": int(t.state),
                      "input": t.input.decode("utf-8", "replace") if t.input is not None else None,
                      "output": t.output.decode("utf-8", "replace") if t.output is not None else None,
                      "events": [{"code": e.code, "message": e.message, "creation_time": e.creation_time // 1000}
                                 for e in t.events]})
    return {"id": ssn.id, "application": ssn.application,
            "common_data": cd.decode("utf-8", "replace") if cd is not None else None,
            "creation_time": ssn.creation_time // 1000, "state": int(ssn.state), "pending": ssn.pending,
            "running": ssn.running, "succeed": ssn.succeed, "failed": ssn.failed,
            "events": [{"code": e.code, "message": e.message, "creation_time": e.creation_time // 1000}
                       for e in ssn.events],
            "tasks": tasks, "priority": ssn.priority,
            "resreq": {"cpu": ssn.resreq.cpu, "memory": ssn.resreq.memory, "gpu": ssn.resreq.gpu}
            if ssn.resreq else None}


@cli.command()
@click.option("-a", "--app", "--application", "application", required=True)
@click.option("-p", "--priority", default=0, type=int, show_default=True)
@click.option("-r", "--resreq", default=None, help='"cpu=N,mem=SIZE,gpu=N"')
@click.option("-b", "--batch-size", default=1, type=int, show_default=True)
@click.pass_obj
def create(obj: _Ctx, application: str, priority: int, resreq: Optional[str], batch_size: int) -> None:
    """Create a session of an application."""
    rr = ResourceRequirement.from_string(resreq) if resreq else None
    ssn = obj.conn.create_session(SessionAttributes(application=application, batch_size=batch_size, resreq=rr),
                                  priority=priority)
    click.echo(f"Session {ssn.id} was created.")


@cli.command()
@click.option("-s", "--session", "session", required=True)
@click.pass_obj
def close(obj: _Ctx, session: str) -> None:
    """Close a session (pending tasks are cancelled)."""
    obj.conn.close_session(session)
    click.echo(f"Session {session} was closed.")


def main(argv: Optional[Sequence[str]] = None) -> None:
    cli.main(args=argv, prog_name="flmctl")


if __name__ == "__main__":
    main()
