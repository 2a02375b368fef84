"""Server settings: one dataclass, defaults as DEFAULT_* constants, merged from the CLI and FLO_* env."""

from __future__ import annotations

from dataclasses import dataclass, field

from flo_core.spec import DEFAULT_MAX_FRAME

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
DEFAULT_HTTP_PORT = 9001  # flo-server's default; a ServerConfig made in code has HTTP off (embedded servers)
DEFAULT_DATA_DIR = "./data"
DEFAULT_FSYNC = "everysec"
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_HIGH_WATER = 4 * 1024 * 1024  # bytes of unsent answers before a connection stops being read
DEFAULT_CLIENT_OUTPUT_LIMIT = 64 * 1024 * 1024  # bytes of answers a client has not read before it is dropped
DEFAULT_QUEUE_LEASE_MS = 30_000
DEFAULT_QUEUE_MAX_DELIVERIES = 5
DEFAULT_DEDUP_WINDOW_MS = 5 * 60_000
DEFAULT_SNAPSHOT_BYTES = 64 * 1024 * 1024
DEFAULT_HISTORY_BYTES = 256 * 1024 * 1024  # old KV versions kept in memory, all keys together
DEFAULT_LEASE_MS = 3000  # a cluster shard leader's lease in etcd


@dataclass
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: str | None = DEFAULT_DATA_DIR  # None: memory only, nothing persisted
    fsync: str = DEFAULT_FSYNC  # always | everysec | no
    log_level: str = "info"
    max_frame: int = DEFAULT_MAX_FRAME
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    high_water: int = DEFAULT_HIGH_WATER
    client_output_limit: int = DEFAULT_CLIENT_OUTPUT_LIMIT  # 0: none (docs/reliability.md)
    queue_lease_ms: int = DEFAULT_QUEUE_LEASE_MS
    queue_max_deliveries: int = DEFAULT_QUEUE_MAX_DELIVERIES
    dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS
    snapshot_bytes: int = DEFAULT_SNAPSHOT_BYTES
    history_bytes: int = DEFAULT_HISTORY_BYTES
    executor: bool = True  # run the flamepy executor manager in-process
    repair_log: bool = False  # cut a corrupt log at the first bad record instead of refusing to start
    # --- security (docs/security.md) ---
    users_file: str | None = None  # TOML/YAML users, password hashes and permissions
    requirepass: str | None = None  # one password for the default user
    insecure_bind: bool = False  # allow a non-loopback bind without users or a password
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # CA bundle to verify client certificates with
    tls_auth_clients: str = "no"  # no | optional | yes: client certificates
    tls_port: int | None = None  # TLS on a second port; None: with a certificate, --port itself is TLS
    executor_allow: tuple = ()  # directories an application's working_directory must be inside (empty: any)
    http_port: int = 0  # metrics, health, console (flo_server.http): 0 off, -1 any free port
    # --- cluster (docs/cluster.md) ---
    etcd: str | None = None  # etcd client URLs: this server is a member of cluster ``cluster``
    cluster: str = "flo"
    shard: int = 0
    advertise: str | None = None  # host:port the other members and clients reach this one at
    node: str | None = None  # this member's name (default: advertise)
    lease_ms: int = DEFAULT_LEASE_MS
    sync_replicas: int = 0  # answer a write once this many replicas have it
    extra: dict = field(default_factory=dict)
