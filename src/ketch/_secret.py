"""``ketch.Secret``: environment variables for containers, kept encrypted (Modal's ``modal.Secret``).

A Secret is either *named* (made with ``ketch secret create``, stored
encrypted by the control plane, referenced with ``Secret.from_name``) or
*inline* (``from_dict``, ``from_dotenv``, ``from_local_environ``): its values
are read on the client when the Secret is made and travel with the app when
it starts, sealed by the control plane before they are stored. Either way a
container sees the values only as environment variables.

Example::

    @app.function(secrets=[ketch.Secret.from_name("openai"), ketch.Secret.from_dict({"MODE": "prod"})])
    def ask(prompt: str) -> str:
        key = os.environ["OPENAI_API_KEY"]

Values are never part of a Secret's ``repr``, of an error message, or of a
log line.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _sync
from ._client import _Client
from ._config import in_container
from ._object import _Object, _ObjectManager, public
from .exception import AlreadyExistsError, InvalidError

MAX_VALUE_CHARS = 32 * 1024  # as in Modal
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env(env: Any, what: str = "a Secret") -> dict[str, str]:
    """Validate environment variables: names of letters, digits and ``_``; values ``str`` (``None`` is dropped).

    Error messages name the offending key, never a value.
    """
    if not isinstance(env, Mapping):
        raise InvalidError(f"{what} needs a dict of str to str, not {type(env).__name__}")
    checked: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise InvalidError(
                f"{what}: {key!r} is not a valid environment variable name "
                "(use letters, digits and '_', not starting with a digit)"
            )
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidError(
                f"{what}: the value of {key} must be a str, not {type(value).__name__}"
            )
        if "\0" in value:
            raise InvalidError(f"{what}: the value of {key} contains a NUL character")
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidError(
                f"{what}: the value of {key} is longer than {MAX_VALUE_CHARS} characters"
            )
        checked[key] = value
    return checked


# -- .env files -------------------------------------------------------------


def parse_dotenv(text: str, source: str = ".env") -> dict[str, str]:
    """Parse a ``.env`` file with python-dotenv, as Modal's ``Secret.from_dotenv`` does.

    ``${NAME}`` and ``${NAME:-default}`` expand from earlier lines or the
    local environment, in every kind of value. A bare ``KEY`` line has no
    value and is skipped. A line python-dotenv cannot parse, or a key that is
    not a valid variable name, is an ``InvalidError`` naming the line.

    Example: a file with the lines ``export A=1  # one`` and ``B="${A}-x"``
    gives ``{"A": "1", "B": "1-x"}``.
    """
    # Imported here: containers import this module but never read .env files.
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    # dotenv_values only logs a warning for a bad line; the parser says which.
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and not _ENV_KEY.match(binding.key)):
            # The line itself is not shown: it may hold a value.
            raise InvalidError(
                f"{source}:{binding.original.line}: expected KEY=VALUE with a valid "
                "variable name (and a closing quote after a quoted value)"
            )
    values = dotenv_values(stream=io.StringIO(text), interpolate=True)
    return {key: value for key, value in values.items() if value is not None}


def dotenv_path(path: str | os.PathLike[str] | None, filename: str) -> Path:
    """Where ``Secret.from_dotenv(path, filename=...)`` reads: ``filename`` in ``path``'s folder.

    ``path`` may be a folder or a file (usually ``__file__``); ``None`` means
    the current directory.
    """
    base = Path(path) if path is not None else Path.cwd()
    if base.is_file():
        base = base.parent
    return base / filename


# -- the handle ---------------------------------------------------------------


class _Secret(_Object):
    """Environment variables for a function's containers: ``secrets=[...]`` on ``@app.function``/``@app.cls``."""

    _kind = "secret"

    def __init__(
        self,
        name: str | None = None,
        object_id: str | None = None,
        create_if_missing: bool = False,
        *,
        env: dict[str, str] | None = None,
        required_keys: Sequence[str] = (),
    ) -> None:
        super().__init__(name, object_id, False)
        self._env = env  # the values of an inline Secret; None for a named one
        self._required_keys = tuple(required_keys)

    def __repr__(self) -> str:
        if self._env is not None:
            return f"Secret(<inline, {len(self._env)} key(s)>)"
        return f"Secret({self._name or self._object_id!r})"

    def __reduce__(self) -> Any:
        if self._env is not None:
            raise InvalidError(
                "an inline Secret (from_dict, from_dotenv, from_local_environ) cannot be pickled: "
                "its values would be stored with the pickle. Use a named Secret (Secret.from_name)"
            )
        return super().__reduce__()

    # -- constructors ---------------------------------------------------------
    @classmethod
    def from_name(  # type: ignore[override]  # (no version; required_keys instead)
        cls,
        name: str,
        *,
        create_if_missing: bool = False,
        required_keys: Sequence[str] = (),
        environment_name: str | None = None,
        client: Any = None,
    ) -> _Secret:
        """The Secret made with ``ketch secret create NAME KEY=VALUE ...``, looked up on first use.

        ``required_keys`` are checked when the app starts: a missing key is a
        ``NotFoundError`` then, rather than a ``KeyError`` in the container.
        ``environment_name`` and ``client`` are Modal's and change nothing here.

        Example: ``ketch.Secret.from_name("openai", required_keys=["OPENAI_API_KEY"])``
        """
        if create_if_missing:
            raise InvalidError(
                "a Secret cannot be created empty on first use: create it with "
                f"`ketch secret create {name} KEY=VALUE ...`"
            )
        if not isinstance(name, str) or not name:
            raise InvalidError(f"Secret.from_name needs a name, got {name!r}")
        if isinstance(required_keys, str) or not all(isinstance(k, str) for k in required_keys):
            raise InvalidError("required_keys must be a list of str")
        return cls(name=name, required_keys=required_keys)

    @classmethod
    def from_dict(cls, env_dict: Mapping[str, str | None] | None = None) -> _Secret:
        """A Secret with these values (``None`` values are left out).

        Example: ``ketch.Secret.from_dict({"MODE": "prod", "TOKEN": os.environ.get("TOKEN")})``
        """
        return cls(env=check_env(env_dict if env_dict is not None else {}, "Secret.from_dict"))

    @classmethod
    def from_local_environ(cls, env_keys: Sequence[str]) -> _Secret:
        """A Secret with these variables of the local environment; a missing one is an ``InvalidError``.

        Inside a container the call does nothing (the values came with the app).

        Example: ``ketch.Secret.from_local_environ(["HF_TOKEN"])``
        """
        if isinstance(env_keys, str) or not all(isinstance(k, str) for k in env_keys):
            raise InvalidError("Secret.from_local_environ needs a list of variable names")
        if in_container():
            return cls(env={})
        missing = [k for k in env_keys if k not in os.environ]
        if missing:
            raise InvalidError(
                f"Secret.from_local_environ: {', '.join(missing)} not set in the local environment"
            )
        return cls(env=check_env({k: os.environ[k] for k in env_keys}, "Secret.from_local_environ"))

    @classmethod
    def from_dotenv(
        cls, path: str | os.PathLike[str] | None = None, *, filename: str = ".env"
    ) -> _Secret:
        """A Secret with the variables of a ``.env`` file.

        The file is ``filename`` in the folder of ``path`` (a folder, or a
        file such as ``__file__``; the current directory by default). A
        missing file is an ``InvalidError``. Inside a container the call does
        nothing (the values came with the app).

        Example: ``ketch.Secret.from_dotenv(__file__)`` reads the ``.env`` beside your app.
        """
        if in_container():
            return cls(env={})
        where = dotenv_path(path, filename)
        try:
            text = where.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidError(f"Secret.from_dotenv: no file {where}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidError(
                f"Secret.from_dotenv: cannot read {where}: {type(exc).__name__}"
            ) from None
        return cls(env=check_env(parse_dotenv(text, str(where)), f"Secret.from_dotenv({where})"))

    @classmethod
    def ephemeral(cls) -> Any:
        """Not available: use ``Secret.from_dict`` for values that live with one app."""
        raise InvalidError("Secret.ephemeral() does not exist: use Secret.from_dict({...}) instead")

    # -- resolution -------------------------------------------------------------
    async def hydrate(self) -> _Secret:
        """Look a named Secret up now (and check its ``required_keys``); inline Secrets need nothing."""
        if self._env is None:
            await self._resolve()
        return self

    async def _resolve(self) -> str:
        if self._env is not None:
            raise InvalidError("an inline Secret has no id of its own: it is sent with its app")
        if self._object_id is None:
            client = await _Client.get()
            reply = await client.rpc(
                "SecretLookup", {"name": self._name, "required_keys": list(self._required_keys)}
            )
            self._object_id = str(reply["object_id"])
        return self._object_id

    async def update(self, env_dict: Mapping[str, str | None]) -> None:
        """Add or change keys of this named Secret (keys not given keep their values, as
        with ``dict.update``); containers that start after it see the new values.

        Example: ``ketch.Secret.from_name("openai").update({"OPENAI_API_KEY": new_key})``
        """
        if self._env is not None:
            raise InvalidError("an inline Secret cannot be updated: it lives with its app")
        env = check_env(env_dict, "Secret.update")
        client = await _Client.get()
        reply = await client.rpc("SecretUpdate", {"name": self._name, "env": env})
        self._object_id = str(reply["object_id"])

    async def _wire(self, client: _Client) -> dict[str, Any]:
        """What a function spec stores for this Secret: a named one's id, or inline values sealed by the server."""
        if self._env is None:
            return {"name": self._name, "id": await self._resolve()}
        reply = await client.rpc("SecretSeal", {"env": self._env})
        return {"sealed": reply["sealed"]}


def check_secrets(secrets: Any) -> list[_Secret]:
    """The ``secrets=`` option of a decorator: a list of ``ketch.Secret``."""
    if secrets is None:
        return []
    if not isinstance(secrets, list | tuple):
        raise InvalidError(f"secrets must be a list of ketch.Secret, not {type(secrets).__name__}")
    for secret in secrets:
        if not isinstance(secret, _Secret):
            raise InvalidError(
                f"secrets must be a list of ketch.Secret; got {type(secret).__name__}"
            )
    return list(secrets)


class _SecretManager(_ObjectManager):
    """``Secret.objects``: create, list and delete named Secrets."""

    async def create(  # type: ignore[override]  # a Secret is created with its values
        self,
        name: str,
        env_dict: Mapping[str, str | None],
        *,
        allow_existing: bool = False,
        environment_name: str | None = None,
        client: Any = None,
    ) -> None:
        """Create Secret ``name`` with these values; one that exists is an
        ``AlreadyExistsError``, or with ``allow_existing=True`` kept as it is.

        Example: ``ketch.Secret.objects.create("db", {"PASSWORD": pw}, allow_existing=True)``
        """
        env = check_env(env_dict, "Secret.objects.create")
        client_ = await _Client.get()
        try:
            await client_.rpc("SecretCreate", {"name": name, "env": env, "force": False})
        except AlreadyExistsError:
            if not allow_existing:
                raise


Secret: Any = public(_Secret, "Secret", _sync.synchronize_api(_SecretManager, "SecretManager"))
