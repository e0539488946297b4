"""OpenTelemetry traces (the `otel` extra): the spans of submits, attempts, steps and webhooks.

The one module that imports OpenTelemetry; it is imported only when tracing is
on, so a server without it pays nothing. Every span of a job is in the trace of
its submit: the submit's context is kept on the job, an attempt's span is its
child wherever and whenever the attempt runs, a step's or durable call's span is
the attempt's child (a spawn's span is the parent of its children's attempts),
and a webhook delivery's span is again the submit's child, with its
`traceparent` sent to the receiver.

Configured by the SDK's standard variables: `OTEL_TRACES_EXPORTER` (default
`otlp`, over HTTP/protobuf unless `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` says
`grpc`; any exporter installed under the SDK's entry points works, e.g.
`console`), `OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME` (default `jobserver`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, and
`OTEL_PROPAGATORS` (default W3C trace context and baggage).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from jobserver.core.errors import ConfigError
from jobserver.core.lifecycle import Suspend
from jobserver.core.records import Claim
from jobserver.core.tracing import AttemptTrace, AttributeValue, Span, kept_context
from jobserver.core.version import package_version

INSTRUMENTATION = "jobserver"
OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
FAILED_OUTCOMES = ("failed", "retrying")  # an attempt whose task raised


def _parent(trace_context: str | None) -> Context | None:
    """The context a job keeps (a JSON object of propagation headers); None when absent or unreadable."""
    if not trace_context:
        return None
    try:
        carrier = json.loads(trace_context)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    return propagate.extract({str(k): str(v) for k, v in carrier.items()})


class OtelSpan:
    """A `Span` over an OpenTelemetry span."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def set(self, key: str, value: AttributeValue | None) -> None:
        if value is not None:
            self.span.set_attribute(key, value)

    def fail(self, exc: BaseException) -> None:
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    def headers(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        return carrier

    def event(self, name: str, attributes: Mapping[str, AttributeValue | None]) -> None:
        self.span.add_event(name, {k: v for k, v in attributes.items() if v is not None})


class OtelAttemptTrace:
    """The span of one attempt and the spans of its steps."""

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self.tracer = tracer
        self.span = span

    def current(self) -> AbstractContextManager[None]:
        return _current(self.span)

    @contextmanager
    def step(self, name: str) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            f"step {name}",
            context=trace.set_span_in_context(self.span),
            attributes={"jobserver.step.name": name},
        ) as span:
            yield OtelSpan(span)

    @contextmanager
    def call(self, kind: str, name: str) -> Iterator[Span]:
        # Not made current: no code of the task runs inside, and a durable call in an async task
        # is a generator whose parts run at different times.
        span = self.tracer.start_span(
            f"{kind} {name}",
            context=trace.set_span_in_context(self.span),
            attributes={"jobserver.call": kind, "jobserver.step.name": name},
        )
        wrapped = OtelSpan(span)
        try:
            yield wrapped
        except Suspend as parked:
            park = parked.park
            wrapped.event(
                "parked",
                {
                    "jobserver.wait.kind": str(park.kind),
                    "jobserver.wait.until": park.until,
                    "jobserver.wait.jobs": len(park.job_ids) or None,
                },
            )
            span.set_attribute("jobserver.call.outcome", "parked")
            raise
        except Exception as exc:
            wrapped.fail(exc)
            span.set_attribute("jobserver.call.outcome", "raised")
            raise
        else:
            span.set_attribute("jobserver.call.outcome", "returned")
        finally:
            span.end()

    def end(self, outcome: str, error: BaseException | None) -> None:
        self.span.set_attribute("jobserver.outcome", outcome)
        if error is not None and outcome in FAILED_OUTCOMES:
            OtelSpan(self.span).fail(error)
        self.span.end()


@contextmanager
def _current(span: trace.Span) -> Iterator[None]:
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


class OtelTracing:
    """`Tracing` with an OpenTelemetry tracer provider."""

    enabled = True

    def __init__(self, provider: TracerProvider, owns_provider: bool = False) -> None:
        self.provider = provider
        self.owns_provider = owns_provider  # shut it down at close (the server's own, not a test's)
        self.tracer = provider.get_tracer(INSTRUMENTATION, package_version())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OtelTracing:
        """A provider configured by the standard OTEL_* variables, also made the global one so
        that spans made by the tasks' own instrumentation join the same traces."""
        env = os.environ if environ is None else environ
        named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
        base: dict[str, Any] = {"service.version": package_version()}
        if not named:
            base["service.name"] = "jobserver"
        provider = TracerProvider(resource=Resource.create(base))
        for exporter in _exporters(env):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        return cls(provider, owns_provider=True)

    def request(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Span]:
        return self._span(name, propagate.extract(headers), SpanKind.SERVER)

    @contextmanager
    def _span(self, name: str, parent: Context | None, kind: SpanKind) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, context=parent, kind=kind) as span:
            yield OtelSpan(span)

    def carrier(self) -> str | None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return kept_context(carrier)

    def attempt(self, claim: Claim) -> AttemptTrace:
        span = self.tracer.start_span(
            f"run {claim.task}",
            context=_parent(claim.trace_context),
            kind=SpanKind.CONSUMER,
            attributes={
                "jobserver.task": claim.task,
                "jobserver.job.id": claim.job_id,
                "jobserver.attempt": claim.attempt,
                "jobserver.max_attempts": claim.max_attempts,
            },
        )
        return OtelAttemptTrace(self.tracer, span)

    def delivery(self, name: str, trace_context: str | None) -> AbstractContextManager[Span]:
        return self._span(name, _parent(trace_context), SpanKind.CLIENT)

    def close(self) -> None:
        if self.owns_provider:
            self.provider.shutdown()  # exports what the batch processors still hold


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters `OTEL_TRACES_EXPORTER` names (default: OTLP over HTTP/protobuf)."""
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
            ).strip() or "http/protobuf"
            if protocol not in OTLP_BY_PROTOCOL:
                raise ConfigError("OTEL_EXPORTER_OTLP_PROTOCOL", f"unsupported protocol {protocol!r}")
            name = OTLP_BY_PROTOCOL[protocol]
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER",
                f"no span exporter named {name!r} is installed (the otel extra brings otlp over HTTP, and console)",
            )
        exporters.append(found[0].load()())
    return exporters
