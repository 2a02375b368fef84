"""``flo-server``: run the server (default) and operator subcommands.

Example:
    flo-server --host 127.0.0.1 --port 9000 --data-dir ./data --fsync always
"""

from __future__ import annotations

import logging
import os

import click

from flo_server.config import (
    DEFAULT_CLIENT_OUTPUT_LIMIT,
    DEFAULT_DATA_DIR,
    DEFAULT_FSYNC,
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_LEASE_MS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    DEFAULT_QUEUE_LEASE_MS,
    DEFAULT_QUEUE_MAX_DELIVERIES,
    DEFAULT_SNAPSHOT_BYTES,
    ServerConfig,
)
from flo_core.spec import DEFAULT_MAX_FRAME
from flo_server.persistence import check_log_cmd, dump_log_cmd


def _env(name: str, default):
    v = os.environ.get(name)
    return type(default)(v) if v is not None and default is not None else (v if v is not None else default)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=lambda: _env("FLO_HOST", DEFAULT_HOST), show_default=DEFAULT_HOST, help="address to bind")
@click.option("--port", "-p", type=int, default=lambda: _env("FLO_PORT", DEFAULT_PORT), show_default=DEFAULT_PORT,
              help="port for Flo wire v2 and RESP (0 = any free port)")
@click.option("--data-dir", "-d", default=lambda: _env("FLO_DATA_DIR", DEFAULT_DATA_DIR), show_default=DEFAULT_DATA_DIR,
              help="directory for the log and snapshots")
@click.option("--no-persist", is_flag=True, help="keep everything in memory only")
@click.option("--fsync", type=click.Choice(["always", "everysec", "no"]), default=lambda: _env("FLO_FSYNC", DEFAULT_FSYNC),
              show_default=DEFAULT_FSYNC, help="always: answer writes after fsync; everysec: fsync each second; no: leave it to the OS")
@click.option("--log-level", "-l", default=lambda: _env("FLO_LOG_LEVEL", "info"), show_default="info",
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--max-frame", type=int, default=DEFAULT_MAX_FRAME, show_default=True, help="largest request payload, bytes")
@click.option("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, show_default=True,
              help="connections past it get one refusal (Flo OVERLOADED / RESP -ERR) and are closed")
@click.option("--client-output-limit", type=click.IntRange(min=0), default=DEFAULT_CLIENT_OUTPUT_LIMIT,
              show_default=True, metavar="BYTES",
              help="drop a client whose answers it has not read (socket buffer plus answers held for an fsync) "
                   "pass this many bytes; 0 = no limit")
@click.option("--queue-lease-ms", type=int, default=DEFAULT_QUEUE_LEASE_MS, show_default=True, help="default dequeue lease")
@click.option("--queue-max-deliveries", type=int, default=DEFAULT_QUEUE_MAX_DELIVERIES, show_default=True,
              help="deliveries before a message goes to the DLQ")
@click.option("--snapshot-bytes", type=int, default=DEFAULT_SNAPSHOT_BYTES, show_default=True,
              help="take a snapshot after this many log bytes (and no sooner than the last snapshot's size)")
@click.option("--history-bytes", type=int, default=DEFAULT_HISTORY_BYTES, show_default=True,
              help="memory for earlier KV versions (64 per key readable, up to 127 held between trims; "
                   "each counts its value plus ~112 bytes of objects); past it a key written keeps only its last one")
@click.option("--no-executor", is_flag=True, help="do not run the flamepy executor manager in-process")
@click.option("--repair-log", is_flag=True, help="start even if the log is corrupt in the middle: cut it at the first bad record")
@click.option("--users", "users_file", default=lambda: os.environ.get("FLO_USERS"), metavar="FILE",
              help="users, password hashes and permissions (TOML or YAML; docs/security.md)")
@click.option("--requirepass", default=lambda: os.environ.get("FLO_REQUIREPASS"), metavar="PASSWORD",
              help="one password for the default user (prefer FLO_REQUIREPASS: argv is visible to other users)")
@click.option("--insecure-bind", is_flag=True, help="allow a non-loopback address without users or a password")
@click.option("--tls-cert", default=lambda: os.environ.get("FLO_TLS_CERT"), metavar="PEM", help="server certificate (chain)")
@click.option("--tls-key", default=lambda: os.environ.get("FLO_TLS_KEY"), metavar="PEM", help="its private key")
@click.option("--tls-ca", default=lambda: os.environ.get("FLO_TLS_CA"), metavar="PEM", help="CA to verify client certificates")
@click.option("--tls-auth-clients", type=click.Choice(["no", "optional", "yes"]), default="no", show_default=True,
              help="ask for client certificates (verified against --tls-ca)")
@click.option("--tls-port", type=int, default=None,
              help="serve TLS on this second port and keep --port plaintext (default: with a certificate, --port is TLS)")
@click.option("--executor-allow", multiple=True, metavar="DIR",
              help="applications' working_directory must be inside one of these (repeatable; default: anywhere)")
@click.option("--http-port", type=int, default=lambda: _env("FLO_HTTP_PORT", DEFAULT_HTTP_PORT),
              show_default=DEFAULT_HTTP_PORT,
              help="HTTP side port for /metrics, /healthz, /readyz and the web console (0 = off, -1 = any free port)")
@click.option("--etcd", default=lambda: os.environ.get("FLO_ETCD"), metavar="URL[,URL...]",
              help="join a cluster coordinated by these etcd members (docs/cluster.md)")
@click.option("--cluster", "cluster_name", default=lambda: _env("FLO_CLUSTER", "flo"), show_default="flo",
              help="cluster name (flo-server cluster create makes it)")
@click.option("--shard", type=click.IntRange(min=0), default=0, show_default=True, help="the shard this member serves")
@click.option("--advertise", default=None, metavar="HOST:PORT",
              help="where other members and clients reach this one (default: --host:--port)")
@click.option("--node", "node_name", default=None, help="this member's name (default: its advertise address)")
@click.option("--lease-ms", type=click.IntRange(min=1000), default=DEFAULT_LEASE_MS, show_default=True,
              help="a shard leader's lease in etcd: a dead leader is replaced within about twice this")
@click.option("--sync-replicas", type=click.IntRange(min=0), default=0, show_default=True,
              help="answer a write only once this many replicas have it (with --fsync always: durably)")
@click.pass_context
def main(ctx: click.Context, host: str, port: int, data_dir: str, no_persist: bool, fsync: str, log_level: str,
         max_frame: int, max_connections: int, client_output_limit: int, queue_lease_ms: int,
         queue_max_deliveries: int, snapshot_bytes: int, history_bytes: int, no_executor: bool, repair_log: bool,
         users_file: str | None, requirepass: str | None, insecure_bind: bool, tls_cert: str | None,
         tls_key: str | None, tls_ca: str | None, tls_auth_clients: str, tls_port: int | None,
         executor_allow: tuple, http_port: int, etcd: str | None, cluster_name: str, shard: int,
         advertise: str | None, node_name: str | None, lease_ms: int, sync_replicas: int) -> None:
    """Flo server: versioned KV, leased priority queues, streams and actions on one port."""
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from flo_server.app import serve

    serve(ServerConfig(
        host=host, port=port, data_dir=None if no_persist else data_dir, fsync=fsync, log_level=log_level,
        max_frame=max_frame, max_connections=max_connections, client_output_limit=client_output_limit,
        queue_lease_ms=queue_lease_ms,
        queue_max_deliveries=queue_max_deliveries, snapshot_bytes=snapshot_bytes,
        executor=not no_executor,  # on a cluster too: each member's manager is a Flame node (docs/cluster.md)
        repair_log=repair_log, history_bytes=history_bytes, users_file=users_file, requirepass=requirepass or None,
        insecure_bind=insecure_bind, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
        tls_auth_clients=tls_auth_clients, tls_port=tls_port,
        executor_allow=tuple(os.path.realpath(d) for d in executor_allow), http_port=http_port,
        etcd=etcd or None, cluster=cluster_name, shard=shard, advertise=advertise, node=node_name,
        lease_ms=lease_ms, sync_replicas=sync_replicas,
    ))


@click.command()
@click.option("--password-stdin", is_flag=True, help="read the password from standard input (one line)")
def hash_password_cmd(password_stdin: bool) -> None:
    """Print a scrypt hash of a password for a users file (the password is prompted for)."""
    import sys

    from flo_server.auth import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("the password is empty")
    click.echo(hash_password(password))


main.add_command(check_log_cmd, "check-log")
main.add_command(dump_log_cmd, "dump-log")
main.add_command(hash_password_cmd, "hash-password")


def _add_cluster_commands() -> None:
    from flo_server.cluster.admin import cluster_cmd

    main.add_command(cluster_cmd, "cluster")


_add_cluster_commands()
