"""The protocol table, defined once.

Every op code, option tag, status code, refusal reason and framing constant of
Flo wire v2 lives here, and server, client and tests import them from here.
Codes marked ``ext`` are this project's extensions (see ``docs/protocol.md``):
new codes and tags only, never a new meaning for an existing byte.

Example:
    >>> from flo_core.spec import Op, SPEC
    >>> SPEC[Op.KV_PUT].table
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

# --- framing ----------------------------------------------------------------

MAGIC = 0x004F4C46  # bytes 46 4C 4F 00, "FLO\0"
MAGIC_BYTES = b"FLO\x00"
VERSION = 0x02
TABLE_HASH = 0x2FBA7DD9AE941830
HEADER_SIZE = 32

# --- limits (server side; the SDK's own caps are in flo-wire-v2.md §1.8) ----

DEFAULT_MAX_FRAME = 16 * 1024 * 1024 + 64 * 1024  # payload bytes of one request
MAX_NAMESPACE = 255
MAX_KEY = 65535
MAX_KV_VALUE = 16 * 1024 * 1024
MAX_BLOCK_MS = 300_000
MAX_MGET_KEYS = 256
MAX_MPUT_ITEMS = 4096
MAX_SCAN_LIMIT = 1024
DEFAULT_SCAN_LIMIT = 1024
MAX_SCAN_CURSOR = 64
MAX_HISTORY = 65  # versions kept per key (SDK asks 1..65)
DEFAULT_HISTORY_LIMIT = 10
MAX_JSON_PATH = 1024
TXN_MAX_OPS = 256
TXN_MAX_BYTES = 1024 * 1024
TXN_MAX_OPEN = 1024
TXN_IDLE_TIMEOUT_MS = 60_000
MAX_WAITERS = 100_000  # parked blocking requests per server
DEFAULT_NAMESPACE = "default"


class Op(IntEnum):
    """Op codes (u16 at header offset 20)."""

    PING = 0x000
    SERVER_INFO = 0x001  # ext: server/stat summary as msgpack
    AUTH = 0x002  # ext: key = user name, value = password
    NAMESPACE_CREATE = 0x010
    NAMESPACE_DELETE = 0x011
    NAMESPACE_LIST = 0x012
    NAMESPACE_INFO = 0x013
    NAMESPACE_CONFIG_SET = 0x014
    NAMESPACE_CONFIG_GET = 0x015
    CLUSTER_STATUS = 0x030
    CLUSTER_MEMBERS = 0x031
    CLUSTER_JOIN = 0x032
    CLUSTER_LEAVE = 0x033
    CLUSTER_TRANSFER_LEADER = 0x034
    CLUSTER_ADD_NODE = 0x035
    CLUSTER_REMOVE_NODE = 0x036
    REPL_FETCH = 0x03A  # ext: a replica fetches its leader's log (flo_server.cluster.replication)
    REPL_SNAPSHOT = 0x03B  # ext: a replica fetches its leader's state, page by page
    CLUSTER_HOP = 0x03C  # ext: this connection carries requests forwarded by another member
    CLUSTER_SLOTS = 0x03D  # ext: the slot map and each shard's leader and members (routing clients learn it)
    CLUSTER_MIGRATE = 0x03E  # ext: admin asks a shard leader to move slots to another shard (move-slots)
    CLUSTER_IMPORT = 0x03F  # ext: a shard leader hands the data of moving slots to the new owner

    KV_PUT = 0x100
    KV_GET = 0x101
    KV_MGET = 0x102
    KV_DELETE = 0x103
    KV_SCAN = 0x104
    KV_HISTORY = 0x105
    KV_INCR = 0x10B
    KV_JSON_GET = 0x10C
    KV_JSON_SET = 0x10D
    KV_JSON_DEL = 0x10E
    KV_BEGIN_TXN = 0x110
    KV_COMMIT_TXN = 0x111
    KV_ROLLBACK_TXN = 0x112
    KV_EXPIRE = 0x113
    KV_EXISTS = 0x115
    KV_MPUT = 0x120  # ext: many guarded puts in one request and one log record

    STREAM_APPEND = 0x130
    STREAM_READ = 0x131
    STREAM_TRIM = 0x132
    STREAM_INFO = 0x133
    STREAM_LIST = 0x13B
    STREAM_CREATE = 0x13D
    STREAM_DELETE = 0x13E  # ext
    STREAM_ALTER = 0x13F
    STREAM_GROUP_CREATE = 0x150
    STREAM_GROUP_JOIN = 0x151
    STREAM_GROUP_LEAVE = 0x152
    STREAM_GROUP_READ = 0x153
    STREAM_GROUP_ACK = 0x154
    STREAM_GROUP_CLAIM = 0x155
    STREAM_GROUP_PENDING = 0x156
    STREAM_GROUP_CONFIGURE_SWEEPER = 0x157
    STREAM_GROUP_NACK = 0x159
    STREAM_GROUP_TOUCH = 0x15A
    STREAM_GROUP_INFO = 0x15B
    STREAM_GROUP_DELETE = 0x15C

    QUEUE_ENQUEUE = 0x170
    QUEUE_DEQUEUE = 0x171
    QUEUE_COMPLETE = 0x172
    QUEUE_FAIL = 0x174
    QUEUE_DLQ_LIST = 0x176
    QUEUE_DLQ_DELETE = 0x177
    QUEUE_DLQ_REQUEUE = 0x178
    QUEUE_STATS = 0x17B
    QUEUE_PEEK = 0x17C
    QUEUE_TOUCH = 0x17D  # ext: extend leases
    QUEUE_DLQ_PURGE = 0x17E  # ext
    QUEUE_PURGE = 0x17F
    QUEUE_LIST = 0x198

    TS_WRITE = 0x1A0
    TS_READ = 0x1A1
    TS_QUERY = 0x1A2
    TS_FLOQL = 0x1A3
    TS_LIST = 0x1A4
    TS_DELETE = 0x1A5
    TS_RETENTION = 0x1A6

    ACTION_REGISTER = 0x300
    ACTION_INVOKE = 0x301
    ACTION_STATUS = 0x302
    ACTION_LIST = 0x303
    ACTION_LIST_RUNS = 0x304
    ACTION_DELETE = 0x305
    ACTION_AWAIT = 0x306
    ACTION_COMPLETE = 0x307
    ACTION_FAIL = 0x308
    ACTION_TOUCH = 0x309
    ACTION_RESULT = 0x30A  # ext: wait for a run to finish
    ACTION_CANCEL = 0x30B  # ext
    WORKER_REGISTER = 0x320
    WORKER_HEARTBEAT = 0x321
    WORKER_DEREGISTER = 0x322
    WORKER_LIST = 0x323
    WORKER_INFO = 0x324
    WORKER_DRAIN = 0x325

    WORKFLOW_CREATE = 0x340
    WORKFLOW_START = 0x341
    WORKFLOW_SIGNAL = 0x342
    WORKFLOW_CANCEL = 0x343
    WORKFLOW_STATUS = 0x344
    WORKFLOW_HISTORY = 0x345
    WORKFLOW_LIST_RUNS = 0x346
    WORKFLOW_GET_DEFINITION = 0x347
    WORKFLOW_DISABLE = 0x348
    WORKFLOW_ENABLE = 0x349
    WORKFLOW_LIST_DEFINITIONS = 0x34A
    PROCESSING_SUBMIT = 0x360
    PROCESSING_STOP = 0x361
    PROCESSING_CANCEL = 0x362
    PROCESSING_STATUS = 0x363
    PROCESSING_LIST = 0x364


class Flag(IntFlag):
    """What kind of op it is; drives the generic checks done once in dispatch."""

    NONE = 0
    TABLE = 1  # schema-coded body, no value/options split (flo-wire-v2 §1.3a)
    READ = 2
    WRITE = 4  # changes state: logged
    BLOCKING = 8  # may park (long poll)
    EXT = 16  # this project's extension


@dataclass(frozen=True)
class OpSpec:
    op: Op
    flags: Flag
    summary: str

    @property
    def table(self) -> bool:
        return bool(self.flags & Flag.TABLE)


T, R, W, B, X = Flag.TABLE, Flag.READ, Flag.WRITE, Flag.BLOCKING, Flag.EXT

_OPS: tuple[OpSpec, ...] = (
    OpSpec(Op.PING, R, "liveness"),
    OpSpec(Op.SERVER_INFO, R | X, "server information (msgpack map)"),
    OpSpec(Op.AUTH, R | X, "authenticate this connection as a user (changes no data)"),
    OpSpec(Op.REPL_FETCH, R | B | X, "a replica fetches (and acknowledges) its shard leader's log"),
    OpSpec(Op.REPL_SNAPSHOT, R | X, "a replica fetches its shard leader's state"),
    OpSpec(Op.CLUSTER_HOP, R | X, "mark this connection as carrying forwarded requests"),
    OpSpec(Op.CLUSTER_SLOTS, R | X, "the cluster's slot map and shard leaders (msgpack)"),
    OpSpec(Op.CLUSTER_MIGRATE, W | X, "move slots from this shard to another, online"),
    OpSpec(Op.CLUSTER_IMPORT, W | X, "take the data of slots moving to this shard"),
    OpSpec(Op.KV_PUT, T | W, "set a value (+TTL, condition, CAS, txn)"),
    OpSpec(Op.KV_GET, T | R | B, "get value and version, optional wait"),
    OpSpec(Op.KV_MGET, T | R, "multi-key get"),
    OpSpec(Op.KV_DELETE, T | W, "delete (+CAS)"),
    OpSpec(Op.KV_SCAN, T | R, "list key names by prefix, paged"),
    OpSpec(Op.KV_HISTORY, T | R, "versions, newest first"),
    OpSpec(Op.KV_INCR, T | W, "atomic i64 add"),
    OpSpec(Op.KV_JSON_GET, T | R, "read a JSON sub-path"),
    OpSpec(Op.KV_JSON_SET, T | W, "write a JSON sub-path"),
    OpSpec(Op.KV_JSON_DEL, T | W, "delete a JSON sub-path"),
    OpSpec(Op.KV_BEGIN_TXN, T | W, "open a per-routing-key transaction"),
    OpSpec(Op.KV_COMMIT_TXN, T | W, "commit a transaction"),
    OpSpec(Op.KV_ROLLBACK_TXN, T | W, "discard a transaction"),
    OpSpec(Op.KV_EXPIRE, T | W, "set or clear a TTL"),
    OpSpec(Op.KV_EXISTS, T | R, "existence and version"),
    OpSpec(Op.KV_MPUT, W | X, "many guarded puts, one log record"),
    OpSpec(Op.STREAM_APPEND, W, "append a record"),
    OpSpec(Op.STREAM_READ, R | B, "read by position / tail, optional block"),
    OpSpec(Op.STREAM_TRIM, W, "drop oldest records"),
    OpSpec(Op.STREAM_INFO, R, "stream metadata"),
    OpSpec(Op.STREAM_LIST, R, "list streams"),
    OpSpec(Op.STREAM_CREATE, W, "create with retention"),
    OpSpec(Op.STREAM_DELETE, W | X, "delete a stream and its groups"),
    OpSpec(Op.STREAM_ALTER, W, "change retention"),
    OpSpec(Op.STREAM_GROUP_CREATE, W, "create a consumer group"),
    OpSpec(Op.STREAM_GROUP_JOIN, W, "add a consumer"),
    OpSpec(Op.STREAM_GROUP_LEAVE, W, "remove a consumer"),
    OpSpec(Op.STREAM_GROUP_READ, W | B, "deliver records to a consumer"),
    OpSpec(Op.STREAM_GROUP_ACK, W, "remove entries from the PEL"),
    OpSpec(Op.STREAM_GROUP_CLAIM, W, "take over pending entries"),
    OpSpec(Op.STREAM_GROUP_PENDING, R, "list the PEL"),
    OpSpec(Op.STREAM_GROUP_CONFIGURE_SWEEPER, W, "ack timeout / max deliveries"),
    OpSpec(Op.STREAM_GROUP_NACK, W, "make entries redeliverable"),
    OpSpec(Op.STREAM_GROUP_TOUCH, W, "extend ack deadlines"),
    OpSpec(Op.STREAM_GROUP_INFO, R, "group metadata"),
    OpSpec(Op.STREAM_GROUP_DELETE, W, "delete a group"),
    OpSpec(Op.QUEUE_ENQUEUE, W, "enqueue"),
    OpSpec(Op.QUEUE_DEQUEUE, W | B, "lease messages, optional long poll"),
    OpSpec(Op.QUEUE_COMPLETE, W, "ack"),
    OpSpec(Op.QUEUE_FAIL, W, "nack"),
    OpSpec(Op.QUEUE_DLQ_LIST, R, "list the DLQ"),
    OpSpec(Op.QUEUE_DLQ_DELETE, W, "delete from the DLQ"),
    OpSpec(Op.QUEUE_DLQ_REQUEUE, W, "DLQ -> ready"),
    OpSpec(Op.QUEUE_STATS, R, "queue counters"),
    OpSpec(Op.QUEUE_PEEK, R, "look without leasing"),
    OpSpec(Op.QUEUE_TOUCH, W | X, "extend leases"),
    OpSpec(Op.QUEUE_DLQ_PURGE, W | X, "empty a DLQ"),
    OpSpec(Op.QUEUE_PURGE, W, "empty a queue"),
    OpSpec(Op.QUEUE_LIST, R, "list queues"),
    OpSpec(Op.ACTION_REGISTER, W, "create or replace an action"),
    OpSpec(Op.ACTION_INVOKE, W | B, "create a run (ext: with WAIT_MS, answer once it finished)"),
    OpSpec(Op.ACTION_STATUS, T | R, "run status"),
    OpSpec(Op.ACTION_LIST, R, "list actions"),
    OpSpec(Op.ACTION_LIST_RUNS, R, "list runs"),
    OpSpec(Op.ACTION_DELETE, W, "delete an action"),
    OpSpec(Op.ACTION_AWAIT, W | B, "worker long poll for a run"),
    OpSpec(Op.ACTION_COMPLETE, W, "report success"),
    OpSpec(Op.ACTION_FAIL, W, "report failure"),
    OpSpec(Op.ACTION_TOUCH, W, "extend a run's lease"),
    OpSpec(Op.ACTION_RESULT, R | B | X, "wait for a run to finish"),
    OpSpec(Op.ACTION_CANCEL, W | X, "cancel a run"),
    OpSpec(Op.WORKER_REGISTER, W, "register a worker"),
    OpSpec(Op.WORKER_HEARTBEAT, W, "liveness and load"),
    OpSpec(Op.WORKER_DEREGISTER, W, "remove a worker"),
    OpSpec(Op.WORKER_LIST, T | R, "list workers"),
    OpSpec(Op.WORKER_INFO, R, "one worker"),
    OpSpec(Op.WORKER_DRAIN, W, "stop giving a worker work"),
)

SPEC: dict[int, OpSpec] = {s.op: s for s in _OPS}
assert len(SPEC) == len(_OPS), "duplicate op in spec"

#: The 17 schema-coded ops of flo-wire-v2 §1.3a (they have no value/options split).
TABLE_OPS = frozenset(int(s.op) for s in _OPS if s.flags & Flag.TABLE)


class Status(IntEnum):
    """Status byte of an answer (header offset 21)."""

    OK = 0
    ERROR_GENERIC = 1
    NOT_FOUND = 2
    BAD_REQUEST = 3
    CROSS_CORE_TRANSACTION = 4
    NO_ACTIVE_TRANSACTION = 5
    GROUP_LOCKED = 6
    UNAUTHORIZED = 7
    CONFLICT = 8
    INTERNAL_ERROR = 9
    OVERLOADED = 10
    RATE_LIMITED = 11
    UNAVAILABLE = 12


class Reason(IntEnum):
    """First field of every refusal body (flo-wire-v2 §2.4).

    The table hash covers this list (the SDK refuses a reason it does not know), so
    extensions add none: authentication and permission refusals are status
    UNAUTHORIZED with reason UNCLASSIFIED, and their message says which.
    """

    UNKNOWN_OP = 1
    MALFORMED = 2
    FIELD_TOO_LONG = 3
    OUT_OF_RANGE = 4
    LEADER_UNKNOWN = 5
    SHARD_BUSY = 6
    TABLE_MISMATCH = 7
    UNKNOWN_FLAG = 8
    INTERNAL = 9
    COMMITTED_NOT_APPLIED = 10
    ANSWER_LOST = 11
    UNCLASSIFIED = 12
    NOT_FOUND = 13
    RESERVED_KEY = 14
    CAS_MISMATCH = 15
    CONDITION_FAILED = 16
    NO_SUCH_TRANSACTION = 17
    WRONG_ROUTING_KEY = 18
    TXN_TOO_LARGE = 19
    TOO_MANY_WAITERS = 20
    CONFLICTING_FIELDS = 21
    WRITES_STOPPED = 22
    TOO_MANY_PROPOSALS = 23
    WRONG_TYPE = 24
    TOO_MANY_TRANSACTIONS = 25
    STALE_REPORT = 26
    WORKER_UNHEALTHY = 27
    WORKER_DRAINING = 28


class Ran(IntEnum):
    """Did a refused request take effect? Clients retry only on NO."""

    NO = 0
    YES = 1
    UNKNOWN = 2


#: The status a reason is answered with when the handler names only the reason
#: (flo-wire-v2 §7.7).
REASON_STATUS: dict[Reason, Status] = {
    Reason.UNKNOWN_OP: Status.BAD_REQUEST,
    Reason.MALFORMED: Status.BAD_REQUEST,
    Reason.FIELD_TOO_LONG: Status.BAD_REQUEST,
    Reason.OUT_OF_RANGE: Status.BAD_REQUEST,
    Reason.LEADER_UNKNOWN: Status.UNAVAILABLE,
    Reason.SHARD_BUSY: Status.OVERLOADED,
    Reason.TABLE_MISMATCH: Status.BAD_REQUEST,
    Reason.UNKNOWN_FLAG: Status.BAD_REQUEST,
    Reason.INTERNAL: Status.INTERNAL_ERROR,
    Reason.COMMITTED_NOT_APPLIED: Status.INTERNAL_ERROR,
    Reason.ANSWER_LOST: Status.INTERNAL_ERROR,
    Reason.UNCLASSIFIED: Status.ERROR_GENERIC,
    Reason.NOT_FOUND: Status.NOT_FOUND,
    Reason.RESERVED_KEY: Status.UNAUTHORIZED,
    Reason.CAS_MISMATCH: Status.CONFLICT,
    Reason.CONDITION_FAILED: Status.CONFLICT,
    Reason.NO_SUCH_TRANSACTION: Status.NOT_FOUND,
    Reason.WRONG_ROUTING_KEY: Status.BAD_REQUEST,
    Reason.TXN_TOO_LARGE: Status.BAD_REQUEST,
    Reason.TOO_MANY_WAITERS: Status.OVERLOADED,
    Reason.CONFLICTING_FIELDS: Status.BAD_REQUEST,
    Reason.WRITES_STOPPED: Status.UNAVAILABLE,
    Reason.TOO_MANY_PROPOSALS: Status.OVERLOADED,
    Reason.WRONG_TYPE: Status.CONFLICT,
    Reason.TOO_MANY_TRANSACTIONS: Status.OVERLOADED,
    Reason.STALE_REPORT: Status.CONFLICT,
    Reason.WORKER_UNHEALTHY: Status.UNAVAILABLE,
    Reason.WORKER_DRAINING: Status.UNAVAILABLE,
}


class Tag(IntEnum):
    """TLV option tags ``[tag u8][len u8][data]`` of value+options ops."""

    LIMIT = 0x05  # u32 or u64 (stream trim sends u64)
    PRIORITY = 0x10  # u8, lower first
    COUNT = 0x15  # u32
    BLOCK_MS = 0x17  # u32, 0 = don't wait
    STREAM_START = 0x21  # 16 bytes BE [ts u64][seq u64]
    STREAM_END = 0x22  # 16 bytes BE
    STREAM_TAIL = 0x23  # flag
    PARTITION = 0x24  # u32
    PARTITION_KEY = 0x25  # string
    MAX_AGE_SECONDS = 0x26  # u64
    DRY_RUN = 0x28  # flag
    ACK_TIMEOUT_MS = 0x30  # u32
    MAX_DELIVER = 0x31  # u8
    # --- extensions (docs/protocol.md) ---
    DELAY_MS = 0x40  # u64: enqueue invisible for N ms; nack: ready after N ms
    DEDUP_KEY = 0x41  # string: enqueue dedup key
    TO_DLQ = 0x42  # flag: nack straight to the DLQ
    LEASE_MS = 0x43  # u32: dequeue lease length / touch extension
    IDEMPOTENCY_KEY = 0x44  # string: invoke
    RUN_PRIORITY = 0x45  # u8: invoke priority, lower first (like queues)
    DEDUP_WINDOW_MS = 0x46  # u64: enqueue dedup window
    MAX_BYTES = 0x47  # u64: stream trim / retention by bytes
    WAIT_MS = 0x48  # u32: generic wait for ext ops (ACTION_RESULT)
    CURSOR = 0x49  # bytes: paging cursor for list ops
    PREFIX = 0x4A  # string: list filter


#: Tags whose value is a flag (length 0).
FLAG_TAGS = frozenset({Tag.STREAM_TAIL, Tag.DRY_RUN, Tag.TO_DLQ})


class WaitFor(IntEnum):
    EXISTS = 0
    CHANGE = 1


class Condition(IntEnum):
    ALWAYS = 0
    IF_ABSENT = 1
    IF_PRESENT = 2


class RunStatus(IntEnum):
    PENDING = 0
    RUNNING = 1
    COMPLETED = 2
    FAILED = 3
    CANCELLED = 4
    TIMED_OUT = 5


class WorkerStatus(IntEnum):
    ACTIVE = 0
    IDLE = 1
    DRAINING = 2
    UNHEALTHY = 3


class StorageTier(IntEnum):
    HOT = 0
    WARM = 1
