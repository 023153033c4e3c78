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
