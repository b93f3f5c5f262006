from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_STATUS_UNSPECIFIED: _ClassVar[RouteStatus]
    ROUTE_STATUS_ROUTED: _ClassVar[RouteStatus]
    ROUTE_STATUS_DOWNGRADED: _ClassVar[RouteStatus]
    ROUTE_STATUS_ESCALATION_REQUIRED: _ClassVar[RouteStatus]
    ROUTE_STATUS_DENIED: _ClassVar[RouteStatus]

class OutcomeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_STATUS_UNSPECIFIED: _ClassVar[OutcomeStatus]
    OUTCOME_STATUS_ACCEPTED: _ClassVar[OutcomeStatus]
    OUTCOME_STATUS_REJECTED: _ClassVar[OutcomeStatus]
    OUTCOME_STATUS_CORRECTED: _ClassVar[OutcomeStatus]
    OUTCOME_STATUS_ABANDONED: _ClassVar[OutcomeStatus]
ROUTE_STATUS_UNSPECIFIED: RouteStatus
ROUTE_STATUS_ROUTED: RouteStatus
ROUTE_STATUS_DOWNGRADED: RouteStatus
ROUTE_STATUS_ESCALATION_REQUIRED: RouteStatus
ROUTE_STATUS_DENIED: RouteStatus
OUTCOME_STATUS_UNSPECIFIED: OutcomeStatus
OUTCOME_STATUS_ACCEPTED: OutcomeStatus
OUTCOME_STATUS_REJECTED: OutcomeStatus
OUTCOME_STATUS_CORRECTED: OutcomeStatus
OUTCOME_STATUS_ABANDONED: OutcomeStatus

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("workflow", "outcome_id", "messages", "attempt", "task_kind", "max_output_tokens", "deferrable", "labels", "required_capabilities")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TASK_KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEFERRABLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    outcome_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    attempt: int
    task_kind: str
    max_output_tokens: int
    deferrable: bool
    labels: _containers.ScalarMap[str, str]
    required_capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workflow: _Optional[str] = ..., outcome_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., attempt: _Optional[int] = ..., task_kind: _Optional[str] = ..., max_output_tokens: _Optional[int] = ..., deferrable: bool = ..., labels: _Optional[_Mapping[str, str]] = ..., required_capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("decision_id", "model", "provider", "status", "escalation_id", "complexity", "input_tokens", "cached_input_tokens", "estimated_output_tokens", "estimated_cost_nanousd", "rule", "reason", "traceparent", "required_tier", "task_class", "provider_model", "task_kind", "task_kind_source")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLEXITY_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_NANOUSD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_TIER_FIELD_NUMBER: _ClassVar[int]
    TASK_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_KIND_SOURCE_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    model: str
    provider: str
    status: RouteStatus
    escalation_id: str
    complexity: float
    input_tokens: int
    cached_input_tokens: int
    estimated_output_tokens: int
    estimated_cost_nanousd: int
    rule: str
    reason: str
    traceparent: str
    required_tier: int
    task_class: str
    provider_model: str
    task_kind: str
    task_kind_source: str
    def __init__(self, decision_id: _Optional[str] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., status: _Optional[_Union[RouteStatus, str]] = ..., escalation_id: _Optional[str] = ..., complexity: _Optional[float] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., estimated_output_tokens: _Optional[int] = ..., estimated_cost_nanousd: _Optional[int] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., traceparent: _Optional[str] = ..., required_tier: _Optional[int] = ..., task_class: _Optional[str] = ..., provider_model: _Optional[str] = ..., task_kind: _Optional[str] = ..., task_kind_source: _Optional[str] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("decision_id", "model", "input_tokens", "cached_input_tokens", "output_tokens", "failed", "cache_write_input_tokens")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    model: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    failed: bool
    cache_write_input_tokens: int
    def __init__(self, decision_id: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., failed: bool = ..., cache_write_input_tokens: _Optional[int] = ...) -> None: ...

class UsageAck(_message.Message):
    __slots__ = ("cost_nanousd",)
    COST_NANOUSD_FIELD_NUMBER: _ClassVar[int]
    cost_nanousd: int
    def __init__(self, cost_nanousd: _Optional[int] = ...) -> None: ...

class OutcomeReport(_message.Message):
    __slots__ = ("outcome_id", "workflow", "status", "value_usd", "human_minutes")
    OUTCOME_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VALUE_USD_FIELD_NUMBER: _ClassVar[int]
    HUMAN_MINUTES_FIELD_NUMBER: _ClassVar[int]
    outcome_id: str
    workflow: str
    status: OutcomeStatus
    value_usd: float
    human_minutes: float
    def __init__(self, outcome_id: _Optional[str] = ..., workflow: _Optional[str] = ..., status: _Optional[_Union[OutcomeStatus, str]] = ..., value_usd: _Optional[float] = ..., human_minutes: _Optional[float] = ...) -> None: ...

class OutcomeAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FeedbackReport(_message.Message):
    __slots__ = ("decision_id", "accepted")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    accepted: bool
    def __init__(self, decision_id: _Optional[str] = ..., accepted: bool = ...) -> None: ...

class FeedbackAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    def __init__(self, workflow: _Optional[str] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("workflow", "limit_nanousd", "spent_nanousd", "reserved_nanousd", "remaining_nanousd")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_NANOUSD_FIELD_NUMBER: _ClassVar[int]
    SPENT_NANOUSD_FIELD_NUMBER: _ClassVar[int]
    RESERVED_NANOUSD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_NANOUSD_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    limit_nanousd: int
    spent_nanousd: int
    reserved_nanousd: int
    remaining_nanousd: int
    def __init__(self, workflow: _Optional[str] = ..., limit_nanousd: _Optional[int] = ..., spent_nanousd: _Optional[int] = ..., reserved_nanousd: _Optional[int] = ..., remaining_nanousd: _Optional[int] = ...) -> None: ...

class ListEscalationsRequest(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    def __init__(self, workflow: _Optional[str] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("escalation_id", "workflow", "outcome_id", "caller", "amount_nanousd", "state", "resolved_by", "created_at", "resolved_at", "model")
    ESCALATION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_NANOUSD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    escalation_id: str
    workflow: str
    outcome_id: str
    caller: str
    amount_nanousd: int
    state: str
    resolved_by: str
    created_at: str
    resolved_at: str
    model: str
    def __init__(self, escalation_id: _Optional[str] = ..., workflow: _Optional[str] = ..., outcome_id: _Optional[str] = ..., caller: _Optional[str] = ..., amount_nanousd: _Optional[int] = ..., state: _Optional[str] = ..., resolved_by: _Optional[str] = ..., created_at: _Optional[str] = ..., resolved_at: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ListEscalationsResponse(_message.Message):
    __slots__ = ("escalations",)
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    escalations: _containers.RepeatedCompositeFieldContainer[Escalation]
    def __init__(self, escalations: _Optional[_Iterable[_Union[Escalation, _Mapping]]] = ...) -> None: ...

class ResolveEscalationRequest(_message.Message):
    __slots__ = ("escalation_id", "approve", "add_nanousd", "reason")
    ESCALATION_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    ADD_NANOUSD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    escalation_id: str
    approve: bool
    add_nanousd: int
    reason: str
    def __init__(self, escalation_id: _Optional[str] = ..., approve: bool = ..., add_nanousd: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("workflow", "period", "label", "format")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    period: str
    label: str
    format: str
    def __init__(self, workflow: _Optional[str] = ..., period: _Optional[str] = ..., label: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...
