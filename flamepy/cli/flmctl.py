"""``flmctl``: Flame's command line over a flo-server.

Examples::

    flmctl register --file echo-app.yaml
    flmctl list --application            # also -s, -e, -n; -o json for any list or view
    flmctl view -s echo-app-a1b2c3 -o json
    flmctl view -s echo-app-a1b2c3 -t 1
    flmctl create -a echo-app -r "cpu=1,mem=1g"
    flmctl close -s echo-app-a1b2c3
    flmctl deploy --name my-app --application ./my-project
    flmctl migrate --url sqlite:///var/lib/flame/flame.db     # import a Flame session manager's database
    flmctl completion bash > /etc/bash_completion.d/flmctl

The config file is ``--config`` (must exist) or ``~/.flame/flame.yaml``. Unlike
Flame 0.6.0, whose flmctl refuses to start without that file, a missing default
file falls back to ``FLAME_ENDPOINT`` or ``127.0.0.1:9000`` (what ``make run``
serves), so the seed guide's ``flmctl register --file`` works on a fresh machine;
``FLAME_ENDPOINT`` also overrides the file, as it does for flamepy.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import os
import sys
from typing import Any, Optional, Sequence

import click
import yaml

from ..core.client import Connection
from ..core.config import FlameContext
from ..core.types import (Application, FlameError, FlameErrorCode, Node, ResourceRequirement, SessionAttributes,
                          Shim, format_memory)

__all__ = ["main", "cli", "format_table", "app_attrs_from_spec"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Borderless table: each cell padded by one space each side, columns left-aligned to the widest value."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    return "\n".join("".join(f" {str(c):<{widths[i]}} " for i, c in enumerate(r)).rstrip()
                     for r in [header, *rows])


def _hms(t: Optional[_dt.datetime]) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%H:%M:%S") if t else "-"


def _hms_ms(t: Optional[_dt.datetime]) -> str:
    if not t:
        return "-"
    t = t.astimezone(_dt.timezone.utc)
    return t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _epoch(t: Optional[_dt.datetime]) -> Optional[int]:
    return None if t is None else int(t.timestamp())


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


def _plain(obj: Any) -> Any:
    """Dataclasses, enums, datetimes and bytes as JSON values (enums by name, times as epoch seconds)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, _dt.datetime):
        return _epoch(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


class _Ctx:
    def __init__(self, config: Optional[str]) -> None:
        self.config = config
        self._conn: Optional[Connection] = None

    @property
    def context(self) -> FlameContext:
        return FlameContext.load(self.config or os.path.join(os.path.expanduser("~"), ".flame", "flame.yaml"),
                                 env=True, required=self.config is not None)

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            ctx = self.context
            self._conn = Connection(ctx.endpoint, client_options=ctx.client_options())
        return self._conn


def _fail(exc: Exception) -> None:
    click.echo(f"Error: {exc}" if isinstance(exc, (FlameError, click.ClickException)) else f"Error: {exc!r}",
               err=True)
    sys.exit(1)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FlameError, OSError, ValueError, yaml.YAMLError) as exc:
            _fail(exc)


_OUTPUT = click.option("-o", "--output-format", "--output", "output", default=None,
                       type=click.Choice(["json", "table"]), help="json, or a human table/view (the default)")


@click.group(cls=_Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", default=None, help="flame config file (default ~/.flame/flame.yaml)")
@click.version_option("0.6.0", prog_name="flmctl")
@click.pass_context
def cli(ctx: click.Context, config: Optional[str]) -> None:
    """Flame command line (flamepy on Flo)."""
    ctx.obj = _Ctx(config)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def app_attrs_from_spec(spec: dict) -> dict:
    """ApplicationAttributes (as a dict) from the ``spec:`` block of an application YAML."""
    spec = spec or {}
    if not isinstance(spec, dict):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "spec must be a mapping")
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
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path} is not a file")
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if single and len(docs) != 1:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path} must contain exactly one application")
    for doc in docs:
        if not isinstance(doc, dict) or not (doc.get("metadata") or {}).get("name"):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path}: each document needs metadata.name")
    return docs

@cli.command()
@click.option("-f", "--file", "path", required=True, help="application YAML (several documents allowed)")
@click.pass_obj
def register(obj: _Ctx, path: str) -> None:
    """Register the application(s) of a YAML file."""
    for doc in _read_docs(path):
        obj.conn.register_application(doc["metadata"]["name"], app_attrs_from_spec(doc.get("spec")))


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
    obj.conn.update_application(doc["metadata"]["name"], app_attrs_from_spec(doc.get("spec")))


def _app_row(a: Application) -> list[str]:
    return [a.name, a.state.name.capitalize(), a.shim.label(), ", ".join(a.labels), _hms(a.creation_time),
            a.command or "-"]


def _node_status(n: Node) -> str:
    return n.status.state.label()


@cli.command(name="list")
@click.option("-a", "--application", "--app", "application", is_flag=True, help="list the applications")
@click.option("-s", "--session", "session", is_flag=True, help="list the sessions (open first, then by creation)")
@click.option("-e", "--executor", "executor", is_flag=True, help="list the executors (one per service instance)")
@click.option("-n", "--node", "node", is_flag=True, help="list the nodes (executor managers)")
@_OUTPUT
@click.pass_obj
def list_cmd(obj: _Ctx, application: bool, session: bool, executor: bool, node: bool, output: Optional[str]) -> None:
    """List applications, sessions, executors or nodes (the first flag given, in that order, wins)."""
    as_json = output == "json"
    if application:
        apps = obj.conn.list_applications()
        if as_json:
            return _echo_json([_plain(a) for a in apps])
        click.echo(format_table(["Name", "State", "Shim", "Tags", "Created", "Command"], [_app_row(a) for a in apps]))
    elif session:
        ssns = obj.conn.list_sessions()
        if as_json:
            return _echo_json([_session_summary(s) for s in ssns])
        rows = [[s.id, s.state.name.capitalize(), s.application, _resources(s.resreq), str(s.priority),
                 str(s.pending), str(s.running), str(s.succeed), str(s.failed), _hms(s.creation_time)] for s in ssns]
        click.echo(format_table(["ID", "State", "App", "Resources", "Priority", "Pending", "Running", "Succeed",
                                 "Failed", "Created"], rows))
    elif executor:
        execs = obj.conn.list_executors()
        if as_json:
            return _echo_json([_plain(e) for e in execs])
        click.echo(format_table(["ID", "State", "Session", "Node"],
                                [[e.metadata.id, e.status.state.label(), e.status.session_id or "-", e.spec.node]
                                 for e in execs]))
    elif node:
        nodes = obj.conn.list_nodes()
        if as_json:
            return _echo_json([_plain(n) for n in nodes])
        click.echo(format_table(["NAME", "HOSTNAME", "STATUS", "CPU", "MEMORY", "ARCH", "OS"],
                                [[n.metadata.name, n.spec.hostname, _node_status(n), str(n.status.capacity.cpu),
                                  format_memory(n.status.capacity.memory), n.status.info.arch or "-",
                                  n.status.info.os or "-"] for n in nodes]))
    else:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "unsupported parameters")


@cli.command()
@click.option("-a", "--application", "--app", "application", default=None, help="the application to show")
@click.option("-s", "--session", "session", default=None, help="the session to show")
@click.option("-t", "--task", "task", default=None, help="with -s: the task to show")
@click.option("-n", "--node", "node", default=None, help="the node to show")
@_OUTPUT
@click.pass_obj
def view(obj: _Ctx, application, session, task, node, output) -> None:
    """Show one application (-a), session (-s), task (-s -t) or node (-n)."""
    conn = obj.conn
    as_json = output == "json"
    if application and not (session or task or node):
        app = conn.get_application(application)
        if app is None:
            raise FlameError(FlameErrorCode.NOT_FOUND, f"application <{application}> not found")
        return _echo_json(_plain(app)) if as_json else click.echo(_view_app(app))
    if session and task and not (application or node):
        ssn = conn.get_session(session)
        t = ssn.get_task(task)
        if as_json:
            return _echo_json(_task_json(t))
        lines = [_row("Task", t.id), _row("Session", t.session_id), _row("Application", ssn.application),
                 _row("State", t.state.name.capitalize()), "Events:"]
        lines += [f"  {_hms_ms(e.creation_time)}: {e.message} ({e.code})" for e in t.events]
        return click.echo("\n".join(lines))
    if session and not (application or node):
        ssn = conn.get_session(session)
        if as_json:
            return _echo_json(_session_json(ssn))
        lines = [_row("Session", ssn.id), _row("Application", ssn.application),
                 _row("State", ssn.state.name.capitalize()), _row("Resources", _resources(ssn.resreq)),
                 _row("Creation Time", _hms(ssn.creation_time)),
                 _row("Tasks", f"{ssn.pending} pending, {ssn.running} running, {ssn.succeed} succeed, "
                               f"{ssn.failed} failed" + (f", {ssn.cancelled} cancelled" if ssn.cancelled else "")),
                 "Events:"]
        lines += [f"  {_hms_ms(e.creation_time)}: {e.message} ({e.code})" for e in ssn.events]
        return click.echo("\n".join(lines))
    if node and not (application or session or task):
        n = conn.get_node(node)
        if as_json:
            return _echo_json(_plain(n))
        return click.echo("\n".join([
            _row("Name", n.metadata.name), _row("Hostname", n.spec.hostname), _row("Status", _node_status(n)),
            "Capacity:", f"  {'CPU:':<13}{n.status.capacity.cpu}",
            f"  {'Memory:':<13}{format_memory(n.status.capacity.memory)}",
            f"  {'GPU:':<13}{n.status.capacity.gpu}", "Allocatable:", f"  {'CPU:':<13}{n.status.allocatable.cpu}",
            f"  {'Memory:':<13}{format_memory(n.status.allocatable.memory)}",
            f"  {'GPU:':<13}{n.status.allocatable.gpu}",
            "Info:", f"  {'Arch:':<13}{n.status.info.arch or '-'}", f"  {'OS:':<13}{n.status.info.os or '-'}",
            _row("Instances", f"{n.status.instances} of {n.status.max_instances}")]))
    raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "unsupported parameters")


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


def _events_json(events) -> list[dict]:
    return [{"code": e.code, "message": e.message, "creation_time": _epoch(e.creation_time)} for e in events]


def _text(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else bytes(data).decode("utf-8", "replace")


def _task_json(t) -> dict:
    return {"id": int(t.id), "ssn_id": t.session_id, "state": int(t.state), "input": _text(t.input),
            "output": _text(t.output), "creation_time": _epoch(t.creation_time),
            "completion_time": _epoch(t.completion_time), "events": _events_json(t.events)}


def _session_summary(ssn) -> dict:
    return {"id": ssn.id, "application": ssn.application, "creation_time": _epoch(ssn.creation_time),
            "completion_time": _epoch(ssn.completion_time), "state": int(ssn.state), "pending": ssn.pending,
            "running": ssn.running, "succeed": ssn.succeed, "failed": ssn.failed, "cancelled": ssn.cancelled,
            "priority": ssn.priority, "min_instances": ssn.min_instances, "max_instances": ssn.max_instances,
            "resreq": {"cpu": ssn.resreq.cpu, "memory": ssn.resreq.memory, "gpu": ssn.resreq.gpu}
            if ssn.resreq else None}


def _session_json(ssn) -> dict:
    """Flame's ``view -s -o json`` document (plus completion_time, cancelled and the instance bounds)."""
    doc = _session_summary(ssn)
    doc["common_data"] = _text(ssn.common_data())
    doc["events"] = _events_json(ssn.events)
    doc["tasks"] = [_task_json(t) for t in ssn.list_tasks()]
    return doc


@cli.command()
@click.option("-a", "--app", "--application", "application", required=True, help="the application")
@click.option("-p", "--priority", default=0, type=click.IntRange(0), show_default=True,
              help="higher is scheduled first")
@click.option("-r", "--resreq", default=None, help='per instance: "cpu=N,mem=SIZE,gpu=N" (default cpu=1,mem=1g)')
@click.option("-b", "--batch-size", default=1, type=click.IntRange(1), show_default=True,
              help="executors per batch: instances start in whole batches")
@click.pass_obj
def create(obj: _Ctx, application: str, priority: int, resreq: Optional[str], batch_size: int) -> None:
    """Create a session of an application."""
    rr = ResourceRequirement.from_string(resreq) if resreq else None
    ssn = obj.conn.create_session(SessionAttributes(application=application, batch_size=batch_size, resreq=rr),
                                  priority=priority)
    click.echo(f"Session {ssn.id} was created.")


@cli.command()
@click.option("-s", "--session", "session", required=True, help="the session")
@click.pass_obj
def close(obj: _Ctx, session: str) -> None:
    """Close a session (pending tasks are cancelled)."""
    obj.conn.close_session(session)
    click.echo(f"Session {session} was closed.")


@cli.command()
@click.option("--name", required=True, help="application name")
@click.option("--application", "path", required=True, type=click.Path(exists=True),
              help="a directory, a .tar.gz/.tgz package or an executable file")
@click.option("--dry-run", is_flag=True, help="show the plan; upload and register nothing")
@click.option("-o", "--output", default="summary", type=click.Choice(["summary", "yaml", "json"]), show_default=True)
@click.option("--shim", default=None, help="Host (default) or Wasm")
@click.option("--image", default=None)
@click.option("--description", default=None)
@click.option("--label", "labels", multiple=True, help="repeatable")
@click.option("--command", default=None, help="overrides the detected command")
@click.option("--argument", "arguments", multiple=True, help="one argument; repeatable")
@click.option("--env", "envs", multiple=True, help="NAME=VALUE; repeatable")
@click.option("--working-directory", default=None)
@click.option("--max-instances", default=None, type=click.IntRange(1))
@click.option("--delay-release", default=None, type=click.IntRange(0), help="seconds")
@click.option("--installer", default=None, type=click.Choice(["binary", "python"]),
              help="overrides the detected installer")
@click.option("--schema-input", default=None)
@click.option("--schema-output", default=None)
@click.option("--schema-common-data", default=None)
@click.pass_obj
def deploy(obj: _Ctx, name, path, dry_run, output, shim, image, description, labels, command, arguments, envs,
           working_directory, max_instances, delay_release, installer, schema_input, schema_output,
           schema_common_data) -> None:
    """Package an application, upload it to the object cache and register it.

    Exit codes: 1 bad arguments or context, 2 detection/packaging failed, 3 upload failed, 4 registration failed.
    """
    from . import deploy as D
    environments = {}
    for item in envs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _exit(1, f"invalid environment '{item}'; expected NAME=VALUE")
        environments[key] = value
    try:
        Shim.parse(shim)
        plan = D.plan_deploy(name, path, command=command, arguments=list(arguments), installer=installer)
    except FlameError as exc:
        _exit(2, exc.message)
    conn = None if dry_run else obj.conn
    if conn is None:
        ctx = obj.context
        endpoint, tls = ctx.endpoint, ctx.client_options().get("tls")
    else:
        endpoint, tls = conn.endpoint, conn.store.client_options.get("tls")
    url = f"{'flos' if tls else 'flo'}://{endpoint}/{plan.key}"  # where the executor's installer fetches it
    schema = None
    if schema_input or schema_output or schema_common_data:
        schema = {"input": schema_input, "output": schema_output, "common_data": schema_common_data}
    spec = {"shim": shim or "Host", "image": image, "description": description, "labels": list(labels),
            "command": plan.command, "arguments": plan.arguments, "environments": environments,
            "working_directory": working_directory, "max_instances": max_instances, "delay_release": delay_release,
            "schema": schema, "url": url, "installer": plan.installer}
    if not dry_run:
        import tempfile
        from ..core import cache
        from ..core.client import set_default_connection
        set_default_connection(conn)
        with tempfile.NamedTemporaryFile(suffix=".tar.gz") as f:
            f.write(plan.package)
            f.flush()
            try:
                cache.upload_object(plan.key, f.name)
            except Exception as exc:
                _exit(3, f"failed to upload {plan.key}: {exc}")
        try:
            conn.register_application(name, app_attrs_from_spec(dict(spec)))
        except FlameError as exc:
            _exit(4, exc.message)
    rendered = {"metadata": {"name": name}, "spec": {k: v for k, v in spec.items() if v not in (None, [], {})}}
    if output == "yaml":
        click.echo(yaml.safe_dump(rendered, sort_keys=False), nl=False)
    elif output == "json":
        _echo_json({"name": name, "input_kind": plan.kind, "installer": plan.installer, "command": plan.command,
                    "arguments": plan.arguments, "object_key": plan.key, "url": url, "sha256": plan.sha256,
                    "dry_run": dry_run, "application": rendered})
    else:
        lines = [f"Application <{name}> {'deploy plan' if dry_run else 'deployed'}.", f"Input Kind: {plan.kind}",
                 f"Installer: {plan.installer}", f"Command: {plan.command}"]
        if delay_release is not None:
            lines.append(f"Delay Release: {_duration(delay_release)}")
        if plan.arguments:
            lines.append(f"Arguments: {' '.join(plan.arguments)}")
        lines += [f"Object: {plan.key}", f"SHA256: {plan.sha256}", f"URL: {url}"]
        if dry_run:
            lines.append("Dry Run: true")
        click.echo("\n".join(lines))


def _exit(code: int, message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@cli.command()
@click.option("-u", "--url", default=None,
              help="where the metadata comes from: sqlite:///flame.db (Flame's session manager), "
                   "file:///export.jsonl (a flmctl export) or flo://host:port (another flo-server)")
@click.option("-s", "--sql", "sql_dir", default=None, type=click.Path(file_okay=False),
              help="with a sqlite:// url: Flame's migrations directory, applied to the database first")
@click.option("--export", "export_path", default=None, type=click.Path(dir_okay=False),
              help="write this cluster's applications, sessions, tasks and objects to a file instead")
@click.option("--dry-run", is_flag=True, help="count what would be imported; write nothing")
@click.pass_obj
def migrate(obj: _Ctx, url, sql_dir, export_path, dry_run) -> None:
    """Import Flame metadata into this cluster (or --export it)."""
    from . import migrate as M
    if bool(url) == bool(export_path):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "give exactly one of --url (import) or --export")
    if export_path:
        n = M.export_to(obj.conn.store, export_path)
        click.echo(f"Exported {n} keys to {export_path}.")
        return
    click.echo(M.import_from(obj.conn.store, url, sql_dir=sql_dir, dry_run=dry_run).summary(dry_run))


_SHELLS = ("bash", "zsh", "fish")


@cli.command()
@click.argument("shell", type=click.Choice(_SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash:  flmctl completion bash > ~/.local/share/bash-completion/completions/flmctl
    zsh:   flmctl completion zsh > "${fpath[1]}/_flmctl"
    fish:  flmctl completion fish > ~/.config/fish/completions/flmctl.fish
    """
    from click.shell_completion import get_completion_class
    click.echo(get_completion_class(shell)(cli, {}, "flmctl", "_FLMCTL_COMPLETE").source())


def main(argv: Optional[Sequence[str]] = None) -> None:
    cli.main(args=argv, prog_name="flmctl")


if __name__ == "__main__":
    main()
