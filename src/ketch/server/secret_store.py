"""Secrets on the control plane: values encrypted at rest, opened only to start a container.

Encryption: AES-SIV (RFC 5297, ``cryptography``'s ``AESSIV`` with a 512-bit
key, i.e. AES-256), an authenticated cipher that is *deterministic*: sealing
the same values in the same context gives the same bytes. That keeps a
function spec that carries inline secrets byte-for-byte stable, so
redeploying an unchanged app does not retire its warm containers. The
associated data binds each sealed blob to its use (a named Secret's id, or
"inline"), so a blob cannot be moved to another Secret. The only thing the
determinism reveals is whether two blobs hold the same values.

The key lives in ``$KETCH_HOME/secret.key`` (mode 0600), made on first use.
Losing it makes every stored Secret unreadable; nothing else depends on it.

Where values live:

* named Secrets: the ``secret_values`` table, one sealed blob per Secret;
* inline Secrets (``from_dict``, ``from_dotenv``, ``from_local_environ``):
  sealed by ``SecretSeal`` when the app is created and stored inside the
  function spec, so they live and die with the app's functions.

RPCs: ``SecretCreate``, ``SecretLookup``, ``SecretSeal``. Listing and
deleting go through the generic ``ObjectList`` and ``ObjectDelete``.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
from sqlalchemy import Column, Float, LargeBinary, String, Table, delete, insert, select

from .._ids import new_id
from .._secret import check_env
from ..exception import AlreadyExistsError, NotFoundError, ServerError
from . import objects as _objects
from .rpc import rpc
from .store import Store, metadata

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    from .api import Api

logger = logging.getLogger(__name__)

KEY_FILE = "secret.key"
_KEY_BYTES = 64  # AES-SIV with two 256-bit halves
_VERSION = b"\x01"  # the first byte of every sealed blob
_INLINE = "inline"


secret_values = Table(
    "secret_values",
    metadata,
    Column("object_id", String, primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
)


class Sealer:
    """Seals and opens Secret values with the key in ``home/secret.key``."""

    def __init__(self, home: Path) -> None:
        self.path = home / KEY_FILE
        self._cipher: AESSIV | None = None  # made on first use (cryptography is imported then)

    def _load(self, create: bool) -> AESSIV:
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV

        if self._cipher is not None:
            return self._cipher
        if not self.path.exists():
            if not create:
                raise ServerError(f"{self.path} is missing, so stored Secrets cannot be opened")
            self._create_key()
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            logger.warning(
                "%s was readable by others (mode %o); setting it to 0600", self.path, mode
            )
            os.chmod(self.path, 0o600)
        try:
            key = base64.b64decode(self.path.read_bytes().strip(), validate=True)
        except ValueError:
            key = b""
        if len(key) != _KEY_BYTES:
            raise ServerError(f"{self.path} is damaged: it does not hold a {_KEY_BYTES}-byte key")
        self._cipher = AESSIV(key)
        return self._cipher

    def _create_key(self) -> None:
        """Write a new key with mode 0600 from the start; if another writer won the race, keep theirs."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{KEY_FILE}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, base64.b64encode(os.urandom(_KEY_BYTES)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.path)  # fails if the key appeared meanwhile: never replace a key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        logger.info("created the secret key %s", self.path)

    def seal(self, env: dict[str, str], context: str) -> bytes:
        plain = msgpack.packb(sorted(env.items()), use_bin_type=True)
        return _VERSION + self._load(create=True).encrypt(
            plain, [b"ketch-secret", context.encode()]
        )

    def open(self, sealed: bytes, context: str) -> dict[str, str]:
        from cryptography.exceptions import InvalidTag

        if not sealed.startswith(_VERSION):
            raise ServerError("a stored Secret has an unknown format")
        try:
            plain = self._load(create=False).decrypt(
                sealed[1:], [b"ketch-secret", context.encode()]
            )
        except InvalidTag:
            raise ServerError(
                f"a stored Secret cannot be decrypted with {self.path}: was the key replaced?"
            ) from None
        return {str(k): str(v) for k, v in msgpack.unpackb(plain, raw=False)}


_SEALERS: dict[Path, Sealer] = {}


def sealer_for(store: Store) -> Sealer:
    """The sealer of the home that holds ``store``'s database."""
    home = Path(str(store.engine.url.database)).resolve().parent
    sealer = _SEALERS.get(home)
    if sealer is None:
        sealer = _SEALERS[home] = Sealer(home)
    return sealer


# -- named Secrets --------------------------------------------------------------


def _find_named(store: Store, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The Secret a spec entry names: by id, or by name if it was deleted and created again since."""
    if entry.get("id"):
        row = (
            store.conn.execute(
                select(_objects.objects).where(_objects.objects.c.id == str(entry["id"]))
            )
            .mappings()
            .first()
        )
        if row is not None and row["kind"] == "secret":
            return dict(row)
    if entry.get("name"):
        return _objects.find(store, "secret", str(entry["name"]))
    return None


def named_values(store: Store, object_id: str) -> dict[str, str]:
    row = store.conn.execute(
        select(secret_values.c.sealed).where(secret_values.c.object_id == object_id)
    ).first()
    return sealer_for(store).open(row[0], object_id) if row else {}


def put_values(store: Store, object_id: str, sealed: bytes) -> None:
    """Replace a named Secret's sealed values (the caller commits)."""
    stmt = store.insert(secret_values).values(
        object_id=object_id, sealed=sealed, updated_at=time.time()
    )
    store.conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["object_id"],
            set_={"sealed": stmt.excluded.sealed, "updated_at": stmt.excluded.updated_at},
        )
    )


def _purge(store: Store, object_id: str) -> None:
    store.conn.execute(delete(secret_values).where(secret_values.c.object_id == object_id))


_objects.PURGE["secret"] = _purge


# -- containers -------------------------------------------------------------------


def container_env(store: Store, entries: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The variables a function's ``secrets`` give its container; later Secrets win.

    Raises ``NotFoundError`` for a named Secret deleted since the app
    started, ``ServerError`` when the key cannot open a value.
    """
    env: dict[str, str] = {}
    for entry in entries:
        if entry.get("sealed") is not None:
            env.update(sealer_for(store).open(bytes(entry["sealed"]), _INLINE))
            continue
        row = _find_named(store, entry)
        if row is None:
            raise NotFoundError(
                f"Secret {entry.get('name')!r} no longer exists: create it again with "
                f"`ketch secret create {entry.get('name')} KEY=VALUE ...`"
            )
        env.update(named_values(store, row["id"]))
    return env


# -- RPCs -----------------------------------------------------------------------


@rpc
async def SecretCreate(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Create Secret ``name`` with ``env``; with ``force`` replace the values of an existing one."""
    name = _objects.check_name("secret", body.get("name"))
    env = check_env(body.get("env"), f"Secret {name!r}")
    store: Store = api.store
    row = _objects.find(store, "secret", name)
    if row is not None and not body.get("force"):
        raise AlreadyExistsError(
            f"Secret {name!r} already exists (use --force to replace its values)"
        )
    object_id = new_id(_objects.KINDS["secret"]) if row is None else row["id"]
    sealed = sealer_for(store).seal(
        env, object_id
    )  # before any write: a failure leaves nothing behind
    if row is None:
        store.conn.execute(
            insert(_objects.objects).values(
                id=object_id, kind="secret", name=name, ephemeral=False, created_at=time.time()
            )
        )
    put_values(store, object_id, sealed)  # one transaction with the object row
    store.conn.commit()
    return {"object_id": object_id, "created": row is None}


@rpc
async def SecretUpdate(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Merge ``env`` into named Secret ``name``'s values, as ``dict.update`` does; containers
    started after it see the new values."""
    name = _objects.check_name("secret", body.get("name"))
    env = check_env(body.get("env"), f"Secret {name!r}")
    store: Store = api.store
    row = _objects.find(store, "secret", name)
    if row is None:
        raise NotFoundError(f"Secret {name!r} not found")
    merged = {**named_values(store, row["id"]), **env}
    put_values(store, row["id"], sealer_for(store).seal(merged, row["id"]))
    store.conn.commit()
    return {"object_id": row["id"], "keys": sorted(merged)}


@rpc
async def SecretLookup(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """The id of Secret ``name``; ``required_keys`` it lacks are a NotFoundError."""
    name = _objects.check_name("secret", body.get("name"))
    row = _objects.find(api.store, "secret", name)
    if row is None:
        raise NotFoundError(
            f"Secret {name!r} not found: create it with `ketch secret create {name} KEY=VALUE ...`"
        )
    required = [str(k) for k in body.get("required_keys") or []]
    if required:
        have = named_values(api.store, row["id"])
        missing = [k for k in required if k not in have]
        if missing:
            raise NotFoundError(f"Secret {name!r} is missing required key(s): {', '.join(missing)}")
    return {"object_id": row["id"]}


@rpc
async def SecretSeal(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Seal inline values for a function spec; only the control plane can open them."""
    env = check_env(body.get("env"), "an inline Secret")
    return {"sealed": sealer_for(api.store).seal(env, _INLINE)}
