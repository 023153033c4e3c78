"""Who is calling the control plane, and what they may do.

Every request carries a token (HTTP: ``Authorization: Bearer``; frames: the
connection's first frame, ``{"auth": token}``). The token names a caller:

* the **owner**: the token the first start writes to ``KETCH_HOME/token``
  (mode 0600), which the SDK and CLI read; it may do everything;
* an **API token** made with ``ketch token create --role invoke|deploy|admin``
  (stored hashed; printed once);
* a **container**: the token its container was started with, scoped to its
  app (``CONTAINER_METHODS`` and the checks in :func:`check_call`).

Host paths (``copy=False`` files, the app's source, local files of image
steps) are honoured only for a peer on the unix socket whose uid is the
control plane's own or root (``SO_PEERCRED``): anything else could make the
control plane read files its caller cannot. The table is in docs/security.md.

Example::

    auth = Authenticator(home, store, dispatcher.container_caller)
    caller = auth.identify(token, peer_uid=None)   # None: no valid token
    check_method(caller, "AppCreate")               # raises PermissionDeniedError
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Float, String, Table, delete, select

from .._ids import new_id
from ..exception import AuthError, InvalidError, NotFoundError, PermissionDeniedError
from .store import Store, metadata

OWNER_TOKEN_FILE = "token"
ROLES = ("invoke", "deploy", "admin")

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String, primary_key=True),
    Column("role", String, nullable=False),
    Column("secret_hash", String, nullable=False, unique=True),  # SHA-256 of the token
    Column("created_at", Float, nullable=False),
)

# What a container's token allows: its app's calls, deployed functions by name,
# Dicts/Queues/Volumes by name or id, blobs for arguments and results.
CONTAINER_METHODS = frozenset(
    {
        "Status",
        "FunctionLookup",
        "FunctionGetCurrentStats",  # its own app's functions only
        "FunctionBindOptions",  # the same, with its own function's Secrets and Volumes
        "CallCreate",
        "CallPutInputs",
        "CallGetOutputs",
        "CallCancel",
        "ObjectGet",
        "ObjectCreate",
        "ObjectEphemeral",
        "DictPut",
        "DictGet",
        "DictLen",
        "DictScan",
        "DictClear",
        "QueuePut",
        "QueueGet",
        "QueueLen",
        "QueueClear",
        "QueuePeek",
        "VolumeList",
        "VolumeGetFile",
        "VolumePutFiles",
        "VolumeRemove",
        "VolumeCopy",
        "VolumeCommit",
        "VolumeReload",
        "SecretLookup",
        "TunnelOpen",
        "TunnelClose",
        # Its own app's sandboxes only (ketch.server.sandboxes checks which).
        "SandboxCreate",
        "SandboxGet",
        "SandboxList",
        "SandboxTerminate",
        "SandboxWait",
        "SandboxExec",
        "SandboxExecRead",
        "SandboxExecWrite",
        "SandboxExecWait",
        "SandboxExecResize",
        "SandboxWaitReady",
        "SandboxTunnels",
        "SandboxSnapshot",
        "SandboxFile",
        "SandboxSetTags",
    }
)
# An ``invoke`` token calls deployed functions and reads their results, nothing else.
INVOKE_METHODS = frozenset(
    {"Status", "FunctionLookup", "CallCreate", "CallPutInputs", "CallGetOutputs", "CallCancel"}
)
# Minting and listing credentials: the owner and ``admin`` tokens only.
ADMIN_METHODS = frozenset(
    {
        "DashboardLogin",  # the dashboard shows everything: owner and admin only
        "ProxyTokenCreate",
        "ProxyTokenList",
        "ProxyTokenDelete",
        "ApiTokenCreate",
        "ApiTokenList",
        "ApiTokenRevoke",
    }
)
# Before a connection's token is checked, it may not make the control plane hold more.
UNAUTHENTICATED_MAX_BYTES = 64 << 10


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. ``peer_uid`` is set only for unix-socket peers."""

    role: str  # "owner", "admin", "deploy", "invoke" or "container"
    app_id: str | None = None  # a container's app
    container_id: str | None = None
    peer_uid: int | None = None
    token_id: str | None = None

    def describe(self) -> str:
        if self.role == "container":
            return f"a container of app {self.app_id}"
        if self.role == "owner":
            return "the owner"
        return f"an {self.role!r} token" if self.role[0] in "aeiou" else f"a {self.role!r} token"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def owner_token(home: Path) -> str:
    """The owner's token in ``home/token``, written (mode 0600) on first use."""
    path = home / OWNER_TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    token = "ko-" + secrets.token_urlsafe(32)
    tmp = home / f".token.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    try:
        os.link(tmp, path)  # never replaces a token another start wrote first
    except FileExistsError:
        token = path.read_text().strip()
    finally:
        os.unlink(tmp)
    return token


# The unix sockets bound into containers. Their peers never count as local: an
# ordinary account's containers run as that account (docs/rootless.md), so their
# uid would otherwise pass for the owner's CLI in check_host_paths.
CONTAINER_SOCKETS: set[str] = set()


def peer_uid(sock: socket.socket | None) -> int | None:
    """The uid of a unix-socket peer (``SO_PEERCRED``); None for TCP and container sockets."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    if sock.getsockname() in CONTAINER_SOCKETS:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class Authenticator:
    """Turns tokens into callers: the owner's, API tokens (hashed in the store), containers'."""

    def __init__(
        self, home: Path, store: Store, container_caller: Callable[[str], tuple[str, str] | None]
    ) -> None:
        self.owner = owner_token(home)
        self.store = store
        self.container_caller = container_caller
        self._api: dict[str, tuple[str, str]] = {}  # hash -> (token id, role)
        self._reload()

    def _reload(self) -> None:
        rows = self.store.conn.execute(
            select(api_tokens.c.id, api_tokens.c.role, api_tokens.c.secret_hash)
        )
        self._api = {r.secret_hash: (r.id, r.role) for r in rows}

    def identify(self, token: Any, peer: int | None = None) -> Caller | None:
        """The caller ``token`` names, or None."""
        if not isinstance(token, str) or not token:
            return None
        if hmac.compare_digest(token.encode(), self.owner.encode()):
            return Caller("owner", peer_uid=peer)
        if token.startswith("kt-"):
            found = self._api.get(_hash(token))
            return Caller(found[1], peer_uid=peer, token_id=found[0]) if found else None
        container = self.container_caller(token)
        if container is not None:
            return Caller(
                "container", app_id=container[1], container_id=container[0], peer_uid=peer
            )
        return None

    def create(self, role: str) -> tuple[str, str]:
        """A new API token: ``(id, token)``; only its hash is kept."""
        if role not in ROLES:
            raise InvalidError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        token_id, token = new_id("tk"), "kt-" + secrets.token_urlsafe(32)
        self.store.conn.execute(
            api_tokens.insert().values(
                id=token_id, role=role, secret_hash=_hash(token), created_at=time.time()
            )
        )
        self.store.conn.commit()
        self._reload()
        return token_id, token

    def list(self) -> list[dict[str, Any]]:
        rows = self.store.conn.execute(
            select(api_tokens.c.id, api_tokens.c.role, api_tokens.c.created_at)
        )
        return [{"token_id": r.id, "role": r.role, "created_at": r.created_at} for r in rows]

    def revoke(self, token_id: str) -> None:
        gone = self.store.conn.execute(delete(api_tokens).where(api_tokens.c.id == token_id))
        self.store.conn.commit()
        self._reload()
        if not gone.rowcount:
            raise NotFoundError(f"no API token {token_id!r}")


def unauthenticated() -> AuthError:
    """The error for a request with no valid token."""
    return AuthError(
        "missing or invalid token: the owner's token is in KETCH_HOME/token "
        "(the SDK and CLI read it); others need `ketch token create`"
    )


def check_method(caller: Caller | None, method: str) -> Caller:
    """``caller`` if it may call RPC ``method``; else AuthError (no token) or PermissionDeniedError."""
    if caller is None:
        raise unauthenticated()
    role = caller.role
    allowed = (
        role in ("owner", "admin")
        or (role == "deploy" and method not in ADMIN_METHODS)
        or (role == "invoke" and method in INVOKE_METHODS)
        or (role == "container" and method in CONTAINER_METHODS)
    )
    if not allowed:
        raise PermissionDeniedError(f"{method} is not allowed for {caller.describe()}")
    return caller


def check_call(
    caller: Caller, what: str, app_id: str, app_deployed: bool, creator_app: str | None
) -> None:
    """May ``caller`` use a call of (or make one to) app ``app_id``?

    Containers: calls of their own app, calls to deployed apps (by name) that
    their app made. ``invoke`` tokens: deployed apps only.
    """
    if caller.role == "container":
        if app_id == caller.app_id or (app_deployed and creator_app in (None, caller.app_id)):
            return
    elif caller.role == "invoke":
        if app_deployed:
            return
    else:
        return
    raise PermissionDeniedError(
        f"{what} is not allowed for {caller.describe()}: it belongs to another app"
    )


def _local_paths(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "local_path" and isinstance(item, str):
                yield item
            else:
                yield from _local_paths(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _local_paths(item)


def host_paths(spec_or_image: dict[str, Any]) -> list[str]:
    """The host paths a function spec or image wire dict names (for :func:`check_host_paths`)."""
    paths = list(
        _local_paths(spec_or_image.get("image") if "layers" not in spec_or_image else spec_or_image)
    )
    if (
        "layers" not in spec_or_image
        and not spec_or_image.get("source")
        and not spec_or_image.get("serialized_fn")
    ):
        paths += [p for p in (spec_or_image.get("root_dir"), spec_or_image.get("module_file")) if p]
    return paths


def check_host_paths(caller: Caller, paths: list[str]) -> None:
    """Host paths are for a unix-socket peer running as the control plane's uid, or root."""
    if not paths:
        return
    shown = paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
    if caller.role == "container" or caller.peer_uid is None:
        raise PermissionDeniedError(
            f"local path {shown}: files on the control plane's machine can be named only by a client "
            "on that machine, over its unix socket (the SDK and CLI use it when the control plane is "
            "the embedded one); this request came "
            + (
                "from a container"
                if caller.role == "container"
                else "over TCP or a container's socket"
            )
        )
    if caller.peer_uid not in (0, os.geteuid()):
        raise PermissionDeniedError(
            f"local path {shown}: uid {caller.peer_uid} may not have the control plane "
            f"(uid {os.geteuid()}) read files for it"
        )
    for path in paths:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise InvalidError(f"local path {path!r} must be absolute")
