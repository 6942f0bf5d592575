"""Typed errors. IrgateError and its kinds are request errors raised below the api layer, which maps
each to one gRPC status code and to google.rpc error details (server/irgate/api/rpc.py). StartupError
and its kinds stop `irgate serve` before it serves; only the CLI turns them into an exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Resource:
    """The thing an error is about, e.g. Resource("collection", "papers") (google.rpc.ResourceInfo)."""

    kind: str
    name: str


class IrgateError(Exception):
    """Base class: the message is shown to the client as is, so it says what was wrong and what is allowed.

    The structured facts travel beside it as google.rpc error details: `reason`, a stable
    UPPER_SNAKE_CASE word clients may branch on (each kind has a default); `field`, the request field
    at fault (e.g. "documents[3].id"); `resource`, what was missing or already there; `retry_after_s`,
    how long a client should wait before retrying.
    """

    default_reason: ClassVar[str] = "INTERNAL"
    default_retry_after_s: ClassVar[float | None] = None

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        resource: Resource | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.reason = reason or self.default_reason
        self.field = field
        self.resource = resource
        self.retry_after_s = self.default_retry_after_s if retry_after_s is None else retry_after_s


class InvalidArgument(IrgateError):
    """The request is malformed (INVALID_ARGUMENT)."""

    default_reason = "INVALID_ARGUMENT"


class NotFound(IrgateError):
    """A named collection or document does not exist (NOT_FOUND)."""

    default_reason = "NOT_FOUND"


class AlreadyExists(IrgateError):
    """A collection with that name exists (ALREADY_EXISTS)."""

    default_reason = "ALREADY_EXISTS"


class ResourceExhausted(IrgateError):
    """The server is at a configured limit; the client may retry later (RESOURCE_EXHAUSTED)."""

    default_reason = "RESOURCE_EXHAUSTED"
    default_retry_after_s = 1.0


class ResponseTooLarge(ResourceExhausted):
    """An answer is over the message limit; the same request fails the same way, so no RetryInfo."""

    default_reason = "RESPONSE_TOO_LARGE"
    default_retry_after_s = None


class Unavailable(IrgateError):
    """A model backend cannot answer now (UNAVAILABLE)."""

    default_reason = "UNAVAILABLE"
    default_retry_after_s = 1.0


class FailedPrecondition(IrgateError):
    """The server is not set up for this request, e.g. reranking without a judge (FAILED_PRECONDITION)."""

    default_reason = "FAILED_PRECONDITION"


class DeadlineExceeded(IrgateError):
    """A server-side time limit passed, e.g. a client stream idle for too long (DEADLINE_EXCEEDED)."""

    default_reason = "DEADLINE_EXCEEDED"


class DataLoss(IrgateError):
    """Stored data is damaged, e.g. a collection whose database file is corrupt (DATA_LOSS)."""

    default_reason = "DATA_DAMAGED"


class Unauthenticated(IrgateError):
    """The call carries no valid API key (UNAUTHENTICATED)."""

    default_reason = "API_KEY_INVALID"


class StartupError(Exception):
    """The server cannot start; the message is one line that says what to change."""


class ConfigError(StartupError):
    """A setting is invalid: the message names the flag (or IRGATE_* variable) and what is allowed."""


class DataDirInUse(StartupError):
    """Another irgate process serves the same --data-dir."""
