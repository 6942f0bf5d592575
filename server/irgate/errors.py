"""Domain errors raised below the api layer; the api layer maps each to one gRPC status code."""


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
