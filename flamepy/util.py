"""flamepy.util: Flame 0.6's small helpers.

>>> name = short_name("my-app")          # 'my-app-' + 6 random letters/digits
>>> name.startswith("my-app-") and len(name) == len("my-app-") + 6
True
"""

from .core.types import short_name

__all__ = ["short_name"]
