"""Exceptions raised by ketch.

Every error ketch raises derives from :class:`Error`. Errors that cross the
wire carry their class name, and :func:`from_wire` turns that name back into
the same class on the client.

Example::

    try:
        f.remote(1)
    except ketch.exception.FunctionTimeoutError:
        ...
"""

from __future__ import annotations

import builtins


class Error(Exception):
    """Base class for every error raised by ketch."""


class InvalidError(Error):
    """A request or an option that ketch cannot accept (bad input)."""


class NotFoundError(Error):
    """A named object (app, function, call, blob) does not exist."""


class AlreadyExistsError(Error):
    """A named object already exists where a new one was asked for."""


class ConnectionFailedError(Error, builtins.ConnectionError):
    """The control plane could not be reached (also a builtin ``ConnectionError``)."""


class ExecutionError(Error):
    """Something went wrong running the function (not an error in user code)."""


class RemoteError(Error):
    """An exception raised in a container that could not be rebuilt locally."""


class FunctionTimeoutError(Error):
    """A function call ran past its ``timeout``."""


class OutputExpiredError(Error):
    """The result of a call is no longer stored."""


class InputCancellation(BaseException):
    """Raised inside a container when its input is cancelled."""


class InvalidStateError(Error):
    """The object is in a state that does not allow the operation."""


class ContainerCrashError(ExecutionError):
    """The container running the input exited before returning a result."""


class OutOfMemoryError(ContainerCrashError):
    """The container running the input was killed for using too much memory."""


class CallCancelledError(Error):
    """The call was cancelled before it produced a result."""


class PayloadTooLargeError(InvalidError):
    """An argument or result is larger than ketch will carry."""


class ImageBuildError(Error):
    """A step of an image build failed; the message names the step and ends with its output."""


class ResourceUnavailableError(Error):
    """No node can ever provide what the function asks for (a GPU type, say)."""


class BudgetExceededError(Error):
    """The app spent its budget for today (``ketch app budget``): no new containers start."""


class ServerError(Error):
    """The control plane failed while handling a request."""


class AuthError(Error):
    """A request to the control plane carried no valid token (HTTP 401)."""


class PermissionDeniedError(Error):
    """The caller's token does not allow this operation (HTTP 403); the message names it."""


class CallTimeoutError(Error, builtins.TimeoutError):
    """A client-side wait such as ``FunctionCall.get(timeout=)`` expired.

    It is also a builtin ``TimeoutError``, so ``except TimeoutError`` catches it.
    """


class SandboxFilesystemError(Error):
    """A file operation in a sandbox failed (``sb.open``, ``sb.ls``, ``sb.mkdir``, ``sb.rm``)."""


class SandboxFilesystemNotFoundError(SandboxFilesystemError):
    """The path does not exist in the sandbox.

    (Not a builtin ``OSError``: the client treats those as a lost connection.)
    """


class SandboxFilesystemIsADirectoryError(SandboxFilesystemError):
    """The path is a directory where a file was expected."""


class SandboxFilesystemNotADirectoryError(SandboxFilesystemError):
    """A part of the path is a file where a directory was expected."""


class SandboxFilesystemPermissionError(SandboxFilesystemError):
    """The sandbox may not do that to the path (a read-only mount, say)."""


class SandboxFilesystemFileExistsError(SandboxFilesystemError):
    """The path exists already."""


class SandboxFilesystemDirectoryNotEmptyError(SandboxFilesystemError):
    """The directory is not empty (``rm`` without ``recursive=True``)."""


_BY_NAME: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        Error,
        InvalidError,
        NotFoundError,
        AlreadyExistsError,
        ConnectionFailedError,
        ExecutionError,
        RemoteError,
        FunctionTimeoutError,
        OutputExpiredError,
        InputCancellation,
        InvalidStateError,
        ContainerCrashError,
        OutOfMemoryError,
        CallCancelledError,
        PayloadTooLargeError,
        ServerError,
        CallTimeoutError,
        ImageBuildError,
        ResourceUnavailableError,
        BudgetExceededError,
        AuthError,
        PermissionDeniedError,
        SandboxFilesystemError,
        SandboxFilesystemNotFoundError,
        SandboxFilesystemIsADirectoryError,
        SandboxFilesystemNotADirectoryError,
        SandboxFilesystemPermissionError,
        SandboxFilesystemFileExistsError,
        SandboxFilesystemDirectoryNotEmptyError,
    )
}


_MODAL_ALIASES = {"TimeoutError": CallTimeoutError, "ConnectionError": ConnectionFailedError}


def __getattr__(name: str) -> type[BaseException]:
    """Modal's names ``TimeoutError`` and ``ConnectionError``, without shadowing the builtins here."""
    try:
        return _MODAL_ALIASES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def from_wire(name: str, message: str) -> BaseException:
    """Build the exception a wire error names; unknown names become ``ServerError``."""
    cls = _BY_NAME.get(name, ServerError)
    return cls(message)


def wire_name(exc: BaseException) -> str:
    """The name under which ``exc`` travels (its class if ketch knows it)."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _BY_NAME and _BY_NAME[cls.__name__] is cls:
            return cls.__name__
    return "Error"
