"""The install itself, as a new user meets it: the sdist and both wheels built
from this checkout (tools/build_dists.py, what `make wheels` runs), each
installed into a fresh virtualenv whose PATH has no C compiler, and each then
running a real job (tools/smoke_install.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxq.local_redis import SERVER_ENV, find_redis_server

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.timeout(900),
    # one test process builds the dists once for all of the module's tests
    pytest.mark.xdist_group("install"),
]

#: What a wheel must never carry: the extension's sources and build leftovers.
LEFTOVERS = re.compile(r"\.(c|pyx|pxi|html|o)$|(^|/)(build|__pycache__)/|\.egg-info/")


@dataclass
class Dists:
    sdist: Path
    pure: Path
    native: Path
    log: str


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    outdir = tmp_path_factory.mktemp("dist")
    # setuptools says "byte-compiling is disabled" where this variable is set
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    built = subprocess.run(
        [sys.executable, str(TOOLS / "build_dists.py"), str(outdir)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    sdist, pure, native = (Path(line) for line in built.stdout.splitlines()[-3:])
    return Dists(sdist, pure, native, built.stdout + built.stderr)


def fresh_venv(where: Path) -> dict[str, str]:
    """A new virtualenv, and the environment to run it in: PATH holds the
    venv's bin alone (no compiler), and the suite's redis-server is named."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    dropped = {"PATH", "CC", "CXX", "VIRTUAL_ENV", "PYTHONPATH", "SANDBOXQ_NO_EXTENSIONS"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PATH"] = str(where / "bin")
    env[SERVER_ENV] = find_redis_server()
    for compiler in ("cc", "gcc", "clang", "x86_64-linux-gnu-gcc"):
        assert shutil.which(compiler, path=env["PATH"]) is None
    return env


def install_fresh(tmp_path: Path, target: Path) -> tuple[Path, dict[str, str], str]:
    """``target`` installed into a fresh virtualenv with no compiler on its
    PATH: the venv, the environment to run it in, and what pip said."""
    venv = tmp_path / "venv"
    env = fresh_venv(venv)
    return venv, env, pip_install(venv, env, target)


def pip_install(venv: Path, env: dict[str, str], target: Path) -> str:
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-v", "--no-cache-dir", str(target)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]
    return installed.stdout + installed.stderr


def smoke(venv: Path, env: dict[str, str], expect: str, tmp_path: Path) -> str:
    """tools/smoke_install.py in the venv, run from outside the checkout."""
    ran = subprocess.run(
        [str(venv / "bin" / "python"), str(TOOLS / "smoke_install.py"), "--expect", expect],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-4000:]
    return ran.stdout


def test_the_build_makes_clean_artifacts_without_a_warning(dists: Dists) -> None:
    # Given the sdist and wheels built from this checkout
    # Then the native wheel is repaired to a manylinux tag, the pure one fits any platform
    assert re.search(r"-cp3\d+-cp3\d+-.*manylinux_2_\d+_\w+\.whl$", dists.native.name)
    assert dists.pure.name.endswith("-py3-none-any.whl")
    # And the wheels hold no sources or leftovers; only the native one an extension
    native = zipfile.ZipFile(dists.native).namelist()
    pure = zipfile.ZipFile(dists.pure).namelist()
    assert [n for n in native + pure if LEFTOVERS.search(n)] == []
    assert any(re.fullmatch(r"sandboxq/_fast\.cpython-.*\.so", n) for n in native)
    assert not any(n.endswith(".so") for n in pure)
    for wheel in (native, pure):
        assert {"sandboxq/lua/fetch.lua", "sandboxq/dashboard/static/dashboard.js"} <= set(wheel)
    # And the sdist ships the generated C beside the Cython sources, and the
    # build backend
    with tarfile.open(dists.sdist) as sdist:
        shipped = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    sources = {"sandboxq/_fast.c", "sandboxq/_fast.pyx", "sandboxq/_fast_window.pxi"}
    assert sources | {"build_backend/sandboxq_build.py"} <= shipped
    # And setuptools said nothing to warn about (pip's own notes about this
    # machine's package indexes are not the build's)
    warnings = [
        line
        for line in dists.log.splitlines()
        if re.search(r"warn|would be ignored", line, re.IGNORECASE) and "is ignored:" not in line
    ]
    assert warnings == []


def test_the_sdist_installs_without_a_compiler_and_runs_on_the_twin(
    dists: Dists, tmp_path: Path
) -> None:
    # When the sdist is installed into a fresh virtualenv with no C compiler on its PATH
    venv, env, said = install_fresh(tmp_path, dists.sdist)
    # Then the install succeeds with one warning, without fetching Cython
    assert said.count("WARNING: sandboxq's native extension could not be compiled") == 1
    assert not re.search(r"(?i)collecting cython|installing.*cython", said)
    # And the twin runs a real job, and --version says why the twin
    shown = smoke(venv, env, "pure", tmp_path)
    assert "(the native extension was not built with this install)" in shown


def test_the_manylinux_wheel_installs_native_without_building(dists: Dists, tmp_path: Path) -> None:
    # When the native wheel is installed into a fresh virtualenv with no C compiler on its PATH
    venv, env, said = install_fresh(tmp_path, dists.native)
    # Then nothing was built, and the native extension runs a real job
    assert "Building wheel for sandboxq" not in said
    assert "native extension" in smoke(venv, env, "native", tmp_path)


def test_the_pure_wheel_installs_anywhere_and_runs_on_the_twin(
    dists: Dists, tmp_path: Path
) -> None:
    # When the pure wheel is installed into a fresh virtualenv with no C compiler on its PATH
    venv, env, said = install_fresh(tmp_path, dists.pure)
    # Then nothing was built, and the twin runs a real job
    assert "Building wheel for sandboxq" not in said
    smoke(venv, env, "pure", tmp_path)


def chosen_by_pip(dists: Dists, *platform: str) -> str:
    """The file pip picks for ``sandboxq`` among the built artifacts (a dry
    run: nothing is installed), on this machine or on ``--platform``."""
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-"]
    index = ["--ignore-installed", "--no-deps", "--no-index", "-f", str(dists.sdist.parent)]
    picked = subprocess.run(
        [*pip, *index, *platform, "sandboxq"],
        capture_output=True,
        text=True,
        check=True,
    )
    [install] = json.loads(picked.stdout)["install"]
    return Path(install["download_info"]["url"]).name


def test_pip_prefers_the_native_wheel_and_falls_back_to_the_pure_one(dists: Dists) -> None:
    # Given an index holding the sdist and both wheels
    # Then pip takes the native wheel on this Linux machine
    assert chosen_by_pip(dists) == dists.native.name
    # And the pure wheel where no native one fits (a Mac), never the sdist
    elsewhere = ["--platform", "macosx_14_0_arm64", "--only-binary=:all:", "--target", "unused"]
    assert chosen_by_pip(dists, *elsewhere) == dists.pure.name
