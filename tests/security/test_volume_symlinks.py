"""A Volume's working copy cannot make the control plane write or read outside it.

The control plane (often root) reads and writes working copies that untrusted
code writes at the same time. The container here commits ``d/x``, replaces the
folder ``d`` with a symlink to a folder of the host, and has a second container
commit a new ``d/x``; its ``vol.reload()`` would then write the new ``d/x``
through the symlink, into the host's folder, as the control plane's user. It
also leaves a symlink to a host file and a FIFO where committed files were, and
commits: the host file's bytes must never reach the Volume, and the commit must
not hang on the FIFO.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

APP = textwrap.dedent(
    """
    import os, shutil
    import ketch

    app = ketch.App("volume-symlinks")
    vol = ketch.Volume.from_name("symlink-attack-@TOKEN@", create_if_missing=True)

    @app.function(volumes={"/data": vol})
    def other():
        vol.reload()
        with open("/data/d/x", "w") as f:
            f.write("written through the symlink")
        vol.commit()

    @app.function(volumes={"/data": vol})
    def plant(host_dir, host_secret):
        os.makedirs("/data/d", exist_ok=True)
        for name in ("d/x", "f", "p"):
            with open(f"/data/{name}", "w") as f:
                f.write("mine")
        vol.commit()
        shutil.rmtree("/data/d")
        os.symlink(host_dir, "/data/d")  # a folder of the host's, as the control plane sees it
        other.remote()  # commits a new d/x
        vol.reload()  # must not write it through d
        os.remove("/data/f")
        os.symlink(host_secret, "/data/f")
        os.remove("/data/p")
        os.mkfifo("/data/p")
        vol.commit()
        return sorted(os.listdir("/data"))

    @app.local_entrypoint()
    def main(host_dir: str, host_secret: str):
        print("LISTED", plant.remote(host_dir, host_secret))
        for name in ("f", "p"):
            try:
                data = b"".join(vol.read_file(name))
            except Exception as exc:
                data = type(exc).__name__.encode()
            print("READ", name, data)
    """
)


def test_a_working_copy_symlink_is_never_followed(sandbox_env, tmp_path):
    token = os.urandom(4).hex()
    host = Path(tempfile.mkdtemp(prefix="ketch-host-", dir="/tmp"))
    try:
        secret = host / "secret"
        secret.write_text(f"HOST SECRET {token}")
        (tmp_path / "attack.py").write_text(APP.replace("@TOKEN@", token))
        done = sandbox_env.cli(
            "run",
            "attack.py",
            "--host-dir",
            str(host),
            "--host-secret",
            str(secret),
            cwd=tmp_path,
            timeout=240,
        )
        assert done.returncode == 0, done.describe()
        assert sorted(os.listdir(host)) == ["secret"], os.listdir(host)  # nothing written there
        assert "HOST SECRET" not in done.stdout, done.describe()
        assert "LISTED" in done.stdout, done.describe()
    finally:
        shutil.rmtree(host, ignore_errors=True)
