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
