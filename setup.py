"""Builds the native hot path, ``sandboxq._fast``, when it can.

Everything else lives in pyproject.toml. Where the C comes from:

- a git checkout turns ``sandboxq/_fast.pyx`` into ``sandboxq/_fast.c`` with
  Cython first (the ``sdist`` command too, so that every sdist ships it);
- an sdist compiles the C it ships, with no Cython.

With no C compiler (or no Python headers), the build goes on without the
extension and says so in one warning: sandboxq then runs on its pure-Python
twin (``_fast_py.py``), which gives the same results, slower.
``SANDBOXQ_NO_EXTENSIONS=1`` skips the extension on purpose;
``SANDBOXQ_REQUIRE_EXTENSIONS=1`` makes a failed compile fail the build (the
release wheels must be native).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist
from setuptools.errors import CCompilerError, ExecError, PlatformError

PYX = "sandboxq/_fast.pyx"
GENERATED_C = "sandboxq/_fast.c"
CYTHON_DIRECTIVES = {"language_level": "3"}

NO_EXTENSIONS = os.environ.get("SANDBOXQ_NO_EXTENSIONS", "") not in ("", "0")
REQUIRE_EXTENSIONS = os.environ.get("SANDBOXQ_REQUIRE_EXTENSIONS", "") not in ("", "0")


def write_c() -> None:
    """Cython: the .pyx to its C, where the C is missing or older (a checkout)."""
    from Cython.Build import cythonize

    cythonize([PYX], compiler_directives=CYTHON_DIRECTIVES)


def in_checkout() -> bool:
    return not Path("PKG-INFO").is_file()  # every sdist has one at its root


def extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        return []
    return [Extension("sandboxq._fast", [GENERATED_C])]


WARNING = """
**********************************************************************
WARNING: sandboxq's native extension could not be compiled:
  {reason}
sandboxq is installed with its pure-Python twin: the same behaviour,
a slower worker parent. For the native speedup, install a C compiler
and Python's headers (Debian: apt-get install gcc python3-dev) and
reinstall. `sandboxq --version` says which one runs.
**********************************************************************
"""


class OptionalBuildExt(build_ext):
    """Compiles the extension, or warns once and leaves the twin in charge."""

    def run(self) -> None:
        try:
            if in_checkout():
                write_c()
            super().run()
        # No Cython (a checkout built without its build requirements), or no
        # compiler to be found at all
        except (ImportError, PlatformError, OSError) as exc:
            self._give_up(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError, OSError) as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        if REQUIRE_EXTENSIONS:
            raise exc
        # Printed, not warnings.warn(): pip shows a build's output with -v, but
        # an sdist's backend warnings only at its debug level (-vv).
        sys.stderr.write(WARNING.format(reason=str(exc) or type(exc).__name__))


class SdistWithC(sdist):
    """Writes the extension's C before packing, so an sdist needs no Cython."""

    def run(self) -> None:
        write_c()
        super().run()


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "sdist": SdistWithC},
)
