"""AsyncClient: one object per caller identity, holding a channel and one client per service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._transport import AsyncTransport, Metadata
from .admin import AdminClient
from .locks import AsyncHeldLock, LocksClient
from .memory import MemoryClient
from .signals import SignalsClient
from .staging import StagingClient
from .tasks import TasksClient


class AsyncClient:
    """The agentcoord client.

    Args:
        target: server address, `host:port`.
        token: bearer token; default the AGENTCOORD_TOKEN environment variable.
        metadata: extra metadata sent with every call (e.g. development identity headers).
        root_certificates: PEM roots to verify the server's TLS certificate; implies TLS.
        tls: use TLS with the system roots.
        timeout: default deadline per unary call, seconds (None: no deadline).
        options: extra gRPC channel options.
        client_certificate, client_key: PEM client certificate chain and private key, for
            servers that require client certificates (mTLS); imply TLS.

    Service calls live on `admin` (and the other services' attributes); every failure raises
    `AgentcoordError`. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        metadata: Metadata = (),
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
    ) -> None:
        self.target = target
        self._transport = AsyncTransport(
            target,
            token=token,
            metadata=metadata,
            root_certificates=root_certificates,
            tls=tls,
            timeout=timeout,
            options=options,
            client_certificate=client_certificate,
            client_key=client_key,
        )
        self.admin = AdminClient(self._transport)
        self.memory = MemoryClient(self._transport)
        self.signals = SignalsClient(self._transport)
        self.staging = StagingClient(self._transport)
        self.tasks = TasksClient(self._transport)
        self.locks = LocksClient(self._transport)

    def lock(self, lock_id: str, *, ttl: float = 30.0, wait: float | None = None) -> AsyncHeldLock:
        """A lock held while a `with` block runs (`async with` on AsyncClient):
        `with client.lock("file.auth.py", ttl=30) as held: ... held.fencing_token ...`. Waits up
        to `wait` seconds (None: as long as it takes), renews every `ttl`/3 s, releases at the
        end; see AsyncHeldLock."""
        return self.locks.lock(lock_id, ttl=ttl, wait=wait)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
