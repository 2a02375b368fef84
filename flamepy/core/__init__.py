"""flamepy.core: configuration, applications, sessions, tasks and the object cache on Flo."""

from .cache import (WILDCARD_SESSION, ObjectKey, ObjectRef, delete_objects, download_object, get_object,
                    patch_object, put_object, update_object, upload_object)
from .client import (Connection, ConnectionInstance, Session, TaskIterator, TaskWatcher, close_session, connect,
                     create_session, get_application, get_session, list_applications, list_executors, list_nodes,
                     list_sessions, open_session, register_application, unregister_application, update_application)
from .config import (FlameClientCache, FlameClientTls, FlameClusterConfig, FlameContext, FlameContextRunner,
                     FlamePackage)
from .service import ApplicationContext, FlameInstanceServer, FlameService, SessionContext, TaskContext, run
from .types import (DEFAULT_FLAME_CACHE_ENDPOINT, DEFAULT_FLAME_CONF, DEFAULT_FLAME_ENDPOINT, FLAME_INSTANCE_ENDPOINT,
                    Application, ApplicationAttributes, ApplicationID, ApplicationSchema, ApplicationState,
                    CommonData, Event, Executor, ExecutorState, FlameError, FlameErrorCode, Message, Node, NodeState,
                    ResourceRequirement, SessionAttributes, SessionID, SessionState, Shim, Task, TaskID, TaskInformer,
                    TaskInput, TaskOutput, TaskState, short_name)

__all__ = [
    "ObjectRef", "delete_objects", "get_object", "patch_object", "put_object", "update_object",
    "WILDCARD_SESSION", "ObjectKey", "download_object", "upload_object",
    "FlameClientCache", "FlameClientTls", "FlameClusterConfig", "FlameContextRunner", "FlamePackage",
    "Connection", "ConnectionInstance", "Session", "TaskIterator", "TaskWatcher", "close_session", "connect",
    "create_session", "get_application", "get_session", "list_applications", "list_executors", "list_nodes",
    "list_sessions", "open_session", "register_application", "unregister_application", "update_application",
    "FlameContext",
    "ApplicationContext", "FlameInstanceServer", "FlameService", "SessionContext", "TaskContext", "run",
    "DEFAULT_FLAME_CACHE_ENDPOINT", "DEFAULT_FLAME_CONF", "DEFAULT_FLAME_ENDPOINT", "FLAME_INSTANCE_ENDPOINT",
    "Application", "ApplicationAttributes", "ApplicationID", "ApplicationSchema", "ApplicationState", "CommonData",
    "Event", "FlameError", "FlameErrorCode", "Message", "ResourceRequirement", "SessionAttributes", "SessionID",
    "SessionState", "Shim", "Task", "TaskID", "TaskInformer", "TaskInput", "TaskOutput", "TaskState",
    "Executor", "ExecutorState", "Node", "NodeState", "short_name",
]
