"""Apps: the unit that groups functions and classes, runs them and deploys them.

Example::

    app = ketch.App("demo")

    @app.function()
    def square(x: int) -> int:
        return x * x

    @app.local_entrypoint()
    def main(n: int = 3):
        print(square.remote(n))

``ketch run demo.py --n 4`` runs it; so does ``with app.run(): square.remote(4)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import posixpath
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import _legacy_options, _sync
from ._client import _Client
from ._config import config, in_container
from ._ids import new_id
from ._secret import check_secrets
from ._serialization import serialize
from ._spec import FunctionSpec, build_options, mount_path_ok
from .cls import _Cls, class_batching, class_spec_methods, new_class_function
from .exception import InvalidError, from_wire
from .functions import _Function
from .image import Image, default_image
from .schedule import check_schedule

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import ParamSpec, Protocol, dataclass_transform, overload

    from .cls import Cls
    from .functions import Function
    from .partial import parameter

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _source_location(obj: Any) -> tuple[str, str | None, str | None]:
    """(module name, module file, root dir) under which a container can import ``obj``."""
    module_name = obj.__module__
    module = sys.modules.get(module_name)
    module_file = getattr(module, "__file__", None)
    if module_file is None:
        return module_name, None, None
    path = Path(module_file).resolve()
    if module_name == "__main__":
        module_name = path.stem
    package_depth = module_name.count(".")
    root = path.parent
    for _ in range(package_depth):
        root = root.parent
    return module_name, str(path), str(root)


class _App:
    """A group of functions and classes that run and deploy together."""

    def __init__(
        self, name: str | None = None, *, image: Image | None = None, description: str | None = None
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name or len(name) > 64):
            raise InvalidError(
                f"app name must be a non-empty string of at most 64 characters, got {name!r}"
            )
        _check_image(image)
        self._image = image
        self._name = name
        self._description = description
        self._functions: dict[str, _Function] = {}
        self._classes: dict[str, _Cls] = {}
        self._local_entrypoints: dict[str, Callable[..., Any]] = {}
        self._app_id: str | None = None
        self._version: int | None = None  # the deployed version, after deploy()
        self._running = False

    def __repr__(self) -> str:
        return f"_App({self._name!r})"

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def app_id(self) -> str | None:
        """The id of the running or deployed app (``ap-…``)."""
        return self._app_id

    @property
    def image(self) -> Image:
        """The image the app's functions and classes run in unless they name one: the
        ``App(image=)`` given, else the default image.

        Example: ``with app.image.imports(): import numpy``
        """
        return self._image if self._image is not None else default_image()

    @classmethod
    async def lookup(
        cls,
        name: str,
        *,
        create_if_missing: bool = False,
        environment_name: str | None = None,
        client: Any = None,
    ) -> _App:
        """The deployed app called ``name``, as Modal's ``App.lookup``: what
        ``Sandbox.create(app=...)`` needs. ``create_if_missing``: deploy an empty app of
        that name when there is none (a later ``ketch deploy`` of that name fills it).

        Example: ``sb = ketch.Sandbox.create("echo", "hi", app=ketch.App.lookup("box", create_if_missing=True))``
        """
        if not isinstance(name, str) or not name:
            raise InvalidError(f"App.lookup needs a name, got {name!r}")
        reply = await (await _Client.get()).rpc(
            "AppLookup", {"name": name, "create_if_missing": bool(create_if_missing)}
        )
        app = cls(name)
        app._app_id = str(reply["app_id"])
        return app

    @property
    def registered_functions(self) -> dict[str, _Function]:
        return dict(self._functions)

    @property
    def registered_classes(self) -> dict[str, _Cls]:
        return dict(self._classes)

    @property
    def registered_entrypoints(self) -> dict[str, Callable[..., Any]]:
        return dict(self._local_entrypoints)

    # -- decorators ----------------------------------------------------------
    def function(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        image: Any = None,
        gpu: Any = None,
        cpu: Any = None,
        memory: Any = None,
        ephemeral_disk: Any = None,
        timeout: Any = 300,
        retries: Any = None,
        min_containers: Any = 0,
        max_containers: Any = None,
        buffer_containers: Any = 0,
        scaledown_window: Any = 60,
        env: dict[str, str] | None = None,
        secrets: Any = None,
        volumes: Any = None,
        block_network: bool = False,
        serialized: bool = False,
        name: str | None = None,
        validate_args: bool = True,
        schedule: Any = None,
        **unknown: Any,
    ) -> Callable[[Callable[..., Any]], _Function]:
        """Register a function to run in containers. Options are validated here."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.function() with parentheses")
        named = {
            "min_containers": min_containers,
            "max_containers": max_containers,
            "scaledown_window": scaledown_window,
        }
        extra = _legacy_options.translate("app.function", unknown, named)
        min_containers, max_containers = named["min_containers"], named["max_containers"]
        scaledown_window = named["scaledown_window"]
        options = build_options(
            timeout=timeout,
            retries=retries,
            min_containers=min_containers,
            max_containers=max_containers,
            buffer_containers=buffer_containers,
            scaledown_window=scaledown_window,
            env=env,
            gpu=gpu,
            cpu=cpu,
            memory=memory,
            ephemeral_disk=ephemeral_disk,
        )
        _check_image(image)
        secret_list = check_secrets(secrets)
        volume_map = check_volumes(volumes)
        schedule_wire = check_schedule(schedule)

        def wrap(raw_f: Callable[..., Any]) -> _Function:
            if isinstance(raw_f, _Function):
                raise InvalidError("@app.function() is applied twice")
            if inspect.isclass(raw_f):
                raise InvalidError("use @app.cls() for classes")
            if not callable(raw_f):
                raise InvalidError(f"@app.function() decorates a function, not {raw_f!r}")
            spec = self._spec_for(raw_f, name or raw_f.__name__, options, serialized)
            spec.validate_args = bool(validate_args)
            spec.image = _image_wire(image or self._image)
            spec.block_network = bool(block_network)
            spec.is_generator = inspect.isgeneratorfunction(raw_f) or inspect.isasyncgenfunction(
                raw_f
            )
            if extra.get("is_generator") is not None:
                spec.is_generator = bool(extra["is_generator"])
            spec.container_max_inputs = int(extra.get("container_max_inputs", 0))
            spec.restrict_modal_access = bool(extra.get("restrict_modal_access", False))
            spec.memory_snapshot = bool(extra.get("memory_snapshot", False))
            _allow_concurrent_inputs(spec, extra.get("allow_concurrent_inputs"))
            web = getattr(raw_f, "__ketch_web__", None)
            if web is not None:
                spec.web = dict(web)
            _web_server_limits(spec)
            if schedule_wire is not None:
                if inspect.signature(raw_f).parameters and any(
                    p.default is p.empty for p in inspect.signature(raw_f).parameters.values()
                ):
                    raise InvalidError(
                        f"{raw_f.__name__} has a schedule, so it must take no required arguments"
                    )
                spec.schedule = schedule_wire
            fn = _Function(self, spec, raw_f)
            fn._secrets = secret_list
            fn._volumes = volume_map
            self._register(spec.tag, fn)
            return fn

        return _sync.translating(wrap)

    def cls(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        image: Any = None,
        gpu: Any = None,
        cpu: Any = None,
        memory: Any = None,
        ephemeral_disk: Any = None,
        timeout: Any = 300,
        retries: Any = None,
        min_containers: Any = 0,
        max_containers: Any = None,
        buffer_containers: Any = 0,
        scaledown_window: Any = 60,
        env: dict[str, str] | None = None,
        secrets: Any = None,
        volumes: Any = None,
        block_network: bool = False,
        serialized: bool = False,
        name: str | None = None,
        validate_args: bool = True,
        **unknown: Any,
    ) -> Callable[[type], _Cls]:
        """Register a class whose ``@ketch.method()`` methods run in containers."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.cls() with parentheses")
        named = {
            "min_containers": min_containers,
            "max_containers": max_containers,
            "scaledown_window": scaledown_window,
        }
        extra = _legacy_options.translate("app.cls", unknown, named)
        min_containers, max_containers = named["min_containers"], named["max_containers"]
        scaledown_window = named["scaledown_window"]
        options = build_options(
            timeout=timeout,
            retries=retries,
            min_containers=min_containers,
            max_containers=max_containers,
            buffer_containers=buffer_containers,
            scaledown_window=scaledown_window,
            env=env,
            gpu=gpu,
            cpu=cpu,
            memory=memory,
            ephemeral_disk=ephemeral_disk,
        )
        _check_image(image)
        secret_list = check_secrets(secrets)
        volume_map = check_volumes(volumes)

        def wrap(user_cls: type) -> _Cls:
            if not inspect.isclass(user_cls):
                raise InvalidError(f"@app.cls() decorates a class, not {user_cls!r}")
            methods = class_spec_methods(user_cls)
            if not methods:
                raise InvalidError(f"{user_cls.__name__} has no @ketch.method() methods")
            spec = self._spec_for(user_cls, name or user_cls.__name__, options, serialized)
            spec.validate_args = bool(validate_args)
            spec.image = _image_wire(image or self._image)
            spec.block_network = bool(block_network)
            spec.is_class = True
            spec.methods = methods
            _allow_concurrent_inputs(spec, extra.get("allow_concurrent_inputs"))
            spec.container_max_inputs = int(extra.get("container_max_inputs", 0))
            spec.restrict_modal_access = bool(extra.get("restrict_modal_access", False))
            spec.memory_snapshot = bool(extra.get("memory_snapshot", False))
            batching = class_batching(user_cls, methods)
            if batching is not None:
                if spec.max_inputs > 1:
                    raise InvalidError(
                        f"{spec.tag}: a class cannot be both @ketch.concurrent and @ketch.batched"
                    )
                spec.batch_max_size, spec.batch_wait_ms = batching
            _web_server_limits(spec)
            cls_obj = new_class_function(self, spec, user_cls)
            cls_obj._fn._secrets = secret_list
            cls_obj._fn._volumes = volume_map
            self._register(spec.tag, cls_obj._fn)
            self._classes[spec.tag] = cls_obj
            return cls_obj

        return _sync.translating(wrap)

    def server(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        port: int,
        unauthenticated: bool = False,
        startup_timeout: float = 30.0,
        target_concurrency: int | None = None,
        min_containers: int = 0,
        max_containers: int | None = None,
        buffer_containers: int = 0,
        scaleup_window: Any = None,
        scaledown_window: Any = 60,
        exit_grace_period: Any = None,
        routing_region: str | None = None,
        h2: bool = False,
        label: str | None = None,
        **cls_options: Any,
    ) -> Callable[[type], Any]:
        """Register a class whose ``@ketch.enter()`` method starts an HTTP server on ``port``,
        served at a URL of its own (Modal's ``@app.server``; see ``ketch._server``).

        Example: ``@app.server(port=8000, unauthenticated=True)`` over the class.
        """
        from ._server import server_decorator

        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.server(port=...) with parentheses")
        cls_options.update(
            min_containers=min_containers,
            buffer_containers=buffer_containers,
            scaledown_window=scaledown_window,
        )
        wrap = server_decorator(
            self,
            port=port,
            unauthenticated=unauthenticated,
            startup_timeout=startup_timeout,
            target_concurrency=target_concurrency,
            max_containers=max_containers,
            routing_region=routing_region,
            scaleup_window=scaleup_window,
            exit_grace_period=exit_grace_period,
            h2=h2,
            label=label,
            cls_options=cls_options,
        )
        return _sync.translating(wrap)

    def local_entrypoint(
        self, _warn_parentheses_missing: Any = None, *, name: str | None = None
    ) -> Callable[[F], F]:
        """Mark the function ``ketch run`` calls locally; its parameters become CLI options."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.local_entrypoint() with parentheses")

        def wrap(fn: F) -> F:
            self._local_entrypoints[name or fn.__name__] = fn
            return fn

        return wrap

    def include(self, other: _App) -> _App:
        """Add another app's functions and classes to this one."""
        for tag, fn in other._functions.items():
            self._register(tag, fn)
        self._classes.update(other._classes)
        return self

    def _register(self, tag: str, fn: _Function) -> None:
        if tag in self._functions and self._functions[tag] is not fn:
            logger.warning("%s is registered twice in app %s; the later one wins", tag, self._name)
        fn._app = self
        self._functions[tag] = fn

    def _spec_for(
        self, obj: Any, tag: str, options: dict[str, Any], serialized: bool
    ) -> FunctionSpec:
        module_name, module_file, root_dir = _source_location(obj)
        concurrent = getattr(obj, "__ketch_concurrent__", None)
        batched = getattr(obj, "__ketch_batched__", None)
        if concurrent and batched:
            raise InvalidError("a function cannot be both @ketch.concurrent and @ketch.batched")
        spec = FunctionSpec(
            tag=tag,
            module_name=module_name,
            qualname=obj.__qualname__,
            module_file=module_file,
            root_dir=root_dir,
            **options,
        )
        if module_name == "__main__" and module_file is None and not in_container():
            # A notebook, a REPL or `python -c`: no file a container could import (Modal
            # serializes such functions too).
            serialized = True
        if "<locals>" in obj.__qualname__ and not serialized:
            raise InvalidError(
                f"{tag} is defined inside a function: define it at module level or use serialized=True"
            )
        if serialized:
            spec.serialized_fn = _pickle_by_value(obj)
        if concurrent:
            spec.max_inputs, spec.target_inputs = concurrent
        if batched:
            spec.batch_max_size, spec.batch_wait_ms = batched
        clustered = getattr(obj, "__ketch_clustered__", None)
        if clustered:
            if concurrent or batched:
                raise InvalidError(f"{tag}: a clustered function takes one input at a time")
            spec.cluster_size = int(clustered)
        if not inspect.isclass(obj):
            with contextlib.suppress(Exception):
                spec.signature = serialize(inspect.signature(obj))
        return spec

    # -- running -------------------------------------------------------------
    def _hydrate_in_container(self, app_id: str, function_ids: dict[str, str]) -> None:
        self._app_id = app_id
        for tag, fn in self._functions.items():
            if tag in function_ids:
                fn._object_id = function_ids[tag]

    async def _create(self, deployed: bool, name: str | None) -> tuple[str, float]:
        """Create the app on the control plane; returns its id and the heartbeat interval it wants."""
        client = await _Client.get()
        source_hash = await _attach_sources(client, list(self._functions.values()), deployed)
        await _build_images(client, [fn._spec for fn in self._functions.values()])
        await _attach_secrets(client, list(self._functions.values()))
        await _attach_volumes(list(self._functions.values()))
        reply = await client.rpc(
            "AppCreate",
            {
                "app_id": new_id("ap"),
                "name": name or self._name or "",
                "deployed": deployed,
                "functions": [fn._spec.to_wire() for fn in self._functions.values()],
                "source_hash": source_hash,
            },
        )
        self._app_id = reply["app_id"]
        self._version = reply.get("version")
        for warning in reply.get("warnings", []):
            sys.stderr.write(f"ketch: warning: {warning}\n")
        for tag, fid in reply["function_ids"].items():
            self._functions[tag]._object_id = fid
        for endpoint, url in reply.get("web_urls", {}).items():
            self._functions[endpoint.split(".")[0]]._web_urls[endpoint] = url
        return self._app_id, float(reply.get("heartbeat_s", 15.0))

    @_sync.context_manager
    @contextlib.asynccontextmanager
    async def run(
        self, *, show_logs: bool = True, interactive: bool = False
    ) -> AsyncIterator[_App]:
        """Run the app while the block lasts (an ephemeral app), streaming container logs.

        ``interactive=True`` (``ketch run -i``): a ``breakpoint()`` or ``ketch.interact()``
        in remote code gets this terminal, one container at a time.

        Example: ``with app.run(): square.remote(2)``
        """
        if in_container():
            raise InvalidError(
                "app.run() was called inside a container, most likely while the container imported your "
                'module: put it under `if __name__ == "__main__":`'
            )
        if self._running:
            raise InvalidError(f"app {self._name!r} is already running")
        self._running = True
        app_id: str | None = None
        follower: _Follower | None = None
        beat: asyncio.Task[None] | None = None
        attending: asyncio.Task[None] | None = None
        envs = {tag: fn._spec.env for tag, fn in self._functions.items()}
        if interactive:  # its containers open sessions (ketch.guest.interact)
            for fn in self._functions.values():
                fn._spec.env = {**fn._spec.env, "KETCH_INTERACTIVE": "1"}
        try:  # whatever fails (a build, a Secret, the connection), the app is not left running
            app_id, heartbeat_s = await self._create(deployed=False, name=None)
            client = await _Client.get()
            follower = _Follower(client, app_id) if show_logs else None
            beat = asyncio.create_task(_heartbeat(client, app_id, heartbeat_s))
            if interactive:
                from ._terminal import attend

                attending = asyncio.create_task(attend(client, app_id))
            yield self
        finally:
            for tag, env in envs.items():
                self._functions[tag]._spec.env = env
            for task in (beat, attending):
                if task is not None:
                    task.cancel()
            if app_id is not None:
                with contextlib.suppress(Exception):
                    await (await _Client.get()).rpc("AppStop", {"app_id": app_id, "wait": 5.0})
            if follower is not None:
                await follower.stop()
            self._running = False
            for fn in self._functions.values():
                fn._object_id = None

    async def deploy(self, *, name: str | None = None) -> _App:
        """Deploy the app under its name: its functions stay callable by name until stopped."""
        if not (name or self._name):
            raise InvalidError(
                "a deployed app needs a name: ketch.App('my-app') or deploy(name=...)"
            )
        await self._create(deployed=True, name=name)
        return self


async def _heartbeat(client: _Client, app_id: str, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):
            await client.rpc("AppHeartbeat", {"app_id": app_id})


class _Follower:
    """Prints an app's container output as it arrives; ``printed`` counts what it has shown."""

    def __init__(self, client: _Client, app_id: str) -> None:
        self.printed = 0
        self.task = asyncio.create_task(self._run(client, app_id))

    async def _run(self, client: _Client, app_id: str) -> None:
        after = 0
        while True:
            try:
                reply = await client.rpc(
                    "AppLogs", {"app_id": app_id, "after": after, "timeout": 30}
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.5)
                continue
            for row in reply["logs"]:
                after = row["seq"]
                print_log_line(row)
                self.printed += 1
            if reply["state"] == "stopped" and not reply["logs"]:
                return

    async def stop(self) -> None:
        """Let it drain what the stopped app printed: as long as it keeps printing, wait."""
        while True:
            before = self.printed
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=3.0)
                return
            except TimeoutError:
                if self.printed == before:  # stuck, not slow: give up
                    self.task.cancel()
                    return
            except Exception:
                self.task.cancel()
                return


def print_log_line(row: dict[str, Any]) -> None:
    stream = sys.stderr if row["stream"] == "stderr" else sys.stdout
    text = row["text"]
    prefix = f"[{row['tag']}] " if row.get("tag") and config.get("log_prefix") else ""
    stream.write(prefix + text if text.endswith("\n") else prefix + text + "\n")
    stream.flush()


async def secret_entries(
    client: _Client, secrets: list[Any], wired: dict[int, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """A spec's ``secrets``: named ones by id (a missing one fails here, before anything
    starts), inline ones sealed by the control plane, never in clear text. ``wired``
    remembers Secrets already sent, so one shared by many functions is sealed once."""
    wired = {} if wired is None else wired
    for secret in secrets:
        if id(secret) not in wired:
            wired[id(secret)] = await secret._wire(client)
    return [wired[id(secret)] for secret in secrets]


async def volume_entries(volumes: dict[str, Any]) -> list[dict[str, Any]]:
    """A spec's ``volumes``: each mount by the Volume's id (a missing one fails here)."""
    entries = []
    for path, vol in volumes.items():
        entry = {"path": path, "object_id": await vol._resolve(), "name": vol._name}
        if vol._read_only:
            entry["read_only"] = True
        entries.append(entry)
    return entries


async def _attach_secrets(client: _Client, fns: list[_Function]) -> None:
    """Put each function's Secrets into its spec (:func:`secret_entries`)."""
    wired: dict[int, dict[str, Any]] = {}
    for fn in fns:
        fn._spec.secrets = await secret_entries(client, fn._secrets, wired)


async def _attach_volumes(fns: list[_Function]) -> None:
    """Put each function's Volumes into its spec (:func:`volume_entries`)."""
    for fn in fns:
        fn._spec.volumes = await volume_entries(fn._volumes)


def _allow_concurrent_inputs(spec: FunctionSpec, value: Any) -> None:
    """Modal's older ``allow_concurrent_inputs=N``: ``@ketch.concurrent(max_inputs=N)``."""
    if value is None:
        return
    from .partial import concurrent

    concurrent(max_inputs=value)  # checks it
    if spec.max_inputs > 1 and spec.max_inputs != value:
        raise InvalidError(f"{spec.tag}: allow_concurrent_inputs and @ketch.concurrent disagree")
    spec.max_inputs = value


def _web_server_limits(spec: FunctionSpec) -> None:
    """A ``web_server`` listens on a fixed port of the node's network, so one container
    serves it (a second would find the port taken), taking many requests at once."""
    if not any(cfg.get("type") == "server" for cfg in spec.web_methods().values()):
        return
    if spec.max_containers not in (None, 1):
        raise InvalidError(
            f"{spec.tag}: a @ketch.web_server endpoint runs in one container; drop max_containers"
        )
    spec.max_containers = 1
    if (
        spec.max_inputs == 1 and not spec.target_inputs
    ):  # no @ketch.concurrent: let the server take the load
        spec.max_inputs = 1000


async def _attach_sources(client: _Client, fns: list[_Function], deployed: bool) -> str:
    """A deploy snapshots the app's source into a blob, so the version keeps its code (see
    ``_source``); returns a short hash of the snapshots for ``ketch app history`` ("" if none)."""
    from . import _source  # deploys only: tarfile stays off the import path of every container

    made: dict[tuple[str, str, str], dict[str, str]] = {}
    for fn in fns:
        spec = fn._spec
        spec.source = None
        if (
            not deployed
            or not spec.module_file
            or not spec.root_dir
            or spec.serialized_fn is not None
        ):
            continue
        key = (spec.root_dir, spec.module_name, spec.module_file)
        if key not in made:
            data = _source.snapshot(Path(spec.root_dir), spec.module_name, spec.module_file)
            made[key] = {"blob_id": await client.put_blob(data), "hash": _source.digest(data)}
        spec.source = made[key]
    digests = sorted(m["hash"] for m in made.values())
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:8] if digests else ""


def _image_wire(image: Image | None) -> dict[str, Any] | None:
    return image.to_wire() if image is not None else None


async def _build_images(client: _Client, specs: list[FunctionSpec]) -> None:
    """Build every image the app's functions use before the app starts, streaming the output.

    A failing step raises ``ImageBuildError`` here, so ``app.run()`` and
    ``ketch deploy`` fail before anything runs.
    """
    if in_container():
        return
    images: dict[str, dict[str, Any]] = {}
    for spec in specs:
        wire = spec.image or default_image().to_wire()
        images.setdefault(wire["layers"][-1]["hash"], wire)
    for wire in images.values():
        skipped = await build_image(client, wire)
        if skipped:
            if spec_images := [s for s in specs if s.image]:
                logger.warning("%s: image= of %s is not applied", skipped, spec_images[0].tag)
            return


async def build_image(client: _Client, wire: dict[str, Any]) -> str | None:
    """Build one image (streaming the output) unless it is cached; returns why it was not
    built when the control plane applies no images."""
    everything = bool(config.get("force_build"))  # KETCH_FORCE_BUILD=1 on the client
    marked = any(layer.get("force_build") for layer in wire["layers"])
    force = "all" if everything else ("marked" if marked else "")
    reply = await client.rpc("ImageBuild", {"image": wire, "force": force})
    if reply.get("skipped"):
        return str(reply["skipped"])
    if not reply.get("cached"):
        await _stream_build(client, reply["build_id"], reply["image_hash"])
    return None


async def _stream_build(client: _Client, build_id: str, image_hash: str) -> None:
    sys.stderr.write(f"Building image {image_hash[:12]}\n")
    sys.stderr.flush()
    offset = 0
    while True:
        status = await client.rpc(
            "ImageBuildStatus", {"build_id": build_id, "offset": offset, "wait": 20}, timeout=60
        )
        for line in status["lines"]:
            sys.stderr.write(f"  {line}\n")
        sys.stderr.flush()
        offset = status["offset"]
        if status["done"]:
            if status.get("error"):
                raise from_wire(status["error"]["type"], status["error"]["message"])
            sys.stderr.write(f"Built image {image_hash[:12]}\n")
            sys.stderr.flush()
            return


def _check_image(image: Any) -> None:
    if image is not None and not isinstance(image, Image):
        raise InvalidError(
            f"image must be a ketch.Image (e.g. ketch.Image.debian_slim()), not {type(image).__name__}"
        )


def check_volumes(volumes: Any) -> dict[str, Any]:
    """``volumes={"/data": vol}``: absolute mount paths (not ``/``, ``/root`` or ketch's own) to Volumes."""
    from ._volume import _Volume

    if volumes is None:
        return {}
    if not isinstance(volumes, dict):
        raise InvalidError(
            f"volumes must map mount paths to ketch.Volume objects, not {type(volumes).__name__}"
        )
    out: dict[str, Any] = {}
    for path, vol in volumes.items():
        clean = posixpath.normpath(path) if isinstance(path, str) else ""
        if not isinstance(path, str) or not path.startswith("/") or not mount_path_ok(clean):
            raise InvalidError(
                f"volume mount path must be an absolute path other than /, /root and system paths, not {path!r}"
            )
        vol = _sync._unwrap(vol)
        if not isinstance(vol, _Volume):
            raise InvalidError(
                f"volumes[{path!r}] must be a ketch.Volume, not {type(vol).__name__}"
            )
        out[clean] = vol
    if any(a != b and b.startswith(a + "/") for a in out for b in out):
        raise InvalidError("volume mount paths may not be nested inside each other")
    return out


def _pickle_by_value(obj: Any) -> bytes:
    import cloudpickle

    module = sys.modules.get(obj.__module__)
    registered = False
    if module is not None and obj.__module__ != "__main__":
        cloudpickle.register_pickle_by_value(module)
        registered = True
    try:
        data: bytes = cloudpickle.dumps(obj)
        return data
    finally:
        if registered and module is not None:
            cloudpickle.unregister_pickle_by_value(module)


if TYPE_CHECKING:
    P = ParamSpec("P")
    R = TypeVar("R")
    C = TypeVar("C", bound=type)

    class _FunctionDecorator(Protocol):
        """What ``app.function(...)`` returns: it makes the user's function a ``Function``."""

        @overload
        def __call__(
            self, raw_f: Callable[P, Coroutine[Any, Any, R]], /
        ) -> Function[P, R, Coroutine[Any, Any, R]]: ...
        @overload
        def __call__(self, raw_f: Callable[P, R], /) -> Function[P, R]: ...

    class App:
        """A group of functions and classes that run and deploy together.

        Example: ``app = ketch.App("demo")``, then ``@app.function()`` on a function.
        """

        _ketch_impl: _App

        def __init__(
            self,
            name: str | None = None,
            *,
            image: Image | None = None,
            description: str | None = None,
        ) -> None: ...
        @property
        def name(self) -> str | None: ...
        @property
        def app_id(self) -> str | None: ...
        @property
        def image(self) -> Image: ...
        @classmethod
        def lookup(
            cls,
            name: str,
            *,
            create_if_missing: bool = False,
            environment_name: str | None = None,
            client: Any = None,
        ) -> App: ...
        @property
        def registered_functions(self) -> dict[str, Function[..., Any]]: ...
        @property
        def registered_classes(self) -> dict[str, Cls]: ...
        @property
        def registered_entrypoints(self) -> dict[str, Callable[..., Any]]: ...

        # The options of function() and cls() are _App's (tests/unit/test_user_typing.py
        # keeps the lists equal), less **unknown: a misspelt option is a type error.
        def function(
            self,
            *,
            image: Image | None = None,
            gpu: Any = None,
            cpu: Any = None,
            memory: Any = None,
            ephemeral_disk: Any = None,
            timeout: Any = 300,
            retries: Any = None,
            min_containers: Any = 0,
            max_containers: Any = None,
            buffer_containers: Any = 0,
            scaledown_window: Any = 60,
            env: dict[str, str] | None = None,
            secrets: Any = None,
            volumes: Any = None,
            block_network: bool = False,
            serialized: bool = False,
            name: str | None = None,
            validate_args: bool = True,
            schedule: Any = None,
        ) -> _FunctionDecorator: ...

        # The class stays the user's class, whose ``ketch.method()`` methods read as
        # ``Function``s, and its ``ketch.parameter()`` fields as keyword arguments.
        @dataclass_transform(kw_only_default=True, field_specifiers=(parameter,))
        def cls(
            self,
            *,
            image: Image | None = None,
            gpu: Any = None,
            cpu: Any = None,
            memory: Any = None,
            ephemeral_disk: Any = None,
            timeout: Any = 300,
            retries: Any = None,
            min_containers: Any = 0,
            max_containers: Any = None,
            buffer_containers: Any = 0,
            scaledown_window: Any = 60,
            env: dict[str, str] | None = None,
            secrets: Any = None,
            volumes: Any = None,
            block_network: bool = False,
            serialized: bool = False,
            name: str | None = None,
            validate_args: bool = True,
        ) -> Callable[[C], C]: ...
        def server(
            self,
            *,
            port: int,
            unauthenticated: bool = False,
            startup_timeout: float = 30.0,
            target_concurrency: int | None = None,
            min_containers: int = 0,
            max_containers: int | None = None,
            buffer_containers: int = 0,
            scaleup_window: Any = None,
            scaledown_window: Any = 60,
            exit_grace_period: Any = None,
            routing_region: str | None = None,
            h2: bool = False,
            label: str | None = None,
            **cls_options: Any,
        ) -> Callable[[type], Any]: ...
        def local_entrypoint(self, *, name: str | None = None) -> Callable[[F], F]: ...
        def include(self, other: App) -> App: ...
        def run(
            self, *, show_logs: bool = True, interactive: bool = False
        ) -> _sync.BlockingContextManager[App]: ...
        @_sync.aio_method
        def deploy(self, /, *, name: str | None = None) -> App: ...

else:
    App = _sync.synchronize_api(_App)
