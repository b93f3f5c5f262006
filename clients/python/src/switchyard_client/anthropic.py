"""An Anthropic client that routes every message through Switchyard.

    from anthropic import Anthropic
    from switchyard_client import Sidecar
    from switchyard_client.anthropic import routed

    client = routed(Anthropic(), Sidecar(), workflow="support")
    reply = client.messages.create(
        model="auto", max_tokens=1024, system="...", messages=[...],
        switchyard={"outcome_id": "ticket-42"})

`system` is routed as a system message. Usage is reported from the
response's `usage`: input tokens are `input_tokens` plus the cache's reads
and writes (Anthropic counts them apart; Switchyard's cached tokens are part
of the input), cached tokens are `cache_read_input_tokens`, cache writes
`cache_creation_input_tokens` (priced at the model's
`cache_write_input_per_mtok`), output tokens `output_tokens`.
"""

from __future__ import annotations

from typing import Any, Optional

from ._wrap import Call, Usage, routed_client


def usage_of(response: Any) -> Optional[Usage]:
    u = getattr(response, "usage", None)
    if u is None:
        return None
    read = getattr(u, "cache_read_input_tokens", 0) or 0
    written = getattr(u, "cache_creation_input_tokens", 0) or 0
    return Usage(
        input_tokens=(getattr(u, "input_tokens", 0) or 0) + read + written,
        cached_input_tokens=read,
        cache_write_input_tokens=written,
        output_tokens=getattr(u, "output_tokens", 0) or 0,
    )


def _messages(kwargs: dict) -> list:
    system = kwargs.get("system")
    out = []
    if system:
        out.append({"role": "system", "content": system})
    out.extend(kwargs.get("messages") or [])
    return out


def _limit(kwargs: dict) -> Optional[int]:
    return kwargs.get("max_tokens")


MESSAGES = Call(
    path=("messages", "create"),
    messages=_messages,
    max_output_tokens=_limit,
    usage=usage_of,
    streams=lambda kwargs: bool(kwargs.get("stream")),
)


def routed(anthropic_client: Any, sidecar: Any, workflow: str) -> Any:
    """`anthropic_client` (Anthropic or AsyncAnthropic, with an async
    `sidecar`), with `messages.create` routed by `sidecar` for `workflow`."""
    return routed_client(anthropic_client, sidecar, workflow, MESSAGES)


__all__ = ["routed", "usage_of"]
