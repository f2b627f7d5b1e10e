"""The built wheel holds everything a worker needs (editable installs hide gaps)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_ships_every_module_script_and_the_extension(tmp_path: Path) -> None:
    # Given a wheel built from this checkout, as the Dockerfile builds it
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = tmp_path.glob("sandboxq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # Then every module of the source tree is in it, with the Lua scripts and the extension
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "sandboxq").rglob("*.py")}
    lua = {str(p.relative_to(ROOT)) for p in (ROOT / "sandboxq" / "lua").rglob("*.lua")}
    assert sources - names == set()
    assert lua - names == set()
    assert any(n.startswith("sandboxq/_fast.") and n.endswith(".so") for n in names)
    assert "sandboxq/py.typed" in names


def test_the_release_builds_native_wheels_for_every_python_and_linux() -> None:
    # Given the cibuildwheel configuration in pyproject.toml
    # When cibuildwheel lists the wheels it would build for Linux
    listed = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", "linux"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    # Then they are CPython 3.11-3.14, on manylinux and musllinux, x86_64 and aarch64
    expected = {
        f"cp3{minor}-{libc}_{arch}"
        for minor in (11, 12, 13, 14)
        for libc in ("manylinux", "musllinux")
        for arch in ("x86_64", "aarch64")
    }
    assert sorted(listed) == sorted(expected)
