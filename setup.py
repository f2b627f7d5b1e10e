"""Builds the native hot path, ``sandboxq/_fast.pyx``, with Cython.

Everything else lives in pyproject.toml. ``SANDBOXQ_NO_EXTENSIONS=1`` skips
the build; sandboxq then runs on its pure-Python twin (``_fast_py.py``).
"""

import os

from setuptools import setup

if os.environ.get("SANDBOXQ_NO_EXTENSIONS", "") not in ("", "0"):
    ext_modules = []
else:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        ["sandboxq/_fast.pyx"],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
