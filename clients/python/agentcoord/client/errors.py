"""The one error type the client raises, built from any failed call's `google.rpc.Status`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .reasons import ErrorReason


@dataclass
class AgentcoordError(Exception):
    """A failed call.

    Attributes:
        code: the gRPC status code.
        message: the server's human-readable message.
        reason: ErrorInfo.reason: an `ErrorReason` member (a str, e.g. ErrorReason.TIER_TOO_LOW ==
            "TIER_TOO_LOW") when the contract knows it, the plain string when a newer server sent
            a reason this client does not know, None if the server sent none.
        metadata: ErrorInfo.metadata; includes "request_id" for errors from an agentcoord server.
        field_violations: (field, description) pairs from a google.rpc.BadRequest.
        details: every decoded detail message of the status (ErrorInfo, BadRequest, and a
            google.rpc.RetryInfo when the server says how long to wait before retrying).
    """

    code: grpc.StatusCode
    message: str
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    details: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles as cls(*args) = cls(message), which fails: keep every field, so the
        # error can cross a process boundary (multiprocessing, process pools).
        return (
            type(self),
            (
                self.code,
                self.message,
                self.reason,
                self.metadata,
                self.field_violations,
                self.details,
            ),
        )

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    @property
    def request_id(self) -> str | None:
        return self.metadata.get("request_id")

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> AgentcoordError:
        """Decodes a grpc.RpcError (sync or aio) with its rich status details, if any."""
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        text = (exc.details() if hasattr(exc, "details") else None) or ""
        error = cls(code=code, message=text)
        try:
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        except (ValueError, AttributeError):
            status = None
        for detail in status.details if status is not None else ():
            for kind in (
                error_details_pb2.ErrorInfo,
                error_details_pb2.BadRequest,
                error_details_pb2.RetryInfo,
            ):
                if detail.Is(kind.DESCRIPTOR):
                    decoded = kind()
                    detail.Unpack(decoded)
                    error.details.append(decoded)
                    if isinstance(decoded, error_details_pb2.ErrorInfo):
                        error.reason = as_reason(decoded.reason)
                        error.metadata = dict(decoded.metadata)
                    elif isinstance(decoded, error_details_pb2.BadRequest):
                        error.field_violations = [
                            (v.field, v.description) for v in decoded.field_violations
                        ]
        return error


def as_reason(reason: str) -> str:
    """`reason` as its ErrorReason member, or unchanged if the contract does not know it."""
    try:
        return ErrorReason(reason)
    except ValueError:
        return reason
