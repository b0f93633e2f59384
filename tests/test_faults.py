"""Faults, each with real processes killed or stopped (issue #12): the server SIGKILLed under a
write load, its embedded redis-server SIGKILLed, an external Redis SIGSTOPped, a SIGTERM under
a continuous call load, a second server on a live data directory, a Redis that cannot come back.

The servers here are the real `agentcoord serve` CLI in a child process, except where the test
must reach into the server (the embedded Redis's pid, its script cache).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import signals_pb2, signals_pb2_grpc
from agentcoord_server.config import Settings
from agentcoord_server.embedded_redis import EmbeddedRedis, _process_in, find_redis_server
from agentcoord_server.store.scripts import _registered
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .support import ServerThread, dev_identity

TOKEN = "fault-tests-bootstrap-steward-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServeProcess:
    """`agentcoord serve` in a child process, on a random port, with `TOKEN` as its bootstrap
    STEWARD token. A thread collects its output (one JSON log line per RPC would otherwise fill
    the pipe and stall it)."""

    def __init__(self, data_dir: Path, *args: str, redis_url: str = "") -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentcoord_server.cli",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                "--log-format",
                "json",
                "--bootstrap-token",
                TOKEN,
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "REDIS_URL": redis_url},
        )
        self.lines: list[str] = []
        self.port = 0
        self._serving = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if not self._serving.is_set() and '"serving"' in line:
                self.port = json.loads(line)["port"]
                self._serving.set()
        self._serving.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_serving(self, timeout: float = 30) -> str:
        """Waits for the "serving" log line; returns the address."""
        assert self._serving.wait(timeout) and self.port, self.output
        return f"127.0.0.1:{self.port}"

    def wait(self, timeout: float = 30) -> int:
        """Waits for it to exit and for its last line to be read; returns its exit code."""
        returncode = self.process.wait(timeout)
        self._reader.join(10)
        return returncode

    def close(self) -> None:
        """Stops it with SIGTERM (SIGKILL if it does not exit)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(condition: Callable[[], object], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def test_serve_restarts_after_a_kill_9_under_write_load_with_every_acknowledged_write(tmp_path):
    data_dir = tmp_path / "data"
    acked: dict[str, int] = {}
    stop_writing = threading.Event()

    def write(worker: int, address: str) -> None:
        with Client(address, token=TOKEN, timeout=5) as client:
            for i in itertools.count():
                if stop_writing.is_set():
                    return
                key = f"w{worker}-{i}"
                try:
                    client.memory.stash(key, {"i": i})
                except AgentcoordError:
                    continue  # not acknowledged: may or may not be there
                acked[key] = i

    first = ServeProcess(data_dir)
    try:
        address = first.wait_serving()
        writers = [threading.Thread(target=write, args=(n, address)) for n in range(4)]
        for writer in writers:
            writer.start()
        try:
            wait_until(lambda: len(acked) >= 200, what="200 acknowledged writes")
            redis_pid = int((data_dir / "redis.pid").read_text())
            first.process.kill()
            first.process.wait()
            # The kernel tells it its parent died (PR_SET_PDEATHSIG): it saves and exits.
            wait_until(
                lambda: not _process_in(redis_pid, data_dir.resolve()),
                what="the embedded redis-server to exit with its server",
            )
        finally:
            stop_writing.set()
            for writer in writers:
                writer.join(30)
    finally:
        first.close()

    second = ServeProcess(data_dir)  # the same directory, nothing cleaned up by hand
    try:
        with Client(second.wait_serving(), token=TOKEN, timeout=10) as client:
            keys = sorted(acked)
            found: dict[str, object] = {}
            for start in range(0, len(keys), 100):
                found.update(client.memory.batch_retrieve(keys[start : start + 100]))
    finally:
        second.close()

    assert len(acked) >= 200
    assert {key: found.get(key) for key in acked} == {key: {"i": i} for key, i in acked.items()}


def test_a_killed_embedded_redis_is_restarted_health_not_serving_then_serving_with_the_data(
    tmp_path,
):
    handle = ServerThread(
        Settings(listen="127.0.0.1:0", data_dir=tmp_path, insecure_dev_identity=True)
    ).start()
    identity = dev_identity("a", "CONTRIBUTOR", "team")
    try:
        with (
            grpc.insecure_channel(handle.address) as channel,
            Client(handle.address, metadata=identity, timeout=10) as client,
        ):
            client.memory.stash("k", {"v": 1})
            anchor = client.signals.send_signal("s")
            signals = signals_pb2_grpc.SignalServiceStub(channel)
            stream = signals.Subscribe(
                signals_pb2.SubscribeRequest(after_id=anchor.id), metadata=identity, timeout=30
            )
            last = client.signals.send_signal("s")
            while next(stream).cursor != last.id:  # live: the stream has delivered it
                pass
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            statuses = [next(watch).status]
            killed = handle.server._embedded.process
            os.kill(killed.pid, signal.SIGKILL)
            statuses += [next(watch).status, next(watch).status]
            watch.cancel()
            with pytest.raises(grpc.RpcError) as stream_ended:
                for _ in stream:
                    pass
            restarted = handle.server._embedded.process
            with redis.Redis(unix_socket_path=str(handle.server._embedded.socket_path)) as fresh:
                scripts = _registered[handle.server.ctx.redis]
                loaded = fresh.script_exists(*(s.sha for s in scripts))
            value = client.memory.retrieve("k")
            resumed = signals.Subscribe(
                signals_pb2.SubscribeRequest(after_id=last.id), metadata=identity, timeout=30
            )
            after = client.signals.send_signal("s")  # a Lua script on the new Redis
            first_resumed = next(r for r in resumed if r.HasField("signal")).signal
            resumed.cancel()
    finally:
        handle.stop()

    assert statuses == [SERVING, NOT_SERVING, SERVING]
    assert restarted.pid != killed.pid
    assert value == {"v": 1}
    assert loaded == [True] * len(scripts), "scripts were not loaded into the new Redis"
    assert stream_ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert first_resumed.id == after.id  # resumed from its cursor: nothing lost, nothing twice


class ResumingSubscriber(threading.Thread):
    """Reads Subscribe the way a client should: when the stream ends UNAVAILABLE, subscribe
    again after the last cursor received. Records every signal's id and `seq`, and each end."""

    def __init__(self, address: str, after_id: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.cursor = after_id
        self.ids: list[str] = []
        self.seqs: list[int] = []
        self.ends: list[grpc.StatusCode] = []
        self.error: grpc.RpcError | None = None
        self._closing = threading.Event()
        self._call: grpc.Future | None = None

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = signals_pb2_grpc.SignalServiceStub(channel)
            while not self._closing.is_set():
                self._call = call = stub.Subscribe(
                    signals_pb2.SubscribeRequest(after_id=self.cursor), metadata=AUTH
                )
                try:
                    for response in call:
                        if response.HasField("signal"):
                            self.ids.append(response.signal.id)
                            self.seqs.append(int(response.signal.data["seq"]))
                        self.cursor = response.cursor or self.cursor
                except grpc.RpcError as exc:
                    if self._closing.is_set():
                        return
                    self.ends.append(exc.code())
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        self.error = exc
                        return
                    time.sleep(0.2)

    def close(self) -> None:
        self._closing.set()
        if self._call is not None:
            self._call.cancel()
        self.join(30)


def test_a_stopped_external_redis_fails_calls_unavailable_then_subscribers_resume_gap_free(
    tmp_path,
):
    socket_path = tmp_path / "redis.sock"
    external = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--unixsocket", str(socket_path), "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = subscriber = None
    try:
        wait_until(socket_path.exists, what="the external redis-server")
        server = ServeProcess(
            tmp_path / "data",
            "--redis-timeout", "1",
            "--auth-cache-seconds", "0.5",  # open streams re-check their token every 0.5 s
            redis_url=f"unix://{socket_path}",
        )
        with Client(server.wait_serving(), token=TOKEN, timeout=10) as client:
            anchor = client.signals.send_signal("n", {"seq": -1})
            subscriber = ResumingSubscriber(client.target, anchor.id)
            subscriber.start()
            acked = []
            for seq in range(10):
                client.signals.send_signal("n", {"seq": seq})
                acked.append(seq)
            wait_until(lambda: 9 in subscriber.seqs, what="the subscriber to be live")

            external.send_signal(signal.SIGSTOP)  # alive, connected, silent
            try:
                # The client waits up to 10 s; the server gives Redis 1 s.
                with pytest.raises(AgentcoordError) as stalled:
                    client.signals.send_signal("n", {"seq": 10})  # may still land later
                wait_until(lambda: subscriber.ends, what="the open stream to end")
            finally:
                external.send_signal(signal.SIGCONT)

            for seq in range(11, 21):
                for attempt in itertools.count():
                    try:
                        client.signals.send_signal("n", {"seq": seq})
                        break
                    except AgentcoordError as exc:
                        if exc.code != grpc.StatusCode.UNAVAILABLE or attempt > 50:
                            raise
                        time.sleep(0.1)
                acked.append(seq)
            wait_until(lambda: 20 in subscriber.seqs, what="the resumed subscriber")
    finally:
        if subscriber is not None:
            subscriber.close()
        if server is not None:
            server.close()
        external.send_signal(signal.SIGCONT)
        external.kill()
        external.wait()

    assert stalled.value.code == grpc.StatusCode.UNAVAILABLE
    assert stalled.value.reason == "REDIS_UNAVAILABLE"
    assert subscriber.error is None
    assert subscriber.ends and set(subscriber.ends) == {grpc.StatusCode.UNAVAILABLE}
    assert set(acked) <= set(subscriber.seqs), "a gap: an acknowledged signal never arrived"
    assert len(subscriber.ids) == len(set(subscriber.ids)), "a signal arrived twice"
    assert subscriber.seqs == sorted(subscriber.seqs)


def test_calls_through_a_sigterm_either_succeed_or_get_unavailable_never_cancelled(tmp_path):
    server = ServeProcess(tmp_path / "data", "--shutdown-drain", "1", "--shutdown-grace", "2")
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    gone = threading.Event()

    def call_continuously(caller: int, address: str) -> None:
        with Client(address, token=TOKEN, timeout=10) as client:
            for i in itertools.count():
                if gone.is_set():
                    return
                try:
                    client.memory.stash(f"c{caller}-{i}", i)
                    outcome = ("OK", "")
                except AgentcoordError as exc:
                    outcome = (exc.code.name, exc.reason)
                outcomes[outcome] += 1

    try:
        address = server.wait_serving()
        callers = [threading.Thread(target=call_continuously, args=(n, address)) for n in range(6)]
        for caller in callers:
            caller.start()
        try:
            wait_until(lambda: outcomes["OK", ""] >= 100, what="calls to succeed")
            server.process.send_signal(signal.SIGTERM)
            returncode = server.wait(timeout=30)
            time.sleep(0.3)  # and on, against the closed port
        finally:
            gone.set()
            for caller in callers:
                caller.join(30)
    finally:
        server.close()

    codes = {code for code, _ in outcomes}
    assert returncode == 0, server.output[-2000:]
    assert codes <= {"OK", "UNAVAILABLE"}, outcomes
    assert outcomes["UNAVAILABLE", "SERVER_SHUTTING_DOWN"] > 0, outcomes  # the drain answered


def test_a_second_live_server_on_the_same_data_directory_is_refused_in_one_line(tmp_path):
    data_dir = tmp_path / "data"
    first = ServeProcess(data_dir)
    try:
        address = first.wait_serving()
        second = subprocess.run(
            [sys.executable, "-m", "agentcoord_server.cli", "serve", "--listen", "127.0.0.1:0",
             "--data-dir", str(data_dir), "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "REDIS_URL": ""},
        )
        with Client(address, token=TOKEN, timeout=10) as client:
            client.memory.stash("first", "still serves")  # its Redis was not touched
    finally:
        first.close()

    assert second.returncode != 0
    assert second.stdout == ""
    assert second.stderr.count("\n") == 1, second.stderr  # one line, no traceback
    assert "in use by another running agentcoord server" in second.stderr


def test_a_listen_address_in_use_is_refused_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(
            [sys.executable, "-m", "agentcoord_server.cli", "serve", "--listen",
             f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"), "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "REDIS_URL": ""},
        )

    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr, refused.stderr
    # The log lines of the start, then one line saying what failed.
    assert refused.stderr.splitlines()[-1].startswith(f"agentcoord: cannot listen on 127.0.0.1:{port}")
    assert not EmbeddedRedis(tmp_path / "data")._answers()  # the Redis it started is stopped


def test_serve_exits_non_zero_when_its_embedded_redis_cannot_come_back(tmp_path):
    data_dir = tmp_path / "data"
    server = ServeProcess(data_dir, "--shutdown-drain", "0")
    try:
        with Client(server.wait_serving(), token=TOKEN, timeout=10) as client:
            client.memory.stash("k", 1)
            with open(data_dir / "appendonly.aof", "r+b") as aof:
                aof.write(b"garbage!")  # a restart cannot load it
            os.kill(int((data_dir / "redis.pid").read_text()), signal.SIGKILL)
            with pytest.raises(AgentcoordError) as caught:
                client.memory.stash("k", 2)
        returncode = server.wait(timeout=60)
    finally:
        server.close()

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert returncode != 0
    assert "could not be restarted" in server.lines[-1], server.output[-2000:]
