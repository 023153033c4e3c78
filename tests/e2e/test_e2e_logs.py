"""Container stdout/stderr: streamed live to `ketch run`, kept for `ketch app logs`."""

from __future__ import annotations

import re
import uuid

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def streamed(ketch_env):
    tag = uuid.uuid4().hex[:8]
    proc = ketch_env.popen("run", "examples/logs_streaming.py::main", "--tag", tag)
    done = proc.wait(timeout=90)
    assert done.returncode == 0 and not done.timed_out, done.describe()
    return proc, done, tag


def test_stdout_and_stderr_reach_terminal(streamed):
    _, done, tag = streamed
    assert f"STDOUT-LINE early tag={tag}" in done.output, done.describe()
    assert f"STDERR-LINE tag={tag}" in done.output, done.describe()
    assert f"LATE-LINE tag={tag}" in done.output, done.describe()
    assert f"returned: {tag}" in done.stdout, done.describe()


def test_output_streams_live(streamed):
    proc, done, tag = streamed
    early = proc.first_time(f"STDOUT-LINE early tag={tag}")
    late = proc.first_time(f"LATE-LINE tag={tag}")
    assert early is not None and late is not None, done.describe()
    # The function sleeps 3 s between the two prints; buffered output would arrive together.
    assert late - early >= 2.0, (
        f"early line at {early:.2f}s, late line at {late:.2f}s: not streamed live"
    )


def test_output_attributed_to_function(streamed):
    _, done, tag = streamed
    lines = [line for line in done.output.splitlines() if f"STDOUT-LINE early tag={tag}" in line]
    assert lines and all("chatty" in line for line in lines), (
        f"no function name on the line: {lines}"
    )


def test_app_logs_shows_output_afterwards(ketch_env, streamed):
    _, _, tag = streamed
    logs = ketch_env.cli("app", "logs", "logs-streaming", timeout=20, allow_timeout=True)
    assert f"STDOUT-LINE early tag={tag}" in logs.output, logs.describe()
    assert f"STDERR-LINE tag={tag}" in logs.output, logs.describe()
    assert f"LATE-LINE tag={tag}" in logs.output, logs.describe()


def test_app_logs_of_stopped_app_returns(ketch_env, streamed):
    logs = ketch_env.cli("app", "logs", "logs-streaming", timeout=20, allow_timeout=True)
    assert not logs.timed_out, "`ketch app logs` kept following an app that has stopped"
    assert logs.returncode == 0, logs.describe()


def test_app_logs_unknown_app(ketch_env):
    logs = ketch_env.cli("app", "logs", "no-such-app-here", timeout=20, allow_timeout=True)
    assert not logs.timed_out and logs.returncode != 0, logs.describe()


def test_no_log_lines_lost(ketch_env):
    proc = ketch_env.cli("run", "examples/logs_streaming.py::many_lines", "--lines", "20000")
    proc.check()
    assert "flooded: 20000" in proc.stdout, proc.describe()
    seen = {int(m) for m in re.findall(r"flood line (\d+)", proc.output)}
    missing = sorted(set(range(20000)) - seen)
    assert not missing, f"{len(missing)} of 20000 lines lost, first ones: {missing[:10]}"
