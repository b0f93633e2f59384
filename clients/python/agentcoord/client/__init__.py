"""The typed client, in an asyncio flavour (`AsyncClient`) and a sync one (`Client`).

Both have the same surface: `_async/` is written by hand, `_sync/` is made from it by
`make generate` (unasync), so they cannot drift apart.
"""

from ._async.client import AsyncClient
from ._sync.client import Client
from .errors import AgentcoordError

__all__ = ["AgentcoordError", "AsyncClient", "Client"]
