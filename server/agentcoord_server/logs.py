"""structlog set-up: JSON lines (or console rendering on a TTY), context from contextvars.

Tokens and payloads are never passed to a logger; the canonical per-RPC line carries method,
agent, namespace, code, duration_ms and request_id only.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(
    fmt: str = "auto", level: str = "info", stream=None, *, cache: bool = False
) -> None:  # type: ignore[no-untyped-def]
    """fmt: `json`, `console`, or `auto` (console when the stream is a TTY, else JSON).

    cache: bind each module's logger once, on first use (what `agentcoord serve` does: a
    canonical line per RPC then skips re-binding the lazy logger). Leave it off where logging is
    reconfigured later in the same process, as tests do.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (print() writes the line and its newline apart): the workers of
        # `serve --workers N` share one stderr, and a pipe keeps writes of up to 4 KiB whole.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
