"""flo_core: the protocol table, the error map, the wire codec and the sans-IO stores.

Nothing here imports asyncio, reads a clock or logs: time comes in as ``now``
(unix milliseconds) so every structure replays identically.
"""

from .spec import MAGIC, TABLE_HASH, VERSION, Op, Reason, Ran, Status, Tag

__version__ = "0.1.0"

__all__ = ["MAGIC", "TABLE_HASH", "VERSION", "Op", "Reason", "Ran", "Status", "Tag", "__version__"]
