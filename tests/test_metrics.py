"""Prometheus metrics: a real server with --metrics-listen, scraped over HTTP and parsed with
prometheus_client's own parser, after real calls over a real channel."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agentcoord import AgentcoordError, Client
from prometheus_client.parser import text_string_to_metric_families

from .conftest import server_settings
from .support import ServerThread

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metrics_server(redis_url: str) -> Iterator[ServerThread]:
    # The longest auth cache bound, so a token checked once stays cached for the whole test.
    settings = server_settings(redis_url, metrics_listen="127.0.0.1:0", auth_cache_seconds=5.0)
    handle = ServerThread(settings).start()
    yield handle
    handle.stop()


def scrape(server: ServerThread) -> Samples:
    assert server.server.metrics is not None
    url = f"http://127.0.0.1:{server.server.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(method: str, **extra: str) -> dict[str, str]:
    service, name = method.split("/")
    return {"grpc_service": f"agentcoord.v1.{service}", "grpc_method": name, **extra}


def eventually(server: ServerThread, check: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
    """Scrapes until `check` holds: the server counts a call as its handler unwinds, just after
    the client has its answer."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def client(server: ServerThread, agent: str, tier: str, namespace: str) -> Client:
    return Client(server.address, token=server.issue_token(agent, tier, namespace))


def test_rpcs_are_counted_by_method_and_code_with_grpc_prometheus_names(metrics_server, namespace):
    who = rpc("AdminService/WhoAmI", grpc_type="unary")
    before = scrape(metrics_server)
    with client(metrics_server, "reader", "OBSERVER", namespace) as reader:
        for _ in range(3):
            reader.admin.who_am_i()
    with Client(metrics_server.address, token="agc_not-a-real-token") as stranger:
        with pytest.raises(AgentcoordError):
            stranger.admin.who_am_i()

    def counted(s: Samples) -> bool:
        return value(s, "grpc_server_handled_total", **who, grpc_code="UNAUTHENTICATED") > value(
            before, "grpc_server_handled_total", **who, grpc_code="UNAUTHENTICATED"
        )

    after = eventually(metrics_server, counted)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("grpc_server_started_total", **who) == 4
    assert delta("grpc_server_handled_total", **who, grpc_code="OK") == 3
    assert delta("grpc_server_handled_total", **who, grpc_code="UNAUTHENTICATED") == 1
    assert delta("grpc_server_handling_seconds_count", **who) == 4
    assert delta("grpc_server_msg_received_total", **who) == 4
    assert delta("agentcoord_auth_failures_total", reason="UNKNOWN_TOKEN") == 1
    assert delta("agentcoord_auth_cache_hits_total") >= 2  # the reader's 2nd and 3rd calls
    # Methods nobody called yet are exported as zeros (go-grpc-prometheus's InitializeMetrics).
    assert ("grpc_server_started_total", frozenset(rpc("TaskService/CancelTask", grpc_type="unary").items())) in after


def test_stream_messages_and_live_subscriptions_are_reported(metrics_server, namespace):
    sub = rpc("SignalService/Subscribe", grpc_type="server_stream")
    before = scrape(metrics_server)
    with (
        client(metrics_server, "watcher", "OBSERVER", namespace) as watcher,
        client(metrics_server, "sender", "CONTRIBUTOR", namespace) as sender,
    ):
        signals = watcher.signals.subscribe(["ping"], earliest=True)
        sender.signals.send_signal("ping", {"n": 1})
        first = next(signals)
        sender.signals.send_signal("ping", {"n": 2})
        second = next(signals)
        live = eventually(
            metrics_server,
            lambda s: value(s, "agentcoord_signal_subscriptions", namespace=namespace) == 1,
        )
        signals.close()

    assert (first.data["n"], second.data["n"]) == (1, 2)
    assert value(live, "agentcoord_signal_subscriptions", namespace=namespace) == 1
    assert value(live, "agentcoord_signal_fanout_queued", namespace=namespace) == 0
    # the cursor-only first response, then the two signals
    sent = value(live, "grpc_server_msg_sent_total", **sub) - value(before, "grpc_server_msg_sent_total", **sub)
    assert sent >= 3
    cancelled = value(before, "grpc_server_handled_total", **sub, grpc_code="CANCELLED")
    gone = eventually(
        metrics_server,
        lambda s: ("agentcoord_signal_subscriptions", frozenset({("namespace", namespace)})) not in s
        and value(s, "grpc_server_handled_total", **sub, grpc_code="CANCELLED") > cancelled,
    )
    assert value(gone, "agentcoord_signal_subscriptions", namespace=namespace) == 0
    assert value(gone, "grpc_server_handled_total", **sub, grpc_code="CANCELLED") == cancelled + 1


def test_task_queues_dead_letters_lease_expiries_and_redeliveries(metrics_server, namespace):
    before = scrape(metrics_server)
    with client(metrics_server, "worker", "VALIDATOR", namespace) as worker:
        for i in range(3):
            worker.tasks.add_task(task_type="build", task_id=f"b{i}")
        worker.tasks.add_task(task_type="lint", task_id="doomed", max_attempts=1)
        abandoned = worker.tasks.claim_task(task_types=["build"], lease=1)
        doomed = worker.tasks.claim_task(task_types=["lint"])
        worker.tasks.fail_task(
            task_id="doomed", fencing_token=doomed.lease.fencing_token, retryable=False
        )
        time.sleep(1.2)  # the abandoned lease runs out: the next claim of "build" settles it
        again = worker.tasks.claim_task(task_types=["build"])

    assert again.task_id == abandoned.task_id and again.attempts == 2
    after = scrape(metrics_server)
    depth = lambda task_type, state: value(  # noqa: E731
        after, "agentcoord_task_queue_depth", namespace=namespace, task_type=task_type, state=state
    )
    assert (depth("build", "pending"), depth("build", "claimed"), depth("build", "delayed")) == (2, 1, 0)
    assert (depth("lint", "pending"), depth("lint", "claimed")) == (0, 0)
    assert value(after, "agentcoord_task_dead_letters", namespace=namespace) == 1
    assert value(after, "agentcoord_task_lease_expiries_total", namespace=namespace) == 1
    assert value(after, "agentcoord_task_redeliveries_total", namespace=namespace) == 1
    claims = "agentcoord_redis_command_duration_seconds_count"
    labels = {"command": "EVALSHA", "script": "tasks_claim"}
    assert value(after, claims, **labels) - value(before, claims, **labels) >= 3


def test_no_metrics_port_without_metrics_listen(server):
    assert server.server.metrics is None


def test_the_grafana_dashboard_queries_only_metrics_the_server_exports(metrics_server):
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "agentcoord-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    used = {m for e in exprs for m in re.findall(r"\b(?:grpc_server|agentcoord)_\w+", e)}
    url = f"http://127.0.0.1:{metrics_server.server.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        exported = set(re.findall(r"^# HELP (\S+)", response.read().decode(), re.M))

    assert used
    assert {m for m in used if re.sub(r"_(bucket|count|sum)$", "", m) not in exported} == set()


def test_agentcoord_serve_takes_the_metrics_address_from_the_environment(redis_url, tmp_path):
    env = {**os.environ, "AGENTCOORD_METRICS_LISTEN": "127.0.0.1:0", "AGENTCOORD_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [sys.executable, "-m", "agentcoord_server.cli", "serve", "--listen", "127.0.0.1:0",
         "--redis-url", redis_url, "--data-dir", str(tmp_path)],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if '"serving"' in line:
                serving = json.loads(line)
                break
        with urllib.request.urlopen(
            f"http://127.0.0.1:{serving['metrics_port']}/metrics", timeout=10
        ) as response:
            text = response.read().decode()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)

    assert "# TYPE grpc_server_started_total counter" in text
    assert process.returncode == 0


def test_a_metrics_port_in_use_fails_the_start(redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(OSError):
            ServerThread(server_settings(redis_url, metrics_listen=f"127.0.0.1:{port}")).start()
