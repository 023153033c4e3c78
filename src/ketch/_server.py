"""``@app.server`` and ``ketch.Server``: Modal 1.5's HTTP primitive.

A server is a class whose ``@enter`` hook starts a process listening on ``port``;
the control plane's gateway gives it a URL and relays each request to the port,
as it does for a ``@web_server`` endpoint (which a server is, underneath: a class
with one web-server method that ketch adds, named ``SERVE``). Requests need a
proxy token (``ketch token proxy create``; the ``Modal-Key`` and ``Modal-Secret``
headers) unless ``unauthenticated=True``, as in Modal.

What differs from Modal: a server's port is on its node's network, so one container
serves it (``max_containers`` above 1 is refused with the reason, as for
``@web_server``); ``routing_region`` and ``scaleup_window`` have no meaning on one's
own machines and are accepted with a warning; ``target_concurrency`` is accepted (the
one container takes every request); ``h2`` is refused (the gateway speaks
HTTP/1.1 to containers).

Example::

    @app.server(port=8000, unauthenticated=True)
    class Files:
        @ketch.enter()
        def start(self):
            subprocess.Popen(["python", "-m", "http.server", "8000"])

    Files.get_url()
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any

from . import _sync
from .exception import InvalidError
from .functions import _Function

if TYPE_CHECKING:
    from .app import _App

SERVE = "ketch_serve"  # the method ketch adds: the enter hooks have started the server


def _serve(self: Any) -> None:
    """Nothing to do: the class's ``@enter`` hooks started the server."""


class _Server:
    """A server of an app (``@app.server``), or of a deployed one (``Server.from_name``)."""

    def __init__(self, fn: _Function, user_cls: type | None = None) -> None:
        self._fn = fn
        self._user_cls = user_cls  # what a container runs (ketch.guest.user_code)

    def __repr__(self) -> str:
        return f"_Server({self._fn.tag!r})"

    @property
    def _app(self) -> Any:
        return self._fn._app

    @classmethod
    def from_name(
        cls, app_name: str, name: str, *, environment_name: str | None = None, client: Any = None
    ) -> _Server:
        """A handle to the server ``name`` of deployed app ``app_name``, looked up on first use.

        Example: ``ketch.Server.from_name("my-app", "Files").get_url()``
        """
        return cls(_Function.from_name(app_name, name))

    @property
    def object_id(self) -> str | None:
        return self._fn.object_id

    async def hydrate(self) -> _Server:
        await self._fn._resolve()
        return self

    async def get_url(self) -> str:
        """The URL the gateway serves this server at (its app must run or be deployed)."""
        method = _Function(self._fn._app, self._fn._spec, None, method=SERVE, parent=self._fn)
        url = await method.get_web_url()
        if url is None:
            raise InvalidError(f"{self._fn.tag} has no URL: is it an @app.server class?")
        return url

    async def update_autoscaler(
        self,
        *,
        target_concurrency: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaleup_window: int | None = None,
        scaledown_window: int | None = None,
    ) -> None:
        """Change how the server scales, until its app is deployed again (Modal's rule).
        ``target_concurrency`` is accepted: one container takes every request."""
        if scaleup_window is not None:
            warnings.warn(
                "scaleup_window: ketch starts containers as soon as they are wanted", stacklevel=3
            )
        if max_containers not in (None, 1):
            raise InvalidError(
                "a server runs in one container here: its port is on the node's network"
            )
        await self._fn.update_autoscaler(
            min_containers=min_containers,
            buffer_containers=buffer_containers,
            scaledown_window=scaledown_window,
        )


def server_decorator(
    app: _App,
    *,
    port: int,
    unauthenticated: bool,
    startup_timeout: float,
    target_concurrency: int | None,
    max_containers: int | None,
    routing_region: str | None,
    scaleup_window: Any,
    exit_grace_period: Any,
    h2: bool,
    label: str | None,
    cls_options: dict[str, Any],
) -> Any:
    """What ``@app.server(...)`` returns: registers the class as a server, returns a ``Server``."""
    from ._web import web_server
    from .partial import marked

    if h2:
        raise InvalidError("@app.server(h2=True): the gateway speaks HTTP/1.1 to containers")
    if max_containers not in (None, 1):
        raise InvalidError(
            "@app.server(max_containers=...): a server runs in one container here, since its "
            "port is on the node's network"
        )
    for option, value in (("routing_region", routing_region), ("scaleup_window", scaleup_window)):
        if value is not None:
            warnings.warn(f"@app.server({option}=): no meaning on ketch; ignored", stacklevel=3)
    mark = web_server(
        port, startup_timeout=startup_timeout, label=label, requires_proxy_auth=not unauthenticated
    )

    def wrap(user_cls: type) -> _Server:
        if not inspect.isclass(user_cls):
            raise InvalidError(f"@app.server() decorates a class, not {user_cls!r}")
        if not marked(user_cls, "__ketch_enter__"):
            raise InvalidError(
                f"{user_cls.__name__}: a server starts its HTTP server on port {port} in an "
                "@ketch.enter() method, and it has none"
            )
        setattr(user_cls, SERVE, mark(_serve))
        cls_obj = _sync._unwrap(app.cls(**cls_options)(user_cls))
        return _Server(cls_obj._fn, user_cls)

    return wrap


Server: Any = _sync.synchronize_api(_Server, "Server")
