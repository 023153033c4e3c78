"""Variants of a function: ``with_options``, ``with_concurrency``, ``with_batching``, and
``update_autoscaler``.

A variant is a function of the same app with the same code and its own id, whose spec is
its base's with some options overridden (``ketch._spec.apply_overrides``). Being a function
in its own right, it gets its own containers, GPUs, queue, retries and metrics, and its
calls survive a control-plane restart like any other's. Its row keeps the overrides, so a
redeploy that changes the base re-derives it; the same overrides of the same base always
give the same variant id, so binding options twice costs one row.

``update_autoscaler`` changes a function's own spec in place, for the containers it has
(no new pool, no drain), until its app is deployed again, as in Modal.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from .._ids import stable_id
from .._serialization import pack, unpack
from .._spec import FunctionSpec, apply_overrides
from ..exception import InvalidError, NotFoundError, PermissionDeniedError
from .auth import Caller
from .rpc import rpc

if TYPE_CHECKING:
    from .api import Api
    from .dispatcher import Dispatcher

AUTOSCALER_FIELDS = frozenset(
    {"min_containers", "max_containers", "buffer_containers", "scaledown_window"}
)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = {**old, **new}
    if isinstance(old.get("env"), dict) and isinstance(new.get("env"), dict):
        merged["env"] = {**old["env"], **new["env"]}
    return merged


def bind(d: Dispatcher, function_id: str, overrides: dict[str, Any]) -> str:
    """The id of ``function_id`` with ``overrides``: made, or found if made before."""
    row = d.store.get_function(function_id)
    if row is None:
        raise NotFoundError(f"no function {function_id!r}")
    if row["base_id"]:  # options on a variant stack on its own
        overrides = _merge(unpack(row["options"]), overrides)
        row = d.store.get_function(row["base_id"])
        if row is None:
            raise NotFoundError(f"no function {function_id!r}")
    if not overrides:
        return str(row["id"])
    base_spec = d.function_spec(row["id"])[0]
    spec = apply_overrides(base_spec, overrides)
    options = pack(_canonical(overrides))
    variant_id = stable_id("fu", row["id"], hashlib.sha256(options).hexdigest())
    if d.store.put_variant(variant_id, row, pack(spec.to_wire()), options):
        d.forget_function(variant_id)
    return variant_id


def refresh(d: Dispatcher, base_id: str) -> None:
    """The base's spec changed (a redeploy, a rollback): each variant takes it on, keeping
    its overrides; a variant whose overrides the new spec refuses keeps its old spec."""
    base = d.function_spec(base_id)[0]
    for row in d.store.function_variants(base_id):
        try:
            spec = apply_overrides(base, unpack(row["options"]))
        except InvalidError:
            continue
        if d.store.put_variant(
            row["id"], d.store.get_function(base_id) or row, pack(spec.to_wire()), row["options"]
        ):
            d.forget_function(row["id"])


def update_autoscaler(d: Dispatcher, function_id: str, fields: dict[str, Any]) -> FunctionSpec:
    unknown = sorted(set(fields) - AUTOSCALER_FIELDS)
    if unknown:
        raise InvalidError(
            f"update_autoscaler takes {', '.join(sorted(AUTOSCALER_FIELDS))}, not {', '.join(unknown)}"
        )
    spec = apply_overrides(d.function_spec(function_id)[0], fields)
    d.store.set_function_spec(function_id, pack(spec.to_wire()))
    d.respec(function_id, spec, time.monotonic())
    return spec


def _check_container(api: Api, caller: Caller, spec: FunctionSpec, app_id: str) -> None:
    """A container binds options on its own app's functions (or deployed ones it may call),
    and gives the variant only Secrets and Volumes its own function has."""
    api.check_call(caller, "binding options to this function", app_id)
    handle = api.d.containers.get(caller.container_id or "")
    info = api.d.pool_info.get(handle.pool_key) if handle is not None else None
    own = info.spec if info is not None else None
    for entry in spec.secrets:
        if own is None or entry not in own.secrets:
            raise PermissionDeniedError(
                "a container may give with_options only its own function's Secrets"
            )
    for entry in spec.volumes:
        if own is None or not any(v["object_id"] == entry["object_id"] for v in own.volumes):
            raise PermissionDeniedError(
                "a container may give with_options only its own function's Volumes"
            )


@rpc
def FunctionBindOptions(api: Api, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """``with_options`` / ``with_concurrency`` / ``with_batching``: the variant's id."""
    function_id = str(body["function_id"])
    overrides = body.get("options") or {}
    _, app_id = api.d.function_spec(function_id)
    if caller.role == "container":
        checked = apply_overrides(FunctionSpec(tag="-", module_name="", qualname=""), overrides)
        _check_container(api, caller, checked, app_id)
    return {"function_id": bind(api.d, function_id, overrides)}


@rpc
def FunctionUpdateAutoscaler(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """``Function.update_autoscaler``: until the app is deployed again."""
    spec = update_autoscaler(api.d, str(body["function_id"]), body.get("settings") or {})
    return {name: getattr(spec, name) for name in sorted(AUTOSCALER_FIELDS)}
