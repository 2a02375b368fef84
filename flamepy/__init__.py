"""flamepy on Flo: Flame's Python API (service layer, core client, object cache) backed by a flo-server.

Quick start (see ``docs/flamepy.md``)::

    from flamepy.service import Session
    with Session("echo-app", ctx=[]) as session:
        print(session.invoke("hello"))
"""

from . import core, service, util
from .core import (DEFAULT_FLAME_CACHE_ENDPOINT, DEFAULT_FLAME_CONF, DEFAULT_FLAME_ENDPOINT, FLAME_INSTANCE_ENDPOINT,
                   Application, ApplicationAttributes, ApplicationContext, ApplicationID, ApplicationSchema,
                   ApplicationState, CommonData, Connection, Event, FlameContext, FlameError, FlameErrorCode,
                   FlameService, Message, ObjectRef, ResourceRequirement, Session, SessionAttributes, SessionContext,
                   SessionID, SessionState, Shim, Task, TaskContext, TaskID, TaskInformer, TaskInput, TaskOutput,
                   TaskState, TaskWatcher, close_session, connect, create_session, get_application, get_object,
                   get_session, list_applications, list_executors, list_nodes, list_sessions, open_session,
                   put_object, register_application, run, unregister_application, update_object)
from .core import FlameContextRunner, FlamePackage

__version__ = "0.6.0"


def __getattr__(name: str):
    # ``flamepy.runner`` as in Flame, imported on first use so ``import flamepy`` stays light.
    if name == "runner":
        import importlib
        return importlib.import_module(".runner", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "core", "runner", "service", "util", "__version__",
    "DEFAULT_FLAME_CACHE_ENDPOINT", "DEFAULT_FLAME_CONF", "DEFAULT_FLAME_ENDPOINT", "FLAME_INSTANCE_ENDPOINT",
    "Application", "ApplicationAttributes", "ApplicationContext", "ApplicationID", "ApplicationSchema",
    "ApplicationState", "CommonData", "Connection", "Event", "FlameContext", "FlameError", "FlameErrorCode",
    "FlameService", "Message", "ObjectRef", "ResourceRequirement", "Session", "SessionAttributes", "SessionContext",
    "SessionID", "SessionState", "Shim", "Task", "TaskContext", "TaskID", "TaskInformer", "TaskInput",
    "TaskOutput", "TaskState", "TaskWatcher", "close_session", "connect", "create_session", "get_application",
    "get_object", "get_session", "list_applications", "list_executors", "list_nodes", "list_sessions",
    "open_session", "put_object",
    "register_application", "run", "unregister_application", "update_object", "FlameContextRunner", "FlamePackage",
]
