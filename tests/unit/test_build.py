"""The compiled pure-Python modules (flo_core/compiled.py): what runs is what the source says."""

from __future__ import annotations

import importlib
import os

import pytest

from flo_core import compiled


def test_no_extension_is_older_than_its_source() -> None:
    # An extension shadows its .py: an edit not rebuilt would silently run the old code.
    assert compiled.stale() == [], "edited since built; run `make build`"


@pytest.mark.parametrize("source", compiled.SOURCES)
def test_the_import_loads_the_extension_when_built(source: str) -> None:
    mod = importlib.import_module(compiled.module_name(source))
    ext = compiled.extension_of(source)
    if ext is None:
        assert mod.__file__.endswith(".py")
    else:
        assert os.path.samefile(mod.__file__, ext)


def test_every_source_exists_and_the_build_compiles_them_all() -> None:
    for source in compiled.SOURCES:
        assert os.path.exists(os.path.join(compiled._ROOT, source)), source
    # `make build` compiled every one (a module missing from the build would run as Python unseen).
    if compiled.extension_of("flo_core/frame.pyx") is not None:
        assert compiled.not_compiled() == []

