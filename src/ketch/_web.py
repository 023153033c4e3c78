"""Web endpoint decorators: ``fastapi_endpoint``, ``asgi_app``, ``wsgi_app``, ``web_server``.

Each marks a function (or an ``@app.cls`` method) as a web endpoint; put it
below ``@app.function()``, as in Modal::

    @app.function()
    @ketch.fastapi_endpoint(method="POST")
    def predict(item: dict) -> dict: ...

The control plane's gateway gives every endpoint a URL of its own on
127.0.0.1 (``Function.get_web_url()``, printed by ``ketch deploy``) and
routes each request to one of the function's containers, starting one when
none is running.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from .exception import InvalidError

F = TypeVar("F", bound=Callable[..., Any])
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_label(label: str) -> str:
    if not _LABEL.match(label):
        raise InvalidError(
            f"web endpoint label {label!r} is invalid: use up to 63 lowercase letters, digits and '-', "
            "not starting or ending with '-'"
        )
    return label


def default_label(app_name: str, tag: str) -> str:
    """``<app>-<function>`` in lowercase with every other character made '-', as Modal's URLs are."""
    text = re.sub(r"[^a-z0-9]+", "-", f"{app_name}-{tag}".lower()).strip("-")
    return text[:63].rstrip("-") or "endpoint"


def endpoint_name(tag: str, method: str | None) -> str:
    """How an endpoint is named in URL listings: the function's tag, or ``Cls.method``."""
    return tag if method is None else f"{tag}.{method}"


def _parentheses(missing: Any, decorator: str) -> None:
    if missing is not None:
        raise InvalidError(f"use @ketch.{decorator}() with parentheses")


def _mark(kind: str, decorator: str, custom_domains: Any, **config: Any) -> Callable[[F], F]:
    """The decorator that marks a function as a web endpoint of ``kind`` with ``config``."""
    if custom_domains:
        raise InvalidError("custom_domains are not supported: ketch serves endpoints on 127.0.0.1")
    config["requires_proxy_auth"] = bool(config.get("requires_proxy_auth"))
    label = config.get("label")
    if label is not None:
        check_label(label)

    def wrap(fn: F) -> F:
        if hasattr(fn, "_ketch_impl"):
            raise InvalidError(f"put @ketch.{decorator}() below @app.function(), not above it")
        if not callable(fn):
            raise InvalidError(f"@ketch.{decorator}() decorates a function or method, not {fn!r}")
        fn.__ketch_web__ = {"type": kind, **config}  # type: ignore[attr-defined]
        return fn

    return wrap


def fastapi_endpoint(
    _warn_parentheses_missing: Any = None,
    *,
    method: str = "GET",
    label: str | None = None,
    docs: bool = False,
    requires_proxy_auth: bool = False,
    custom_domains: Any = None,
) -> Callable[[F], F]:
    """Serve the function at ``/`` of its URL through FastAPI (which the image must have).

    Query parameters and JSON bodies become its arguments, as FastAPI does;
    ``docs=True`` also serves ``/docs``.
    """
    _parentheses(_warn_parentheses_missing, "fastapi_endpoint")
    if method.upper() not in _METHODS:
        raise InvalidError(f"fastapi_endpoint(method={method!r}): use one of {', '.join(_METHODS)}")
    return _mark(
        "fastapi",
        "fastapi_endpoint",
        custom_domains,
        method=method.upper(),
        label=label,
        docs=bool(docs),
        requires_proxy_auth=requires_proxy_auth,
    )


def asgi_app(
    _warn_parentheses_missing: Any = None,
    *,
    label: str | None = None,
    requires_proxy_auth: bool = False,
    custom_domains: Any = None,
) -> Callable[[F], F]:
    """The function returns an ASGI app (FastAPI, Starlette, ...), which serves every path of the URL."""
    _parentheses(_warn_parentheses_missing, "asgi_app")
    return _mark(
        "asgi", "asgi_app", custom_domains, label=label, requires_proxy_auth=requires_proxy_auth
    )


def wsgi_app(
    _warn_parentheses_missing: Any = None,
    *,
    label: str | None = None,
    requires_proxy_auth: bool = False,
    custom_domains: Any = None,
) -> Callable[[F], F]:
    """The function returns a WSGI app (Flask, Django, ...), which serves every path of the URL."""
    _parentheses(_warn_parentheses_missing, "wsgi_app")
    return _mark(
        "wsgi", "wsgi_app", custom_domains, label=label, requires_proxy_auth=requires_proxy_auth
    )


def web_server(
    port: int,
    *,
    startup_timeout: float = 5.0,
    label: str | None = None,
    requires_proxy_auth: bool = False,
    custom_domains: Any = None,
) -> Callable[[F], F]:
    """The function starts an HTTP server on ``port`` (in a thread or subprocess) and returns."""
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidError(f"web_server(port={port!r}): give a TCP port number")
    return _mark(
        "server",
        "web_server",
        custom_domains,
        port=port,
        startup_timeout=float(startup_timeout),
        label=label,
        requires_proxy_auth=requires_proxy_auth,
    )
