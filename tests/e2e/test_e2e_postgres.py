"""The control plane's state in PostgreSQL (issue 17): what is particular to it.

Runs in scripts/check's PostgreSQL pass (``KETCH_TEST_POSTGRES``: a throw-away
cluster), beside the suites that pass again on PostgreSQL there (calls,
durability with ``kill -9``, Dicts and Queues, Volumes, Secrets, web endpoints,
schedules, versions, deploys, queues past the window). Skipped otherwise.
"""

from __future__ import annotations

import uuid

import pytest
from ketch_testing import TEST_POSTGRES, KetchEnv, _psql

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not TEST_POSTGRES, reason="KETCH_TEST_POSTGRES is not set"),
]


def test_server_start_database_keeps_the_state_in_postgresql(tmp_path):
    env = KetchEnv(tmp_path / "home")
    url = env.env.pop("KETCH_DATABASE")
    try:
        env.cli("server", "start", "--database", url, timeout=60).check()
        status = env.cli("server", "status", timeout=30).check().stdout
        assert f"PostgreSQL 127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in status, status
        env.cli("run", "examples/hello_world.py", timeout=120).check()
        assert not (env.home / "state.db").exists()  # nothing in SQLite
        env.env["KETCH_DATABASE"] = url
        calls = env.sql("SELECT count(*) FROM calls")
        assert int(calls[0][0]) >= 1, calls
    finally:
        env.env["KETCH_DATABASE"] = url
        env.close()


def test_a_database_that_does_not_sort_bytewise_is_refused_at_start(tmp_path):
    name = f"ketch_icu_{uuid.uuid4().hex[:8]}"  # an ICU collation: "a" < "B" < "b", not bytewise
    _psql(
        f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' "
        "TEMPLATE template0"
    )
    env = KetchEnv(tmp_path / "home")
    env.env["KETCH_DATABASE"] = f"{TEST_POSTGRES}/{name}"
    try:
        done = env.cli("server", "start", timeout=60)
        log = (env.home / "server.log").read_text() if (env.home / "server.log").exists() else ""
        assert done.returncode != 0 or "bytewise" in log
        assert "createdb --locale=C" in done.stderr + done.stdout + log
    finally:
        env.close()
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


BEFORE_MOVE = """
import ketch

app = ketch.App("moving")


@app.function()
def big(n: int) -> bytes:
    return b"x" * n


if __name__ == "__main__":
    vol = ketch.Volume.from_name("moving-vol", create_if_missing=True)
    with vol.batch_upload() as batch:
        batch.put_file(__file__, "/app.py")
    with app.run():
        call = big.spawn(3 << 20)  # over the inline size: its result is a blob
        assert len(call.get()) == 3 << 20
        print("CALL", call.object_id)
"""

AFTER_MOVE = """
import sys

import ketch

result = ketch.FunctionCall.from_id(sys.argv[1]).get()
print("RESULT", len(result))
print("VOLUME", b"".join(ketch.Volume.from_name("moving-vol").read_file("app.py"))[:30])
"""


def test_a_control_plane_moves_machines_with_postgresql_and_a_shared_blob_dir(tmp_path):
    """State in PostgreSQL and blobs in ``blob_dir`` (shared storage): a control plane with
    another KETCH_HOME (another machine's) finds a past call's result blob and a Volume's
    files where the first one left them."""
    shared = tmp_path / "shared-blobs"
    first = KetchEnv(tmp_path / "home-a")
    second = KetchEnv(tmp_path / "home-b")
    for env in (first, second):
        env.env["KETCH_BLOB_DIR"] = str(shared)
    second.env["KETCH_DATABASE"] = first.env["KETCH_DATABASE"]
    try:
        (tmp_path / "before.py").write_text(BEFORE_MOVE)
        made = first.python(tmp_path / "before.py", cwd=tmp_path, timeout=120)
        assert made.returncode == 0, made.describe()
        call_id = made.stdout.split("CALL ", 1)[1].split()[0]
        assert any((shared / "blobs").rglob("*")) and any((shared / "volumes" / "blobs").rglob("*"))
        for private in (shared / "blobs", shared / "volumes"):  # no other local user reads them
            assert private.stat().st_mode & 0o077 == 0, oct(private.stat().st_mode)
        first.cli("server", "stop", timeout=60).check()
        (tmp_path / "after.py").write_text(AFTER_MOVE)
        moved = second.python(tmp_path / "after.py", call_id, cwd=tmp_path, timeout=120)
        assert f"RESULT {3 << 20}" in moved.stdout, moved.describe()
        assert "VOLUME b'\\nimport ketch\\n\\napp = ketch.App'" in moved.stdout, moved.describe()
    finally:
        second.close()
        first.close()
