"""A container's token is scoped to its app: attacks on the control plane from inside a sandbox.

One app (the victim) runs; a second app's ``block_network=True`` container
tries what the owner may do and it may not: create an app that mounts the
host's ``/``, list and stop other apps, mint tokens, manage Secrets, build
images, call or read another app's functions and calls, find the owner's
token. Each must fail with ``PermissionDeniedError`` naming the operation,
while its own app's calls and Dicts keep working.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

VICTIM = """
import time
import ketch

app = ketch.App("sec-victim")


@app.function()
def private_work(x: int) -> str:
    return f"victim-{x}"


@app.local_entrypoint()
def main():
    handoff = ketch.Dict.from_name("sec-handoff", create_if_missing=True)
    call = private_work.spawn(1)
    assert call.get(timeout=120) == "victim-1"
    sandbox = ketch.Sandbox.create(app=app)
    handoff["victim"] = {"function_id": private_work.object_id, "call_id": call.object_id,
                         "sandbox_id": sandbox.object_id, "app_id": app.app_id}
    deadline = time.time() + 150
    while "done" not in handoff and time.time() < deadline:
        time.sleep(0.2)
    print("VICTIM-OK", private_work.remote(2))
"""

ATTACKER = """
import json
import os
import time

import ketch

app = ketch.App("sec-attacker")


def rpc(method, body):
    from ketch import _sync
    from ketch._client import _Client

    async def go():
        return await (await _Client.get()).rpc(method, body, timeout=30)

    return _sync.run_sync(go())


@app.function()
def helper(x: int) -> int:
    return x + 1


@app.function(block_network=True)
def attack(victim: dict, home: str) -> dict:
    from ketch.exception import PermissionDeniedError

    out = {}

    def attempt(name, method, body):
        try:
            rpc(method, body)
            out[name] = "allowed"
        except PermissionDeniedError as exc:
            out[name] = "denied" if method in str(exc) or "another app" in str(exc) else f"denied? {exc}"
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"

    host_root = {"version": 1, "layers": [], "notes": [],
                 "mounts": [{"kind": "dir", "local_path": "/", "remote_path": "/host", "ignore": []}]}
    spec = {"tag": "evil", "module_name": "evil", "qualname": "evil", "image": host_root}
    attempt("create_app_mounting_host_root", "AppCreate",
            {"app_id": "ap-evil", "name": "evil", "functions": [spec]})
    attempt("list_apps", "AppList", {})
    attempt("stop_another_app", "AppStop", {"name": "sec-victim"})
    attempt("read_another_apps_logs", "AppLogs", {"name": "sec-victim"})
    attempt("mint_proxy_token", "ProxyTokenCreate", {})
    attempt("mint_api_token", "ApiTokenCreate", {"role": "admin"})
    attempt("create_secret", "SecretCreate", {"name": "evil", "env": {"A": "1"}})
    attempt("build_image", "ImageBuild", {"image": host_root})
    attempt("call_another_apps_function", "CallCreate",
            {"call_id": "fc-evil", "function_id": victim["function_id"], "inputs": [], "closed": True})
    attempt("read_another_apps_call", "CallGetOutputs", {"call_id": victim["call_id"]})
    attempt("another_apps_function_stats", "FunctionGetCurrentStats",
            {"function_id": victim["function_id"]})
    attempt("deploy_an_app_by_lookup", "AppLookup", {"name": "evil", "create_if_missing": True})
    attempt("cancel_another_apps_call", "CallCancel", {"call_id": victim["call_id"]})
    attempt("bind_options_to_another_apps_function", "FunctionBindOptions",
            {"function_id": victim["function_id"], "options": {"timeout": 10}})
    attempt("rescale_another_apps_function", "FunctionUpdateAutoscaler",
            {"function_id": victim["function_id"], "settings": {"min_containers": 5}})
    attempt("rescale_its_own_function", "FunctionUpdateAutoscaler",
            {"function_id": helper.object_id, "settings": {"min_containers": 5}})
    # Past calls, usage, budgets, the dashboard's login, Secrets' values, image ids.
    attempt("show_another_apps_call", "CallShow", {"call_id": victim["call_id"]})
    attempt("replay_another_apps_call", "CallReplay", {"call_id": victim["call_id"]})
    attempt("another_apps_arguments", "CallReplaySpec", {"call_id": victim["call_id"]})
    attempt("list_calls", "CallList", {})
    attempt("read_usage", "UsageReport", {"by": "app"})
    attempt("set_a_budget", "AppBudgetSet", {"name": "sec-victim", "usd_per_day": 0})
    attempt("dashboard_login_link", "DashboardLogin", {})
    attempt("update_a_secret", "SecretUpdate", {"name": "sec-victim-secret", "env": {"A": "1"}})
    attempt("image_by_id", "ImageFromId", {"image_id": "im-" + "0" * 64})
    attempt("append_to_another_apps_call", "CallPutInputs",
            {"call_id": victim["call_id"], "inputs": [], "n_inputs": None})
    attempt("volume_blob_dir", "VolumeInfo", {})
    attempt("delete_a_named_dict", "ObjectDelete", {"kind": "dict", "name": "sec-handoff"})
    attempt("create_a_sandbox_in_another_app", "SandboxCreate",
            {"app_id": victim["app_id"], "spec": {"tag": "s", "module_name": "", "qualname": "s"}})
    attempt("a_function_containers_shell", "SandboxCreate",
            {"app_id": app.app_id, "function_id": victim["function_id"],
             "spec": {"tag": "s", "module_name": "", "qualname": "s"}})
    # Another app's sandbox, and any function's container (its own included), are not found.
    for name, target in (("victims_sandbox", victim["sandbox_id"]),
                         ("own_function_container", os.environ["KETCH_CONTAINER_ID"])):
        for method, body in (("SandboxExec", {"argv": ["cat", "/etc/hostname"]}),
                             ("SandboxFile", {"op": "read", "path": "/etc/hostname"}),
                             ("SandboxTerminate", {}), ("SandboxSnapshot", {})):
            try:
                rpc(method, {"sandbox_id": target, **body})
                out[f"{name}_{method}"] = "allowed"
            except Exception as exc:
                out[f"{name}_{method}"] = type(exc).__name__
    try:  # a named Secret its function was not given, through a sandbox it would read it in
        secret = [{"name": "sec-victim-secret", "id": ""}]
        rpc("SandboxCreate", {"app_id": app.app_id, "spec": {
            "tag": "s", "module_name": "", "qualname": "s", "secrets": secret}})
        out["secret_in_a_sandbox"] = "allowed"
    except Exception as exc:
        out["secret_in_a_sandbox"] = type(exc).__name__
    # A variant of its own function may not take a Secret or Volume its function lacks.
    for name, options in (
        ("secret_in_a_variant", {"secrets": [{"name": "sec-victim-secret", "id": "se-x"}]}),
        ("volume_in_a_variant", {"volumes": [{"path": "/v", "object_id": "vo-x"}]}),
    ):
        try:
            rpc("FunctionBindOptions", {"function_id": helper.object_id, "options": options})
            out[name] = "allowed"
        except Exception as exc:
            out[name] = type(exc).__name__
    out["own_variant"] = helper.with_options(timeout=30).remote(2)
    out["victims_sandbox_listed"] = victim["sandbox_id"] in [
        s.object_id for s in ketch.Sandbox.list()]
    out["owner_token_reachable"] = os.path.exists(os.path.join(home, "token"))
    own = ketch.Sandbox.create(app=app)
    out["own_sandbox"] = own.exec("echo", "mine").stdout.read()
    own.terminate()
    # What its app may still do.
    out["own_call"] = helper.remote(1)
    out["dict"] = ketch.Dict.from_name("sec-handoff").get("victim") == victim
    return out


@app.local_entrypoint()
def main(home: str):
    handoff = ketch.Dict.from_name("sec-handoff", create_if_missing=True)
    deadline = time.time() + 150
    while "victim" not in handoff and time.time() < deadline:
        time.sleep(0.2)
    try:
        print("RESULT " + json.dumps({"step": "attack", "value": attack.remote(handoff["victim"], home)}))
    finally:
        handoff["done"] = True
"""


def test_a_container_cannot_act_as_the_owner(sandbox_env, workdir: Path):
    (workdir / "victim.py").write_text(textwrap.dedent(VICTIM))
    (workdir / "attacker.py").write_text(textwrap.dedent(ATTACKER))
    sandbox_env.cli("secret", "create", "sec-victim-secret", "PASSWORD=hunter2").check()
    victim = sandbox_env.popen("run", workdir / "victim.py")
    try:
        run = sandbox_env.cli(
            "run", workdir / "attacker.py", "--home", str(sandbox_env.home), timeout=200
        )
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, run.describe()
        result = json.loads(lines[-1][len("RESULT ") :])["value"]
        finished = victim.wait(timeout=60)
    finally:
        victim.proc.kill()
    unseen = {k: v for k, v in result.items() if k.startswith(("victims_", "own_function_"))}
    kept = ("owner_token_reachable", "own_call", "dict", "own_sandbox", "secret_in_a_sandbox")
    kept = (*kept, "secret_in_a_variant", "volume_in_a_variant", "own_variant")
    kept = (*kept, *unseen)
    denied = {k: v for k, v in result.items() if k not in kept}
    assert denied and all(v == "denied" for v in denied.values()), json.dumps(result, indent=1)
    assert len(unseen) == 9 and result.pop("victims_sandbox_listed") is False
    assert all(v == "NotFoundError" for k, v in unseen.items() if k != "victims_sandbox_listed")
    assert result["own_sandbox"] == "mine\n"  # its own app's sandboxes work
    assert result["secret_in_a_sandbox"] == "PermissionDeniedError"
    assert result["secret_in_a_variant"] == result["volume_in_a_variant"] == "PermissionDeniedError"
    assert result["own_variant"] == 3  # with_options on its own function works
    assert result["owner_token_reachable"] is False
    assert result["own_call"] == 2 and result["dict"] is True
    # The victim app was neither stopped nor disturbed.
    assert "VICTIM-OK victim-2" in finished.stdout, finished.describe()
