"""The agent's trace with the OpenTelemetry SDK installed: Route joins the
agent's current span, the wrapped provider call gets a CLIENT span of its
own (Route's sibling, linked to Route) that carries the usage and the cost
Switchyard charged, and the provider is called inside that span.

This module sets the process's tracer provider, so it runs last (pytest
takes files in name order)."""

from __future__ import annotations

import uuid

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from switchyard_client import Sidecar, otel
from switchyard_client import openai as sy_openai

from test_client import SMALL_CALL

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    yield provider


def test_route_joins_the_agents_trace_and_the_model_call_is_its_linked_sibling_with_the_cost(server, provider):
    p, url = provider
    EXPORTER.clear()
    client = sy_openai.routed(openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0),
                              Sidecar(server.target), workflow="support")
    tracer = trace.get_tracer("agent")
    with tracer.start_as_current_span("handle ticket") as agent:
        reply = client.chat.completions.create(
            model="anything", messages=[{"role": "user", "content": "Where is my order?"}],
            switchyard={"outcome_id": f"ticket-{uuid.uuid4().hex[:8]}"},
        )
    d = reply.switchyard
    agent_ctx = agent.get_span_context()
    # Route is a child of the agent's span: its traceparent is in the agent's trace.
    _, route_trace, route_span, _ = d.traceparent.split("-")
    assert int(route_trace, 16) == agent_ctx.trace_id
    assert int(route_span, 16) != agent_ctx.span_id

    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    call = spans["chat small-2026-01-01"]
    assert call.kind == trace.SpanKind.CLIENT
    assert call.parent is not None and call.parent.span_id == agent_ctx.span_id, "a sibling of Route, not its child"
    assert [link.context.span_id for link in call.links] == [int(route_span, 16)], "linked to Route"
    a = call.attributes
    assert a["switchyard.decision.id"] == d.decision_id
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "small-2026-01-01"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.cache_read.input_tokens"],
            a["gen_ai.usage.output_tokens"]) == (1200, 1024, 80)
    assert a["gen_ai.usage.cost.amount"] == pytest.approx(SMALL_CALL / 1e9)
    assert a["gen_ai.usage.cost.currency"] == "USD"
    assert a["gen_ai.usage.cost.source"] == "switchyard"
    # The provider call carries the model-call span's context, not Route's.
    sent = p.requests[-1]["headers"].get("traceparent")
    assert sent.startswith(f"00-{call.context.trace_id:032x}-{call.context.span_id:016x}-"), sent


def test_a_failing_call_ends_its_span_as_an_error(server, provider):
    p, url = provider
    EXPORTER.clear()
    p.fail_next = True
    client = sy_openai.routed(openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0),
                              Sidecar(server.target), workflow="support")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="anything", messages=[{"role": "user", "content": "Hi"}],
                                       switchyard={"outcome_id": "ticket-fail"})
    call = next(s for s in EXPORTER.get_finished_spans() if s.name.startswith("chat "))
    assert call.status.status_code == trace.StatusCode.ERROR
    assert call.attributes["error.type"] == "InternalServerError"


def test_helpers_for_an_agents_own_span(server):
    sidecar = Sidecar(server.target)
    with trace.get_tracer("agent").start_as_current_span("agent"):
        d = sidecar.route("support", [{"role": "user", "content": "Where is my order?"}], outcome_id="t-own")
    links = otel.link_to_route(d)
    assert len(links) == 1 and f"{links[0].context.span_id:016x}" == d.traceparent.split("-")[2]
    with trace.get_tracer("agent").start_as_current_span("chat own") as span:
        otel.set_cost(span, 1_500_000)
    s = next(s for s in EXPORTER.get_finished_spans() if s.name == "chat own")
    assert s.attributes["gen_ai.usage.cost.amount"] == pytest.approx(0.0015)
    assert otel.provider_name("google") == "gcp.gemini" and otel.provider_name("mistral") == "mistral_ai"
