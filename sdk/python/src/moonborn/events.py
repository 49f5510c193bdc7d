"""Typed stream events. Every event keeps its wire `id`, `type` and raw `data`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ._sse import RawEvent

TERMINAL = frozenset({"pipeline.completed", "completed", "error"})


@dataclass(frozen=True, kw_only=True)
class Event:
    id: int
    type: str
    data: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class PipelineStarted(Event):
    persona_id: str


@dataclass(frozen=True, kw_only=True)
class StepStarted(Event):
    step: str


@dataclass(frozen=True, kw_only=True)
class StepCompleted(Event):
    step: str
    duration_ms: int
    model: str


@dataclass(frozen=True, kw_only=True)
class PipelineCompleted(Event):
    persona_id: str
    duration_ms: int


@dataclass(frozen=True, kw_only=True)
class MessageStarted(Event):
    message_id: str
    user_message_id: str


@dataclass(frozen=True, kw_only=True)
class Token(Event):
    delta: str


@dataclass(frozen=True, kw_only=True)
class ToolStart(Event):
    """A tool call began: today the `lorebook`, consulted between `MessageStarted` and the first `Token`.

    `tool` names the tool and `args` are its arguments (the lorebook's: `{"turn": n}`); more tools will use the same
    event. The matching `ToolEnd` has the same `call_id`.
    """

    call_id: str
    tool: str
    args: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ToolEnd(Event):
    """A tool call ended. `result` is the tool's own (the lorebook's: `activated`, `skipped`, `tokens`)."""

    call_id: str
    tool: str
    status: Literal["ok", "error"]
    result: dict[str, Any]
    duration_ms: float


@dataclass(frozen=True, kw_only=True)
class Completed(Event):
    message_id: str
    drift_score: float | None
    drift_threshold: float | None
    drifted: bool


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(Event):
    """The stream's terminal `error` event (`code`: provider_error, cancelled, …)."""

    code: str
    message: str
    retryable: bool


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(Event):
    """An event type this client version does not know (a newer server may add some): kept, with its `type` and
    `data`, so nothing is dropped and nothing fails. It never ends a stream."""


def parse_event(raw: RawEvent) -> Event:
    """Decode one wire event into its typed class."""
    data = json.loads(raw.data)
    base: dict[str, Any] = {"id": int(raw.id) if raw.id.isdigit() else 0, "type": raw.event, "data": data}
    kind = raw.event
    if kind == "pipeline.started":
        return PipelineStarted(**base, persona_id=data["personaId"])
    if kind == "step.started":
        return StepStarted(**base, step=data["step"])
    if kind == "step.completed":
        return StepCompleted(**base, step=data["step"], duration_ms=data["durationMs"], model=data["model"])
    if kind == "pipeline.completed":
        return PipelineCompleted(**base, persona_id=data["personaId"], duration_ms=data["durationMs"])
    if kind == "message.started":
        return MessageStarted(**base, message_id=data["messageId"], user_message_id=data["userMessageId"])
    if kind == "token":
        return Token(**base, delta=data["delta"])
    if kind == "tool_start":
        return ToolStart(**base, call_id=data["callId"], tool=data["tool"], args=dict(data.get("args") or {}))
    if kind == "tool_end":
        return ToolEnd(
            **base,
            call_id=data["callId"],
            tool=data["tool"],
            status=cast(Literal["ok", "error"], data["status"]),
            result=dict(data.get("result") or {}),
            duration_ms=float(data["durationMs"]),
        )
    if kind == "completed":
        return Completed(
            **base,
            message_id=data["messageId"],
            drift_score=data.get("driftScore"),
            drift_threshold=data.get("driftThreshold"),
            drifted=bool(data.get("drifted", False)),
        )
    if kind == "error":
        return ErrorEvent(
            **base,
            code=str(data.get("code", "")),
            message=str(data.get("error", "")),
            retryable=bool(data.get("retryable")),
        )
    return UnknownEvent(**base)
