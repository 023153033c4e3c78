"""Containers started as fresh interpreters (KETCH_FORK_CONTAINERS=0) behave like forked ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello_world.py"


def test_hello_world_without_the_template(tmp_path):
    env = {
        **os.environ,
        "KETCH_HOME": str(tmp_path / "home"),
        "KETCH_FORK_CONTAINERS": "0",
        "KETCH_RUNTIME": "local",
    }
    env.pop("KETCH_SERVER_URL", None)
    ketch = [sys.executable, "-c", "from ketch.cli.main import main; main()"]
    try:
        out = subprocess.run(
            [*ketch, "run", str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=90
        )
        assert out.returncode == 0, out.stderr
        assert "remote: 16" in out.stdout and "map: [0, 1, 4, 9, 16]" in out.stdout
        status = subprocess.run(
            [*ketch, "server", "status"], env=env, capture_output=True, text=True, timeout=30
        )
        assert "local" in status.stdout
    finally:
        subprocess.run([*ketch, "server", "stop"], env=env, capture_output=True, timeout=30)
