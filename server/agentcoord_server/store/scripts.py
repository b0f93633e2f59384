"""Lua scripts, kept as files beside the store code that calls them (store/lua/*.lua).

Each script is read and registered once at start; redis-py's Script runs it with EVALSHA and
falls back to loading it on NOSCRIPT, and `preload` loads them all up front.
"""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def load_script(redis: Redis, name: str) -> AsyncScript:
    """Registers `store/lua/<name>.lua` on `redis`. Raises FileNotFoundError for an unknown name."""
    source = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()
    return redis.register_script(source)


async def preload(redis: Redis, *scripts: AsyncScript) -> None:
    """SCRIPT LOAD every script so the first call of each is a plain EVALSHA."""
    for script in scripts:
        await redis.script_load(script.script)
