"""WatchEntries and EXPIRE events with real `agentcoord serve` processes on one Redis (issue #16):
a watcher resumes across a SIGTERM and restart missing nothing, and two server processes emit
each EXPIRE exactly once with no watcher connected.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter

import redis
from agentcoord import Client
from agentcoord.v1 import memory_pb2
from agentcoord_server.store.keys import Keyspace

from .test_faults import ServeProcess, wait_until

EXPIRE = memory_pb2.ENTRY_EVENT_TYPE_EXPIRE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WatchThread(threading.Thread):
    """Reads `watch_entries` (the client resumes on UNAVAILABLE) until `want` events arrived."""

    def __init__(self, client: Client, want: int, **kwargs: object) -> None:
        super().__init__(daemon=True)
        self.client, self.want, self.kwargs = client, want, kwargs
        self.events: list[memory_pb2.EntryEvent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        events = self.client.memory.watch_entries(**self.kwargs)
        try:
            for event in events:
                self.events.append(event)
                if len(self.events) >= self.want:
                    return
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            events.close()


def test_a_watcher_resumes_across_a_server_restart_and_misses_nothing(
    tmp_path, server, namespace, standalone_redis_url
):
    token = server.issue_token("lead", "CONTRIBUTOR", namespace)
    port = free_port()
    watched = ServeProcess(
        tmp_path / "a", "--listen", f"127.0.0.1:{port}", redis_url=standalone_redis_url
    )
    restarted = None
    # Writes go through the session's server, which stays up; the watch goes through `watched`.
    writer = Client(server.address, token=token)
    watcher = Client(watched.wait_serving(), token=token)
    try:
        anchor = writer.memory.stash("anchor", 0)
        reader = WatchThread(
            watcher, 60, after_revision=anchor.revision, max_retries=40, max_backoff=0.5
        )
        reader.start()
        for i in range(20):
            writer.memory.stash(f"k{i}", i)
        wait_until(lambda: len(reader.events) >= 20, what="the watcher to be live")
        watched.close()  # SIGTERM: the stream ends UNAVAILABLE
        for i in range(20, 40):  # written while no server serves the watcher
            writer.memory.stash(f"k{i}", i)
        restarted = ServeProcess(
            tmp_path / "b", "--listen", f"127.0.0.1:{port}", redis_url=standalone_redis_url
        )
        restarted.wait_serving()
        for i in range(40, 60):
            writer.memory.stash(f"k{i}", i)
        reader.join(60)
    finally:
        writer.close()
        watcher.close()
        watched.close()
        if restarted is not None:
            restarted.close()

    assert reader.error is None, reader.error
    revisions = [e.revision for e in reader.events]
    assert revisions == list(range(anchor.revision + 1, anchor.revision + 61)), "gap or duplicate"
    assert [e.key for e in reader.events] == [f"k{i}" for i in range(60)]


def test_two_server_processes_emit_each_expire_once_with_no_watcher(
    tmp_path, server, namespace, standalone_redis_url
):
    token = server.issue_token("lead", "CONTRIBUTOR", namespace)
    first = ServeProcess(tmp_path / "a", redis_url=standalone_redis_url)
    second = ServeProcess(tmp_path / "b", redis_url=standalone_redis_url)
    try:
        one, two = (Client(p.wait_serving(), token=token) for p in (first, second))
        anchor = one.memory.stash("anchor", 0)
        for i in range(20):
            (one if i % 2 else two).memory.stash(f"short{i}", i, ttl=0.2 + i * 0.02)
        # Nobody watches: the sweeps of the two processes (and the session's server) race.
        expiring = Keyspace(namespace).key("memory-expiry")
        with redis.Redis.from_url(standalone_redis_url) as plain:
            wait_until(lambda: plain.zcard(expiring) == 1, what="the sweeps")  # anchor left
        marker = two.memory.stash("marker", 1)
        later = WatchThread(one, marker.revision - anchor.revision, after_revision=anchor.revision)
        later.start()
        later.join(30)
        one.close()
        two.close()
    finally:
        first.close()
        second.close()

    assert later.error is None, later.error
    expired = Counter(e.key for e in later.events if e.type == EXPIRE)
    assert expired == Counter({f"short{i}": 1 for i in range(20)})
    assert later.events[-1].key == "marker"
    assert [e.revision for e in later.events] == list(
        range(anchor.revision + 1, marker.revision + 1)
    )
