"""`agentcoord serve --workers N`: N processes on one port under one parent, with real processes
killed and stopped (issue #15, item 4).

Every server here is the real CLI in a child process. Which worker holds a connection is read
from /proc (the worker processes' TCP sockets), not from anything the server says about itself.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import admin_pb2, admin_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from .test_faults import TOKEN, ServeProcess, wait_until

# grpc shares one connection between channels to the same address unless told otherwise.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; SO_REUSEPORT spreading is Linux's"
)


def serving_pids(server: ServeProcess) -> list[int]:
    """The pids of the workers that said "serving", in order."""
    return [
        json.loads(line)["pid"]
        for line in list(server.lines)
        if line.startswith("{") and '"serving"' in line
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def live_workers(server: ServeProcess) -> set[int]:
    return {pid for pid in serving_pids(server) if alive(pid)}


def start_workers(tmp_path: Path, *args: str, count: int = 2) -> ServeProcess:
    server = ServeProcess(tmp_path / "data", "--workers", str(count), *args)
    server.wait_serving()
    wait_until(lambda: len(live_workers(server)) == count, what=f"{count} workers serving")
    return server


def connections_by_pid(pids: set[int], port: int) -> dict[int, int]:
    """Established TCP connections on local `port` held by each of `pids` (/proc)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # ESTABLISHED
                    established.add(fields[9])  # inode
    counts = {}
    for pid in pids:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        counts[pid] = len(inodes & established)
    return counts


def test_connections_spread_over_the_workers(tmp_path):
    server = start_workers(tmp_path)
    clients = []
    try:
        address = server.wait_serving()
        for i in range(16):
            client = Client(address, token=TOKEN, timeout=10, options=OWN_CONNECTION)
            clients.append(client)
            client.memory.stash(f"k{i}", i)  # each client is one connection, now accepted
        per_worker = connections_by_pid(live_workers(server), server.port)
    finally:
        for client in clients:
            client.close()
        server.close()

    assert sum(per_worker.values()) == 16, per_worker
    assert all(count > 0 for count in per_worker.values()), per_worker


def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(tmp_path):
    server = start_workers(tmp_path)
    try:
        address = server.wait_serving()
        first, second = serving_pids(server)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not alive(first), what="the killed worker to be gone")
        # New connections go to the live worker meanwhile. (A connection the kernel queued
        # for the killed worker in the instant it died is reset; a client retries it on a new
        # connection — the same channel would answer from its reconnect backoff instead.)
        for i in range(8):
            try:
                with Client(address, token=TOKEN, timeout=10, options=OWN_CONNECTION) as client:
                    client.memory.stash("during", i)
            except AgentcoordError as exc:
                assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                with Client(address, token=TOKEN, timeout=10, options=OWN_CONNECTION) as client:
                    client.memory.stash("during", i)

        wait_until(lambda: len(live_workers(server)) == 2, what="a replacement worker")
        replacement = (live_workers(server) - {second}).pop()
        clients = [Client(address, token=TOKEN, timeout=10, options=OWN_CONNECTION) for _ in range(16)]
        try:
            for i, client in enumerate(clients):
                client.memory.stash("after", i)
            per_worker = connections_by_pid({second, replacement}, server.port)
        finally:
            for client in clients:
                client.close()
        assert server.process.poll() is None
    finally:
        server.close()

    assert replacement not in (first, second)
    assert per_worker[replacement] > 0, per_worker  # the replacement serves the port too
    assert '"a worker exited; starting another"' in server.output


def test_sigterm_stops_every_worker_with_a_drain(tmp_path):
    server = start_workers(tmp_path, "--shutdown-drain", "1")
    workers = live_workers(server)
    address = server.wait_serving()
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    gone = threading.Event()

    def call_forever(n: int) -> None:
        with Client(address, token=TOKEN, timeout=10, options=OWN_CONNECTION) as client:
            while not gone.is_set():
                try:
                    client.memory.stash(f"load-{n}", 1)
                    outcomes["OK", ""] += 1
                except AgentcoordError as exc:
                    outcomes[exc.code.name, exc.reason or ""] += 1
                    time.sleep(0.01)

    callers = [threading.Thread(target=call_forever, args=(n,)) for n in range(6)]
    try:
        for caller in callers:
            caller.start()
        wait_until(lambda: outcomes["OK", ""] >= 100, what="calls to succeed")
        server.process.send_signal(signal.SIGTERM)
        returncode = server.wait(timeout=30)
    finally:
        gone.set()
        for caller in callers:
            caller.join(30)
        server.close()

    assert returncode == 0, server.output[-2000:]
    assert not any(alive(pid) for pid in workers)
    assert {code for code, _ in outcomes} <= {"OK", "UNAVAILABLE"}, outcomes
    assert outcomes["UNAVAILABLE", "SERVER_SHUTTING_DOWN"] > 0, outcomes  # the workers drained
    assert server.output.count('"event": "stopped"') == 2  # each worker stopped cleanly
    assert "embedded redis stopped" in server.output


def test_metrics_add_up_over_the_workers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    server = start_workers(tmp_path, "--metrics-listen", f"127.0.0.1:{metrics_port}")

    def who_am_i_ok() -> float:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "grpc_server_handled_total"
            and sample.labels.get("grpc_method") == "WhoAmI"
            and sample.labels.get("grpc_code") == "OK"
        )

    channels = []
    try:
        address = server.wait_serving()
        for _ in range(16):
            channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
            channels.append(channel)
            admin_pb2_grpc.AdminServiceStub(channel).WhoAmI(
                admin_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {TOKEN}")]
            )
        per_worker = connections_by_pid(live_workers(server), server.port)
        deadline = time.monotonic() + 10  # each worker writes its metrics every second
        while who_am_i_ok() < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # and nothing more is counted after another write
        counted = who_am_i_ok()
    finally:
        for channel in channels:
            channel.close()
        server.close()

    assert all(count > 0 for count in per_worker.values()), per_worker  # both served some
    assert counted == 16


def test_a_port_held_by_another_program_is_refused_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(
            [sys.executable, "-m", "agentcoord_server.cli", "serve", "--workers", "2",
             "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
             "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "REDIS_URL": ""},
        )

    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr  # nothing started, nothing logged
    assert refused.stderr.startswith(f"agentcoord: cannot listen on 127.0.0.1:{port}")


def test_a_second_server_on_the_workers_port_is_refused(tmp_path):
    first = start_workers(tmp_path / "first")
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "agentcoord_server.cli", "serve", "--workers", "2",
             "--listen", f"127.0.0.1:{first.port}", "--data-dir", str(tmp_path / "second"),
             "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "REDIS_URL": ""},
        )
        with Client(first.wait_serving(), token=TOKEN, timeout=10) as client:
            client.memory.stash("k", "the first server still serves")
    finally:
        first.close()

    assert refused.returncode == 1
    assert refused.stderr.startswith(f"agentcoord: cannot listen on 127.0.0.1:{first.port}")


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_workers_flag_ends_with_one_line(value, tmp_path):
    refused = subprocess.run(
        [sys.executable, "-m", "agentcoord_server.cli", "serve", "--workers", value,
         "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "--workers" in refused.stderr
