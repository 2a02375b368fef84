"""Small helpers kept for flamepy 0.6.0 compatibility."""

from .core.ops import short_name

__all__ = ["short_name"]
