"""Secrets end to end: CLI, injection into containers (local and sandbox), encryption at rest."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
from ketch_testing import SHOW, ExampleRun, KetchEnv

pytestmark = pytest.mark.e2e

# The container reports digests of secret values, never the values: a function's
# result is stored in state.db, and the test below proves no value is stored there.
APP = textwrap.dedent(
    """
    import hashlib, json, os
    import ketch

    app = ketch.App("secret-e2e")
    SECRET_KEYS = ("API_TOKEN", "INLINE_TOKEN", "LOCAL_TOKEN", "DOTENV_TOKEN")

    def report():
        out = {k: hashlib.sha256(os.environ[k].encode()).hexdigest() if k in os.environ else None
               for k in SECRET_KEYS}
        out.update({k: os.environ.get(k) for k in ("SHARED", "SHARED2", "FROM_ENV")})
        return out

    SECRETS = [
        ketch.Secret.from_name("e2e-creds", required_keys=["API_TOKEN"]),
        ketch.Secret.from_dict({"INLINE_TOKEN": os.environ.get("E2E_INLINE"), "SHARED": "inline"}),
        ketch.Secret.from_local_environ(["LOCAL_TOKEN"]),
        ketch.Secret.from_dotenv(__file__),
    ]

    @app.function(secrets=SECRETS, env={"FROM_ENV": "env-param", "SHARED2": "env"})
    def probe():
        return report()

    @app.cls(secrets=[ketch.Secret.from_name("e2e-creds")])
    class Holder:
        @ketch.method()
        def token_digest(self):
            return hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest()

    @app.local_entrypoint()
    def main():
        for step, fn in (("probe", probe.remote), ("cls", Holder().token_digest.remote)):
            print("RESULT " + json.dumps({"step": step, "value": fn()}), flush=True)
    """
)

LOOKUP = (
    "import json, ketch; "
    "print('RESULT ' + json.dumps({'step': 'probe', 'value': ketch.Function.from_name('secret-e2e', 'probe').remote()}))"
)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Values:
    """Fresh random secret values, so that finding one on disk can only mean a leak."""

    def __init__(self) -> None:
        self.api = f"api-{uuid.uuid4().hex}"
        self.inline = f"inline-{uuid.uuid4().hex}"
        self.local = f"local-{uuid.uuid4().hex}"
        self.dotenv = f"dotenv-{uuid.uuid4().hex}"

    def write_app(self, folder: Path) -> Path:
        script = folder / "secret_app.py"
        script.write_text(APP)
        (folder / ".env").write_text(
            f"# e2e\nexport DOTENV_TOKEN='{self.dotenv}'\nSHARED2=dotenv  # env= wins over this\n"
        )
        return script

    def client_env(self) -> dict[str, str]:
        return {"E2E_INLINE": self.inline, "LOCAL_TOKEN": self.local}

    def expected(self, api: str | None = None) -> dict[str, str | None]:
        return {
            "API_TOKEN": _digest(api or self.api),
            "INLINE_TOKEN": _digest(self.inline),
            "LOCAL_TOKEN": _digest(self.local),
            "DOTENV_TOKEN": _digest(self.dotenv),
            "SHARED": "inline",  # the later Secret in the list wins
            "SHARED2": "env",  # env= wins over every Secret
            "FROM_ENV": "env-param",
        }


def _run_app(env: KetchEnv, script: Path, values: Values, timeout: float = 120) -> ExampleRun:
    return ExampleRun.parse(
        env.cli("run", script, timeout=timeout, cwd=script.parent, extra_env=values.client_env())
    )


def _leaks(home: Path, needles: list[str]) -> list[str]:
    """Every (file, value) pair where a secret value appears in a file under ``home``."""
    found = []
    for root, dirs, files in os.walk(home):
        if Path(root) == home and "scratch" in dirs:
            # Sparse images of empty filesystems (20 GiB each, unread); a container's own is
            # deleted with the container.
            dirs.remove("scratch")
        for name in files:
            path = Path(root) / name
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path}: {needle}" for needle in needles if needle.encode() in data]
    return found


@pytest.mark.timeout(300)
def test_secrets_reach_containers_survive_restart_and_never_touch_disk(fresh_ketch_env, tmp_path):
    env, values = fresh_ketch_env, Values()
    script = values.write_app(tmp_path)
    created = env.cli(
        "secret", "create", "e2e-creds", f"API_TOKEN={values.api}", "SHARED=named"
    ).check()
    assert "created Secret e2e-creds" in created.stdout and values.api not in created.output

    again = env.cli("secret", "create", "e2e-creds", "API_TOKEN=other")
    assert again.returncode != 0 and "AlreadyExistsError" in again.stderr, again.describe()

    listing = env.cli("secret", "list").check()
    assert "e2e-creds" in listing.stdout and values.api not in listing.output, listing.describe()

    run = _run_app(env, script, values)
    assert run.value("probe") == values.expected(), run.proc.describe()
    assert run.value("cls") == _digest(values.api), run.proc.describe()
    assert values.api not in run.proc.output and values.inline not in run.proc.output

    # --force replaces the values in place; containers started afterwards see the new ones,
    # also after the control plane restarts (deployed app: named and inline secrets).
    new_api = f"api2-{uuid.uuid4().hex}"
    replaced = env.cli(
        "secret", "create", "e2e-creds", f"API_TOKEN={new_api}", "SHARED=named", "--force"
    )
    assert "replaced the values of Secret e2e-creds" in replaced.check().stdout
    env.cli("deploy", script, cwd=tmp_path, extra_env=values.client_env(), timeout=120).check()
    env.cli("server", "stop", timeout=30).check()
    env.cli("server", "start", timeout=60).check()
    after = ExampleRun.parse(env.python("-c", LOOKUP, timeout=120))
    assert after.value("probe") == values.expected(api=new_api), after.proc.describe()

    key = env.home / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    needles = [values.api, new_api, values.inline, values.local, values.dotenv]
    # Control: a plain env= value is in state.db (spec and results), and the scan finds it.
    assert _leaks(env.home, ["env-param"]), "the scan finds nothing at all, so it could miss a leak"
    assert _leaks(env.home, needles) == []
    env.cli("server", "stop", timeout=30).check()  # checkpoints the WAL into state.db
    assert _leaks(env.home, needles) == []


ERRORS = SHOW + textwrap.dedent(
    """
    import json, os, sys
    import ketch

    app = ketch.App("secret-errors")

    @app.function(secrets=[ketch.Secret.from_name("never-made-secret")])
    def missing():
        return 1

    gone_app = ketch.App("secret-gone")

    @gone_app.function(secrets=[ketch.Secret.from_name(sys.argv[1])])
    def uses_gone():
        return os.environ.get("GONE")

    def run_missing():
        with app.run(show_logs=False):
            return missing.remote()

    def run_gone():
        with gone_app.run(show_logs=False):
            ketch.Secret.delete(sys.argv[1])
            return uses_gone.remote()

    if __name__ == "__main__":
        show("missing_name", run_missing)
        show("hydrate_missing", lambda: ketch.Secret.from_name("never-made-secret").hydrate().object_id)
        show("required_keys", lambda: ketch.Secret.from_name(sys.argv[1], required_keys=["NOPE"]).hydrate().object_id)
        show("local_environ", lambda: ketch.Secret.from_local_environ(["KETCH_E2E_SURELY_UNSET_VAR"]))
        show("gone", run_gone)
    """
)


@pytest.mark.timeout(180)
def test_secret_errors_are_clear(ketch_env, tmp_path):
    name = f"gone-{uuid.uuid4().hex[:8]}"
    ketch_env.cli("secret", "create", name, "GONE=1").check()
    script = tmp_path / "secret_errors.py"
    script.write_text(ERRORS)
    run = ExampleRun.parse(ketch_env.python(script, name, timeout=150))
    assert run.error("missing_name").startswith("NotFoundError"), run.proc.describe()
    assert "never-made-secret" in run.error("missing_name") and "ketch secret create" in run.error(
        "missing_name"
    )
    assert run.error("hydrate_missing").startswith(
        "NotFoundError: Secret 'never-made-secret' not found"
    )
    assert (
        run.error("required_keys")
        == f"NotFoundError: Secret {name!r} is missing required key(s): NOPE"
    )
    assert run.error("local_environ").startswith("InvalidError"), run.proc.describe()
    assert "KETCH_E2E_SURELY_UNSET_VAR" in run.error("local_environ")
    # Deleted after the app started: the container cannot start, and the call says why.
    assert run.error("gone").startswith("NotFoundError") and name in run.error("gone"), (
        run.proc.describe()
    )
    assert name not in ketch_env.cli("secret", "list").check().stdout


@pytest.mark.timeout(120)
def test_secret_cli_delete_and_usage_errors(ketch_env, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    dotenv = tmp_path / "creds.env"
    dotenv.write_text("FROM_FILE='x'\nA=from-file\n")
    made = ketch_env.cli(
        "secret", "create", f"{name}-file", "--from-dotenv", dotenv, "A=arg"
    ).check()
    assert "key(s) A, FROM_FILE" in made.stdout, made.describe()
    ketch_env.rpc("SecretLookup", {"name": f"{name}-file", "required_keys": ["A", "FROM_FILE"]})
    ketch_env.cli("secret", "delete", f"{name}-file", "--yes").check()
    bad = ketch_env.cli("secret", "create", name, "NOT_A_PAIR")
    assert bad.returncode != 0 and "not KEY=VALUE" in bad.stderr and "NOT_A_PAIR" not in bad.stderr
    bad_key = ketch_env.cli("secret", "create", name, "1BAD=x")
    assert bad_key.returncode != 0 and "InvalidError" in bad_key.stderr, bad_key.describe()
    ketch_env.cli("secret", "create", name, "A=1").check()
    assert name in ketch_env.cli("secret", "list").check().stdout
    ketch_env.cli("secret", "delete", name, "--yes").check()
    assert name not in ketch_env.cli("secret", "list").check().stdout
    missing = ketch_env.cli("secret", "delete", name, "--yes")
    assert missing.returncode != 0 and "NotFoundError" in missing.stderr, missing.describe()


@pytest.mark.timeout(300)
def test_secrets_in_sandbox_containers(tmp_path):
    from ketch.worker import isolate

    if not isolate.support().ok:
        pytest.skip("the sandbox runtime cannot run here")
    home = Path(tempfile.mkdtemp(prefix="ketch-e2e-sec-", dir="/tmp"))
    env = KetchEnv(home, runtime="sandbox")
    values = Values()
    script = values.write_app(tmp_path)
    try:
        env.cli("secret", "create", "e2e-creds", f"API_TOKEN={values.api}", "SHARED=named").check()
        run = _run_app(env, script, values, timeout=280)
        assert run.value("probe") == values.expected(), run.proc.describe()
        assert run.value("cls") == _digest(values.api), run.proc.describe()
        assert _leaks(home, [values.api, values.inline, values.local, values.dotenv]) == []
    finally:
        env.close()
        shutil.rmtree(home, ignore_errors=True)
