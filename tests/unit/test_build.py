"""The compiled pure-Python modules (flo_core/compiled.py): what runs is what the source says."""

from __future__ import annotations

import importlib
import os
import sys

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



@pytest.mark.parametrize("source", [s for s in compiled.SOURCES if s != "flo_server/handlers/action.py"])
def test_the_python_source_itself_passes_its_doctests(source: str) -> None:
    # Where nothing was built the .py runs: load it from its file (not the extension that
    # shadows it) and run its examples. (handlers/action.py is left out: a second copy of it would
    # register its handlers twice.)
    import doctest
    import importlib.util

    package, _, base = compiled.module_name(source).rpartition(".")
    name = f"{package}._as_python_{base}"  # in its package: its relative imports resolve
    spec = importlib.util.spec_from_file_location(name, os.path.join(compiled._ROOT, source))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # (dataclasses look their module up there)
    try:
        spec.loader.exec_module(mod)
        assert mod.__file__.endswith(".py")
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    finally:
        del sys.modules[name]
    assert result.failed == 0
