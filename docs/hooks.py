"""mkdocs hooks: the parts of the reference generated from the code at build time.

A page holds a marker, an HTML comment alone on a line, which the build
replaces with what the code says, so the page cannot drift from it:

- ``<!-- generated: cli -->``: every ``sandboxq`` subcommand and flag, from
  ``sandboxq.cli.build_parser()``.
- ``<!-- generated: metrics -->``: every metric a worker exports, from the
  registry of ``sandboxq.metrics.WorkerMetrics``.
- ``<!-- generated: events -->``: every lifecycle event and its payload
  fields, from the ``emit(...)`` calls of the Lua scripts.
- ``<!-- generated: changelog -->``: CHANGELOG.md, from the repository's root.

Lines between a marker and a later ``<!-- end generated -->`` are what the
repository's web page shows instead (a link, say); the site replaces them too.
Code the guides show is written out in them, not included, so that it reads
on the repository's web page as well (tests/test_docs.py checks each such
block against its file).

mkdocs.yml loads this file (``hooks:``).
"""

from __future__ import annotations

import argparse
import html
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MARKER = re.compile(
    r"^<!-- generated: (\w+) -->$(?:\n(?:.*\n)*?<!-- end generated -->$)?", re.MULTILINE
)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated section {name!r}")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)


# -- the changelog --------------------------------------------------------------------
def changelog() -> str:
    return (Path(__file__).resolve().parent.parent / "CHANGELOG.md").read_text()


# -- Markdown helpers ---------------------------------------------------------------
def text(value: str) -> str:
    """Plain text for a Markdown table cell: nothing in it is markup."""
    escaped = html.escape(" ".join(value.split()), quote=False)
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", escaped)


def code(value: str) -> str:
    return f"`{value}`" if "`" not in value else f"`` {value} ``"


def table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    headers = list(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------
USAGE_WIDTH = 72  # fits the code block of a page without scrolling


def cli_reference() -> str:
    from sandboxq.cli import build_parser

    parser = build_parser()
    commands = _subcommands(parser)
    out = [
        "The subcommands of `sandboxq`. Every command takes `-h`/`--help`.",
        "",
        table(
            ["command", "what it does"],
            ([f"[`{name}`](#sandboxq-{name})", text(summary)] for name, summary, _ in commands),
        ),
    ]
    for name, summary, sub in commands:
        out += ["", f"## sandboxq {name}", ""]
        description = sub.description or summary
        out += [text(description)[0:1].upper() + text(description)[1:], ""]
        out += ["```text", _usage(sub), "```", ""]
        rows = [_argument_row(action) for action in sub._actions if _shown(action)]
        out.append(table(["argument", "meaning", "default"], rows))
    return "\n".join(out) + "\n"


def _subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps[name], sub) for name, sub in action.choices.items()]
    raise ValueError("the sandboxq parser has no subcommands")


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _shown(action: argparse.Action) -> bool:
    return not isinstance(action, argparse._HelpAction) and action.help != argparse.SUPPRESS


def _argument_row(action: argparse.Action) -> list[str]:
    if action.option_strings:
        takes_value = action.nargs != 0
        metavar = f" {_metavar(action)}" if takes_value else ""
        names = ", ".join(code(option + metavar) for option in action.option_strings)
    else:
        names = code(_metavar(action) + (" ..." if action.nargs in ("*", "+") else ""))
        if action.nargs in ("?", "*"):
            names += " (optional)"
    meaning = text(action.help or "")
    if action.choices is not None and not isinstance(action.choices, range):
        meaning += f" One of: {', '.join(code(str(c)) for c in action.choices)}."
    if getattr(action, "required", False) and action.option_strings:
        meaning += " Required."
    return [names, meaning.strip(), _default(action)]


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if isinstance(action.choices, range):
        return f"{{{action.choices.start}..{action.choices.stop - 1}}}"
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _default(action: argparse.Action) -> str:
    default = action.default
    if default is None or default is False or default == argparse.SUPPRESS or action.nargs == 0:
        return ""
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return code(str(default))


# -- metrics ------------------------------------------------------------------------
def metrics_reference() -> str:
    from prometheus_client.metrics import MetricWrapperBase

    from sandboxq.metrics import DURATION_BUCKETS, WorkerMetrics

    # One sample in every series whose labels only samples show.
    metrics = WorkerMetrics(
        1, lambda: 0, lambda: {"QUEUE": {"STATE": 0}}, deduplicated=lambda: {"QUEUE": 0}
    )
    metrics.settled("QUEUE", "NAME", "OUTCOME", 1)
    rows = []
    for collector in list(metrics.registry._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            families = [(family, list(collector._labelnames)) for family in collector.describe()]
        else:
            families = [(family, _sample_labels(family)) for family in collector.collect()]
        for family, labels in families:
            rows.append(
                [
                    code(_exposed_name(family.name, family.type)),
                    family.type,
                    ", ".join(code(label) for label in labels),
                    text(family.documentation),
                ]
            )
    buckets = ", ".join(f"{bound:g}" for bound in DURATION_BUCKETS)
    return (
        table(["metric", "type", "labels", "help"], sorted(rows))
        + f"\n\nThe duration histogram's buckets (seconds): {buckets}, and `+Inf`.\n"
    )


def _sample_labels(family: Any) -> list[str]:
    if not family.samples:
        raise ValueError(f"metric {family.name}: no sample to read its labels from")
    labels: list[str] = []
    for sample in family.samples:
        labels += [label for label in sample.labels if label != "le" and label not in labels]
    return labels


def _exposed_name(name: str, kind: str) -> str:
    """The name a scrape shows: counters end in ``_total``."""
    return f"{name}_total" if kind == "counter" else name


# -- events -------------------------------------------------------------------------
LUA = Path(__file__).resolve().parent.parent / "sandboxq" / "lua"
EMIT = re.compile(r"\bemit\(")
LUA_STRING = re.compile(r"^'([^']*)'$")


def events_reference() -> str:
    events: dict[str, tuple[set[str], set[str], bool]] = {}
    for path in sorted(LUA.rglob("*.lua")):
        source = path.read_text()
        for match in EMIT.finditer(source):
            args = _call_arguments(source, match.end())
            event = LUA_STRING.match(args[2]) if len(args) > 3 else None
            if event is None:  # the definition of emit itself
                continue
            fields, scripts, per_job = events.setdefault(event[1], (set(), set(), False))
            scripts.add(path.relative_to(LUA).as_posix())
            for name in args[4::2]:
                literal = LUA_STRING.match(name)
                fields.add(literal[1] if literal else "")
            events[event[1]] = (fields, scripts, per_job or args[3] != "''")
    rows = [
        [
            code(event),
            "a job" if per_job else "the queue",
            ", ".join(code(f) if f else "the settings changed" for f in sorted(fields)),
            ", ".join(code(s) for s in sorted(scripts)),
        ]
        for event, (fields, scripts, per_job) in sorted(events.items())
    ]
    return table(["event", "about", "payload fields", "emitted by (sandboxq/lua/)"], rows) + "\n"


def _call_arguments(source: str, start: int) -> list[str]:
    """The top-level arguments of the call whose ``(`` ends at ``start``."""
    args, depth, current = [], 0, ""
    for char in source[start:]:
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                break
            depth -= 1
        elif char == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        current += char
    return [*args, current.strip()]


GENERATORS: dict[str, Callable[[], str]] = {
    "changelog": changelog,
    "cli": cli_reference,
    "events": events_reference,
    "metrics": metrics_reference,
}
