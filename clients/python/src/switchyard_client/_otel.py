"""The agent's trace, when the caller uses the OpenTelemetry API
(`opentelemetry-api`, optional): Route joins the caller's current trace, and
the wrapped provider call gets a span of its own, a sibling of Route linked
to it, that carries the call's usage and its cost.

Without the API installed every function here does nothing."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Tuple

try:  # pragma: no cover - exercised by whichever is installed
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator as _W3C
except ImportError:  # pragma: no cover
    _trace = None

_VERSION = "0.1.0"

#: The GenAI conventions' well-known `gen_ai.provider.name` for a provider
#: as the rules name it (the sidecar maps them the same way).
_PROVIDERS = {
    "google": "gcp.gemini",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "vertex_ai": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "bedrock": "aws.bedrock",
    "aws": "aws.bedrock",
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "watsonx": "ibm.watsonx.ai",
}


def provider_name(rules_name: str) -> str:
    return _PROVIDERS.get(rules_name, rules_name)


def trace_metadata() -> Tuple[Tuple[str, str], ...]:
    """The caller's current trace context (`traceparent`, `tracestate`), as
    gRPC metadata for Route, so that Route is a child of the caller's span."""
    if _trace is None:
        return ()
    carrier: dict = {}
    _propagate.inject(carrier)
    return tuple((k.lower(), v) for k, v in carrier.items() if k.lower() in ("traceparent", "tracestate"))


def _route_context(decision: Any):
    """The Route span the decision names, if it is a span of its own (the
    sidecar traces) and not the caller's context handed back."""
    tp = getattr(decision, "traceparent", "")
    if _trace is None or not tp:
        return None
    sc = _trace.get_current_span(_W3C().extract({"traceparent": tp})).get_span_context()
    if not sc.is_valid or sc.span_id == _trace.get_current_span().get_span_context().span_id:
        return None
    return sc


def tracing() -> bool:
    """Whether the caller records spans: a tracer provider of its own is set
    (not the API's placeholder or no-op one)."""
    if _trace is None:
        return False
    return not isinstance(_trace.get_tracer_provider(), (_trace.NoOpTracerProvider, _trace.ProxyTracerProvider))


def start_model_span(decision: Any, operation: str = "chat") -> Optional[Any]:
    """The agent's span for the provider call: `{operation} {provider_model}`,
    a CLIENT span in the caller's current trace (a sibling of Route, not its
    child), linked to Route, with `switchyard.decision.id`. None when the
    caller does not trace. End it with `end_model_span`."""
    if not tracing():
        return None
    route = _route_context(decision)
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider_name(getattr(decision, "provider", "")),
        "gen_ai.request.model": decision.provider_model,
        "switchyard.decision.id": decision.decision_id,
    }
    if getattr(decision, "workflow", ""):
        attributes["switchyard.workflow"] = decision.workflow
    if getattr(decision, "outcome_id", ""):
        attributes["switchyard.outcome.id"] = decision.outcome_id
    return _trace.get_tracer("switchyard_client", _VERSION).start_span(
        f"{operation} {decision.provider_model}",
        kind=_trace.SpanKind.CLIENT,
        links=[_trace.Link(route)] if route is not None else [],
        attributes=attributes,
    )


@contextmanager
def current(span: Optional[Any]) -> Iterator[None]:
    """`span` as the current span for the block (the provider call's headers
    and any instrumentation inside it see it); it is not ended here."""
    if span is None:
        yield
        return
    with _trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


def end_model_span(span: Optional[Any], usage: Any = None, cost_nanousd: Optional[int] = None,
                   error: Optional[BaseException] = None) -> None:
    """Ends the model-call span with the call's usage and cost, or its error."""
    if span is None:
        return
    record_usage(span, usage, cost_nanousd)
    if error is not None:
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, str(error)[:256]))
    span.end()


def record_usage(span: Optional[Any], usage: Any, cost_nanousd: Optional[int]) -> None:
    """The call's usage on its span, and its cost as the open GenAI cost
    proposal names it (`gen_ai.usage.cost.*`, source `switchyard`)."""
    if span is None:
        return
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_input_tokens)
        span.set_attribute("gen_ai.usage.cache_write.input_tokens", usage.cache_write_input_tokens)
    if cost_nanousd is not None:
        set_cost(span, cost_nanousd)


def set_cost(span: Any, cost_nanousd: int) -> None:
    """Sets `gen_ai.usage.cost.amount` (USD), `.currency` and `.source` on a
    span of the caller's: for agents that make their own model-call span."""
    span.set_attribute("gen_ai.usage.cost.amount", cost_nanousd / 1e9)
    span.set_attribute("gen_ai.usage.cost.currency", "USD")
    span.set_attribute("gen_ai.usage.cost.source", "switchyard")


def link_to_route(decision: Any) -> list:
    """The span links, `[Link(route span)]`, for an agent's own model-call
    span (empty when there is no Route span to link to)."""
    route = _route_context(decision)
    return [_trace.Link(route)] if route is not None else []


def provider_headers(decision: Any) -> dict:
    """W3C headers for the provider call: the current span's context when the
    caller traces, else the decision's `traceparent`."""
    if tracing():
        carrier: dict = {}
        _propagate.inject(carrier)
        return {k: v for k, v in carrier.items() if k.lower() in ("traceparent", "tracestate")}
    return {"traceparent": decision.traceparent} if getattr(decision, "traceparent", "") else {}
