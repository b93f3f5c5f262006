"""The Switchyard sidecar's client: Route before a model call, ReportUsage
after it, RecordFeedback and RecordOutcome when the work is judged.

Prompt text goes to the sidecar (which counts and fingerprints it, and never
stores or logs it) and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import grpc
import grpc.aio

from . import _otel
from ._proto import router_pb2 as pb
from ._proto import router_pb2_grpc as rpc

Messages = Sequence[Mapping[str, Any]]

_STATUS = {
    pb.ROUTE_STATUS_ROUTED: "routed",
    pb.ROUTE_STATUS_DOWNGRADED: "downgraded",
    pb.ROUTE_STATUS_ESCALATION_REQUIRED: "escalation_required",
    pb.ROUTE_STATUS_DENIED: "denied",
}

_OUTCOMES = {
    "accepted": pb.OUTCOME_STATUS_ACCEPTED,
    "rejected": pb.OUTCOME_STATUS_REJECTED,
    "corrected": pb.OUTCOME_STATUS_CORRECTED,
    "abandoned": pb.OUTCOME_STATUS_ABANDONED,
}


class SwitchyardError(Exception):
    """A call to the sidecar failed; `code` is the gRPC status, `message` what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class EscalationRequired(SwitchyardError):
    """The call would cross a budget: a person must approve more
    (`switchyard escalations approve ESCALATION_ID --add-usd N`)."""

    def __init__(self, escalation_id: str, message: str) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self.escalation_id = escalation_id


class Denied(SwitchyardError):
    """The call is over a budget that does not escalate."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


@dataclass(frozen=True)
class Decision:
    """What Route decided for one model call."""

    decision_id: str
    #: The rules' name for the model.
    model: str
    provider: str
    #: The ID to call the provider's API with.
    provider_model: str
    #: "routed" or "downgraded" (a budget's soft threshold stepped the tier down).
    status: str
    estimated_cost_nanousd: int
    #: W3C trace context to send on the provider call, so it joins the trace.
    traceparent: str
    #: The outcome the call works towards, and its workflow (for `outcome`).
    outcome_id: str = ""
    workflow: str = ""
    #: The task kind the call was routed as, and where it came from:
    #: "declared", "inferred" (read from the text) or "default".
    task_kind: str = ""
    task_kind_source: str = ""


@dataclass(frozen=True)
class Budget:
    """A workflow's budget this period, in nano-USD."""

    workflow: str
    limit_nanousd: int
    spent_nanousd: int
    reserved_nanousd: int
    remaining_nanousd: int


def _budget(b: pb.BudgetStatus) -> Budget:
    return Budget(b.workflow, b.limit_nanousd, b.spent_nanousd, b.reserved_nanousd, b.remaining_nanousd)


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif hasattr(part, "text") and isinstance(getattr(part, "text"), str):
                parts.append(getattr(part, "text"))
        return "\n".join(parts)
    return str(content)


def _route_request(
    workflow: str,
    messages: Messages,
    outcome_id: Optional[str],
    task_kind: Optional[str],
    max_output_tokens: Optional[int],
    attempt: int,
    labels: Optional[Mapping[str, str]],
    deferrable: bool,
) -> pb.RouteRequest:
    return pb.RouteRequest(
        workflow=workflow,
        outcome_id=outcome_id or "",
        messages=[pb.Message(role=str(m.get("role", "user")), content=_text(m.get("content"))) for m in messages],
        attempt=attempt,
        task_kind=task_kind or "",
        max_output_tokens=max_output_tokens or 0,
        deferrable=deferrable,
        labels=dict(labels or {}),
    )


def _decision(r: pb.RouteResponse, outcome_id: Optional[str], workflow: str) -> Decision:
    status = _STATUS.get(r.status, "routed")
    if status == "escalation_required":
        raise EscalationRequired(r.escalation_id, r.reason)
    if status == "denied":
        raise Denied(r.reason)
    return Decision(
        decision_id=r.decision_id,
        model=r.model,
        provider=r.provider,
        provider_model=r.provider_model or r.model,
        status=status,
        estimated_cost_nanousd=r.estimated_cost_nanousd,
        traceparent=r.traceparent,
        outcome_id=outcome_id or "",
        workflow=workflow,
        task_kind=r.task_kind,
        task_kind_source=r.task_kind_source,
    )


def _decision_id(decision: Union[Decision, str]) -> str:
    return decision.decision_id if isinstance(decision, Decision) else decision


def _usage_report(
    decision: Union[Decision, str],
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    failed: bool,
    model: Optional[str],
    cache_write_input_tokens: int = 0,
) -> pb.UsageReport:
    """The report of one call's usage; the model defaults to the routed one."""
    return pb.UsageReport(
        decision_id=_decision_id(decision),
        model=model or (decision.model if isinstance(decision, Decision) else ""),
        input_tokens=input_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_write_input_tokens=cache_write_input_tokens,
        output_tokens=output_tokens,
        failed=failed,
    )


def _outcome(outcome_id: str, workflow: str, status: str, value_usd: Optional[float], human_minutes: Optional[float]):
    if status not in _OUTCOMES:
        raise ValueError(f"status {status!r} is not one of {', '.join(_OUTCOMES)}")
    report = pb.OutcomeReport(outcome_id=outcome_id, workflow=workflow, status=_OUTCOMES[status])
    if value_usd is not None:
        report.value_usd = value_usd
    if human_minutes is not None:
        report.human_minutes = human_minutes
    return report


def _metadata(api_key: Optional[str]):
    return (("authorization", f"Bearer {api_key}"),) if api_key else None


def _with_trace(metadata):
    """The call's metadata with the caller's current trace context, when the
    caller uses the OpenTelemetry API."""
    trace = _otel.trace_metadata()
    if not trace:
        return metadata
    return tuple(metadata or ()) + trace


def _error(e: grpc.RpcError) -> SwitchyardError:
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    details = e.details() if callable(getattr(e, "details", None)) else str(e)
    return SwitchyardError(code, details or "")


class Sidecar:
    """A blocking client for the sidecar beside this service.

    >>> sidecar = Sidecar("127.0.0.1:50051")
    >>> d = sidecar.route("support", [{"role": "user", "content": "Where is my order?"}], outcome_id="ticket-1")
    >>> sidecar.report_usage(d, input_tokens=120, output_tokens=40)
    """

    def __init__(self, target: str = "127.0.0.1:50051", api_key: Optional[str] = None, timeout: float = 5.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = rpc.RouterStub(self._channel)
        self._metadata = _metadata(api_key)
        self.timeout = timeout

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=_with_trace(self._metadata))
        except grpc.RpcError as e:
            raise _error(e) from None

    def route(
        self,
        workflow: str,
        messages: Messages,
        outcome_id: Optional[str] = None,
        task_kind: Optional[str] = None,
        max_output_tokens: Optional[int] = None,
        attempt: int = 1,
        labels: Optional[Mapping[str, str]] = None,
        deferrable: bool = False,
    ) -> Decision:
        """The cheapest adequate model for this call. Raises
        `EscalationRequired` or `Denied` when a budget stops it."""
        request = _route_request(workflow, messages, outcome_id, task_kind, max_output_tokens, attempt, labels, deferrable)
        return _decision(self._call(self._stub.Route, request), outcome_id, workflow)

    def report_usage(
        self,
        decision: Union[Decision, str],
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        failed: bool = False,
        model: Optional[str] = None,
        cache_write_input_tokens: int = 0,
    ) -> int:
        """Settles the call; returns its cost in nano-USD. `cached_input_tokens`
        are the part of `input_tokens` the provider served from its cache,
        `cache_write_input_tokens` the part it wrote to it."""
        report = _usage_report(
            decision, input_tokens, output_tokens, cached_input_tokens, failed, model, cache_write_input_tokens
        )
        return self._call(self._stub.ReportUsage, report).cost_nanousd

    def feedback(self, decision: Union[Decision, str], accepted: bool) -> None:
        """Whether this call's output was accepted: what routing learns from."""
        self._call(self._stub.RecordFeedback, pb.FeedbackReport(decision_id=_decision_id(decision), accepted=accepted))

    def outcome(
        self,
        outcome_id: str,
        workflow: str,
        status: str,
        value_usd: Optional[float] = None,
        human_minutes: Optional[float] = None,
    ) -> None:
        """How the work ended: "accepted", "rejected", "corrected" or "abandoned"."""
        self._call(self._stub.RecordOutcome, _outcome(outcome_id, workflow, status, value_usd, human_minutes))

    def budget(self, workflow: str) -> Budget:
        """The workflow's budget this period, as the sidecar's store holds it."""
        return _budget(self._call(self._stub.GetBudget, pb.GetBudgetRequest(workflow=workflow)))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncSidecar:
    """The asyncio client: the same calls as `Sidecar`, awaited."""

    def __init__(self, target: str = "127.0.0.1:50051", api_key: Optional[str] = None, timeout: float = 5.0) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = rpc.RouterStub(self._channel)
        self._metadata = _metadata(api_key)
        self.timeout = timeout

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout, metadata=_with_trace(self._metadata))
        except grpc.RpcError as e:
            raise _error(e) from None

    async def route(
        self,
        workflow: str,
        messages: Messages,
        outcome_id: Optional[str] = None,
        task_kind: Optional[str] = None,
        max_output_tokens: Optional[int] = None,
        attempt: int = 1,
        labels: Optional[Mapping[str, str]] = None,
        deferrable: bool = False,
    ) -> Decision:
        request = _route_request(workflow, messages, outcome_id, task_kind, max_output_tokens, attempt, labels, deferrable)
        return _decision(await self._call(self._stub.Route, request), outcome_id, workflow)

    async def report_usage(
        self,
        decision: Union[Decision, str],
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        failed: bool = False,
        model: Optional[str] = None,
        cache_write_input_tokens: int = 0,
    ) -> int:
        report = _usage_report(
            decision, input_tokens, output_tokens, cached_input_tokens, failed, model, cache_write_input_tokens
        )
        return (await self._call(self._stub.ReportUsage, report)).cost_nanousd

    async def feedback(self, decision: Union[Decision, str], accepted: bool) -> None:
        await self._call(self._stub.RecordFeedback, pb.FeedbackReport(decision_id=_decision_id(decision), accepted=accepted))

    async def outcome(
        self,
        outcome_id: str,
        workflow: str,
        status: str,
        value_usd: Optional[float] = None,
        human_minutes: Optional[float] = None,
    ) -> None:
        await self._call(self._stub.RecordOutcome, _outcome(outcome_id, workflow, status, value_usd, human_minutes))

    async def budget(self, workflow: str) -> Budget:
        return _budget(await self._call(self._stub.GetBudget, pb.GetBudgetRequest(workflow=workflow)))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncSidecar":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
