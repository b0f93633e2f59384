"""Every store's Lua scripts are in Redis once the server has started: calls are plain EVALSHA."""

from __future__ import annotations

from agentcoord_server.store.scripts import _registered


def test_every_registered_script_is_loaded_at_start(server, redis_client):
    scripts = _registered[server.server.ctx.redis]

    assert len(scripts) >= 20  # memory, staging, tasks, signals and tokens scripts
    assert redis_client.script_exists(*(s.sha for s in scripts)) == [True] * len(scripts)
