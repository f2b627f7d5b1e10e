"""The documentation site: it builds with warnings as errors, its generated
reference renders, and the hand-written pages that mirror code (environment
variables, the dashboard's routes) name everything the code has."""

from __future__ import annotations

import ast
import html
import importlib
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxq
import sandboxq.aio
from sandboxq.cli import build_parser

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


# -- the site builds -------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as ``make docs`` builds it (strict: a warning fails)."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr}"
    return out


BLOCK_TAG = re.compile(r"</?(?:p|div|h\d|li|ul|ol|td|th|tr|table|pre|br|details|summary)\b[^>]*>")


def text_of(page: str) -> str:
    """A built page's text: tags removed (blocks apart), white space folded."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", BLOCK_TAG.sub(" ", page))).split())


def section(page: str, anchor: str) -> str:
    """The text of the object whose heading has id ``anchor``, up to the next
    object's heading."""
    start = page.index(f'id="{anchor}"')
    following = re.search(r'id="sandboxq\.[^"]+"', page[start + len(anchor) + 5 :])
    end = start + len(anchor) + 5 + following.start() if following else len(page)
    return text_of(page[start:end])


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph, as rendered text (no code markup)."""
    assert doc, "no docstring"
    return " ".join(doc.strip().split("\n\n")[0].replace("``", "").split())


def test_queue_add_renders_with_its_signature_and_docstring(site: Path) -> None:
    # Queue.add is made from QueueCore._add at import time (sandboxq.ops):
    # the page must show it as a method, with its parameters and docstring.
    page = (site / "reference" / "queue.html").read_text()
    add = section(page, "sandboxq.Queue.add")
    assert "add(" in add and "job_id" in add and "manual_retry_only" in add
    assert first_paragraph(sandboxq.Queue.add.__doc__) in add
    assert "-> Job" in add
    aio = (site / "reference" / "aio.html").read_text()
    async_add = section(aio, "sandboxq.aio.AsyncQueue.add")
    assert "async" in async_add and "-> AsyncJob" in async_add


def test_every_public_name_has_a_reference_entry(site: Path) -> None:
    ids = set()
    for page in site.rglob("*.html"):
        ids |= set(re.findall(r'id="(sandboxq[\w.]*)"', page.read_text()))
    plain_values = {"IMPLEMENTATION", "__version__"}  # described on reference/index.md
    wanted = {f"sandboxq.{n}" for n in sandboxq.__all__ if n not in plain_values}
    wanted |= {f"sandboxq.aio.{n}" for n in sandboxq.aio.__all__}
    for cls in (sandboxq.Queue, sandboxq.Job):
        wanted |= {
            f"sandboxq.{cls.__name__}.{name}"
            for name, member in vars(cls).items()
            if inspect.isfunction(member) and not name.startswith("_")
        }
    assert sorted(wanted - ids) == []


def test_cli_reference_has_every_command_and_flag(site: Path) -> None:
    page = text_of((site / "reference" / "cli.html").read_text())
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    assert isinstance(commands.choices, dict) and commands.choices
    for name, parser in commands.choices.items():
        assert f"sandboxq {name}" in page
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, f"sandboxq {name} {option}"


def test_metrics_reference_has_every_metric(site: Path) -> None:
    from sandboxq.metrics import WorkerMetrics

    page = text_of((site / "reference" / "metrics.html").read_text())
    registry = WorkerMetrics(1, lambda: 0, lambda: {}).registry
    names = {family.name for family in registry.collect()}
    assert "sandboxq_jobs" in names
    for name in names:
        assert name in page, name


def test_the_site_stands_alone(site: Path) -> None:
    for page in site.rglob("*.html"):
        text = page.read_text()
        found = re.findall(r'(?:href|src)="((?:https?:)?//[^"]+)"', text)
        assert found == [], f"{page.relative_to(site)} points outside the site: {found}"
        assert "--8<--" not in text, f"{page.relative_to(site)}: a snippet was not included"


# -- code the guides show -------------------------------------------------------------------
#: A fenced block titled with a file of the repository (examples/, deploy/):
#: the guide shows that file, written out so that the repository's web page
#: shows it too, not a placeholder.
SHOWN_FILE = re.compile(
    r'^(?P<indent> *)```\w+ title="(?P<path>(?:examples|deploy)/[^"]+)"\n'
    r"(?P<body>.*?)^(?P=indent)```$",
    re.MULTILINE | re.DOTALL,
)


def shown_files() -> Iterator[tuple[str, str, str]]:
    """(page, path, the block's text) for each block that shows a file."""
    for page in sorted(DOCS.rglob("*.md")):
        for found in SHOWN_FILE.finditer(page.read_text()):
            indent = len(found["indent"])
            lines = found["body"].splitlines(keepends=True)
            body = "".join(line[indent:] if line.strip() else line.lstrip(" ") for line in lines)
            yield str(page.relative_to(ROOT)), found["path"], body


def test_the_code_a_guide_shows_is_the_file_it_names() -> None:
    shown = list(shown_files())
    assert {path for _page, path, _body in shown} >= {
        "examples/fastapi_resize/app.py",
        "examples/fastapi_resize/jobs.py",
        "examples/fastapi_resize/test_app.py",
        "deploy/kubernetes/worker.yaml",
    }
    for page, path, body in shown:
        assert body == (ROOT / path).read_text(), f"{page} shows an old {path}: copy it again"


def test_no_page_includes_a_file_the_repository_page_would_not_show() -> None:
    for page in sorted(DOCS.rglob("*.md")):
        assert "--8<--" not in page.read_text(), f"{page.relative_to(ROOT)}: write the file out"


# -- environment variables ----------------------------------------------------------------
def python_files() -> Iterator[Path]:
    yield from sorted((ROOT / "sandboxq").rglob("*.py"))
    yield ROOT / "setup.py"
    yield from sorted((ROOT / "tests").glob("*.py"))


def module_constants(path: Path) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments, and the names a module
    imports from another sandboxq module that assigns them so."""
    found = _assigned_strings(path)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sandboxq"):
            source = ROOT / Path(*str(node.module).split("."))
            source = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
            theirs = _assigned_strings(source)
            found |= {a.asname or a.name: theirs[a.name] for a in node.names if a.name in theirs}
    return found


def _assigned_strings(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found |= {t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)}
    return found


def environment_reads(path: Path) -> set[str]:
    """The variables a file reads: ``os.environ.get(X)``, ``os.environ[X]``,
    ``os.getenv(X)`` and ``X in os.environ``, with X a string or a constant."""
    tree = ast.parse(path.read_text())
    constants = module_constants(path)

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    keys: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if (node.func.attr == "get" and is_environ(node.func.value)) or (
                node.func.attr == "getenv"
            ):
                keys.append(node.args[0])
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            if isinstance(node.ctx, ast.Load):
                keys.append(node.slice)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            keys.append(node.left)
    names = set()
    for key in keys:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
        elif isinstance(key, ast.Name) and key.id in constants:
            names.add(constants[key.id])
        else:
            raise AssertionError(
                f"{path.relative_to(ROOT)}:{key.lineno}: cannot tell which environment "
                f"variable {ast.unparse(key)} is; teach tests/test_docs.py"
            )
    return names


def test_every_environment_variable_read_is_documented() -> None:
    page = (DOCS / "reference" / "environment.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]*\*?)`", page))
    patterns = [re.escape(name[:-1]) + "[A-Z0-9_]+" for name in documented if name.endswith("*")]
    read: dict[str, str] = {}
    for path in python_files():
        for name in environment_reads(path):
            read.setdefault(name, path.relative_to(ROOT).as_posix())
    sandboxq_reads = {n for n, where in read.items() if where.startswith("sandboxq/")}
    assert {"SANDBOXQ_REDIS_URL", "SANDBOXQ_APP", "SANDBOXQ_DASHBOARD_TOKEN"} <= sandboxq_reads
    # The test suite's own variables count when they are sandboxq's.
    wanted = {n for n, where in read.items() if not where.startswith("tests/") or "SANDBOXQ" in n}
    missing = [
        f"{name} (read in {read[name]})"
        for name in sorted(wanted)
        if name not in documented and not any(re.fullmatch(p, name) for p in patterns)
    ]
    assert missing == [], "not on docs/reference/environment.md: " + ", ".join(missing)


# -- the dashboard's routes ------------------------------------------------------------------
def dashboard_routes() -> set[str]:
    """Every path the dashboard serves, from its dispatch code: the ``match``
    patterns of ``Dashboard.get`` and ``actions.act`` (a guard
    ``verb in (...)`` expands to each verb) and the ``segments == [...]``
    tests. Captures are ``{}``."""
    routes = set()
    # sandboxq.dashboard.app is also the name of the app() function: import the module.
    for name in ("sandboxq.dashboard.app", "sandboxq.dashboard.actions"):
        module = importlib.import_module(name)
        tree = ast.parse(Path(str(module.__file__)).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.match_case):
                for pattern in _alternatives(node.pattern):
                    for path in _expand(pattern, node.guard, module):
                        routes.add("/" + "/".join(path))
            elif (
                isinstance(node, ast.Compare)
                and isinstance(node.comparators[0], ast.List)
                and not isinstance(node.left, ast.Subscript)  # segments[:1] == ["api"]
            ):
                routes.add("/" + "/".join(ast.literal_eval(node.comparators[0])))
    return routes


def _alternatives(pattern: ast.pattern) -> list[ast.MatchSequence]:
    if isinstance(pattern, ast.MatchOr):
        return [p for alt in pattern.patterns for p in _alternatives(alt)]
    assert isinstance(pattern, ast.MatchSequence), ast.dump(pattern)
    return [pattern]


def _expand(pattern: ast.MatchSequence, guard: ast.expr | None, module: object) -> list[list[str]]:
    choices: dict[str, list[str]] = {}
    if (
        isinstance(guard, ast.Compare)
        and isinstance(guard.left, ast.Name)
        and isinstance(guard.ops[0], ast.In)
    ):
        values = guard.comparators[0]
        if isinstance(values, ast.Name):
            choices[guard.left.id] = list(getattr(module, values.id))
        else:
            choices[guard.left.id] = list(ast.literal_eval(values))
    paths: list[list[str]] = [[]]
    for part in pattern.patterns:
        if isinstance(part, ast.MatchValue):
            options = [ast.literal_eval(part.value)]
        else:
            assert isinstance(part, ast.MatchAs) and part.name, ast.dump(part)
            options = choices.get(part.name, ["{}"])
        paths = [[*path, option] for path in paths for option in options]
    return paths


def test_every_dashboard_route_is_documented() -> None:
    routes = dashboard_routes()
    # The extraction itself still sees the dispatch code.
    assert {"/queues", "/queues/{}/jobs/{}", "/queues/{}/jobs/{}/cancel", "/login"} <= routes
    page = (DOCS / "reference" / "dashboard-api.md").read_text()
    documented = re.sub(r"\{\w+\}", "{}", page)
    missing = [
        route
        for route in sorted(routes)
        if not re.search(re.escape(route) + r"(?![\w/{-])", documented)
    ]
    assert missing == [], "not on docs/reference/dashboard-api.md: " + ", ".join(missing)
