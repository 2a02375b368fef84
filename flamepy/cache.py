"""flamepy.cache: Flame 0.6's short import path for the object cache (everything is in :mod:`flamepy.core.cache`).

>>> from flamepy.cache import put_object, get_object    # doctest: +SKIP
"""

from .core.cache import ObjectRef, delete_objects, get_object, patch_object, put_object, update_object

__all__ = ["ObjectRef", "delete_objects", "get_object", "patch_object", "put_object", "update_object"]
