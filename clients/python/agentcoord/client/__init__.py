"""The typed client, in an asyncio flavour (`AsyncClient`) and a sync one (`Client`), and the
domain layer over it (`Agent`, `Coordinator`, `TeamSession` and their Async twins).

Both flavours have the same surface: `_async/` is written by hand, `_sync/` is made from it by
`make generate` (unasync), so they cannot drift apart.
"""

from ._async.agents import AsyncAgent, AsyncCoordinator, AsyncTeamSession
from ._async.client import AsyncClient
from ._sync.agents import Agent, Coordinator, TeamSession
from ._sync.client import Client
from .errors import AgentcoordError
from .reasons import ErrorReason

__all__ = [
    "Agent",
    "AgentcoordError",
    "AsyncAgent",
    "AsyncClient",
    "AsyncCoordinator",
    "AsyncTeamSession",
    "Client",
    "Coordinator",
    "ErrorReason",
    "TeamSession",
]
