"""One typed configuration registry.

A setting is read when it is used, never at import: the environment variable
``KETCH_<NAME>`` wins over ``~/.ketch/config.toml`` (or ``$KETCH_HOME/config.toml``),
which wins over the default.

Example::

    from ketch._config import config
    home = config.get("home")
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def in_container() -> bool:
    """True inside a ketch container: the worker sets ``KETCH_CONTAINER_ID`` for it.

    The ``KETCH_*`` variables a worker sets for its containers (the id, token,
    channel, server URL, source root, ...) are the worker's contract with the
    guest, not settings, so they are read where they are used; this one is asked
    by the SDK in many places (an app module is imported again in its container,
    where client-side work such as reading local files must not happen).
    """
    return bool(os.environ.get("KETCH_CONTAINER_ID"))


def _to_bool(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class _Setting:
    default: Any
    parse: Callable[[str], Any]
    doc: str


_SETTINGS: dict[str, _Setting] = {
    "home": _Setting(
        str(Path.home() / ".ketch"), str, "state directory of the embedded control plane"
    ),
    "server_url": _Setting("", str, "use this control plane instead of the embedded one"),
    "token": _Setting("", str, "API token for a control plane bound off loopback"),
    "runtime": _Setting(
        "auto", str, "container runtime: sandbox, local, or auto (sandbox where it can run)"
    ),
    "debian_mirror": _Setting(
        "http://deb.debian.org/debian", str, "Debian archive for debian_slim images"
    ),
    "image_cache": _Setting(
        str(Path.home() / ".cache" / "ketch" / "images"),
        str,
        "image layer cache shared by every home on this machine",
    ),
    "database": _Setting(
        "", str, "postgresql://... to keep the control plane's state in PostgreSQL (else SQLite)"
    ),
    "blob_dir": _Setting(
        "",
        str,
        "where the control plane keeps blobs (arguments, results, snapshots, Volume files); "
        "default KETCH_HOME. With the state in PostgreSQL and this on shared storage, a "
        "control plane can start again on another machine",
    ),
    "ray": _Setting("", str, "address of a Ray cluster (HOST:PORT) whose nodes run the containers"),
    "advertise_address": _Setting(
        "", str, "the address a cluster's nodes reach the control plane at (default: its host)"
    ),
    "ray_placement_timeout": _Setting(
        600.0, float, "seconds a container waits for a Ray node to hold it before its start fails"
    ),
    "node_shares_files": _Setting(
        True,
        _to_bool,
        "a cluster node on the control plane's machine uses its files in place (0: copies, as elsewhere)",
    ),
    "cluster_builds": _Setting(
        True,
        _to_bool,
        "on a Ray cluster, image build steps run on a node (0: on the control plane's machine)",
    ),
    "node_blob_cache_mb": _Setting(
        10240, int, "size a cluster node keeps its cache of Volume blobs under, in MiB"
    ),
    "node_home": _Setting(
        "", str, "where a cluster node's ketch worker keeps its files (default: the temp dir)"
    ),
    "queue_window": _Setting(
        50_000, int, "queued inputs per function held in memory; the rest wait in the store"
    ),
    "max_containers_per_node": _Setting(0, int, "node cap on running containers (0: 4 x CPUs)"),
    "containers_memory_mb": _Setting(
        0,
        int,
        "memory all containers of the node may use together, in MiB (0: the host's less max(1 GiB, 10%))",
    ),
    "userns": _Setting(
        True,
        _to_bool,
        "run sandbox containers and build steps in a user namespace (root inside is nobody on the host)",
    ),
    "userns_base": _Setting(
        1_000_000_000,
        int,
        "host uid of root in the containers' user namespace (ids BASE..BASE+65535)",
    ),
    "cgroup_parent": _Setting(
        "ketch", str, "cgroup under which the node's containers live (and whose memory is capped)"
    ),
    "log_level": _Setting("WARNING", str, "log level of the CLI and server"),
    "log_prefix": _Setting(
        True, _to_bool, "prefix the container output a client prints with [function]"
    ),
    "tls_ca": _Setting("", str, "CA file (PEM) a client trusts for an https:// control plane"),
    "volume_overlay": _Setting(
        True, _to_bool, "Volume working copies as overlays where the control plane can mount them"
    ),
    "volume_http": _Setting(
        False, _to_bool, "move Volume files over HTTP even on the control plane's own machine"
    ),
    "connect_timeout": _Setting(
        120.0, float, "seconds a client keeps retrying an unreachable server"
    ),
    "ephemeral_app_timeout": _Setting(
        90.0, float, "seconds without client heartbeats before an ephemeral app stops"
    ),
    "fork_containers": _Setting(
        True,
        _to_bool,
        "start containers as forks of a warm template process (sandbox: one inside the "
        "function's sandbox; each fork still gets its own namespaces, writable layer and cgroup)",
    ),
    "force_build": _Setting(False, _to_bool, "rebuild images even when cached"),
    "observe": _Setting(
        True,
        _to_bool,
        "meter usage and record metrics (0: neither; for measuring what they cost)",
    ),
    "call_retention_days": _Setting(
        7.0,
        float,
        "days a finished call's arguments and results are kept (`ketch call show/replay`)",
    ),
    "log_retention_days": _Setting(
        30.0, float, "days container output is kept (`ketch app logs`); older lines are dropped"
    ),
    "web_max_body_mb": _Setting(
        64.0, float, "largest web request body the gateway takes, in MiB (413 beyond)"
    ),
    "web_sync_window": _Setting(
        150.0,
        float,
        "seconds a web request waits for its response to start before a 303 to its result",
    ),
}


class Config:
    """Reads settings on demand: env var > config file > default."""

    def _file_values(self) -> dict[str, Any]:
        home = os.environ.get("KETCH_HOME") or _SETTINGS["home"].default
        path = Path(home) / "config.toml"
        if not path.is_file():
            return {}
        with path.open("rb") as fh:
            return tomllib.load(fh)

    def get(self, name: str) -> Any:
        setting = _SETTINGS[name]
        raw = os.environ.get(f"KETCH_{name.upper()}")
        if raw is not None and raw != "":
            return setting.parse(raw)
        if name != "home":
            file_values = self._file_values()
            if name in file_values:
                return setting.parse(str(file_values[name]))
        return setting.default

    def home(self) -> Path:
        return Path(self.get("home")).expanduser()


config = Config()
