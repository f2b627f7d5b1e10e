"""The Kubernetes manifests in deploy/kubernetes/ fit the worker they run:
``make lint`` validates them against Kubernetes' schemas; these tests check
what a schema cannot, against sandboxq itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sandboxq.cli import build_parser

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def resources(name: str) -> dict[str, dict[str, Any]]:
    """The resources of one manifest file, by kind."""
    with (MANIFESTS / name).open() as file:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(file) if doc}


def worker_container() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = resources("worker.yaml")["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_the_worker_accepts_every_flag_of_the_deployment() -> None:
    _pod, container = worker_container()
    args = build_parser().parse_args(["worker", *container["args"]])
    assert args.procs == "auto"
    assert args.metrics_port == 9100


def test_the_grace_period_outlasts_the_drain() -> None:
    """The kubelet SIGKILLs after terminationGracePeriodSeconds: the worker
    needs --shutdown-timeout for the jobs in flight, then a moment more to
    hand the rest back and stop its children."""
    pod, container = worker_container()
    args = build_parser().parse_args(["worker", *container["args"]])
    assert pod["terminationGracePeriodSeconds"] > args.shutdown_timeout + 10


def test_the_probes_and_the_autoscaler_use_what_the_worker_serves() -> None:
    _pod, container = worker_container()
    args = build_parser().parse_args(["worker", *container["args"]])
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": args.metrics_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    hpa = resources("autoscaling.yaml")["HorizontalPodAutoscaler"]
    deployment = resources("worker.yaml")["Deployment"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "sandboxq_queue_jobs_waiting"
