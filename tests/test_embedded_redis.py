"""Without REDIS_URL the server runs its own redis-server; its data survives restarts."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import grpc
import pytest
import redis
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import admin_pb2
from agentcoord_server.config import Settings
from agentcoord_server.embedded_redis import DataDirectoryInUse, EmbeddedRedis

from .support import ServerThread, dev_identity


def embedded_settings(data_dir) -> Settings:
    return Settings(listen="127.0.0.1:0", data_dir=data_dir, insecure_dev_identity=True)


def test_data_survives_a_restart_of_server_and_embedded_redis(tmp_path):
    first = ServerThread(embedded_settings(tmp_path)).start()
    try:
        with Client(first.address, metadata=dev_identity("a", "CONTRIBUTOR", "team")) as client:
            client.memory.stash("note", "kept")
            before = client.admin.get_server_stats()
    finally:
        first.stop()

    second = ServerThread(embedded_settings(tmp_path)).start()
    try:
        with Client(second.address, metadata=dev_identity("a", "OBSERVER", "team")) as client:
            value = client.memory.retrieve("note")
            after = client.admin.get_server_stats()
    finally:
        second.stop()

    assert before.redis_mode == admin_pb2.REDIS_MODE_EMBEDDED
    assert value == "kept"
    assert after.namespace_stats.memory_entries == 1


def test_second_server_on_the_same_data_directory_is_refused(tmp_path):
    with EmbeddedRedis(tmp_path) as first:
        try:
            EmbeddedRedis(tmp_path).start()
        except DataDirectoryInUse as exc:
            message = str(exc)
        else:
            raise AssertionError("a second embedded Redis started on the same data directory")
        first_still_answers = first._answers()

    assert "in use by another running agentcoord server" in message
    assert first_still_answers, "the refused start disturbed the first server's Redis"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_command_stops_cleanly_on_a_signal_and_stops_its_redis(tmp_path, stop_signal):
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
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
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "REDIS_URL": ""},
    )
    socket_path = data_dir / "redis.sock"
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if '"serving"' in line:
                break
        assert any('"serving"' in line for line in lines), "".join(lines)
        assert redis.Redis(unix_socket_path=str(socket_path)).ping()

        process.send_signal(stop_signal)
        output = process.communicate(timeout=20)[0]
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 0, output
    assert '"stopped"' in output
    deadline = time.monotonic() + 5
    while socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not socket_path.exists(), "embedded redis-server still running"


def test_second_server_on_a_port_in_use_is_refused_and_stops_its_embedded_redis(tmp_path):
    first = ServerThread(embedded_settings(tmp_path / "first")).start()
    try:
        port = int(first.address.rsplit(":", 1)[1])
        second_dir = tmp_path / "second"
        second = ServerThread(
            Settings(listen=f"127.0.0.1:{port}", data_dir=second_dir, insecure_dev_identity=True)
        )
        try:
            second.start()
        except RuntimeError as exc:
            refused = exc
        else:
            second.stop()
            raise AssertionError("a second server bound a port another server listens on")
    finally:
        first.stop()

    assert "cannot listen on" in str(refused)
    # The half-started server stopped the redis-server it had started (it removes its socket).
    assert not (second_dir / "redis.sock").exists(), "embedded redis-server leaked"
    assert not EmbeddedRedis(second_dir)._answers()


def test_second_server_on_the_same_long_data_directory_is_refused(tmp_path):
    # Too long for a unix socket path, so the socket lives outside the data directory.
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)
    with EmbeddedRedis(data_dir) as first:
        assert not str(first.socket_path).startswith(str(data_dir))
        second = EmbeddedRedis(data_dir)
        try:
            with pytest.raises(DataDirectoryInUse, match="in use"):
                second.start()
        finally:
            second.stop()


def test_restart_on_a_long_data_directory_reuses_one_socket_path(tmp_path):
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)
    with EmbeddedRedis(data_dir) as first:
        redis.Redis(unix_socket_path=str(first.socket_path)).set("k", "kept")
    with EmbeddedRedis(data_dir) as second:
        value = redis.Redis(unix_socket_path=str(second.socket_path)).get("k")

    assert second.socket_path == first.socket_path
    assert value == b"kept"


def test_calls_are_unavailable_with_reason_when_redis_stops_answering(tmp_path):
    settings = dataclasses.replace(embedded_settings(tmp_path), redis_timeout=0.5)
    handle = ServerThread(settings).start()
    process = handle.server._embedded._process
    try:
        identity = dev_identity("a", "CONTRIBUTOR", "team")
        with Client(handle.address, metadata=identity, timeout=10) as client:
            client.memory.stash("k", {"v": 1})
            process.send_signal(signal.SIGSTOP)  # alive, connected, silent: a network partition
            try:
                with pytest.raises(AgentcoordError) as caught:
                    client.memory.stash("k", {"v": 2})
            finally:
                process.send_signal(signal.SIGCONT)
    finally:
        handle.stop()

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "REDIS_UNAVAILABLE"


def test_a_stale_socket_file_left_by_a_killed_redis_does_not_block_a_start(tmp_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "redis.sock"))  # a socket file nobody listens on any more
    stale.close()

    with EmbeddedRedis(tmp_path) as embedded:
        answered = redis.Redis(unix_socket_path=str(embedded.socket_path)).ping()

    assert answered


def _orphan(data_dir):
    """A redis-server on `data_dir` whose owner "died": the lock is dropped (as the kernel does
    for a dead process) and nobody will stop it. Returns (its process, its socket path)."""
    owner = EmbeddedRedis(data_dir)
    owner.start()
    redis.Redis(unix_socket_path=str(owner.socket_path)).set("k", "kept")
    orphan = owner.process
    owner._process = None
    owner._unlock()
    return orphan, owner.socket_path


def test_a_redis_left_by_a_dead_owner_is_shut_down_with_its_data_before_a_new_one_starts(tmp_path):
    orphan, _ = _orphan(tmp_path)
    try:
        with EmbeddedRedis(tmp_path) as successor:
            orphan_exit = orphan.poll()
            value = redis.Redis(unix_socket_path=str(successor.socket_path)).get("k")
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()

    assert orphan_exit == 0, "the orphan was not shut down cleanly before the new Redis started"
    assert value == b"kept"


def test_a_redis_left_by_a_dead_owner_is_found_by_its_pidfile_when_its_socket_is_gone(tmp_path):
    orphan, socket_path = _orphan(tmp_path)
    socket_path.unlink()  # what the old error message led people to do
    try:
        with EmbeddedRedis(tmp_path) as successor:
            orphan_exit = orphan.poll()
            value = redis.Redis(unix_socket_path=str(successor.socket_path)).get("k")
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()

    assert orphan_exit == 0, "two redis-servers ran on one AOF"
    assert value == b"kept"


def test_data_directory_and_its_files_are_private(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    old = data_dir / "redis.log"
    old.write_text("from an older version\n")
    os.chmod(old, 0o644)
    unrelated = data_dir / "run.sh"  # not ours: the operator's, left as it is
    unrelated.write_text("#!/bin/sh\n")
    os.chmod(unrelated, 0o755)

    with EmbeddedRedis(data_dir) as embedded:
        redis.Redis(unix_socket_path=str(embedded.socket_path)).set("k", "v")
    modes = {
        str(path.relative_to(data_dir)): stat.S_IMODE(path.stat().st_mode)
        for path in data_dir.rglob("*")
        if path != unrelated
    }

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert {"appendonly.aof", "dump.rdb", "redis.log", "redis.conf", "agentcoord.lock"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o600} == {}
    assert stat.S_IMODE(unrelated.stat().st_mode) == 0o755
