"""Every store's Lua scripts are in Redis once the server has started: calls are plain EVALSHA."""

from __future__ import annotations

import redis
from agentcoord_server.embedded_redis import EmbeddedRedis
from agentcoord_server.store.scripts import _registered

from .conftest import server_settings
from .support import ServerThread


def test_every_registered_script_is_loaded_at_start(tmp_path):
    # A Redis of its own: on the session's Redis, scripts other tests ran would already be
    # cached, so the check could not tell whether the start loaded them.
    with EmbeddedRedis(tmp_path / "redis") as embedded:
        fresh = redis.Redis.from_url(embedded.url)
        assert fresh.info("memory")["number_of_cached_scripts"] == 0
        handle = ServerThread(server_settings(embedded.url)).start()
        try:
            scripts = _registered[handle.server.ctx.redis]
            loaded = fresh.script_exists(*(s.sha for s in scripts))
        finally:
            handle.stop()
        fresh.close()

    assert len(scripts) >= 20  # memory, staging, tasks, signals and tokens scripts
    assert loaded == [True] * len(scripts)
