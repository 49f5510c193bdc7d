"""Python client for the Moonborn API."""

from ._client import AsyncMoonborn, Moonborn
from ._streaming import AsyncEventStream, EventStream
from .errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    MoonbornError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
)
from .events import (
    Completed,
    ErrorEvent,
    Event,
    MessageStarted,
    PipelineCompleted,
    PipelineStarted,
    StepCompleted,
    StepStarted,
    Token,
    UnknownEvent,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncEventStream",
    "AsyncMoonborn",
    "AuthenticationError",
    "BadRequestError",
    "Completed",
    "ConflictError",
    "ErrorEvent",
    "Event",
    "EventStream",
    "MessageStarted",
    "Moonborn",
    "MoonbornError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PipelineCompleted",
    "PipelineStarted",
    "ProviderError",
    "RateLimitError",
    "StepCompleted",
    "StepStarted",
    "Token",
    "UnknownEvent",
]
