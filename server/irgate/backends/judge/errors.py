"""How the judge engine fails, as typed errors: each is an IrgateError kind, so the api layer maps it
to its one gRPC status (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) and clients may branch
on its reason."""

from __future__ import annotations

from irgate.errors import DeadlineExceeded, ResourceExhausted, Unavailable


class EngineClosed(Unavailable):
    """The engine was closed (the server is stopping or the model unloading): before or during a call."""

    default_reason = "JUDGE_CLOSED"


class EngineFailed(Unavailable):
    """A model step raised; the sequences in that step ended with this error."""

    default_reason = "JUDGE_FAILED"


class EngineOutOfMemory(ResourceExhausted):
    """A model step ran out of device memory; a smaller batch budget avoids it."""

    default_reason = "JUDGE_OUT_OF_MEMORY"


class SequenceDeadline(DeadlineExceeded):
    """A sequence's deadline passed before it finished."""

    default_reason = "JUDGE_DEADLINE"
