"""Container stdout/stderr: streamed live to `ketch run`, kept for `ketch app logs`."""

from __future__ import annotations

import re
import uuid

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def streamed(ketch_env):
    tag = uuid.uuid4().hex[:8]
    go = f"logs-go-{tag}"
    proc = ketch_env.popen("run", "examples/logs_streaming.py::main", "--tag", tag, "--go", go)
    # The function prints its early lines, then waits for an item on the Queue `go`.
    seen_early = proc.wait_for_line(f"STDOUT-LINE early tag={tag}", 60)
    late_before_go = proc.first_time(f"LATE-LINE tag={tag}") is not None
    put = f"import ketch\nketch.Queue.from_name({go!r}, create_if_missing=True).put('go')\n"
    ketch_env.python("-c", put, timeout=60).check()
    done = proc.wait(timeout=90)
    assert done.returncode == 0 and not done.timed_out, done.describe()
    return done, tag, seen_early and not late_before_go


def test_stdout_and_stderr_reach_terminal(streamed):
    done, tag, _ = streamed
    assert f"STDOUT-LINE early tag={tag}" in done.output, done.describe()
    assert f"STDERR-LINE tag={tag}" in done.output, done.describe()
    assert f"LATE-LINE tag={tag}" in done.output, done.describe()
    assert f"returned: {tag}" in done.stdout, done.describe()


def test_output_streams_live(streamed):
    done, _, live = streamed
    # The early line reached the terminal while the function was still waiting to go on.
    assert live, f"the early line did not arrive before the function went on\n{done.describe()}"


def test_output_attributed_to_function(streamed):
    done, tag, _ = streamed
    lines = [line for line in done.output.splitlines() if f"STDOUT-LINE early tag={tag}" in line]
    assert lines and all("chatty" in line for line in lines), (
        f"no function name on the line: {lines}"
    )


def test_app_logs_shows_output_afterwards(ketch_env, streamed):
    _, tag, _ = streamed
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


FILTERED_APP = """
import ketch

app = ketch.App("logs-filtered")


@app.function()
def alpha(i: int) -> int:
    print(f"ALPHA-LINE {i}")
    return i


@app.function()
def beta() -> None:
    print("beta-line here")


@app.local_entrypoint()
def main():
    calls = [alpha.spawn(i) for i in range(3)]
    for c in calls:
        c.get()
    beta.remote()
    print("CALL1", calls[1].object_id)
"""


def test_app_logs_filters_by_function_call_text_and_time(ketch_env, tmp_path):
    """``ketch app logs --function/--call/--search/--since/--until``: each narrows the
    lines; a line belongs to the call whose input its container was running."""
    (tmp_path / "filtered.py").write_text(FILTERED_APP)
    run = ketch_env.cli("run", "filtered.py", cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.describe()
    call1 = re.search(r"CALL1 (fc-\S+)", run.stdout).group(1)

    def lines(*options):
        done = ketch_env.cli("app", "logs", "logs-filtered", *options, timeout=30)
        assert done.returncode == 0, done.describe()
        return [line for line in done.output.splitlines() if "-LINE" in line or "-line" in line]

    everything = lines()
    assert sum("ALPHA-LINE" in x for x in everything) == 3 and any("beta" in x for x in everything)
    assert [x for x in lines("--function", "beta")] == ["[beta] beta-line here"]
    assert lines("--call", call1) == ["[alpha] ALPHA-LINE 1"]
    assert lines("--search", "alpha-line 2") == ["[alpha] ALPHA-LINE 2"]
    assert len(lines("--since", "10m")) == 4 and lines("--until", "1h") == []
    bad = ketch_env.cli("app", "logs", "logs-filtered", "--since", "yesterday-ish", timeout=30)
    assert bad.returncode != 0 and "give a duration ago" in bad.output, bad.describe()
