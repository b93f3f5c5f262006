"""switchyard-client against the real sidecar and a stand-in provider: the
wrapped OpenAI and Anthropic clients call the provider with the routed
model, and the sidecar's report shows exactly the cost of the usage the
stand-in returned, at the routed model's prices, cached rate included."""

from __future__ import annotations

import asyncio
import filecmp
import subprocess
import tempfile
import uuid
from pathlib import Path

import anthropic
import openai
import pytest

from switchyard_client import AsyncSidecar, Decision, Denied, EscalationRequired, Sidecar, SwitchyardError
from switchyard_client import anthropic as sy_anthropic
from switchyard_client import openai as sy_openai

HERE = Path(__file__).resolve().parent


def nanos(tokens: int, usd_per_mtok: float) -> int:
    """Nano-USD for tokens at a price per million, rounded up as the sidecar does."""
    per = round(usd_per_mtok * 1e9)
    return -(-tokens * per // 1_000_000)


# The small model: $2 input, $0.50 cached, $8 output per million tokens. The
# stand-in answers 1,200 input tokens of which 1,024 cached, and 80 output.
SMALL_CALL = nanos(1200 - 1024, 2.0) + nanos(1024, 0.5) + nanos(80, 8.0)
# The sonnet model: $3, $0.30, $15. 300 uncached + 1,000 cached input, 90 output.
SONNET_CALL = nanos(300, 3.0) + nanos(1000, 0.3) + nanos(90, 15.0)


def outcome() -> str:
    return f"ticket-{uuid.uuid4().hex[:8]}"


def test_three_lines_route_an_openai_call_and_the_report_shows_its_exact_cost(server, provider):
    p, url = provider
    before = server.report("support")["spend_nanousd"] if _has_calls(server, "support") else 0
    sidecar = Sidecar(server.target)
    budget_before = sidecar.budget("support")
    client = sy_openai.routed(openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0),
                              sidecar, workflow="support")
    reply = client.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "Where is my order?"}],
        switchyard={"outcome_id": outcome(), "task_kind": "chat"},
    )
    assert reply.choices[0].message.content == "Your order ships tomorrow."
    d = reply.switchyard
    assert isinstance(d, Decision) and d.model == "small" and d.provider_model == "small-2026-01-01"
    seen = p.requests[-1]
    assert seen["body"]["model"] == "small-2026-01-01", "the provider is called with the routed model's ID"
    assert "switchyard" not in seen["body"], "the extra keyword is stripped"
    assert seen["headers"].get("traceparent") == d.traceparent and d.traceparent.startswith("00-")
    w = server.report("support")
    assert w["spend_nanousd"] - before == SMALL_CALL
    budget = sidecar.budget("support")
    assert budget.spent_nanousd - budget_before.spent_nanousd == SMALL_CALL, "the budget is charged the same"
    assert budget.reserved_nanousd == 0, "the reservation was settled"


def _has_calls(server, workflow) -> bool:
    try:
        return server.report(workflow)["calls"] > 0
    except (StopIteration, subprocess.CalledProcessError):
        return False


def test_a_stream_reports_its_usage_at_the_end(server, provider):
    p, url = provider
    before = server.report("support")["spend_nanousd"] if _has_calls(server, "support") else 0
    client = sy_openai.routed(openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0),
                              Sidecar(server.target), workflow="support")
    stream = client.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "Where is my order?"}], stream=True,
        stream_options={"include_usage": True}, switchyard={"outcome_id": outcome()},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Your order ships tomorrow."
    assert stream.switchyard.provider_model == "small-2026-01-01"
    assert server.report("support")["spend_nanousd"] - before == SMALL_CALL


def test_anthropic_messages_route_with_the_system_prompt_and_cache_reads(server, provider):
    p, url = provider
    client = sy_anthropic.routed(anthropic.Anthropic(base_url=url, api_key="k", max_retries=0),
                                 Sidecar(server.target), workflow="drafting")
    reply = client.messages.create(
        model="anything", max_tokens=512, system="You write release notes.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Draft the notes for 2.1."}]}],
        switchyard={"outcome_id": outcome()},
    )
    assert reply.content[0].text == "Here is the draft."
    assert reply.switchyard.provider_model == "claude-sonnet-4-5-20250929"
    assert p.requests[-1]["body"]["model"] == "claude-sonnet-4-5-20250929"
    assert p.requests[-1]["body"]["system"] == "You write release notes."
    w = server.report("drafting")
    assert w["spend_nanousd"] == SONNET_CALL and w["cached_input_tokens"] == 1000 and w["input_tokens"] == 1300


def test_a_failing_provider_call_is_reported_failed_and_re_raised(server, provider):
    p, url = provider
    before = server.report("support")["failed_calls"] if _has_calls(server, "support") else 0
    client = sy_openai.routed(openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0),
                              Sidecar(server.target), workflow="support")
    p.fail_next = True
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                       switchyard={"outcome_id": outcome()})
    assert server.report("support")["failed_calls"] == before + 1


def test_budgets_raise_escalation_and_denial_and_bad_calls_say_what_to_fix(server):
    sidecar = Sidecar(server.target)
    message = [{"role": "user", "content": "hello"}]
    with pytest.raises(EscalationRequired) as esc:
        sidecar.route("tight-escalate", message, outcome_id=outcome())
    assert esc.value.escalation_id and "escalation" in esc.value.message
    with pytest.raises(Denied) as denied:
        sidecar.route("tight-deny", message, outcome_id=outcome())
    assert "budget" in denied.value.message
    with pytest.raises(SwitchyardError) as unknown:
        sidecar.route("no-such-workflow", message)
    assert unknown.value.code.name in ("NOT_FOUND", "INVALID_ARGUMENT") and "no-such-workflow" in unknown.value.message
    with pytest.raises(ValueError):
        sidecar.outcome("o", "support", "maybe")


def test_feedback_and_outcomes_reach_the_report(server):
    sidecar = Sidecar(server.target)
    oid = outcome()
    d = sidecar.route("support", [{"role": "user", "content": "Refund order 77"}], outcome_id=oid)
    # No task kind was given: the decision says what it was routed as, and why.
    assert d.task_kind and d.task_kind_source in ("inferred", "default")
    cost = sidecar.report_usage(d, input_tokens=100, output_tokens=10)
    assert cost == nanos(100, 2.0) + nanos(10, 8.0)
    sidecar.feedback(d, accepted=True)
    before = server.report("support")["accepted_outcomes"]
    sidecar.outcome(oid, "support", "accepted", value_usd=12.5, human_minutes=1.0)
    assert server.report("support")["accepted_outcomes"] == before + 1


def test_the_asyncio_client_and_wrapper(server, provider):
    p, url = provider

    async def run() -> int:
        async with AsyncSidecar(server.target) as sidecar:
            client = sy_openai.routed(openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0),
                                      sidecar, workflow="support")
            reply = await client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "Async hello"}], switchyard={"outcome_id": outcome()})
            assert reply.switchyard.provider_model == "small-2026-01-01"
            d = await sidecar.route("support", [{"role": "user", "content": "again"}], outcome_id=outcome())
            return await sidecar.report_usage(d, input_tokens=50, output_tokens=5)

    before = server.report("support")["spend_nanousd"] if _has_calls(server, "support") else 0
    cost = asyncio.run(run())
    assert cost == nanos(50, 2.0) + nanos(5, 8.0)
    assert server.report("support")["spend_nanousd"] - before == SMALL_CALL + cost


def test_the_generated_code_matches_the_proto():
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([str(HERE.parent / "generate.sh"), out], check=True, env={"PYTHON": _python(), "PATH": "/usr/bin:/bin"})
        shipped = HERE.parent / "src" / "switchyard_client" / "_proto"
        for name in ("router_pb2.py", "router_pb2.pyi", "router_pb2_grpc.py"):
            assert filecmp.cmp(Path(out) / name, shipped / name, shallow=False), f"{name} is stale: run clients/python/generate.sh"


def _python() -> str:
    import sys

    return sys.executable
