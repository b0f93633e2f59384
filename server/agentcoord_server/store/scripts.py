"""Lua scripts, kept as files beside the store code that calls them (store/lua/*.lua).

Each script is read and registered once when its store is built; the server then loads every
registered script into Redis at start (`preload_registered`, one pipelined round trip; on a
Redis Cluster, SCRIPT LOAD goes to every primary), so each call is a plain EVALSHA. redis-py's
Script reloads a script on NOSCRIPT and retries, so a Redis restart, SCRIPT FLUSH, or on a
cluster a promoted replica or a resharded slot whose new node lacks the script, costs the
caller one extra round trip and nothing else.
"""

from __future__ import annotations

import weakref
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..redis_client import is_cluster

_registered: weakref.WeakKeyDictionary[Redis, list[AsyncScript]] = weakref.WeakKeyDictionary()
# SHA1 → script name, for metrics and traces (a bounded set: one entry per script file).
_names: dict[str, str] = {}


def register_source(redis: Redis, source: str, name: str = "") -> AsyncScript:
    """Registers Lua `source` on `redis` and remembers it for `preload_registered`; `name`
    labels its EVALSHA calls in metrics and traces (`script_name`)."""
    script = redis.register_script(source)
    scripts = _registered.setdefault(redis, [])
    if all(known.sha != script.sha for known in scripts):  # several stores share some scripts
        scripts.append(script)
    if name:
        _names[script.sha] = name
    return script


def script_name(sha: object) -> str:
    """The name a script was registered under, from its SHA1; "other" for an unknown one."""
    return _names.get(sha if isinstance(sha, str) else str(sha), "other")


def load_script(redis: Redis, name: str, *, prelude: str | None = None) -> AsyncScript:
    """Registers `store/lua/<name>.lua` on `redis`, with `store/lua/<prelude>.lua` (functions
    several scripts share) prepended. Raises FileNotFoundError for an unknown name."""
    lua = resources.files(__package__).joinpath("lua")
    source = lua.joinpath(f"{name}.lua").read_text()
    if prelude is not None:
        source = lua.joinpath(f"{prelude}.lua").read_text() + "\n" + source
    return register_source(redis, source, name)


async def preload_registered(redis: Redis) -> int:
    """SCRIPT LOADs every script registered on `redis`, in one pipeline; returns how many."""
    scripts = _registered.get(redis, [])
    if scripts and is_cluster(redis):
        # A cluster pipeline sends a keyless command to one node; the client's own SCRIPT LOAD
        # goes to every primary.
        for script in scripts:
            await redis.script_load(script.script)
    elif scripts:
        async with redis.pipeline(transaction=False) as pipe:
            for script in scripts:
                pipe.script_load(script.script)
            await pipe.execute()
    return len(scripts)
