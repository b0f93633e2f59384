"""Building the Redis client from `REDIS_URL`: a standalone Redis, a Redis Cluster or Sentinel.

URL forms (DESIGN.md "Runtime"):

- `redis://`, `rediss://`, `unix://` — one standalone Redis (redis-py's own URL syntax).
- `redis+cluster://[user:password@]host:port[,host:port…][/]` (`rediss+cluster://` for TLS) —
  a Redis Cluster reached through any of the listed nodes (the scheme redis/agent-memory-server
  uses). Runs on redis-py's asyncio `RedisCluster`, which routes each command and EVALSHA by the
  slot of its first key and follows MOVED/failovers.
- `redis+sentinel://[user:password@]host:port[,host:port…]/<master name>[/<db>]`
  (`rediss+sentinel://`: TLS to the Redis servers) — a primary/replica set watched by Sentinel;
  the password authenticates to the Redis servers, not to the Sentinels.

TLS (`rediss+cluster://`, `rediss+sentinel://`) takes redis-py's TLS options as query parameters,
as `rediss://` URLs do in redis-py's own URL parsing: `ssl_ca_certs` (a PEM CA bundle file),
`ssl_ca_path`, `ssl_certfile` and `ssl_keyfile` (a client certificate, for Redis's
`tls-auth-clients`), `ssl_cert_reqs` (`required`, the default, `optional` or `none`) and
`ssl_check_hostname` (`true`/`false`), e.g.
`rediss+cluster://10.0.0.5:6380?ssl_ca_certs=/etc/agentcoord/redis-ca.pem`.

Every store talks to the client through the command surface the three share, so the store
code is typed against `redis.asyncio.Redis`; a `RedisCluster` is handed out under that type
(`cast` below) because it offers the same commands, pipelines and scripts.

A URL that cannot work fails the start with `RedisStartError`: one line saying what is wrong,
which the CLI prints without a traceback. That includes a cluster URL naming a standalone
Redis, a standalone URL naming a cluster node, a cluster whose slots are not all covered, and
nothing reachable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from agentcoord.v1 import admin_pb2
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.sentinel import Sentinel

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
STANDALONE_SCHEMES = ("redis", "rediss", "unix")
TLS_OPTIONS = {
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": str,
    "ssl_check_hostname": bool,
}
"""Query parameters a `rediss+cluster://` or `rediss+sentinel://` URL may carry (redis-py's names
and meanings), with their types."""
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class RedisStartError(RuntimeError):
    """The server cannot start on the Redis `REDIS_URL` names; the message is one line."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed `REDIS_URL`. `kind` is "standalone", "cluster" or "sentinel"; `nodes` the
    (host, port) seeds of a cluster or the Sentinels; `master` the Sentinel master name."""

    kind: str
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_options: dict[str, Any] = field(default_factory=dict)
    """redis-py TLS keyword arguments from the URL's query (TLS_OPTIONS)."""

    @property
    def display(self) -> str:
        """The URL without credentials, safe to log and to print in an error."""
        if self.kind == "standalone":
            parts = urlsplit(self.url)
            host = parts.hostname or ""
            where = f"{host}:{parts.port}" if parts.port else (host or parts.path)
            return f"{parts.scheme}://{where}"
        scheme = urlsplit(self.url).scheme
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        return f"{scheme}://{hosts}" + (f"/{self.master}" if self.master else "")


def _hosts(netloc: str, scheme: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (after any `user:password@`) as (host, port) pairs."""
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{scheme}:// needs host:port[,host:port…], got {item.strip()!r}")
        nodes.append((host, int(port)))
    return tuple(nodes)


def _tls_options(query: str, scheme: str, tls: bool) -> dict[str, Any]:
    """The TLS options of a cluster or Sentinel URL's query string (TLS_OPTIONS)."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        kind = TLS_OPTIONS.get(name)
        if kind is None:
            known = ", ".join(TLS_OPTIONS)
            raise ValueError(f"unknown {scheme}:// URL parameter {name!r}; known: {known}")
        if not tls:
            raise ValueError(f"{name} needs TLS: use rediss{scheme.removeprefix('redis')}://")
        if kind is bool:
            if value.lower() not in (*_TRUE, *_FALSE):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            options[name] = value.lower() in _TRUE
        elif name == "ssl_cert_reqs" and value not in ("required", "optional", "none"):
            raise ValueError(f"ssl_cert_reqs must be required, optional or none, got {value!r}")
        else:
            options[name] = value
    return options


def parse_redis_url(url: str) -> RedisTarget:
    """Parses a `REDIS_URL` (forms in the module docstring). Raises ValueError naming what is
    wrong for an unknown scheme, a missing host:port or a Sentinel URL without a master name."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"REDIS_URL must start with a scheme such as redis://, got {url!r}")
    if scheme in STANDALONE_SCHEMES:
        return RedisTarget(kind="standalone", url=url, tls=scheme == "rediss")
    if scheme not in CLUSTER_SCHEMES and scheme not in SENTINEL_SCHEMES:
        raise ValueError(
            f"unknown REDIS_URL scheme {scheme}://; use redis://, rediss://, unix://, "
            "redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    tls = CLUSTER_SCHEMES.get(scheme, SENTINEL_SCHEMES.get(scheme, False))
    creds = netloc.rpartition("@")[0]
    username, _, password = creds.partition(":") if creds else ("", "", "")
    if creds and not password:  # `password@host` is redis-py's convention too
        username, password = "", username
    common: dict[str, Any] = {
        "url": url,
        "nodes": _hosts(netloc, scheme),
        "username": unquote(username) or None,
        "password": unquote(password) or None,
        "tls_options": _tls_options(query, scheme, tls),
    }
    if scheme in CLUSTER_SCHEMES:
        if path.strip("/"):
            raise ValueError("a Redis Cluster has only database 0; drop the path from the URL")
        return RedisTarget(kind="cluster", tls=CLUSTER_SCHEMES[scheme], **common)
    master, _, db = path.partition("/")
    if not master:
        raise ValueError(f"{scheme}:// needs the master name: {scheme}://host:port/<master-name>")
    if db and not db.isdigit():
        raise ValueError(f"the database after the master name must be a number, got {db!r}")
    return RedisTarget(
        kind="sentinel", master=master, db=int(db or 0), tls=SENTINEL_SCHEMES[scheme], **common
    )


def _cluster(target: RedisTarget, options: dict[str, Any]) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        require_full_coverage=True,
        **target.tls_options,
        **options,
    )


async def connect_redis(
    target: RedisTarget, *, max_connections: int, timeout: float
) -> tuple[Redis, int]:
    """Connects to `target` and checks it is what the URL says. Returns (client, RedisMode).

    `max_connections` bounds the connections of the pool (per node on a cluster); `timeout`
    (seconds) bounds each connect and reply. Raises RedisStartError (one line) when the start
    cannot go on.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    where = target.display
    if target.kind == "cluster":
        cluster = _cluster(target, {**options, "max_connections": max_connections})
        try:
            await cluster.initialize()
        except redis_errors.RedisClusterException as exc:
            await cluster.aclose()
            text = str(exc)
            if "not enabled" in text:
                raise RedisStartError(
                    f"{where} names a standalone Redis, not a cluster node; use redis://"
                ) from None
            if "not covered" in text:
                raise RedisStartError(
                    f"the Redis Cluster at {where} does not cover all 16384 slots "
                    "(CLUSTER INFO says cluster_state:fail); fix the cluster first"
                ) from None
            if "certificate verify failed" in text.lower():
                raise RedisStartError(
                    f"cannot verify the TLS certificate of the Redis Cluster nodes of {where}; "
                    "name the CA that signed it: ?ssl_ca_certs=/path/ca.pem"
                ) from None
            raise RedisStartError(f"cannot reach any Redis Cluster node of {where}") from None
        except (redis_errors.RedisError, OSError) as exc:
            await cluster.aclose()
            raise RedisStartError(f"cannot use the Redis Cluster at {where}: {exc}") from None
        return cast(Redis, cluster), admin_pb2.REDIS_MODE_CLUSTER
    if target.kind == "sentinel":
        sentinel = Sentinel(
            list(target.nodes),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            username=target.username,
            password=target.password,
            ssl=target.tls,
            db=target.db,
            **target.tls_options,
            **options,
        )
        try:
            await sentinel.discover_master(target.master)
        except redis_errors.RedisError:
            raise RedisStartError(
                f"no Sentinel of {where} answers for a master named {target.master!r}"
            ) from None
        client = sentinel.master_for(target.master, redis_class=Redis)
        client.connection_pool.max_connections = max_connections
        await _check_standalone(client, where)
        return client, admin_pb2.REDIS_MODE_EXTERNAL
    pool = BlockingConnectionPool.from_url(
        target.url, max_connections=max_connections, timeout=5, **options
    )
    client = Redis(connection_pool=pool)
    await _check_standalone(client, where)
    return client, admin_pb2.REDIS_MODE_EXTERNAL


async def _check_standalone(client: Redis, where: str) -> None:
    try:
        info = await client.info("cluster")
    except (redis_errors.RedisError, OSError) as exc:
        await close_redis(client)
        raise RedisStartError(f"cannot reach Redis at {where}: {exc}") from None
    if int(info.get("cluster_enabled", 0)):
        await close_redis(client)
        raise RedisStartError(
            f"{where} is a Redis Cluster node; use redis+cluster:// (or rediss+cluster://)"
        )


def is_cluster(client: Redis) -> bool:
    """True if `client` is a RedisCluster handed out under the Redis type."""
    return isinstance(client, RedisCluster)


def dedicated_client(shared: Redis, key: str, *, client_name: str, socket_timeout: float) -> Redis:
    """A one-connection client of its own on the Redis that holds `key`, for one long blocking
    read (XREAD BLOCK): named `client_name` in CLIENT LIST, with a longer `socket_timeout`
    (seconds). Close it with `close_redis`.

    On a cluster it is a plain client of the primary that owns `key`'s slot in `shared`'s slot
    map, so call something on `key` through `shared` first: that command follows MOVED and a
    failover, and leaves the map naming the current owner. If the slot moves later, the read
    fails (MOVED, or a lost connection) and the caller starts over.
    """
    if isinstance(shared, RedisCluster):
        node = shared.get_node_from_key(key)
        kwargs = {**node.connection_kwargs, "client_name": client_name}
        kwargs["socket_timeout"] = socket_timeout
        own = ConnectionPool(connection_class=node.connection_class, max_connections=1, **kwargs)
        return Redis(connection_pool=own, single_connection_client=True)
    pool = shared.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["client_name"] = client_name
    kwargs["socket_timeout"] = socket_timeout
    # With Sentinel the connection class asks the Sentinel pool (in kwargs) for the primary.
    own = ConnectionPool(connection_class=pool.connection_class, max_connections=1, **kwargs)
    return Redis(connection_pool=own, single_connection_client=True)


async def close_redis(client: Redis) -> None:
    """Closes `client` and its connections (pool included)."""
    if isinstance(client, RedisCluster):
        await client.aclose()
        return
    await client.aclose(close_connection_pool=True)  # disconnects the pool's connections too
