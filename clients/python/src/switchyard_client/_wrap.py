"""What the provider wrappers share: a proxy over the provider's client
whose one method (`chat.completions.create`, `messages.create`) routes the
call, calls the provider with the routed model, reports its usage, and hands
back the provider's own response with the decision attached."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from . import _otel


@dataclass(frozen=True)
class Usage:
    """Tokens of one call as Switchyard counts them: cached tokens are part
    of the input."""

    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cache_write_input_tokens: int = 0

    def merged(self, other: "Usage") -> "Usage":
        """The larger of each count: a stream reports some counts early and
        the rest at its end."""
        return Usage(
            max(self.input_tokens, other.input_tokens),
            max(self.cached_input_tokens, other.cached_input_tokens),
            max(self.output_tokens, other.output_tokens),
            max(self.cache_write_input_tokens, other.cache_write_input_tokens),
        )


@dataclass(frozen=True)
class Call:
    """How one provider method is routed."""

    path: Tuple[str, ...]
    messages: Callable[[dict], list]
    max_output_tokens: Callable[[dict], Optional[int]]
    usage: Callable[[Any], Optional[Usage]]
    streams: Callable[[dict], bool]


def attach(response: Any, decision: Any) -> Any:
    """Sets `response.switchyard` to the decision, on the provider's own object."""
    try:
        setattr(response, "switchyard", decision)
    except (AttributeError, TypeError, ValueError):
        object.__setattr__(response, "switchyard", decision)
    return response


def _event_usage(call: Call, event: Any) -> Optional[Usage]:
    """Usage a stream event carries, on itself or on its message."""
    found = call.usage(event)
    message = getattr(event, "message", None)
    if message is not None:
        inner = call.usage(message)
        if inner is not None:
            found = inner if found is None else found.merged(inner)
    return found


def _route_args(call: Call, workflow: str, kwargs: dict) -> dict:
    opts = kwargs.pop("switchyard", None) or {}
    return dict(
        workflow=workflow,
        messages=call.messages(kwargs),
        outcome_id=opts.get("outcome_id"),
        task_kind=opts.get("task_kind"),
        max_output_tokens=call.max_output_tokens(kwargs),
        attempt=opts.get("attempt", 1),
        labels=opts.get("labels"),
        deferrable=opts.get("deferrable", False),
    )


def _provider_kwargs(kwargs: dict, decision: Any) -> dict:
    """The routed model, and the trace context for the provider: the model-call
    span's when the caller traces, else the decision's `traceparent`."""
    kwargs["model"] = decision.provider_model
    trace = _otel.provider_headers(decision)
    if trace:
        headers = dict(kwargs.get("extra_headers") or {})
        for k, v in trace.items():
            headers.setdefault(k, v)
        kwargs["extra_headers"] = headers
    return kwargs


def _missing_usage(decision: Any) -> None:
    warnings.warn(
        f"the provider's response for decision {decision.decision_id} carries no usage: reported as 0 tokens; "
        "for streams, pass stream_options={'include_usage': True}",
        stacklevel=3,
    )


def _report_args(decision: Any, usage: Optional[Usage], failed: bool) -> dict:
    """What `report_usage` is called with for a call's usage (no usage:
    zero tokens, and a warning unless the call failed)."""
    if usage is None and not failed:
        _missing_usage(decision)
    u = usage or Usage(0, 0, 0)
    return dict(
        decision=decision,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cached_input_tokens=u.cached_input_tokens,
        cache_write_input_tokens=u.cache_write_input_tokens,
        failed=failed,
    )


class _Stream:
    """A provider stream that reports the call's usage when it ends."""

    def __init__(self, inner: Any, decision: Any, sidecar: Any, call: Call, span: Any = None) -> None:
        self._inner = inner
        self._decision = decision
        self._sidecar = sidecar
        self._call = call
        self._span = span
        self._usage: Optional[Usage] = None
        self._reported = False
        self.switchyard = decision

    def _absorb(self, event: Any) -> None:
        u = _event_usage(self._call, event)
        if u is not None:
            self._usage = u if self._usage is None else self._usage.merged(u)

    def _final(self, failed: bool) -> Optional[dict]:
        """The report's arguments, the first time only."""
        if self._reported:
            return None
        self._reported = True
        return _report_args(self._decision, self._usage, failed)

    def _report(self, failed: bool) -> None:
        args = self._final(failed)
        if args is not None:
            cost = self._sidecar.report_usage(**args)
            _otel.end_model_span(self._span, self._usage, cost)

    def __iter__(self):
        try:
            for event in self._inner:
                self._absorb(event)
                yield event
        except GeneratorExit:
            # The caller stopped reading: what was used so far is charged.
            self._report(failed=False)
            raise
        except BaseException:
            self._report(failed=True)
            raise
        self._report(failed=False)

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _AsyncStream(_Stream):
    """`_Stream` for the async clients, reporting through an async sidecar."""

    async def _areport(self, failed: bool) -> None:
        args = self._final(failed)
        if args is not None:
            cost = await self._sidecar.report_usage(**args)
            _otel.end_model_span(self._span, self._usage, cost)

    async def __aiter__(self):
        try:
            async for event in self._inner:
                self._absorb(event)
                yield event
        except GeneratorExit:
            await self._areport(failed=False)
            raise
        except BaseException:
            await self._areport(failed=True)
            raise
        await self._areport(failed=False)


def _sync_create(create: Callable, sidecar: Any, workflow: str, call: Call) -> Callable:
    def routed_create(*args: Any, **kwargs: Any) -> Any:
        decision = sidecar.route(**_route_args(call, workflow, kwargs))
        span = _otel.start_model_span(decision)
        with _otel.current(span):
            kwargs = _provider_kwargs(kwargs, decision)
            try:
                response = create(*args, **kwargs)
            except BaseException as e:
                cost = sidecar.report_usage(**_report_args(decision, None, failed=True))
                _otel.end_model_span(span, None, cost, error=e)
                raise
        if call.streams(kwargs):
            return _Stream(response, decision, sidecar, call, span)
        usage = call.usage(response)
        cost = sidecar.report_usage(**_report_args(decision, usage, failed=False))
        _otel.end_model_span(span, usage, cost)
        return attach(response, decision)

    return routed_create


def _async_create(create: Callable, sidecar: Any, workflow: str, call: Call) -> Callable:
    async def routed_create(*args: Any, **kwargs: Any) -> Any:
        decision = await sidecar.route(**_route_args(call, workflow, kwargs))
        span = _otel.start_model_span(decision)
        with _otel.current(span):
            kwargs = _provider_kwargs(kwargs, decision)
            try:
                response = await create(*args, **kwargs)
            except BaseException as e:
                cost = await sidecar.report_usage(**_report_args(decision, None, failed=True))
                _otel.end_model_span(span, None, cost, error=e)
                raise
        if call.streams(kwargs):
            return _AsyncStream(response, decision, sidecar, call, span)
        usage = call.usage(response)
        cost = await sidecar.report_usage(**_report_args(decision, usage, failed=False))
        _otel.end_model_span(span, usage, cost)
        return attach(response, decision)

    return routed_create


class _Proxy:
    """The provider's object, except the attribute on the routed path."""

    def __init__(self, inner: Any, rest: Tuple[str, ...], make: Callable[[Callable], Callable]) -> None:
        self._inner = inner
        self._rest = rest
        self._make = make

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name != self._rest[0]:
            return value
        if len(self._rest) == 1:
            return self._make(value)
        return _Proxy(value, self._rest[1:], self._make)


def routed_client(client: Any, sidecar: Any, workflow: str, call: Call) -> Any:
    def make(create: Callable) -> Callable:
        if inspect.iscoroutinefunction(create) or inspect.iscoroutinefunction(getattr(sidecar, "route", None)):
            return _async_create(create, sidecar, workflow, call)
        return _sync_create(create, sidecar, workflow, call)

    return _Proxy(client, call.path, make)
