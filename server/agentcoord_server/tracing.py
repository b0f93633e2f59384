"""OpenTelemetry tracing: off by default, on with the standard `OTEL_*` environment.

On when `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_TRACES_EXPORTER` (`otlp` or `console`) is set, unless `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none`; needs the `otel` extra (`pip install 'agentcoord[otel]'`). The
exporter reads the rest of its configuration (headers, timeout, certificates…) from the same
environment, and `OTEL_SERVICE_NAME`/`OTEL_RESOURCE_ATTRIBUTES` name the service (default
"agentcoord").

Per RPC, the RPC wrapper (interceptors.py) opens a SERVER span named
`agentcoord.v1.Service/Method` (OTel's RPC conventions), a child of the caller's W3C
`traceparent` metadata when there is one, and binds its trace id to the log context, so the
canonical log line carries `trace_id`. Every Redis
command the server's client executes inside a span gets a CLIENT child span (`redis <script>`
for a Lua script). When tracing is off none of this is installed: no per-call cost.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
import structlog

from . import __version__
from .store.scripts import script_name

log = structlog.get_logger("agentcoord.tracing")

# OTel's RPC conventions: the codes that mark a SERVER span as an error.
_SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_CODE_NUMBERS = {c.name: c.value[0] for c in grpc.StatusCode}


def enabled_by_environment(environ: Any = os.environ) -> bool:
    """True when the OTEL_* environment asks for traces (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def provider_from_environment() -> Any:
    """A TracerProvider exporting as the OTEL_* environment says, or None when tracing is off
    (or the `otel` extra is missing: then a warning says so)."""
    if not enabled_by_environment():
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning(
            "OTEL_* asks for traces but opentelemetry-sdk is missing: "
            "pip install 'agentcoord[otel]'; tracing stays off"
        )
        return None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "agentcoord"}
    provider = TracerProvider(resource=Resource.create(attributes))
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    exporter: Any
    if kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        if kind != "otlp":
            log.warning("unsupported OTEL_TRACES_EXPORTER; using otlp", exporter=kind)
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("the OTLP exporter is missing: pip install 'agentcoord[otel]'")
            return None
        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on", exporter=kind)
    return provider


class Tracing:
    """Server spans per RPC and client spans per Redis command, from `provider` (an
    opentelemetry TracerProvider). `owned`: shut the provider down (flushing spans) at stop."""

    def __init__(self, provider: Any, *, owned: bool = False) -> None:
        from opentelemetry import propagate, trace

        self._provider = provider
        self._owned = owned
        self._trace = trace
        self._propagate = propagate
        self.tracer = provider.get_tracer("agentcoord_server", __version__)
        # The metadata keys the configured propagators read (OTEL_PROPAGATORS; W3C by default).
        self.propagated_fields = frozenset(propagate.get_global_textmap().fields)

    def instrument_redis(self, redis: Any) -> None:
        """Gives every command `redis` executes inside a traced call a CLIENT child span."""
        from opentelemetry.trace import SpanKind

        execute = redis.execute_command
        tracer = self.tracer
        current_span = self._trace.get_current_span

        async def traced(*args: Any, **options: Any) -> Any:
            if not current_span().is_recording():
                return await execute(*args, **options)
            command = str(args[0]).upper() if args else ""
            script = script_name(args[1]) if command == "EVALSHA" and len(args) > 1 else ""
            attributes = {"db.system": "redis", "db.operation": command}
            if script:
                attributes["db.redis.script"] = script
            with tracer.start_as_current_span(
                f"redis {script or command}", kind=SpanKind.CLIENT, attributes=attributes
            ):
                return await execute(*args, **options)

        redis.execute_command = traced

    def shutdown(self) -> None:
        if self._owned:
            self._provider.shutdown()

    # -- per RPC (the RpcWrapper in interceptors.py calls these) --

    @staticmethod
    def names(method: str) -> tuple[str, dict[str, Any]]:
        """The span name and attributes of `/pkg.Service/Method` (OTel's RPC conventions)."""
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        return f"{service}/{name}", attributes

    def start(
        self, metadata: Any, name: str, attributes: dict[str, Any], request_id: str
    ) -> Any:
        """The SERVER span of a call (a context manager making it current), a child of the
        caller's trace when its metadata carries one."""
        from opentelemetry.trace import SpanKind

        carrier = {k: v for k, v in metadata if isinstance(v, str)}
        # Extracting costs µs even from nothing: only when a propagator's header is present.
        fields = self.propagated_fields
        parent = self._propagate.extract(carrier) if fields & carrier.keys() else None
        return self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**attributes, "agentcoord.request_id": request_id},
            record_exception=False,
            set_status_on_exception=False,
        )

    @staticmethod
    def bind(span: Any) -> None:
        """Binds the span's trace id to the log context (the canonical line carries it)."""
        trace_id = span.get_span_context().trace_id
        if trace_id:
            structlog.contextvars.bind_contextvars(trace_id=f"{trace_id:032x}")

    @staticmethod
    def finish(span: Any, code: str) -> None:
        """Records the call's status code (a status name) on its span."""
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
        if code in _SERVER_ERROR_CODES:
            span.set_status(Status(StatusCode.ERROR, code))
