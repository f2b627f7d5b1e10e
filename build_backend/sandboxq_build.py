"""sandboxq's build backend: setuptools', asking for Cython only where it is used.

A git checkout compiles ``sandboxq/_fast.pyx``, so its builds need Cython
(its sdist too: the sdist ships the generated C). An sdist builds from that
C with a compiler alone, or with no compiler at all (setup.py then installs
the pure-Python twin), so it asks for nothing but setuptools. Every hook
not redefined here is setuptools' own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  the hooks left as they are

CYTHON = "cython>=3.0"


def _in_checkout() -> bool:
    return not Path("PKG-INFO").is_file()  # every sdist has one at its root


def _extensions_wanted() -> bool:
    return os.environ.get("SANDBOXQ_NO_EXTENSIONS", "") in ("", "0")


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    needed = _setuptools.get_requires_for_build_sdist(config_settings)
    return [*needed, CYTHON] if _in_checkout() else needed


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    needed = _setuptools.get_requires_for_build_wheel(config_settings)
    return [*needed, CYTHON] if _in_checkout() and _extensions_wanted() else needed


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    needed = _setuptools.get_requires_for_build_editable(config_settings)
    return [*needed, CYTHON] if _in_checkout() and _extensions_wanted() else needed
