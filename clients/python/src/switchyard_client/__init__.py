"""Switchyard's client: route each model call through the sidecar, report
what it used, and say how the work ended.

    from switchyard_client import Sidecar
    sidecar = Sidecar("127.0.0.1:50051")

Or wrap the provider's own client (`switchyard_client.openai.routed`,
`switchyard_client.anthropic.routed`) and call it as before.
"""

from ._sidecar import AsyncSidecar, Budget, Decision, Denied, EscalationRequired, Sidecar, SwitchyardError

__all__ = ["AsyncSidecar", "Budget", "Decision", "Denied", "EscalationRequired", "Sidecar", "SwitchyardError"]
__version__ = "0.1.0"
