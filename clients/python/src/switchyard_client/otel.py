"""For agents that make their own model-call span with the OpenTelemetry
API (the wrapped clients make one themselves):

    from opentelemetry import trace
    from switchyard_client import otel

    d = sidecar.route("support", messages, outcome_id="ticket-42")
    with tracer.start_as_current_span(f"chat {d.provider_model}",
                                      links=otel.link_to_route(d)) as span:
        span.set_attribute("switchyard.decision.id", d.decision_id)
        reply = provider_call(model=d.provider_model, ...)
        cost = sidecar.report_usage(d, input_tokens=..., output_tokens=...)
        otel.set_cost(span, cost)

`Sidecar` sends the caller's current trace context with every call, so
Route is a child of the caller's span; the model-call span is Route's
sibling, linked to it. The cost attributes follow the open GenAI cost
proposal (`gen_ai.usage.cost.amount`, `.currency`, `.source`)."""

from ._otel import link_to_route, provider_name, set_cost

__all__ = ["link_to_route", "provider_name", "set_cost"]
