"""OpenTelemetry tracing: off by default, on with the standard `OTEL_*` environment.

On when `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_TRACES_EXPORTER` (`otlp` or `console`) is set, unless `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none`; needs the `otel` extra (`pip install 'agentcoord[otel]'`). The
exporter reads the rest of its configuration (headers, timeout, certificates…) from the same
environment, and `OTEL_SERVICE_NAME`/`OTEL_RESOURCE_ATTRIBUTES` name the service (default
"agentcoord").

Per RPC, `TracingInterceptor` opens a SERVER span named `agentcoord.v1.Service/Method` (OTel's
RPC conventions), a child of the caller's W3C `traceparent` metadata when there is one, and binds
its trace id to the log context, so the canonical log line carries `trace_id`. Every Redis
command the server's client executes inside a span gets a CLIENT child span (`redis <script>`
for a Lua script). When tracing is off none of this is installed: no per-call cost.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from . import __version__
from .interceptors import Behavior, _CachingInterceptor, _code_of, _wrap_handler
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

    def interceptor(self) -> TracingInterceptor:
        return TracingInterceptor(self)

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


class TracingInterceptor(_CachingInterceptor):
    """A SERVER span per RPC, continuing the caller's trace (W3C `traceparent` metadata).
    Install it inside LoggingInterceptor, so the trace id it binds reaches the log line."""

    def __init__(self, tracing: Tracing) -> None:
        super().__init__()
        self._tracing = tracing

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _wrap_handler(handler, self._unary, self._stream, method)

    def _start(self, context: grpc.aio.ServicerContext, name: str, attributes: dict[str, Any]):  # type: ignore[no-untyped-def]
        from opentelemetry.trace import SpanKind

        carrier = {
            k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
        }
        # Extracting costs µs even from nothing: only when a propagator's header is present.
        fields = self._tracing.propagated_fields
        parent = self._tracing._propagate.extract(carrier) if fields & carrier.keys() else None
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id:
            attributes = {**attributes, "agentcoord.request_id": request_id}
        return self._tracing.tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    @staticmethod
    def _bind(span: Any) -> None:
        trace_id = span.get_span_context().trace_id
        if trace_id:
            structlog.contextvars.bind_contextvars(trace_id=f"{trace_id:032x}")

    @staticmethod
    def _finish(span: Any, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
        if code in _SERVER_ERROR_CODES:
            span.set_status(Status(StatusCode.ERROR, code))

    @staticmethod
    def _names(method: str) -> tuple[str, dict[str, Any]]:
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        return f"{service}/{name}", attributes

    def _unary(self, behavior: Behavior, method: str) -> Behavior:
        name, attributes = self._names(method)

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._start(context, name, attributes) as span:
                self._bind(span)
                code = "UNKNOWN"
                try:
                    response = await behavior(request, context)
                    code = _code_of(context, grpc.StatusCode.OK)
                    return response
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code_of(context, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    self._finish(span, code)

        return traced

    def _stream(self, behavior: Behavior, method: str) -> Behavior:
        name, attributes = self._names(method)

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self._start(context, name, attributes) as span:
                self._bind(span)
                code = "UNKNOWN"
                try:
                    async for item in behavior(request, context):
                        yield item
                    code = _code_of(context, grpc.StatusCode.OK)
                except (asyncio.CancelledError, GeneratorExit):
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code_of(context, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    self._finish(span, code)

        return traced
