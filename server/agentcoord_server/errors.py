"""Domain errors raised by stores, servicers and the identity interceptor.

They carry no gRPC types: `interceptors.RpcWrapper` maps them to `google.rpc.Status` in one
table (`STATUS_CODES`), the way etcd's rpctypes/error.go does. Subclass the closest base and
give it a specific UPPER_SNAKE `reason`; the reason is what clients branch on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DomainError(Exception):
    """Base of every error a client is meant to see.

    Args:
        message: human-readable, sent as the status message; never include secrets or payloads.
        reason: UPPER_SNAKE machine-readable reason (ErrorInfo.reason); defaults to the class's.
        metadata: extra ErrorInfo metadata (string to string), e.g. {"key": "k1"}.
        field_violations: (field path, description) pairs, sent as google.rpc.BadRequest.
        retry_delay: seconds the client should wait before retrying, sent as
            google.rpc.RetryInfo; None: no advice.
    """

    reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.retry_delay = retry_delay


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class FailedPrecondition(DomainError):
    """The request is valid but the state does not allow it (lease lost, already resolved…)."""

    reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    """A compare-and-set lost: the caller should re-read and retry."""

    reason = "ABORTED"


class OutOfRange(DomainError):
    reason = "OUT_OF_RANGE"


class ResourceExhausted(DomainError):
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    """Retryable: a dependency (Redis) or the server itself is not available right now."""

    reason = "UNAVAILABLE"


def invalid_field(
    field: str, description: str, *, reason: str = "INVALID_FIELD"
) -> InvalidArgument:
    """An InvalidArgument for one bad request field, with its BadRequest field violation."""
    return InvalidArgument(
        f"{field}: {description}", reason=reason, field_violations=[(field, description)]
    )


def quota_exceeded(quota: str, limit: int, used: int) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED QUOTA_EXCEEDED for a namespace quota (admin.proto NamespaceQuota), with
    the quota's name, limit and current use in the ErrorInfo metadata."""
    return ResourceExhausted(
        f"the namespace's {quota} quota ({limit}) is used up ({used})",
        reason="QUOTA_EXCEEDED",
        metadata={"quota": quota, "limit": str(limit), "used": str(used)},
    )
