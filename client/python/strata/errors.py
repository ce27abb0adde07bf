"""Exceptions of the strata package (docs/python.md).

Every error the native layer reports is a `strata.Error` subclass chosen by its
absl status code; `.code` is the code's name ("INVALID_ARGUMENT", ...) and
`.message` the C++ status message, which names the field at fault. A miss is
never an exception.
"""


class Error(Exception):
    """Base class: an absl status that was not OK."""

    code = "UNKNOWN"

    def __init__(self, message="", code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self):
        return f"{self.code}: {self.message}"


class InvalidArgument(Error, ValueError):
    code = "INVALID_ARGUMENT"


class DataLoss(Error):
    code = "DATA_LOSS"


class ResourceExhausted(Error):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(Error, ConnectionError):
    code = "UNAVAILABLE"


class DeadlineExceeded(Error, TimeoutError):
    code = "DEADLINE_EXCEEDED"


class FailedPrecondition(Error):
    code = "FAILED_PRECONDITION"


class NotFound(Error, KeyError):
    code = "NOT_FOUND"

    def __str__(self):  # KeyError would repr() the message.
        return Error.__str__(self)


class OutOfRange(Error, ValueError):
    code = "OUT_OF_RANGE"


class Internal(Error):
    code = "INTERNAL"


_BY_CODE = {cls.code: cls for cls in (
    InvalidArgument, DataLoss, ResourceExhausted, Unavailable, DeadlineExceeded,
    FailedPrecondition, NotFound, OutOfRange, Internal)}


def from_status(code: str, message: str) -> Error:
    """The exception for an absl status code name and message (used by _native)."""
    return _BY_CODE.get(code, Error)(message, code)
