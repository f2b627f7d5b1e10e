"""Flows: parents wait for their children, then read their results."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sandboxq import Queue
from sandboxq.testing import run_until_empty


@pytest.fixture
def group(redis_url: str) -> Iterator[tuple[Queue, Queue]]:
    """Two queues of one group (one hash tag): ``G`` and ``G:children``."""
    name = f"g{uuid.uuid4().hex[:8]}"
    parents, children = Queue(name, url=redis_url), Queue(f"{name}:children", url=redis_url)
    yield parents, children
    for q in (parents, children):
        q.obliterate(force=True)


def record(order: list[str]) -> Any:
    def handler(job: Any) -> Any:
        order.append(job.data)
        results = job.children_results()
        return {"me": job.data, "children": sorted(results.values(), key=str)}

    return handler


def run_all(queues: tuple[Queue, ...], handlers: dict[str, Any]) -> None:
    """Run every queue until no queue has ready work left."""
    while sum(sum(run_until_empty(q, handlers).values()) for q in queues):
        pass


def test_a_three_level_flow_runs_children_before_parents(group: tuple[Queue, Queue]) -> None:
    parents, children = group
    order: list[str] = []
    # Given root <- (mid1 <- leaf1, leaf2), (mid2 <- leaf3): three levels, two queues
    flow = parents.add_flow(
        parent={"name": "step", "data": "root"},
        children=[
            {
                "queue": children.name,
                "name": "step",
                "data": "mid1",
                "children": [
                    {"queue": children.name, "name": "step", "data": "leaf1"},
                    {"queue": parents.name, "name": "step", "data": "leaf2"},
                ],
            },
            {
                "queue": children.name,
                "name": "step",
                "data": "mid2",
                "children": [
                    {"queue": children.name, "name": "step", "data": "leaf3"},
                ],
            },
        ],
    )
    assert flow.job.state == "waiting-children"
    assert parents.counts()["waiting-children"] == 1

    # When the workers run everything that is ready, level by level
    run_all((parents, children), {"step": record(order)})

    # Then every child ran before its parent and the parent saw their results
    assert order.index("leaf1") < order.index("mid1") > order.index("leaf2")
    assert order.index("leaf3") < order.index("mid2")
    assert order[-1] == "root"
    root = parents.get_job(flow.job.id)
    assert root is not None and root.state == "completed"
    assert [c["me"] for c in root.result["children"]] == ["mid1", "mid2"]
    mid1 = children.get_job(flow.children[0].job.id)
    assert mid1 is not None
    assert sorted(c["me"] for c in mid1.result["children"]) == ["leaf1", "leaf2"]
    leaf1_ref = f"{children.name}:{flow.children[0].children[0].job.id}"
    assert mid1.children_results()[leaf1_ref]["me"] == "leaf1"


def test_a_failing_child_fails_the_parent_and_the_grandparent(
    group: tuple[Queue, Queue],
) -> None:
    parents, children = group
    # Given a two-level flow whose leaf fails for good
    flow = parents.add_flow(
        parent={"name": "ok", "data": "root"},
        children=[
            {
                "queue": children.name,
                "name": "ok",
                "data": "mid",
                "children": [{"queue": children.name, "name": "boom"}],
            }
        ],
    )

    def boom(_job: Any) -> None:
        raise ValueError("broken")

    # When it runs
    run_all((parents, children), {"ok": lambda job: 1, "boom": boom})

    # Then the failure climbed the tree, naming the child that failed
    mid = children.get_job(flow.children[0].job.id)
    root = parents.get_job(flow.job.id)
    assert mid is not None and root is not None
    leaf_ref = f"{children.name}:{flow.children[0].children[0].job.id}"
    assert (mid.state, mid.error) == ("failed", f"child {leaf_ref} failed: ValueError: broken")
    assert root.state == "failed"
    assert root.error is not None and root.error.startswith(f"child {children.name}:{mid.id}")
    assert parents.counts()["waiting-children"] == 0


def test_ignore_failed_children_unblocks_the_parent(group: tuple[Queue, Queue]) -> None:
    parents, children = group
    flow = parents.add_flow(
        parent={"name": "sum"},
        children=[
            {"queue": children.name, "name": "num", "data": 2},
            {"queue": children.name, "name": "boom"},
        ],
        ignore_failed_children=True,
    )

    def boom(_job: Any) -> None:
        raise RuntimeError("nope")

    run_all(
        (parents, children),
        {
            "num": lambda job: job.data,
            "boom": boom,
            "sum": lambda job: sum(job.children_results().values()),
        },
    )
    root = parents.get_job(flow.job.id)
    assert root is not None and (root.state, root.result) == ("completed", 2)
    boom_ref = f"{children.name}:{flow.children[1].job.id}"
    assert root.children_failures() == {boom_ref: "RuntimeError: nope"}


def test_without_either_option_the_parent_waits_for_a_retried_child(
    group: tuple[Queue, Queue],
) -> None:
    parents, children = group
    flow = parents.add_flow(
        parent={"name": "p"},
        children=[{"queue": children.name, "name": "flaky"}],
        fail_parent_on_failure=False,
    )
    calls: list[int] = []

    def flaky(_job: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return "fine"

    handlers = {"flaky": flaky, "p": lambda job: job.children_results()}
    run_all((parents, children), handlers)
    assert parents.get_job(flow.job.id).state == "waiting-children"  # type: ignore[union-attr]
    # When an operator retries the failed child, the parent runs after it
    assert children.retry(flow.children[0].job.id)
    run_all((parents, children), handlers)
    root = parents.get_job(flow.job.id)
    assert root is not None and root.state == "completed"
    assert list(root.result.values()) == ["fine"]


def test_flow_queues_must_share_the_hash_tag(queue: Queue) -> None:
    with pytest.raises(ValueError, match="must share the hash tag"):
        queue.add_flow(parent={"name": "p"}, children=[{"queue": "elsewhere", "name": "c"}])
    assert queue.counts()["waiting-children"] == 0


def test_bad_flow_nodes_write_nothing(queue: Queue) -> None:
    with pytest.raises(TypeError, match="job_id"):
        queue.add_flow(parent={"name": "p"}, children=[{"name": "c", "job_id": "x-1"}])
    with pytest.raises(TypeError, match="not JSON-serializable"):
        queue.add_flow(parent={"name": "p"}, children=[{"name": "c", "data": {1, 2}}])
    assert sum(queue.counts().values()) == 0
