"""Deploy lifecycle through the real CLI: versions, history, rollback, rolling updates."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = "versions-demo"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "app_versions.py"


def _which(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())["version"]


def _deploy(env, path: Path) -> tuple[int, str]:
    out = env.cli("deploy", str(path), timeout=60).check().stdout
    version = int(re.search(r"as v(\d+)", out).group(1))
    return version, re.search(r"which => (http://127\.0\.0\.1:\d+)", out).group(1)


def test_deploys_history_and_rollbacks(ketch_env, workdir):
    app_file = Path(workdir) / "app_versions.py"
    shutil.copy(EXAMPLE, app_file)
    v1, url = _deploy(ketch_env, app_file)
    assert _which(url) == "first"

    # A call still running when v2 is deployed finishes on v1's container.
    spawn = (
        "import ketch\n"
        f"call = ketch.Function.from_name({APP!r}, 'slow').spawn(4)\n"
        "print('CALL', call.object_id)\n"
    )
    call_id = re.search(r"CALL (\S+)", ketch_env.python("-c", spawn).check().stdout).group(1)
    ketch_env.wait_until(lambda: ketch_env.app_record(APP)["n_containers"] >= 2, timeout=30)

    app_file.write_text(app_file.read_text().replace('VERSION = "first"', 'VERSION = "second"'))
    v2, url2 = _deploy(ketch_env, app_file)
    assert v2 == v1 + 1 and url2 == url  # the endpoint keeps its URL
    assert _which(url) == "second"
    get = (
        f"import ketch\nprint('RESULT', ketch.FunctionCall.from_id({call_id!r}).get(timeout=60))\n"
    )
    assert "RESULT first" in ketch_env.python("-c", get).check().stdout

    history = ketch_env.cli("app", "history", APP).check().stdout
    rows = re.findall(r"v(\d+)\s+\S+ \S+\s+([0-9a-f]{8})", history)
    assert [int(v) for v, _ in rows][:2] == [v2, v1], history
    assert rows[0][1] != rows[1][1], "the two versions' sources should hash differently"
    assert "(live)" in history.splitlines()[1]

    rolled = ketch_env.cli("app", "rollback", APP).check().stdout
    assert f"back to v{v1} (now v{v2 + 1})" in rolled, rolled
    assert _which(url) == "first"  # v1's code, though the file now says "second"
    ketch_env.cli("app", "rollback", APP, f"v{v2}").check()
    assert _which(url) == "second"

    missing = ketch_env.cli("app", "rollback", APP, "v999")
    assert missing.returncode != 0 and "no version 999" in missing.output, missing.describe()
    unknown = ketch_env.cli("app", "history", "no-such-app")
    assert unknown.returncode != 0 and "no deployed app" in unknown.output, unknown.describe()
    ketch_env.cli("app", "stop", APP).check()
