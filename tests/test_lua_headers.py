"""Each Lua script's KEYS/ARGV header says what its Python wrapper sends.

A header names each key and argument in a fixed notation (written down in
``lua/include/common.lua``): ``KEYS[n] name`` (a ``QueueKeys`` field, or the
wrapper's parameter), ``ARGV[n] name`` (the wrapper's parameter, or one of
the head every script starts with: prefix, now, maxlen), ``ARGV[n..] names``
for a variable tail, and ``(unused)`` after a head slot the script does not
read (the wrapper sends ""). Each wrapper is called in describe mode
(``Scripts(None)``) with sample arguments that tell its parameters apart,
and what it would send is compared with its script's header, slot by slot;
the script's code must read the slots its header names and no other. No
Redis needed.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pytest

from sandboxq.keys import QueueKeys
from sandboxq.options import Dedupe
from sandboxq.rows import Dependency, FlowNode, JobRow
from sandboxq.script_call import check_includes
from sandboxq.scripts import ScriptCall, Scripts, lua_source

LUA = resources.files("sandboxq") / "lua"
K = QueueKeys.for_queue("headers")
#: The events maxlen the wrappers are built with: no sample argument equals it.
MAXLEN = 4242
NOW = 1_700_000_000_001
HEAD = ("prefix", "now", "maxlen")

#: One slot of a header: ``KEYS[3] wait``, ``ARGV[6..] unstarted, interrupted``,
#: ``ARGV[2] now (unused)``. A slot begins a comment line or follows three
#: spaces, so prose such as "how many of KEYS[2..] are" is not one.
SLOT = re.compile(r"(?:^-- |   )(KEYS|ARGV)\[(\d+)(\.\.)?\] ([a-z_]+(?:, [a-z_]+)*)( \(unused)?")


@dataclass(frozen=True)
class Slot:
    kind: str  # "KEYS" or "ARGV"
    index: int  # 1-based, as in Lua
    tail: bool  # ``[n..]``: this slot and every value after it
    names: tuple[str, ...]
    unused: bool

    def __str__(self) -> str:
        return f"{self.kind}[{self.index}{'..' if self.tail else ''}] {', '.join(self.names)}"


def header_slots(script: str) -> list[Slot]:
    """The KEYS and ARGV slots named by ``lua/SCRIPT.lua``'s header (the
    comment lines before its first include or line of code)."""
    slots = []
    for line in (LUA / f"{script}.lua").read_text().splitlines():
        if not line.startswith("--") or line.startswith("--!"):
            break
        for match in SLOT.finditer(line):
            kind, index, tail, names, unused = match.groups()
            slots.append(Slot(kind, int(index), bool(tail), tuple(names.split(", ")), bool(unused)))
    return slots


@dataclass(frozen=True)
class Sample:
    """A wrapper's sample call, and what the header's names stand for when
    they are not the wrapper's parameters (counts the wrapper derives, tails
    in a format of their own)."""

    kwargs: dict[str, Any]
    derived: dict[str, Any] = field(default_factory=dict)


JOBS = [
    JobRow("", 5, 0, "a", b"{}"),
    JobRow("job-9", 0, 100, "b", b"1", ["attempts", 3]),
    JobRow("", 0, 0, "c", b"2", ["dedupe_id", "d-1"], dedupe=Dedupe("d-1", 1.5, True, False)),
]
JOBS_ARGS = [
    *("", 5, 0, "", 2, "name", "a", "data", b"{}"),
    *("job-9", 0, 100, "", 3, "name", "b", "data", b"1", "attempts", 3),
    *("", 0, 0, "d-1", 1500, "1", "0", 3, "name", "c", "data", b"2", "dedupe_id", "d-1"),
]
NODES = [
    FlowNode(K.prefix, "headers", 0, False, False, 1, JobRow("", 0, 0, "p", b"{}")),
    FlowNode(K.prefix, "headers", 1, True, False, 0, JobRow("", 3, 50, "c", b"2")),
]
NODES_ARGS = [
    *(K.prefix, "headers", 0, "0", "0", 1, 0, 0, 2, "name", "p", "data", b"{}"),
    *(K.prefix, "headers", 1, "1", "0", 0, 3, 50, 2, "name", "c", "data", b"2"),
]

SAMPLES: dict[str, Sample] = {
    "add": Sample({"now": NOW, "jobs": JOBS}, {"jobs": JOBS_ARGS}),
    "fetch": Sample(
        {
            "now": NOW,
            "count": 3,
            "token": "tok",
            "lease_ms": 30_001,
            "request": 7,
            "start_now": 2,
        }
    ),
    "reclaim": Sample({"now": NOW, "token": "tok", "request": 7, "known": ["1", "2"]}),
    "finish": Sample(
        {
            "now": NOW,
            "token": "tok",
            "outcomes": [("1", "completed", "null", "", 0, "4")],
            "starts": [("2", NOW - 5)],
        },
        {"start_count": 1},
    ),
    "renew": Sample({"now": NOW, "token": "tok", "lease_ms": 30_001, "job_ids": ["1", "2"]}),
    "recover_stalled": Sample({"now": NOW, "max_stalls": 5, "limit": 11}),
    "hand_back": Sample(
        {"token": "tok", "unstarted": ["1"], "interrupted": ["2", "3"], "now": NOW},
        {"unstarted_count": 1},
    ),
    "report": Sample({"token": "tok", "reports": [("1", "log", "hi")], "keep_logs": 12}),
    "promote": Sample({"now": NOW, "job_id": "9", "limit": 11, "by": "bob"}),
    "pause": Sample({"paused": True, "by": "bob", "now": NOW}),
    "remove": Sample({"job_id": "9", "by": "bob", "now": NOW}),
    "cancel": Sample(
        {"job_id": "9", "by": "bob", "reason": "why", "now": NOW, "keep_children": True},
        {"queue_name": K.name},
    ),
    "retry": Sample({"job_id": "9", "limit": 11, "now": NOW, "by": "bob", "reset_steps": True}),
    "clean": Sample(
        {
            "state": "completed",
            "now": NOW,
            "max_count": 14,
            "max_age_ms": 15,
            "limit": 11,
            "by": "bob",
        },
        {"state_set": K.completed},
    ),
    "drain": Sample({"include_delayed": True, "limit": 11, "now": NOW, "by": "bob"}),
    "obliterate": Sample({"force": True, "limit": 11, "now": NOW}, {"set_count": 7}),
    "schedule": Sample(
        {"key": "tick", "spec": b'{"every": 60}', "next_ms": NOW + 60_000}, {"action": "set"}
    ),
    "fire_schedule": Sample(
        {
            "now": NOW,
            "key": "tick",
            "expected_next": NOW - 1,
            "new_next": NOW + 60_000,
            "counted": 2,
            "jobs": JOBS,
        },
        {"jobs": JOBS_ARGS},
    ),
    "add_flow": Sample({"now": NOW, "nodes": NODES}, {"nodes": NODES_ARGS}),
    "add_dependent": Sample(
        {
            "now": NOW,
            "on_failure": "run",
            "dependencies": [Dependency(K.prefix, "headers", "3"), Dependency("p2", "q2", "4")],
            "job": JOBS[1],
        },
        {"dependency_count": 2, "job": JOBS_ARGS[9:20]},
    ),
    "configure": Sample({"settings": {"rl_max": 5, "concurrency": None}}),
    "list_waiting": Sample({"start": 16, "limit": 11}),
    "heartbeat": Sample(
        {
            "registry_key": "sq:workers",
            "token": "tok",
            "description": b"{}",
            "now": NOW,
            "stale_ms": 45_000,
            "sample": 17,
        }
    ),
    "step": Sample({"token": "tok", "steps": [("1", "fetch", '{"ok": 1}')], "max_steps": 13}),
}


def describe(script: str) -> ScriptCall:
    """What the wrapper of ``script`` would run for its sample."""
    wrapper = getattr(Scripts(None, events_maxlen=MAXLEN), script)
    queue_keys = next(iter(inspect.signature(wrapper).parameters))  # k, or root
    kwargs = dict(SAMPLES[script].kwargs)
    if queue_keys != "registry_key":
        kwargs[queue_keys] = K
    call = wrapper(**kwargs)
    assert isinstance(call, ScriptCall) and call.name == script
    return call


def as_argument(value: Any) -> Any:
    """A Python value as the wrapper passes it to a script."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else value


def flattened(value: Any) -> list[Any]:
    """A tail's values as the wrapper spreads them: items, tuples item by
    item, a dict's pairs."""
    if isinstance(value, dict):
        value = [pair for item in value.items() for pair in item]
    spread = []
    for item in value:
        spread.extend(item if isinstance(item, tuple) else [item])
    return [as_argument(item) for item in spread]


def expected_value(script: str, slot: Slot, name: str) -> Any:
    """What the header's ``name`` says the wrapper sends."""
    sample = SAMPLES[script]
    if slot.kind == "ARGV" and slot.index <= len(HEAD):
        return "" if slot.unused else {"prefix": K.prefix, "now": NOW, "maxlen": MAXLEN}[name]
    if name in sample.derived:
        return sample.derived[name]
    if slot.kind == "KEYS" and name in QueueKeys.__dataclass_fields__:
        return getattr(K, name)
    assert name in sample.kwargs, (
        f"{script}.lua's header names {slot}, but Scripts.{script} has no such parameter"
        " (nor does the test's sample say what it stands for)"
    )
    return as_argument(sample.kwargs[name])


def check_slots(script: str, slots: list[Slot], sent: list[Any]) -> None:
    """The values ``sent`` as KEYS or ARGV, against the header's ``slots``."""
    for position, slot in enumerate(slots, start=1):
        assert slot.index == position, f"{script}.lua's header skips or repeats: {slot}"
        assert not slot.tail or position == len(slots), f"{script}.lua: {slot} is not last"
    fixed = [slot for slot in slots if not slot.tail]
    tail = [slot for slot in slots if slot.tail]
    described = ", ".join(map(str, slots))
    kind = slots[0].kind
    if not tail or len(sent) < len(fixed):
        assert len(sent) == len(fixed), (
            f"{script}.lua's header names {len(fixed)} {kind} ({described}); "
            f"Scripts.{script} sends {len(sent)}: {sent!r}"
        )
    for slot, value in zip(fixed, sent, strict=False):
        [name] = slot.names
        expected = expected_value(script, slot, name)
        assert value == expected, (
            f"{script}.lua's {slot} should be {expected!r}; Scripts.{script} sends {value!r}"
        )
    if tail:
        [slot] = tail
        rest = sent[len(fixed) :]
        if slot.kind == "KEYS":
            assert rest, f"Scripts.{script} sends nothing for {slot}"
            return
        expected_rest = []
        for name in slot.names:
            derived = SAMPLES[script].derived
            expected_rest += (
                derived[name] if name in derived else flattened(SAMPLES[script].kwargs[name])
            )
        assert rest == expected_rest, (
            f"{script}.lua's {slot} should be {expected_rest!r}; Scripts.{script} sends {rest!r}"
        )


def lua_scripts() -> set[str]:
    return {f.name.removesuffix(".lua") for f in LUA.iterdir() if f.name.endswith(".lua")}


def test_every_script_file_has_a_wrapper_and_every_wrapper_a_file() -> None:
    # Given the scripts on disk (lua/include/ holds parts, not scripts)
    on_disk = lua_scripts()
    # Then Scripts knows exactly those (it loads them all), each with a sample here
    assert on_disk == set(Scripts.NAMES)
    assert len(Scripts.NAMES) == len(set(Scripts.NAMES))
    assert set(SAMPLES) == on_disk


def test_every_script_includes_what_its_includes_need() -> None:
    # Given every script, its includes inlined (lua_source checks each
    # include's "Needs:" line against the script's includes)
    for script in Scripts.NAMES:
        assert "\n--!include " not in lua_source(script)
    # Then a script missing a needed include, or with one in the wrong
    # order, is refused when it loads rather than failing when that line runs
    with pytest.raises(RuntimeError, match="includes retention, so it must include flow too"):
        check_includes("broken", ["common", "moves", "retention", "cancel"])
    with pytest.raises(RuntimeError, match="must include cancel before hand_back_one"):
        check_includes(
            "broken",
            ["common", "moves", "retention", "flow", "dependents", "hand_back_one", "cancel"],
        )
    with pytest.raises(RuntimeError, match="must include retention before flow"):
        check_includes("broken", ["common", "moves", "flow", "retention", "dependents"])
    with pytest.raises(RuntimeError, match="includes retention, so it must include dependents"):
        check_includes("broken", ["common", "moves", "retention", "flow"])


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_the_samples_tell_parameters_apart(script: str) -> None:
    # Given a sample call: a slot swapped with another would go unseen if
    # both had the same value
    scalars = [
        value
        for value in SAMPLES[script].kwargs.values()
        if isinstance(value, (int, str, bytes)) and not isinstance(value, bool)
    ]
    assert len(scalars) == len(set(scalars)), f"{script}'s sample repeats a value: {scalars}"
    assert MAXLEN not in scalars


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_header_matches_what_the_wrapper_sends(script: str) -> None:
    # Given the script's header
    slots = header_slots(script)
    keys = [slot for slot in slots if slot.kind == "KEYS"]
    args = [slot for slot in slots if slot.kind == "ARGV"]
    # Then its arguments start with the head every script shares
    assert [slot.names for slot in args[: len(HEAD)]] == [(name,) for name in HEAD], (
        f"{script}.lua's header must start ARGV with {', '.join(HEAD)}: "
        f"{', '.join(map(str, args[: len(HEAD)]))}"
    )
    # When its wrapper describes its sample call
    call = describe(script)
    # Then every key and argument is where the header says, in number and order
    check_slots(script, keys, list(call.keys))
    check_slots(script, args, list(call.args))


def script_code(script: str) -> str:
    """``lua/SCRIPT.lua`` without its comments (its includes not inlined)."""
    lines = (LUA / f"{script}.lua").read_text().splitlines()
    return "\n".join(line.split("--")[0] for line in lines)


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_script_reads_the_arguments_its_header_names(script: str) -> None:
    # Given the ARGV slots the header names
    args = [slot for slot in header_slots(script) if slot.kind == "ARGV"]
    tail = args[-1] if args[-1].tail else None
    fixed = [slot.index for slot in args if not slot.tail and not slot.unused]
    unused = [slot.index for slot in args if slot.unused]
    # When the script's code reads ARGV
    code = script_code(script)
    read = sorted({int(index) for index in re.findall(r"ARGV\[(\d+)\]", code)})
    # Then it reads each named slot, none marked unused, and nothing past
    # them but through the tail the header declares
    assert read == fixed, f"{script}.lua reads ARGV{read}; its header names ARGV{fixed}"
    reads_on = re.search(r"#ARGV|ARGV[,)]", code) is not None
    assert reads_on == (tail is not None), (
        f"{script}.lua {'reads' if reads_on else 'does not read'} ARGV past its named slots;"
        f" its header {'declares' if tail else 'does not declare'} a tail ARGV[n..]"
    )
    assert not set(read) & set(unused)
