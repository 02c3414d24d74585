"""Errors: every failed call raises an `EdupoolError` (or a subclass named for
its gRPC code) carrying the code and the server's message."""

from __future__ import annotations

from typing import Optional

import grpc


class EdupoolError(Exception):
    """A call the scheduler refused or that could not be made.

    `code` is the gRPC status code, `message` the server's explanation (it
    says what to do), `retry_after` the seconds the server asked to wait
    (RESOURCE_EXHAUSTED from the rate limit), when it said.
    """

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: Optional[float] = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


class InvalidArgument(EdupoolError):
    """A field of the request is wrong; the message names it."""


class NotFound(EdupoolError):
    """No such job (or one of another tenant, which is never revealed)."""


class AlreadyExists(EdupoolError):
    """E.g. a request id reused with a different spec."""


class PermissionDenied(EdupoolError):
    """The token's role does not allow the call."""


class Unauthenticated(EdupoolError):
    """No token, an unknown one, or an expired one."""


class ResourceExhausted(EdupoolError):
    """A limit: request rate (retried for you), pending jobs, open streams."""


class FailedPrecondition(EdupoolError):
    """The job or pool is not in a state that allows the call."""


class Unavailable(EdupoolError):
    """No replica answered in time (the client already retried)."""


class OutOfRange(EdupoolError):
    """A watch revision older than the server's history: re-list, watch again."""


class Aborted(EdupoolError):
    """A stream the server ended, e.g. a reader that fell behind."""


class DeadlineExceeded(EdupoolError):
    """The call's overall timeout passed."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def metadata_value(err: grpc.RpcError, key: str) -> Optional[str]:
    """A trailing metadata value of a failed call."""
    try:
        trailers = err.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:  # a channel-level error carries none
        return None
    for k, v in trailers:
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def retry_after(err: grpc.RpcError) -> Optional[float]:
    """The wait the server asked for, in seconds."""
    ms = metadata_value(err, "x-edupool-retry-after-ms")
    if ms is not None:
        try:
            return int(ms) / 1000.0
        except ValueError:
            pass
    secs = metadata_value(err, "retry-after")
    if secs is not None:
        try:
            return float(secs)
        except ValueError:
            pass
    return None


def from_rpc_error(err: grpc.RpcError) -> EdupoolError:
    code = err.code()  # type: ignore[attr-defined]
    message = err.details() or ""  # type: ignore[attr-defined]
    cls = _BY_CODE.get(code, EdupoolError)
    return cls(code, message, retry_after(err))
