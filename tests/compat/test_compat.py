"""Modal apps, written as Modal's users write them (``import modal``), run through the real
CLI: one file per part of Modal's API under ``apps/``."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

APPS = Path(__file__).parent / "apps"


@pytest.fixture(scope="module")
def modal_venv(tmp_path_factory):
    """A new virtual environment that sees this one's packages (ketch among them), where
    ``ketch modal-alias install`` then runs: its plain ``python`` and ``modal`` are the
    user's."""
    venv = tmp_path_factory.mktemp("modal-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    ours = sysconfig.get_path("purelib")
    theirs = subprocess.run(
        [venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    Path(theirs, "parent-env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return venv


def _run(ketch_env, name: str, timeout: float = 150):
    done = ketch_env.cli("run", APPS / name, cwd=APPS, timeout=timeout)
    assert done.returncode == 0, done.describe()
    return done


def test_with_options_concurrency_and_batching(ketch_env):
    """``Function.with_options`` and ``Cls.with_options`` run in containers of their own with
    the options applied; ``with_concurrency`` and ``with_batching`` stack on them;
    ``@modal.batched`` on a class method without ``@modal.method`` takes real batches;
    ``max_inputs=1`` gives each input a container of its own."""
    out = _run(ketch_env, "with_options.py").stdout
    for line in (
        "FN_VARIANT big 1 True small",
        "FN_VARIANT_MAP [0, 1, 2]",
        "CLS_VARIANT small big True a",
        "CONCURRENCY True",
        "BATCHED [0, 1, 2] True",
        "SINGLE {'x': 7, 'batch': 1}",
        "WITH_BATCHING True 6",
        "BAD_GPU True",
        "SINGLE_USE 3",  # max_inputs=1: a container per input
    ):
        assert line in out, out


def test_update_autoscaler_and_variants_of_a_deployed_function(ketch_env):
    """``update_autoscaler(min_containers=1)`` on a deployed function warms a container now;
    a ``with_options`` variant takes its base's new code and options when the app is
    deployed again, keeping its own, and the deploy puts the decorator's scaling back."""
    ketch_env.cli("deploy", APPS / "autoscaled.py", cwd=APPS).check()
    client = APPS / "autoscaled_client.py"
    first = ketch_env.python(client, "scale", cwd=APPS, timeout=120)
    assert first.returncode == 0, first.describe()
    assert "WARM 1" in first.stdout and "BAD True" in first.stdout, first.describe()
    assert "CALL hello ann | hello bob !" in first.stdout, first.describe()
    ketch_env.cli("deploy", APPS / "autoscaled.py", cwd=APPS, extra_env={"GREETING": "hi"}).check()
    again = ketch_env.python(client, "call", cwd=APPS, timeout=120)
    assert "CALL hi ann | hi bob !" in again.stdout, again.describe()


def test_object_managers_secret_update_and_image_ids(sandbox_env):
    """``Dict/Queue/Volume/Secret.objects.create/list/delete``; ``Secret.update`` merges new
    values that containers started after it see; ``Image.build()`` then ``Image.from_id``
    gives the same built image, and an unknown id is a clear ``NotFoundError``."""
    make = "import ketch\nketch.Secret.objects.create('compat-creds', {'USER_NAME': 'ann', 'PASSWORD': 'old'})"
    sandbox_env.python("-c", make, cwd=APPS).check()
    first = _run(sandbox_env, "objects_and_images.py", timeout=240).stdout
    assert "SECRET_EXISTS ok" in first, first
    for kind in ("Dict", "Queue", "Volume"):
        assert f"OBJECTS {kind} True False" in first, first
    assert "SECRET_BEFORE ['ann', 'old']" in first and "SECRET_LISTED True" in first, first
    assert "MARKER built-once" in first, first
    # The secret's merged values reach a new container; the image comes back by its id.
    built = sandbox_env.python(
        "-c",
        "import ketch._modal_alias as a; a.install()\n"
        "from objects_and_images import image\n"
        "print('ID', image.build().object_id)",
        cwd=APPS,
    )
    image_id = built.stdout.split("ID ", 1)[1].split()[0] if "ID " in built.stdout else ""
    assert image_id.startswith("im-"), built.describe()
    probe = sandbox_env.python(
        "-c",
        "import ketch, ketch._modal_alias as a; a.install()\n"
        "from objects_and_images import app, read_secret\n"
        "with app.run():\n"
        "    print('SECRET_AFTER', read_secret.remote())\n"
        "try:\n"
        "    ketch.Image.from_id('im-' + '0' * 64)\n"
        "except ketch.exception.NotFoundError as exc:\n"
        "    print('UNKNOWN', 'built on this control plane' in str(exc))\n",
        cwd=APPS,
        extra_env={"COMPAT_IMAGE_ID": image_id},
        timeout=180,
    )
    assert "SECRET_AFTER ['ann', 'new']" in probe.stdout, probe.describe()
    assert "UNKNOWN True" in probe.stdout, probe.describe()
    again = sandbox_env.cli(
        "run",
        APPS / "objects_and_images.py::marker",
        cwd=APPS,
        extra_env={"COMPAT_IMAGE_ID": image_id},
    )
    assert "built-once" in again.stdout, again.describe()


HELLO = """
import modal

app = modal.App("compat-plain")


@app.function()
def square(x: int) -> int:
    return x * x


@app.local_entrypoint()
def main():
    print("SQUARE", square.remote(7))


if __name__ == "__main__":
    with app.run():
        print("PLAIN", square.remote(3), modal.__name__)
"""


def test_modal_alias_for_plain_python_and_a_modal_command(ketch_env, modal_venv, tmp_path):
    """``ketch modal-alias install``: plain ``python app.py`` with ``import modal`` runs on
    ketch, a ``modal`` command is ketch (``modal run``, ``modal app list``); ``uninstall``
    takes both away again."""
    python, modal = modal_venv / "bin/python", modal_venv / "bin/modal"
    (tmp_path / "hello.py").write_text(HELLO)

    def run(*argv, **kw):
        return ketch_env._run([str(a) for a in argv], kw.pop("timeout", 120), cwd=tmp_path)

    before = run(python, tmp_path / "hello.py")
    assert before.returncode != 0 and "No module named 'modal'" in before.stderr, before.describe()
    done = run(python, "-m", "ketch.cli.main", "modal-alias", "install")
    assert done.returncode == 0 and "modal command:" in done.stdout, done.describe()
    plain = run(python, tmp_path / "hello.py")
    assert "PLAIN 9 ketch" in plain.stdout, plain.describe()
    via_modal = run(modal, "run", tmp_path / "hello.py")
    assert "SQUARE 49" in via_modal.stdout, via_modal.describe()
    listed = run(modal, "app", "list")
    assert listed.returncode == 0 and "APP ID" in listed.stdout, listed.describe()
    status = run(python, "-m", "ketch.cli.main", "modal-alias", "status")
    assert "environment: alias installed; modal command: ketch" in status.stdout, status.describe()
    run(python, "-m", "ketch.cli.main", "modal-alias", "uninstall")
    after = run(python, tmp_path / "hello.py")
    assert "No module named 'modal'" in after.stderr and not modal.exists(), after.describe()


def test_arguments_are_checked_against_type_hints_before_they_travel(ketch_env):
    """A wrong argument to ``.remote``, ``.spawn``, ``.map`` or a method is an
    ``InvalidError`` naming the parameter, raised before any input is sent (the function
    ran once: for the good call); ``validate_args=False`` sends it anyway."""
    out = _run(ketch_env, "typed_args.py").stdout
    assert "OK lr=1 steps=10 tags=['a']" in out, out
    for refused in (
        "REFUSED train() 'steps'",
        "REFUSED train() 'tags'",
        "REFUSED train() 'lr'",
        "REFUSED Model.predict() 'x'",
    ):
        assert refused in out, out
    assert "NOT CHECKED" not in out and "RAN 1" in out, out
    assert "UNCHECKED got 'ten'" in out, out


NOTEBOOK_RUNNER = """
import sys

import nbformat
from nbclient import NotebookClient

cells = [
    "import ketch as modal\\napp = modal.App('compat-notebook')",
    "@app.function()\\ndef square(x: int) -> int:\\n    return x * x",
    "def offset():\\n    return 100",
    "@app.function()\\ndef shifted(x: int) -> int:\\n    return x + offset()",
    "with app.run():\\n"
    "    print('REMOTE', square.remote(7))\\n"
    "    print('MAP', list(square.map(range(5))))\\n"
    "    print('HELPER', shifted.remote(1))",
]
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
NotebookClient(nb, timeout=120, kernel_name="python3").execute()
for cell in nb.cells:
    for out in cell.get("outputs", []):
        sys.stdout.write(out.get("text", ""))
"""


def test_an_app_defined_in_a_notebook_runs(ketch_env, tmp_path):
    """Functions defined in a notebook's cells (no file a container could import) run with
    ``with app.run():``, ``.remote`` and ``.map``, executed by a real Jupyter kernel."""
    pytest.importorskip("nbclient")
    done = ketch_env.python("-c", NOTEBOOK_RUNNER, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.describe()
    for line in ("REMOTE 49", "MAP [0, 1, 4, 9, 16]", "HELPER 101"):
        assert line in done.stdout, done.describe()


SERVER_CLIENT = """
import urllib.error
import urllib.request

import ketch as modal

server = modal.Server.from_name("compat-server", "Files")
url = server.get_url()
try:
    urllib.request.urlopen(url + "/hello.txt", timeout=60)
except urllib.error.HTTPError as exc:
    print("NO_TOKEN", exc.code)
request = urllib.request.Request(
    url + "/hello.txt", headers={"Modal-Key": KEY, "Modal-Secret": SECRET}
)
print("BODY", urllib.request.urlopen(request, timeout=60).read().decode().strip())
"""


def test_a_server_class_is_served_behind_proxy_auth(ketch_env):
    """``@app.server(port=)``: the class's ``@enter`` starts an HTTP server and the gateway
    serves it at its own URL (``Server.from_name(...).get_url()``), behind proxy auth."""
    import re
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"COMPAT_SERVER_PORT": str(port)}
    ketch_env.cli("deploy", APPS / "server.py", cwd=APPS, extra_env=env).check()
    created = ketch_env.cli("token", "create").check()
    key = re.search(r"Token ID:\s+(\S+)", created.stdout).group(1)
    secret = re.search(r"Token secret:\s+(\S+)", created.stdout).group(1)
    code = f"KEY, SECRET = {key!r}, {secret!r}\n" + SERVER_CLIENT
    done = ketch_env.python("-c", code, cwd=APPS, timeout=120)
    assert "NO_TOKEN 401" in done.stdout, done.describe()
    assert "BODY served by a modal.Server" in done.stdout, done.describe()
    ketch_env.cli("app", "stop", "compat-server").check()


def test_the_surface_a_typical_modal_app_reaches_for(ketch_env):
    """``App(image=)`` and ``app.image.imports()``, ``Volume.from_name(version=2)``,
    ``Retries`` with Modal's delays, ``is_local``/``current_input_id``, ``enable_output``,
    ``Queue.get(block=False)``, ``App.lookup`` for a sandbox with a ``Probe``,
    ``modal.Error``, and ``restrict_modal_access``."""
    out = _run(ketch_env, "surface.py").stdout
    assert "LOCAL True" in out, out
    assert "FLAKY {'attempt': 2, 'local': False, 'input': True}" in out, out
    assert "VOLUME b'{\"attempt\": 2}'" in out, out
    assert "QUEUE_EMPTY None" in out and "SANDBOX_READY True" in out, out
    assert "NOT_FOUND True" in out, out
    # restrict_modal_access=True: the container computes, but reaches no Dict, call or Queue.
    locked = "LOCKED {'x': 42, 'dict': 'AuthError', 'call': 'AuthError', 'queue': 'AuthError'}"
    assert locked in out, out
