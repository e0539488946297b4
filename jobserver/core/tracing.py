"""What the server tells a tracer, and the tracer that does nothing.

Tracing is optional (the `otel` extra). The parts that make spans (the submit
route, the executor and its attempts, the webhook sender) are built with a
`Tracing`; without one configured they get `NO_TRACING`, whose calls return
at once and which imports nothing. A job keeps the trace context of its submit
(`trace_context`: the propagation headers as a JSON object), so an attempt on
another node, after a restart or after a retry still joins the submit's trace,
and so does the job's webhook delivery. A spawned child keeps the context of
its spawn's span, so the child's attempts are in its parent's trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

from jobserver.core.records import Claim

AttributeValue = str | int | float | bool


class Span(Protocol):
    """One open span, as the parts that make it see it."""

    def set(self, key: str, value: AttributeValue | None) -> None:
        """Set an attribute (None: leave it out)."""

    def fail(self, exc: BaseException) -> None:
        """Record the exception and mark the span as an error."""

    def headers(self) -> dict[str, str]:
        """The propagation headers (`traceparent`, ...) that continue this span's trace."""

    def event(self, name: str, attributes: Mapping[str, AttributeValue | None]) -> None:
        """Add a timestamped event (None values: left out)."""


class AttemptTrace(Protocol):
    """The span of one attempt: open from the claim's start to its recorded outcome."""

    def current(self) -> AbstractContextManager[None]:
        """Make the attempt's span the current one while the task runs (its own spans nest under it)."""

    def step(self, name: str) -> AbstractContextManager[Span]:
        """A child span for one `ctx.step` that runs its function."""

    def call(self, kind: str, name: str) -> AbstractContextManager[Span]:
        """A child span for one durable call (`sleep`, `wait_for`, `spawn`, `gather`) that is not
        finished yet: it parks the job (a `parked` event) or returns. The run that resumes a
        parked job reaches the call again and has a span of its own for it."""

    def end(self, outcome: str, error: BaseException | None) -> None:
        """Close the span with the attempt's outcome word."""


class Tracing(Protocol):
    """Makes the server's spans; `NO_TRACING` when tracing is off."""

    enabled: bool

    def request(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Span]:
        """A server span for one request, continuing the trace its `traceparent` names."""

    def carrier(self) -> str | None:
        """The current trace context as JSON, to keep on a job (None when there is none)."""

    def attempt(self, claim: Claim) -> AttemptTrace:
        """Start the span of an attempt, a child of the trace context its job keeps."""

    def delivery(self, name: str, trace_context: str | None) -> AbstractContextManager[Span]:
        """A client span for one webhook delivery attempt, in the trace its job keeps."""

    def close(self) -> None:
        """Send what is buffered and stop (at shutdown)."""


class _NoSpan:
    def set(self, key: str, value: AttributeValue | None) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass

    def headers(self) -> dict[str, str]:
        return {}

    def event(self, name: str, attributes: Mapping[str, AttributeValue | None]) -> None:
        pass


class _NoAttemptTrace:
    def current(self) -> AbstractContextManager[None]:
        return nullcontext()

    @contextmanager
    def step(self, name: str) -> Iterator[Span]:
        yield NO_SPAN

    @contextmanager
    def call(self, kind: str, name: str) -> Iterator[Span]:
        yield NO_SPAN

    def end(self, outcome: str, error: BaseException | None) -> None:
        pass


class _NoTracing:
    enabled = False

    def request(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Span]:
        return nullcontext(NO_SPAN)

    def carrier(self) -> str | None:
        return None

    def attempt(self, claim: Claim) -> AttemptTrace:
        return NO_ATTEMPT_TRACE

    def delivery(self, name: str, trace_context: str | None) -> AbstractContextManager[Span]:
        return nullcontext(NO_SPAN)

    def close(self) -> None:
        pass


NO_SPAN: Span = _NoSpan()
NO_ATTEMPT_TRACE: AttemptTrace = _NoAttemptTrace()
NO_TRACING: Tracing = _NoTracing()

_TRUE = ("true", "1", "yes", "on")


def kept_context(headers: Mapping[str, str]) -> str | None:
    """Propagation headers in the form a job keeps them (`trace_context`); None for none."""
    return json.dumps(dict(headers), sort_keys=True) if headers else None


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard OTEL_* variables ask for traces: an exporter or an OTLP endpoint is
    named, `OTEL_TRACES_EXPORTER` is not "none", and `OTEL_SDK_DISABLED` is not true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(exporter) or any(environ.get(name, "").strip() for name in endpoints)
