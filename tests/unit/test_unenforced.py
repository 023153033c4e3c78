"""What a runtime cannot hold is said, never silently dropped: each worker's ``unenforced``."""

from __future__ import annotations

import types

from ketch._spec import FunctionSpec
from ketch.worker.bubblewrap import BubblewrapWorker
from ketch.worker.cgroups import Support
from ketch.worker.local import LocalWorker


def _spec(**options) -> FunctionSpec:
    return FunctionSpec(tag="f", module_name="m", qualname="f", **options)


def test_the_local_runtime_names_each_option_it_cannot_hold():
    worker = LocalWorker(lambda *a: None, lambda *a: None, use_template=False)
    assert worker.unenforced(_spec()) == []
    assert worker.unenforced(_spec(memory=[512, None], cpu=[1.0, None])) == []  # requests only
    said = worker.unenforced(
        _spec(block_network=True, memory=[256, 512], cpu=[1.0, 2.0], ephemeral_disk=1024)
    )
    assert [s.split(" is not enforced")[0] for s in said] == [
        "block_network=True",
        "the memory limit",
        "the cpu limit",
        "ephemeral_disk=",
    ]
    assert all("host processes" in s for s in said)


def test_the_sandbox_runtime_names_the_limits_this_machine_lacks():
    node = types.SimpleNamespace(
        cgroups=Support("v1", frozenset({"memory"}), reason="no cpu controller"),
        disks=None,
        disks_note="no loop devices",
    )
    spec = _spec(block_network=True, memory=[256, 512], cpu=[1.0, 2.0], ephemeral_disk=1024)
    said = BubblewrapWorker.unenforced(node, spec)  # type: ignore[arg-type]
    assert said[0].startswith("the cpu limit is not enforced here: cgroup v1: memory limits")
    assert said[1] == "ephemeral_disk= is not enforced here: no loop devices"
    assert len(said) == 2  # block_network and the memory limit hold
