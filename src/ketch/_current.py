"""Where code runs, and which input it serves: Modal's ``is_local()``,
``current_input_id()`` and ``current_function_call_id()``.

Inside a container the guest loop sets the input being served around each call
of user code (a context variable: each ``async`` input has its own, each
thread serves one input at a time). Elsewhere, and in a ``@batched`` call (it
serves many inputs at once), both ids are ``None``.

Example::

    @app.function()
    def f(x):
        print("serving", ketch.current_input_id(), "of", ketch.current_function_call_id())
"""

from __future__ import annotations

from contextvars import ContextVar

from ._config import in_container

_serving: ContextVar[tuple[str, str | None] | None] = ContextVar("ketch_serving", default=None)


def is_local() -> bool:
    """True in the process that defines and calls the app; False inside its containers."""
    return not in_container()


def current_input_id() -> str | None:
    """The id of the input this code serves (``in-…``), or None outside one."""
    serving = _serving.get()
    return serving[0] if serving else None


def current_function_call_id() -> str | None:
    """The id of the call (``fc-…``) whose input this code serves, or None outside one."""
    serving = _serving.get()
    return serving[1] if serving else None


def serve(input_id: int, call_id: str | None) -> None:
    """(The guest loop) the input the current context serves from now on."""
    _serving.set((f"in-{input_id}", call_id or None))


def stop_serving() -> None:
    _serving.set(None)
