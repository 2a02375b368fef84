"""``flo``: the command line of Flo, like ``redis-cli`` and the ``nats`` CLI (docs/cli.md).

Every subcommand is a thin layer over :mod:`flo_client`. Results print as text,
or with ``--json`` (before or after the subcommand) as one JSON document per
result (one JSON line per item in the follow modes). A refused request prints
``flo: <message>`` and exits 1; a server that cannot be reached exits 2.

Examples::

    flo kv put greeting hello
    flo kv get greeting
    flo -u flo://alice:secret@db.local:9000 -n myapp queue stats tasks
    FLO_URL=flos://db.local:9443 flo --ca-file ca.pem stream tail -f events
    flo --json action invoke resize '{"id": 1}' --wait
    flo top
    flo bench --ops 100000

Connection settings come from the options, then ``$FLO_URL`` (``$FLO_USER``,
``$FLO_PASSWORD``, ``$FLO_NAMESPACE``, ``$FLO_CA_FILE``), then
``~/.config/flo/config.toml`` (keys url, user, password, namespace, ca_file,
tls; ``--config`` or ``$FLO_CONFIG`` names another file), then 127.0.0.1:9000.
"""

from __future__ import annotations

import click

from .session import ConnectOptions, FloGroup, Session

__all__ = ["main"]


# Each command's module loads only when it is used.
COMMANDS = {name: f"{__name__}.{name}:{name}" for name in ("kv", "queue", "stream", "action", "top", "bench")}


@click.group(cls=FloGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", "-u", metavar="URL",
              help="flo://[user:password@]host:port (flos:// = TLS). Default: $FLO_URL, the config file, "
                   "127.0.0.1:9000.")
@click.option("--host", help="Server host (with --port, instead of --url).")
@click.option("--port", "-p", type=click.IntRange(1, 65535), help="Server port.")
@click.option("--user", help="User name (default: the URL's, $FLO_USER, the config file's).")
@click.option("--password", help="Password (prefer $FLO_PASSWORD or the config file: argv is visible to others).")
@click.option("--tls/--no-tls", default=None, help="Use TLS (also flos:// or tls = true in the config file).")
@click.option("--ca-file", type=click.Path(dir_okay=False), help="CA bundle or pinned certificate (implies TLS).")
@click.option("--namespace", "-n", help="Namespace of every call (default: $FLO_NAMESPACE, the config's, 'default').")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Config file (default: $FLO_CONFIG or ~/.config/flo/config.toml).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, metavar="SECONDS",
              help="How long a request may take beyond its own wait.")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output (JSON).")
@click.version_option(package_name="flo-py", prog_name="flo")
@click.pass_context
def main(ctx: click.Context, json_output: bool, **connect: object) -> None:
    """Flo from the command line: KV, queues, streams, actions, a live view and a benchmark.

    \b
    Examples:
      flo kv put greeting hello && flo kv get greeting
      flo -u flo://default:secret@127.0.0.1:9000 queue stats tasks
      flo --json stream read events --count 10
      flo top
    """
    ctx.obj = Session(ConnectOptions(**connect), json_output)  # type: ignore[arg-type]
