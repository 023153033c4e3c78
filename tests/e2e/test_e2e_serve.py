"""`ketch serve` through the real CLI: endpoints served, an edit picked up at the same URL, Ctrl-C."""

from __future__ import annotations

import json
import re
import shutil
import signal
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serve_app.py"


def _greeting(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())["greeting"]
    except OSError:
        return None


def test_serve_picks_up_an_edit_at_the_same_url(ketch_env, workdir):
    app_file = Path(workdir) / "serve_app.py"
    shutil.copy(EXAMPLE, app_file)
    proc = ketch_env.popen("serve", str(app_file))
    try:
        assert proc.wait_for_line("web endpoint greet => ", timeout=60), proc.text()
        url = re.search(r"greet => (http://127\.0\.0\.1:\d+)", proc.text()).group(1)
        assert _greeting(url) == "hello"

        app_file.write_text(
            app_file.read_text().replace('GREETING = "hello"', 'GREETING = "bonjour"')
        )
        assert ketch_env.wait_until(lambda: _greeting(url) == "bonjour", timeout=30), proc.text()
        assert "serve_app.py changed; reloading" in proc.text()
        assert len(re.findall(r"greet => (http://\S+)", proc.text())) == 2
        assert set(re.findall(r"greet => (http://\S+)", proc.text())) == {url}  # the same URL

        # A broken edit is reported, and the next good one is served again.
        app_file.write_text(app_file.read_text().replace("def greet()", "def greet(:"))
        assert proc.wait_for_line("fix the error and save", timeout=30), proc.text()
        app_file.write_text(
            app_file.read_text().replace("def greet(:", "def greet()").replace("bonjour", "hola")
        )
        assert ketch_env.wait_until(lambda: _greeting(url) == "hola", timeout=30), proc.text()
    finally:
        proc.proc.send_signal(signal.SIGINT)
        done = proc.wait(timeout=60)
    assert not done.timed_out, done.describe()
    record = ketch_env.app_record("serve-demo")
    assert record["state"] == "stopped", record
