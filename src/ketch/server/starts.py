"""Starting a function's container: its GPUs, budget, Secrets and Volumes, environment
and source, then the worker's start (the dispatcher's ``StartContainer`` action)."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import time
from typing import TYPE_CHECKING

from .. import _source
from .._serialization import serialize_exception
from .._spec import FunctionSpec
from ..exception import BudgetExceededError, Error, ImageBuildError, InvalidError
from ..worker import gpus
from . import scheduler as sm
from . import secret_store
from .dispatch_state import ContainerHandle, PoolInfo

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger("ketch.server.dispatcher")


def allocate_gpus(d: Dispatcher, pool: sm.Pool, container_id: str) -> dict[str, str]:
    """Give a GPU container its devices now, before the next pool asks for room."""
    spec = d.pool_info[pool.key].spec
    if not spec.gpu:
        return {}
    got = d.gpus.allocate(container_id, spec.gpu)
    if got is None:  # the room check makes this rare; the start fails and is retried
        return {"KETCH_GPU_UNAVAILABLE": "1"}
    return gpus.visible_devices_env(got[1])


def over_budget(d: Dispatcher, pool: sm.Pool, container_id: str, app_id: str) -> bool:
    """An app over its budget starts no container: the inputs waiting for one fail."""
    app = d.store.get_app(app_id)
    over = d.meter.over_budget(app_id, str(app["name"])) if app else None
    if over is None:
        return False
    error = serialize_exception(BudgetExceededError(over))
    d._perform(pool, pool.container_init_failed(container_id, time.monotonic(), over), error)
    d.container_exited(container_id, "not started: over budget")
    return True


async def secrets_and_volumes(
    d: Dispatcher, pool: sm.Pool, container_id: str, info: PoolInfo
) -> tuple[dict[str, str], list[tuple[str, str, bool]]] | None:
    """The container's Secrets' variables and Volume mounts; None (the start failed,
    and its waiting inputs with it) when one is unavailable."""
    try:
        # Opened here, on the way into the container, and nowhere else.
        secret_env = secret_store.container_env(d.store, info.spec.secrets)
        mounts: list[tuple[str, str, bool]] = []
        if info.spec.volumes:
            if d.volumes is None:
                raise InvalidError("this control plane keeps no Volumes")
            mounts = await d.volumes.prepare(
                container_id, info.spec.volumes, d.worker.enforces_read_only
            )
    except Error as exc:
        d._perform(
            pool,
            pool.container_init_failed(
                container_id, time.monotonic(), "secrets or volumes unavailable"
            ),
            serialize_exception(exc),
        )
        d.container_exited(container_id, f"could not start: {exc}")
        return None
    return secret_env, mounts


async def start_container(
    d: Dispatcher, pool: sm.Pool, handle: ContainerHandle, gpu_env: dict[str, str]
) -> None:
    container_id = handle.id
    info = d.pool_info[pool.key]
    logger.info("starting container %s for %s", container_id, info.spec.tag)
    if over_budget(d, pool, container_id, info.app_id):
        return
    prepared = await secrets_and_volumes(d, pool, container_id, info)
    if prepared is None:
        return
    secret_env, mounts = prepared
    if handle.stop_requested:
        d.container_exited(container_id, "was stopped before it started")
        return
    # Precedence, lowest first: the image's ENV (sandbox), secrets in list order,
    # the function's env=, then ketch's own variables.
    env = {
        **secret_env,
        **info.spec.env,
        "KETCH_CONTAINER_ID": container_id,
        "KETCH_CONTAINER_TOKEN": handle.token,
        "KETCH_CHANNEL": d.channel_addr,
        "KETCH_SERVER_URL": d.server_url,
        "KETCH_PARENT_PID": str(os.getpid()),
        **gpu_env,
    }
    if info.spec.volumes:
        env["KETCH_VOLUMES"] = json.dumps(info.spec.volumes)
    if info.spec.memory_snapshot and info.params:  # its snapshot is of these parameters
        env["KETCH_SNAPSHOT_PARAMS"] = base64.b64encode(info.params).decode()
    try:
        if env.pop("KETCH_GPU_UNAVAILABLE", None):
            raise RuntimeError("its GPUs were taken by another container")
        run_spec = info.spec
        if info.spec.source and info.spec.root_dir and info.spec.module_file:
            run_spec = source_spec(d, info.spec)
            # The sandbox runtime puts it at /root.
            env["KETCH_SOURCE_ROOT"] = str(run_spec.root_dir)
        await d.worker.start(container_id, env, run_spec, mounts)
    except ImageBuildError as exc:
        d._perform(
            pool,
            pool.container_init_failed(container_id, time.monotonic(), "image build failed"),
            serialize_exception(exc),
        )
        d.container_exited(container_id, f"could not start: {exc}")
    except Exception as exc:
        logger.exception("could not start container %s", container_id)
        d.container_exited(container_id, f"could not start: {exc}")
    else:
        if handle.stop_requested:  # asked while it started: now its worker has it
            d.worker.terminate(container_id, 1.0)


def source_spec(d: Dispatcher, spec: FunctionSpec) -> FunctionSpec:
    """``spec`` pointing at its deployed source snapshot, unpacked under ``KETCH_HOME/sources``."""
    assert spec.source is not None and spec.root_dir and spec.module_file
    target = d.blobs.root.parent / "sources" / str(spec.source["hash"])
    if not target.is_dir():
        _source.unpack_snapshot(d.blobs.get(str(spec.source["blob_id"])), target)
    rel = os.path.relpath(spec.module_file, spec.root_dir)
    return dataclasses.replace(spec, root_dir=str(target), module_file=str(target / rel))
