"""docs/architecture.md against the code it describes.

The page quotes constants with their values, names the Lua transitions and
maps every module; each of those drifted once (a schedule check said to run
every 0.25 s while the code said 1.0 s, five scripts missing from the list).
These tests make drift fail the suite instead.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sandboxq"
PAGE = (ROOT / "docs" / "architecture.md").read_text()

#: How the page quotes a constant: `NAME` (0.5 s), `NAME` (16 MiB), `NAME` (64).
QUOTED_CONSTANT = re.compile(r"`([A-Z][A-Z0-9_]{2,})`\s+\((\d[\d_,.]*) ?(s|ms|MiB)?\)")
UNIT_SCALE = {None: 1, "s": 1, "ms": 1, "MiB": 1024 * 1024}
#: A module as the module map names it: `sandboxq/worker/pool.py`.
MAPPED_MODULE = re.compile(r"^\| `(sandboxq/[\w/]+\.(?:py|pyx))` \|", re.MULTILINE)
NAMED_SCRIPT = re.compile(r"`(\w+)\.lua`")


def _modules() -> list[Path]:
    """Every source module of the package (package markers aside)."""
    found = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.pyx")]
    return sorted(p for p in found if p.name not in {"__init__.py", "__main__.py"})


def _defining_module(name: str) -> str:
    """The one module that assigns ``name`` at its top level."""
    owners = []
    for path in _modules():
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            names = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            if any(isinstance(n, ast.Name) and n.id == name for n in names):
                owners.append(path)
    assert len(owners) == 1, f"{name} is defined in {owners or 'no module'}"
    dotted = owners[0].relative_to(ROOT).with_suffix("").parts
    return ".".join(dotted)


def test_every_constant_the_page_quotes_has_that_value() -> None:
    # Given every `NAME` (value unit) the page quotes
    quoted = QUOTED_CONSTANT.findall(PAGE)
    assert len(quoted) >= 5, "the page quotes its timing constants by name"
    for name, shown, unit in quoted:
        # When the constant is read from the module that defines it
        value = getattr(importlib.import_module(_defining_module(name)), name)
        # Then it is the value the page shows
        expected = float(shown.replace(",", "").replace("_", "")) * UNIT_SCALE[unit or None]
        assert value == expected, f"the page says {name} is {shown} {unit}, the code {value}"


def test_the_page_names_every_lua_transition_and_no_other() -> None:
    scripts = {p.stem for p in (PACKAGE / "lua").glob("*.lua")}
    helpers = {p.stem for p in (PACKAGE / "lua" / "include").glob("*.lua")}
    named = set(NAMED_SCRIPT.findall(PAGE))
    assert scripts - named == set(), "transitions the page does not name"
    assert named - scripts - helpers == set(), "scripts the page names that do not exist"


def test_the_module_map_lists_every_module_and_no_other() -> None:
    mapped = set(MAPPED_MODULE.findall(PAGE))
    actual = {str(p.relative_to(ROOT)) for p in _modules()}
    assert actual - mapped == set(), "modules missing from the module map"
    assert mapped - actual == set(), "the module map names modules that do not exist"
