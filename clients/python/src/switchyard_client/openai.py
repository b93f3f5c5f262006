"""An OpenAI client that routes every chat completion through Switchyard.

    from openai import OpenAI
    from switchyard_client import Sidecar
    from switchyard_client.openai import routed

    client = routed(OpenAI(), Sidecar(), workflow="support")
    reply = client.chat.completions.create(
        model="auto", messages=[...], switchyard={"outcome_id": "ticket-42"})

`model` may be anything: Switchyard's choice replaces it. The response's
`.switchyard` is the `Decision`. Usage is reported from the response's
`usage` (with `prompt_tokens_details.cached_tokens`); a call that raises is
reported as failed, then re-raised. Streams report at their end, when asked
for `stream_options={"include_usage": True}`.
"""

from __future__ import annotations

from typing import Any, Optional

from ._wrap import Call, Usage, attach, routed_client


def usage_of(response: Any) -> Optional[Usage]:
    """Input (cached included), cached and output tokens from an OpenAI usage."""
    u = getattr(response, "usage", None)
    if u is None:
        return None
    details = getattr(u, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    return Usage(
        input_tokens=getattr(u, "prompt_tokens", 0) or 0,
        cached_input_tokens=cached,
        output_tokens=getattr(u, "completion_tokens", 0) or 0,
    )


def _messages(kwargs: dict) -> list:
    return list(kwargs.get("messages") or [])


def _limit(kwargs: dict) -> Optional[int]:
    return kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")


CHAT = Call(
    path=("chat", "completions", "create"),
    messages=_messages,
    max_output_tokens=_limit,
    usage=usage_of,
    streams=lambda kwargs: bool(kwargs.get("stream")),
)


def routed(openai_client: Any, sidecar: Any, workflow: str) -> Any:
    """`openai_client` (OpenAI or AsyncOpenAI, with an async `sidecar`), with
    `chat.completions.create` routed by `sidecar` for `workflow`."""
    return routed_client(openai_client, sidecar, workflow, CHAT)


__all__ = ["routed", "usage_of", "attach"]
