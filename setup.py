"""Build the Cython extensions of flo_core: every ``flo_core/*.pyx`` is one extension.

An in-place build (``build_ext --inplace``, what ``make`` runs) also builds the benchmark's C load
engine (``bench/*.pyx``): the bench runs from the repository and is not part of the package.

The server's hottest pure-Python modules (``flo_core/compiled.py``) are compiled too, from the same
``.py`` files. A compiled module shadows its ``.py``: after editing one, ``make build``.

``FLO_DEBUG=1`` builds with line tracing and assertions (bench refuses such a build).
"""

import glob
import os
import runpy
import sys

from setuptools import Extension, setup

DEBUG = bool(os.environ.get("FLO_DEBUG"))

#: Pure-Python modules compiled as they are (read as a file: the package may not import before its build).
COMPILED_PY = list(runpy.run_path("flo_core/compiled.py")["SOURCES"])


def extensions():
    from Cython.Build import cythonize

    exts = []
    paths = sorted(glob.glob("flo_core/*.pyx")) + COMPILED_PY
    if "--inplace" in sys.argv or "-i" in sys.argv:
        paths += sorted(glob.glob("bench/*.pyx"))
    for path in paths:
        name = os.path.splitext(path)[0].replace("/", ".")
        exts.append(
            Extension(
                name,
                [path],
                libraries=["z"],
                extra_compile_args=["-O2"] + (["-UNDEBUG", "-DFLO_DEBUG=1"] if DEBUG else ["-DFLO_DEBUG=0"]),
                define_macros=[("CYTHON_TRACE", "1")] if DEBUG else [],
            )
        )
    directives = {"language_level": "3", "embedsignature": True}
    if DEBUG:
        directives.update(linetrace=True, boundscheck=True, wraparound=True)
    # The .py modules keep Python's meaning of their annotations (hints, never checks): what
    # types them for C is their .pxd beside them (flo_core/compiled.py).
    as_python = dict(directives, annotation_typing=False)
    py = [e for e in exts if e.sources[0] in COMPILED_PY]
    return (cythonize([e for e in exts if e not in py], compiler_directives=directives, quiet=True)
            + cythonize(py, compiler_directives=as_python, quiet=True))


# `make` installs the package editable with FLO_NO_EXT=1 and then builds the extensions in place
# once (`setup.py build_ext --inplace`), instead of compiling them twice.
setup(ext_modules=[] if os.environ.get("FLO_NO_EXT") else extensions())
