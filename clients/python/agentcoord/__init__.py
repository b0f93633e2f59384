"""agentcoord: the Python client of the agentcoord coordination server.

    from agentcoord import Client, AsyncClient, AgentcoordError      # one call per RPC
    from agentcoord import Agent, Coordinator, TeamSession            # the domain layer

Generated messages and stubs live in `agentcoord.v1`.
"""

from .client import (
    Agent,
    AgentcoordError,
    AsyncAgent,
    AsyncClient,
    AsyncCoordinator,
    AsyncTeamSession,
    Client,
    Coordinator,
    ErrorReason,
    TeamSession,
)

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
