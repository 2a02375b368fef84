"""Plain data types of flamepy: errors, enums, resource requirements, records.

Nothing here touches the network, so it is shared by clients, service
processes, the executor manager and flmctl.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

__all__ = [
    "FlameErrorCode", "FlameError", "SessionState", "TaskState", "ApplicationState", "Shim",
    "ResourceRequirement", "Event", "ApplicationSchema", "ApplicationAttributes", "Application",
    "SessionAttributes", "Task", "TaskInformer", "ExecutorState", "NodeState", "Metadata", "Node", "NodeSpec",
    "NodeStatus", "NodeInfo", "NodeAddress", "Executor", "ExecutorSpec", "ExecutorStatus", "short_name",
    "TaskID", "SessionID", "ApplicationID", "Message", "TaskInput", "TaskOutput", "CommonData",
    "DEFAULT_FLAME_CONF", "DEFAULT_FLAME_ENDPOINT", "DEFAULT_FLAME_CACHE_ENDPOINT", "FLAME_INSTANCE_ENDPOINT",
    "validate_application_name", "validate_session_id", "parse_memory", "utc_datetime",
]

TaskID = str
SessionID = str
ApplicationID = str
Message = bytes
TaskInput = bytes
TaskOutput = bytes
CommonData = bytes

DEFAULT_FLAME_CONF = "flame.yaml"
# Flame's own default was the session manager on :8080; on Flo everything is one flo-server.
DEFAULT_FLAME_ENDPOINT = "127.0.0.1:9000"
DEFAULT_FLAME_CACHE_ENDPOINT = DEFAULT_FLAME_ENDPOINT
FLAME_INSTANCE_ENDPOINT = "FLAME_INSTANCE_ENDPOINT"


class FlameErrorCode(enum.IntEnum):
    INVALID_CONFIG = 0
    INVALID_STATE = 1
    INVALID_ARGUMENT = 2
    INTERNAL = 3
    ALREADY_EXISTS = 4
    NOT_FOUND = 5


class FlameError(Exception):
    """The one error type of flamepy: ``.code`` (FlameErrorCode) and ``.message``.

    >>> str(FlameError(FlameErrorCode.NOT_FOUND, "session x not found"))
    'session x not found (code: 5)'
    """

    def __init__(self, code: FlameErrorCode, message: str) -> None:
        super().__init__(code, message)
        self.code = FlameErrorCode(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code: {int(self.code)})"

    def __repr__(self) -> str:
        return f"FlameError(code={self.code.name}, message={self.message!r})"

    def __reduce__(self):
        return (FlameError, (int(self.code), self.message))


class SessionState(enum.IntEnum):
    OPEN = 0
    CLOSED = 1


class TaskState(enum.IntEnum):
    PENDING = 0
    RUNNING = 1
    SUCCEED = 2
    FAILED = 3
    # 0.6.0 could not represent it (a watcher crashed on "4 is not a valid TaskState").
    CANCELLED = 4


TERMINAL_TASK_STATES = (TaskState.SUCCEED, TaskState.FAILED, TaskState.CANCELLED)


class ApplicationState(enum.IntEnum):
    ENABLED = 0
    DISABLED = 1


class Shim(enum.IntEnum):
    HOST = 0
    WASM = 1

    @classmethod
    def parse(cls, value: Any) -> "Shim":
        if value is None or value == "":
            return cls.HOST
        if isinstance(value, Shim):
            return value
        if isinstance(value, int):
            return cls(value)
        text = str(value)
        if text in ("Host", "host", "HOST"):
            return cls.HOST
        if text in ("Wasm", "wasm", "WASM"):
            return cls.WASM
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"invalid shim <{text}>, expected Host or Wasm")

    def label(self) -> str:
        return "Host" if self is Shim.HOST else "Wasm"


_MEM_UNITS = {"": 1, "k": 1 << 10, "kb": 1 << 10, "ki": 1 << 10, "kib": 1 << 10,
              "m": 1 << 20, "mb": 1 << 20, "mi": 1 << 20, "mib": 1 << 20,
              "g": 1 << 30, "gb": 1 << 30, "gi": 1 << 30, "gib": 1 << 30,
              "t": 1 << 40, "tb": 1 << 40, "ti": 1 << 40, "tib": 1 << 40,
              "p": 1 << 50, "pb": 1 << 50, "pi": 1 << 50, "pib": 1 << 50}
_MEM_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")


def parse_memory(value: Any) -> int:
    """Bytes from ``4g``, ``512Mi``, ``1024`` (all suffixes are binary).

    >>> parse_memory("4g")
    4294967296
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid memory value: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid memory value: {value!r}")
        return value
    m = _MEM_RE.match(str(value))
    if not m or m.group(2).lower() not in _MEM_UNITS:
        raise ValueError(f"invalid memory value: {value!r}")
    return int(m.group(1)) * _MEM_UNITS[m.group(2).lower()]


@dataclass
class ResourceRequirement:
    """Resources of one service instance: cpu cores, memory bytes, gpus.

    >>> ResourceRequirement.from_string("cpu=2,mem=4g")
    ResourceRequirement(cpu=2, memory=4294967296, gpu=0)
    """

    cpu: int = 0
    memory: int = 0
    gpu: int = 0

    @classmethod
    def from_string(cls, text: str) -> "ResourceRequirement":
        if text is None or not text.strip():
            raise ValueError("resource requirement string is empty")
        out = cls()
        for entry in text.split(","):
            entry = entry.strip()
            if not entry:
                raise ValueError(f"empty entry in resource requirement {text!r}")
            parts = entry.split("=")
            if len(parts) != 2:
                raise ValueError(f"invalid resource requirement entry {entry!r}, expected key=value")
            key, value = parts[0].strip().lower(), parts[1].strip()
            if not value:
                raise ValueError(f"empty value for {key!r} in resource requirement")
            if key == "cpu" or key == "gpu":
                try:
                    number = int(value)
                except ValueError:
                    raise ValueError(f"invalid integer {value!r} for {key}") from None
                if number < 0:
                    raise ValueError(f"invalid integer {value!r} for {key}")
                setattr(out, key, number)
            elif key in ("mem", "memory"):
                out.memory = parse_memory(value)
            else:
                raise ValueError(f"unknown resource {key!r}, expected cpu, mem or gpu")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ResourceRequirement":
        memory = data.get("memory", data.get("mem", 0))
        return cls(cpu=int(data.get("cpu", 0) or 0), memory=parse_memory(memory or 0),
                   gpu=int(data.get("gpu", 0) or 0))

    @classmethod
    def coerce(cls, value: Any) -> Optional["ResourceRequirement"]:
        if value is None:
            return None
        if isinstance(value, ResourceRequirement):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str):
            return cls.from_string(value)
        raise TypeError(f"resreq must be a ResourceRequirement, dict or str, not {type(value).__name__}")

    def to_list(self) -> list:
        return [self.cpu, self.memory, self.gpu]

    @classmethod
    def from_list(cls, data) -> Optional["ResourceRequirement"]:
        return None if data is None else cls(*data)

    def __str__(self) -> str:
        return f"cpu={self.cpu},mem={format_memory(self.memory)},gpu={self.gpu}"


def format_memory(n: int) -> str:
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size:
            return f"{n // size}{unit}"
    return f"{n}B"


def utc_datetime(ms: Optional[int]) -> Optional[datetime]:
    """A record's unix-ms timestamp as the timezone-aware UTC datetime Flame's API returns (None stays None).

    >>> utc_datetime(0)
    datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
    """
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def short_name(prefix: str, length: int = 6) -> str:
    """``<prefix>-<length random [A-Za-z0-9]>``, the shape of generated session ids (Flame's helper).

    >>> len(short_name("echo-app"))
    15
    """
    import secrets
    return f"{prefix}-{''.join(secrets.choice(_ALNUM) for _ in range(length))}"


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass
class Event:
    """A task or session event: ``code`` (the task state number, or 1001/1002/1003 for sessions), ``message``
    and ``creation_time`` (UTC datetime)."""

    code: int
    message: Optional[str] = None
    creation_time: Optional[datetime] = None


@dataclass
class ApplicationSchema:
    input: Optional[str] = None
    output: Optional[str] = None
    common_data: Optional[str] = None


_APP_ATTR_FIELDS = ("shim", "image", "description", "labels", "command", "arguments", "environments",
                    "working_directory", "max_instances", "delay_release", "schema", "url", "installer")


@dataclass
class ApplicationAttributes:
    shim: Shim = Shim.HOST
    image: Optional[str] = None
    description: Optional[str] = None
    labels: list = field(default_factory=list)
    command: Optional[str] = None
    arguments: list = field(default_factory=list)
    environments: dict = field(default_factory=dict)
    working_directory: Optional[str] = None
    max_instances: Optional[int] = None
    delay_release: Optional[int] = None
    schema: Optional[ApplicationSchema] = None
    url: Optional[str] = None
    installer: Optional[str] = None


@dataclass
class Application:
    id: str
    name: str
    state: ApplicationState
    creation_time: datetime
    shim: Shim = Shim.HOST
    image: Optional[str] = None
    description: Optional[str] = None
    labels: list = field(default_factory=list)
    command: Optional[str] = None
    arguments: list = field(default_factory=list)
    environments: dict = field(default_factory=dict)
    working_directory: Optional[str] = None
    max_instances: int = 1_000_000
    delay_release: int = 60
    schema: Optional[ApplicationSchema] = None
    url: Optional[str] = None
    installer: Optional[str] = None


@dataclass
class SessionAttributes:
    application: str
    id: Optional[str] = None
    common_data: Optional[bytes] = None
    min_instances: int = 0
    max_instances: Optional[int] = None
    batch_size: int = 1
    resreq: Optional[ResourceRequirement] = None


@dataclass
class Task:
    id: TaskID
    session_id: SessionID
    state: TaskState
    creation_time: datetime
    input: Optional[bytes] = None
    output: Optional[bytes] = None
    completion_time: Optional[datetime] = None
    events: list = field(default_factory=list)

    def is_completed(self) -> bool:
        return self.state in TERMINAL_TASK_STATES

    def is_failed(self) -> bool:
        return self.state in (TaskState.FAILED, TaskState.CANCELLED)


class TaskInformer:
    """Task update callbacks: pass one to ``Session.run(input, informer)`` / ``invoke(input, informer)``.

    ``on_update(task)`` gets the task at each state change (its last call is the terminal state);
    ``on_error(error)`` a FlameError when the task cannot be followed (0.5's API, which 0.6.0 dropped
    from ``run`` although its own example still passes one).
    """

    def on_update(self, task: Task) -> None:  # pragma: no cover - interface
        pass

    def on_error(self, error: FlameError) -> None:  # pragma: no cover - interface
        pass


_NAME_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")


def validate_application_name(name: Any) -> str:
    """Flame's rules: 1-253 chars of [A-Za-z0-9._-], not starting with '.'/'-', no '..'."""
    if not isinstance(name, str) or not name:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "application name must not be empty")
    if len(name) > 253:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "application name is longer than 253 characters")
    if not _NAME_CHARS.match(name) or name[0] in ".-" or ".." in name:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                         f"invalid application name <{name}>: only letters, digits, '-', '_' and '.' are allowed, "
                         "it must not start with '.' or '-' nor contain '..'")
    return name


def validate_session_id(session_id: Any) -> str:
    """Session ids are 1-128 chars of [A-Za-z0-9._-] (they become KV key and queue name parts)."""
    if not isinstance(session_id, str) or not session_id or len(session_id) > 128 \
            or not _NAME_CHARS.match(session_id) or ".." in session_id:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                         f"invalid session id <{session_id}>: 1-128 letters, digits, '-', '_' or '.'")
    return session_id


# -- cluster view: nodes and executors (the shape of Flame's protobuf objects: .metadata / .spec / .status) --------

class NodeState(enum.IntEnum):
    UNKNOWN = 0
    READY = 1
    NOT_READY = 2

    def label(self) -> str:
        return {0: "Unknown", 1: "Ready", 2: "NotReady"}[int(self)]


class ExecutorState(enum.IntEnum):
    UNKNOWN = 0
    VOID = 1
    IDLE = 2
    BINDING = 3
    BOUND = 4
    UNBINDING = 5
    RELEASING = 6
    RELEASED = 7

    def label(self) -> str:
        return self.name.capitalize()


@dataclass
class Metadata:
    id: str
    name: str


@dataclass
class NodeSpec:
    hostname: str


@dataclass
class NodeInfo:
    arch: str = ""
    os: str = ""


@dataclass
class NodeAddress:
    type: str
    address: str


@dataclass
class NodeStatus:
    state: NodeState
    capacity: ResourceRequirement
    allocatable: ResourceRequirement
    info: NodeInfo
    addresses: list = field(default_factory=list)
    last_heartbeat_time: int = 0  # unix seconds, as Flame's
    max_instances: int = 0       # ours: the node's instance cap
    instances: int = 0           # ours: instances running there now


@dataclass
class Node:
    """A node running an executor manager (``flamepy.list_nodes()``): ``node.metadata.name``,
    ``node.spec.hostname``, ``node.status.state / capacity / allocatable / info / last_heartbeat_time``."""

    metadata: Metadata
    spec: NodeSpec
    status: NodeStatus

    @property
    def name(self) -> str:
        return self.metadata.name


@dataclass
class ExecutorSpec:
    node: str
    resreq: ResourceRequirement
    shim: Shim = Shim.HOST


@dataclass
class ExecutorStatus:
    state: ExecutorState
    session_id: Optional[str] = None


@dataclass
class Executor:
    """One service instance slot (``flamepy.list_executors()``): ``executor.metadata.id``, ``executor.spec.node /
    resreq``, ``executor.status.state / session_id``. On Flo an executor is exactly one instance process."""

    metadata: Metadata
    spec: ExecutorSpec
    status: ExecutorStatus

    @property
    def id(self) -> str:
        return self.metadata.id
