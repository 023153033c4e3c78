"""Image builds requested by clients, with their output kept for streaming.

``ImageBuild`` starts (or joins) the build of an image and returns a build id;
``ImageBuildStatus`` long-polls for new output lines and the outcome. A build
that is already running for the same image is shared, so two clients starting
the same app wait on one build.

Example (client side)::

    job = await client.rpc("ImageBuild", {"image": image.to_wire()})
    status = await client.rpc("ImageBuildStatus", {"build_id": job["build_id"], "offset": 0})
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._ids import new_id
from .._serialization import pack, unpack
from .._tasks import spawn
from ..exception import Error, ImageBuildError, NotFoundError, wire_name
from ..images.builder import Builder
from ..images.layers import LayerStore
from ..worker.userns import UserNamespace
from .metrics import Metrics

logger = logging.getLogger(__name__)

MAX_LINES = 20_000
FORGET_AFTER_S = 600.0


@dataclass
class BuildJob:
    id: str
    image_hash: str
    lines: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    error: tuple[str, str] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def log(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) > MAX_LINES:
            cut = len(self.lines) - MAX_LINES
            del self.lines[:cut]
            self.dropped += cut
        self.changed.set()


class BuildService:
    """Runs builds on the control plane's event loop (the steps are subprocesses)."""

    def __init__(self, cache_root: Path, userns: UserNamespace | None = None) -> None:
        self.cache_root = cache_root
        self.userns = userns  # build steps run as its root
        self._builder: Builder | None = None
        self.jobs: dict[str, BuildJob] = {}
        self._by_image: dict[str, BuildJob] = {}
        self.metrics: Metrics | None = None  # the control plane's (server/metrics.py)

    @property
    def builder(self) -> Builder:
        if self._builder is None:
            self._builder = Builder(LayerStore(self.cache_root), self.userns)
        return self._builder

    def remember(self, wire: dict[str, Any]) -> None:
        """Keep an image's wire under its id (``im-`` and its last layer's hash), for
        ``Image.from_id``; the layers themselves stay in the cache as usual. The id names
        what was built: files added with ``copy=False`` are not part of it."""
        path = self.cache_root / "images" / wire["layers"][-1]["hash"]
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{new_id('tmp')}")
        staging.write_bytes(pack({**wire, "mounts": []}))  # the id names the built layers only
        staging.replace(path)

    def recall(self, image_id: str) -> dict[str, Any]:
        """The wire of image ``image_id``, if it was built (or snapshotted) here and its
        layers are still cached; else a ``NotFoundError`` saying so."""
        m = re.fullmatch(r"im-([0-9a-f]{64})", image_id)
        path = self.cache_root / "images" / m.group(1) if m else None
        if path is None or not path.is_file():
            raise NotFoundError(
                f"no image {image_id!r} here: an image id comes from `image.object_id` after "
                "the image was built on this control plane"
            )
        wire: dict[str, Any] = unpack(path.read_bytes())
        if self.builder.cached(wire) is None:
            raise NotFoundError(
                f"image {image_id!r} is not in the image cache: its build did not finish, or "
                "`ketch image rm`/`prune` removed it; build it again"
            )
        return wire

    def start(self, wire: dict[str, Any], force: str) -> BuildJob:
        image_hash = wire["layers"][-1]["hash"]
        running = self._by_image.get(image_hash)
        if running is not None and not running.done.is_set():
            return running
        job = BuildJob(new_id("ib"), image_hash)
        self.jobs[job.id] = job
        self._by_image[image_hash] = job
        spawn(self._run(job, wire, force), name=f"build {job.id}")
        return job

    async def _run(self, job: BuildJob, wire: dict[str, Any], force: str) -> None:
        started = time.monotonic()
        try:
            await self.builder.build(wire, job.log, force=force)
        except Error as exc:
            job.error = (wire_name(exc), str(exc))
        except Exception as exc:
            logger.exception("image build %s failed", job.id)
            job.error = (wire_name(ImageBuildError()), f"image build failed: {exc}")
        finally:
            if self.metrics is not None:
                outcome = "failure" if job.error else "success"
                self.metrics.build_seconds.observe((outcome,), time.monotonic() - started)
            job.done.set()
            job.changed.set()
            asyncio.get_running_loop().call_later(FORGET_AFTER_S, self.jobs.pop, job.id, None)

    async def status(self, build_id: str, offset: int, wait: float) -> dict[str, Any]:
        job = self.jobs.get(build_id)
        if job is None:
            raise NotFoundError(
                f"no image build {build_id!r} (finished builds are kept 10 minutes)"
            )
        start = max(0, offset - job.dropped)
        if start >= len(job.lines) and not job.done.is_set() and wait > 0:
            job.changed.clear()
            try:
                await asyncio.wait_for(job.changed.wait(), wait)
            except TimeoutError:
                pass
        done = job.done.is_set()
        lines = job.lines[start:]
        reply: dict[str, Any] = {
            "lines": lines,
            "offset": job.dropped + start + len(lines),
            "done": done,
        }
        if job.error is not None:
            reply["error"] = {"type": job.error[0], "message": job.error[1]}
        return reply
