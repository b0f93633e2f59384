"""agentcoord: the Python client of the agentcoord coordination server.

    from agentcoord import Client, AsyncClient, AgentcoordError

Generated messages and stubs live in `agentcoord.v1`.
"""

from .client import AgentcoordError, AsyncClient, Client

__all__ = ["AgentcoordError", "AsyncClient", "Client"]
