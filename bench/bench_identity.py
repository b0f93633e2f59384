"""What authentication costs per call: development identity vs bearer tokens (cached, and with
the cache off so every call reads Redis), and the client's fail-fast refusal.

    .venv/bin/python -m bench.bench_identity

Rows: WhoAmI on a server with --insecure-dev-identity (no Redis); WhoAmI with a token, cache on
(the default, ≤ 5 s stale); WhoAmI with a token and --auth-cache-seconds 0 (one HGETALL per
call); IssueToken (one pipeline); a call refused locally by the client (no round trip). The
server runs in its own thread and loop (uvloop), the client in this one.
"""

from __future__ import annotations

import asyncio
import logging

import structlog
from agentcoord import AgentcoordError, AsyncClient
from agentcoord_server.config import Settings

from tests.support import ServerThread, dev_identity

from .common import embedded_redis, measure


def settings(url: str, data_dir: str, **overrides: object) -> Settings:
    from pathlib import Path

    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "redis_url": url,
        "data_dir": Path(data_dir),
        "shutdown_grace": 0.5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def main() -> None:
    import tempfile

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with embedded_redis() as url, tempfile.TemporaryDirectory() as tmp:
        dev = ServerThread(settings(url, tmp, insecure_dev_identity=True)).start()
        async with AsyncClient(dev.address, metadata=dev_identity("a", "OBSERVER", "bench")) as c:
            await measure("WhoAmI, development identity (no Redis)", c.admin.who_am_i)
        dev.stop()

        cached = ServerThread(settings(url, tmp)).start()
        token = cached.issue_token("a", "STEWARD", "bench")
        async with AsyncClient(cached.address, token=token) as c:
            await measure("WhoAmI, token, auth cache 5 s", c.admin.who_am_i)
            await measure(
                "IssueToken (one pipeline, 2 slots)",
                lambda: c.admin.issue_token("w", "OBSERVER"),
                total=2000,
            )
        observer = cached.issue_token("o", "OBSERVER", "bench")
        async with AsyncClient(cached.address, token=observer) as c:

            async def refused() -> None:
                try:
                    await c.admin.list_tokens()
                except AgentcoordError:
                    pass

            await measure("ListTokens refused by the client (no call)", refused)
        cached.stop()

        uncached = ServerThread(settings(url, tmp, auth_cache_seconds=0)).start()
        async with AsyncClient(uncached.address, token=token) as c:
            await measure("WhoAmI, token, auth cache off (HGETALL/call)", c.admin.who_am_i)
        uncached.stop()


if __name__ == "__main__":
    asyncio.run(main())
