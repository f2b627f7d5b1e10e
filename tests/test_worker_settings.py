"""WorkerSettings: every knob of a worker in one checked, frozen object,
built the same way by the command line, by Worker's keywords and by tests;
and the formats the worker's parts share (the run frame, the handler table)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sandboxq.cli import WORKER_OPTIONS, build_parser, worker_settings
from sandboxq.execution import StoredJob
from sandboxq.handlers import Handler, handler_table, handlers_for
from sandboxq.worker import Worker, WorkerSettings, protocol
from sandboxq.worker.cpus import available_cpus
from sandboxq.worker.settings import SETTING_NAMES


def noop(job: Any) -> None:
    return None


def test_a_worker_takes_its_settings_whole() -> None:
    # Given settings made once
    settings = WorkerSettings(procs=2, child_nice=3, lease=12.0)

    # When a worker is made with them
    worker = Worker(["q"], {"x": noop}, settings=settings)

    # Then it uses them as they are
    assert worker.settings is settings
    assert worker.procs == 2


def test_keywords_make_the_same_settings() -> None:
    # When a worker is made with keywords, as the documented API does
    worker = Worker(["q"], {"x": noop}, procs=2, child_nice=3, lease=12.0)

    # Then its settings are those the same knobs make
    assert worker.settings == WorkerSettings(procs=2, child_nice=3, lease=12.0)


def test_settings_and_keywords_together_are_refused() -> None:
    with pytest.raises(TypeError, match="not both"):
        Worker(["q"], {"x": noop}, settings=WorkerSettings(procs=1), procs=2)


def test_an_unknown_keyword_is_refused() -> None:
    with pytest.raises(TypeError, match="max_procs"):
        Worker(["q"], {"x": noop}, max_procs=2)


def test_settings_resolve_what_the_worker_will_use(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a Redis URL in the environment
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", "redis://example.invalid:6380/2")

    # When settings are made with the defaults
    settings = WorkerSettings()

    # Then "auto" is the CPUs this process may use, and the URL the environment's
    assert settings.procs == settings.pool_size == available_cpus()
    assert settings.url == settings.redis_url == "redis://example.invalid:6380/2"


def test_settings_are_frozen_and_checked_again_when_replaced() -> None:
    settings = WorkerSettings(procs=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.procs = 2  # type: ignore[misc]
    assert settings.replace(procs=3).procs == 3
    with pytest.raises(ValueError, match="procs must be"):
        settings.replace(procs=0)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"procs": 0}, "procs must be 'auto' or an int >= 1, got 0"),
        ({"lease": 0}, "lease must be > 0"),
        ({"child_nice": 20}, "child_nice must be an int from 0 to 19, got 20"),
        ({"async_concurrency": 0}, "async_concurrency must be from 1 to 1000"),
        ({"unknown_name_grace": -1.0}, "unknown_name_grace must be >= 0 seconds, got -1.0"),
        ({"child_hook_timeout": float("inf")}, "child_hook_timeout must be > 0 seconds"),
        ({"max_result_bytes": 0}, "max_result_bytes must be an int from 1 to"),
        ({"rate_limit": (0, 1.0)}, "max_jobs must be an int from 1"),
        ({"url": "notredis://x"}, "notredis"),
    ],
)
def test_a_bad_knob_is_refused_by_name(knobs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerSettings(**knobs)


def test_the_command_line_has_an_option_for_every_setting() -> None:
    # Given the options of `sandboxq worker`
    named = {option.name for option in WORKER_OPTIONS}

    # Then every setting has one, and their defaults are the settings' defaults
    assert set(SETTING_NAMES) <= named
    args = build_parser().parse_args(["worker", "--procs", "2"])
    assert worker_settings(args) == WorkerSettings(procs=2)


def test_the_command_line_builds_the_settings_it_was_given() -> None:
    # When `sandboxq worker` is given some options
    args = build_parser().parse_args(
        [
            "worker",
            "--procs",
            "3",
            "--max-memory-per-child",
            "512M",
            "--rate-limit",
            "20/s",
            "--kill-grace",
            "1.5",
            "--url",
            "redis://localhost:6390/1",
        ]
    )

    # Then its settings hold them, and the rest are the defaults
    assert worker_settings(args) == WorkerSettings(
        procs=3,
        max_memory_per_child=512 * 1024**2,
        rate_limit=(20, 1.0),
        kill_grace=1.5,
        url="redis://localhost:6390/1",
    )


def test_a_run_frame_decodes_as_it_was_encoded() -> None:
    # Given a run frame, as the parent builds it for a leased job
    frame = StoredJob("id-1", "resize", b'{"w": 1}', "images", 2, 0, None, b'{"a": 1}')

    # When it crosses the pipe
    (message,) = protocol.FrameReader().feed(protocol.encode_run(frame))

    # Then the child reads the same record back
    assert message[0] == protocol.RUN
    assert protocol.decode_run(message) == frame


def test_the_worker_and_eager_queues_read_handlers_alike() -> None:
    # Given handlers given as a map and as a list
    as_list = [Handler("a", "x", noop), Handler("b", "y", noop)]

    # Then one queue's view is the slice of the table for that queue
    assert handlers_for("a", {"x": noop}) == {"x": Handler("a", "x", noop)}
    assert handler_table(["a"], as_list) == {("a", "x"): as_list[0]}
    assert handlers_for("b", as_list) == {"y": as_list[1]}
    worker = Worker(["a", "b"], as_list)
    assert worker.handlers == handler_table(["a", "b"], as_list)
