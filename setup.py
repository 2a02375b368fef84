"""Build the Cython extensions of flo_core: every ``flo_core/*.pyx`` is one extension.

``FLO_DEBUG=1`` builds with line tracing and assertions (bench refuses such a build).
"""

import glob
import os

from setuptools import Extension, setup

DEBUG = bool(os.environ.get("FLO_DEBUG"))


def extensions():
    from Cython.Build import cythonize

    exts = []
    for path in sorted(glob.glob("flo_core/*.pyx")):
        name = "flo_core." + os.path.splitext(os.path.basename(path))[0]
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
    return cythonize(exts, compiler_directives=directives, quiet=True)


# `make` installs the package editable with FLO_NO_EXT=1 and then builds the extensions in place
# once (`setup.py build_ext --inplace`), instead of compiling them twice.
setup(ext_modules=[] if os.environ.get("FLO_NO_EXT") else extensions())
