"""Typed errors. IrgateError and its kinds are request errors raised below the api layer, which maps
each to one gRPC status code. StartupError and its kinds stop `irgate serve` before it serves; only
the CLI turns them into an exit code."""


class IrgateError(Exception):
    """Base class: the message is shown to the client as is, so it says what was wrong and what is allowed."""


class InvalidArgument(IrgateError):
    """The request is malformed (INVALID_ARGUMENT)."""


class NotFound(IrgateError):
    """A named collection or document does not exist (NOT_FOUND)."""


class AlreadyExists(IrgateError):
    """A collection with that name exists (ALREADY_EXISTS)."""


class ResourceExhausted(IrgateError):
    """The server is at a configured limit; the client may retry later (RESOURCE_EXHAUSTED)."""


class Unavailable(IrgateError):
    """A model backend cannot answer now (UNAVAILABLE)."""


class FailedPrecondition(IrgateError):
    """The server is not set up for this request, e.g. reranking without a judge (FAILED_PRECONDITION)."""


class DeadlineExceeded(IrgateError):
    """A server-side time limit passed, e.g. a client stream idle for too long (DEADLINE_EXCEEDED)."""


class DataLoss(IrgateError):
    """Stored data is damaged, e.g. a collection whose database file is corrupt (DATA_LOSS)."""


class StartupError(Exception):
    """The server cannot start; the message is one line that says what to change."""


class ConfigError(StartupError):
    """A setting is invalid: the message names the flag (or IRGATE_* variable) and what is allowed."""


class DataDirInUse(StartupError):
    """Another irgate process serves the same --data-dir."""
