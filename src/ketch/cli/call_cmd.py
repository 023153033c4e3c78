"""``ketch call list|show|replay``: past calls, and running one again.

``replay`` runs a call's inputs again with the code that ran them (the spec archived
with the call: a deploy's source snapshot, or the function pickled by value), and says
whether each result matches the original, comparing what the containers made of them
(``repr`` of the result, or the exception):

- remote (the default): in a new ephemeral app made from that spec, so in containers
  like the original's, with its image, Secrets and Volumes;
- ``--local``: in this process, which imports the code (a snapshot is unpacked into a
  temporary folder) and unpickles the arguments; ``--pdb`` stops in the debugger at the
  exception, or at the function's first line when the original succeeded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from .. import _sync
from .._client import _Client
from .._spec import FunctionSpec
from ._util import ago, rpc

ERROR_STATUSES = ("failure", "timeout", "crash", "init_failure")


@click.group(name="call")
def call_group() -> None:
    """Past calls: list them, show one, run one again."""


@call_group.command(name="list")
@click.argument("app", required=False)
@click.option("--function", "function", help="Only calls of this function or class.")
@click.option("--failed", is_flag=True, help="Only calls with a failed input.")
@click.option("-n", "--limit", default=50, show_default=True, help="How many, newest first.")
def list_calls(app: str | None, function: str | None, failed: bool, limit: int) -> None:
    """List calls, newest first (of APP, a name or an ap- id, if given)."""
    body: dict[str, Any] = {"failed": failed, "limit": limit}
    if app:
        body["app"] = app
    if function:
        body["function"] = function
    rows = rpc("CallList", body)["calls"]
    click.echo(
        f"{'CALL':<26} {'APP':<22} {'FUNCTION':<20} {'KIND':<9} {'OK':>5} {'FAIL':>5}  CREATED"
    )
    for r in rows:
        fn = r["function"] + (f".{r['method']}" if r.get("method") else "")
        click.echo(
            f"{r['call_id']:<26} {r['app'][:22]:<22} {fn[:20]:<20} {r['kind']:<9} "
            f"{r['succeeded']:>5} {r['failed']:>5}  {ago(r['created_at'])}"
        )


@call_group.command()
@click.argument("call_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(call_id: str, as_json: bool) -> None:
    """Show call CALL_ID: arguments and result (or traceback) as its container saw them,
    its log lines, timing, cost and code version."""
    reply = rpc("CallShow", {"call_id": call_id})
    if as_json:
        click.echo(json.dumps(reply, indent=1, sort_keys=True, default=str))
        return
    fn = reply["function"] + (f".{reply['method']}" if reply.get("method") else "")
    n = reply["n_inputs"] if reply["n_inputs"] is not None else "?"
    click.echo(f"{reply['call_id']}: {reply['app']} / {fn}, {reply['kind']}, {n} input(s)")
    click.echo(f"created {ago(reply['created_at'])}; code version {reply['version'] or '-'}")
    usage = reply.get("usage")
    if usage:
        click.echo(f"cost ${usage['cost']:.6f} for {usage['seconds']:.2f} s of container time")
    for res in reply["results"]:
        took = res["at"] - reply["created_at"]
        click.echo(f"input {res['idx']}: {res['status']} after {took:.2f} s")
        if "args" in res:
            click.echo(f"  arguments: ({res['args']})")
        if "result" in res:
            click.echo(f"  result: {res['result']}")
        if "traceback" in res:
            click.echo("  " + res["traceback"].rstrip().replace("\n", "\n  "))
    pending = [i for i in reply["inputs"] if i["state"] == "pending"]
    if pending:
        click.echo(f"{len(pending)} input(s) not finished")
    if reply["logs"]:
        click.echo("logs:")
        for row in reply["logs"]:
            click.echo(f"  {row['text'].rstrip()}")
    click.echo(f"replay it: ketch call replay {reply['call_id']} [--local] [--pdb]")


@call_group.command()
@click.argument("call_id")
@click.option("--local", is_flag=True, help="In this process (imports the code here).")
@click.option("--pdb", "use_pdb", is_flag=True, help="With --local: stop in the debugger.")
@click.option("-n", "--limit", default=10, show_default=True, help="Inputs of a map to replay.")
def replay(call_id: str, local: bool, use_pdb: bool, limit: int) -> None:
    """Run call CALL_ID's inputs again with the code that ran them, and say whether each
    result matches the original."""
    if use_pdb and not local:
        raise click.UsageError("--pdb needs --local (the debugger runs in this process)")
    info = rpc("CallReplaySpec", {"call_id": call_id, "limit": limit})
    spec = FunctionSpec.from_wire(info["spec"])
    click.echo(
        f"replaying {call_id} ({len(info['inputs'])} input(s)) with code version "
        f"{info['version']}{' locally' if local else ''}"
    )
    if local:
        outcomes = _replay_local(info, spec, use_pdb)
    else:
        outcomes = _sync.run_sync(_replay_remote(info, spec))
    differ = 0
    for inp, original, now in zip(info["inputs"], info["results"], outcomes, strict=True):
        was, got = _outcome(original), _outcome(now)
        same = was == got and was is not None
        differ += not same
        verdict = "same" if same else "DIFFERS"
        click.echo(f"input {inp['idx']}: {verdict}: {got or '(no result)'}")
        if not same:
            click.echo(f"  original: {was or '(not recorded)'}")
    sys.exit(1 if differ else 0)


def _outcome(result: dict[str, Any] | None) -> str | None:
    """What is compared: the result's repr, or the exception as its container wrote it."""
    if not result:
        return None
    if result.get("status") in ERROR_STATUSES:
        return f"raised {result.get('error') or result.get('status')}"
    if "result" in result:
        return f"returned {result['result']}"
    return result.get("status")


async def _replay_remote(info: dict[str, Any], spec: FunctionSpec) -> list[dict[str, Any] | None]:
    """The inputs again on the control plane (``CallReplay``: a new ephemeral app of the
    archived spec); each one's result, as its container wrote it."""
    client = await _Client.get()
    n = len(info["inputs"])
    new_call = (await client.rpc("CallReplay", {"call_id": info["call_id"], "limit": n}))["call_id"]
    after, deadline = 0, time.monotonic() + spec.timeout * (spec.max_retries + 1) + 300
    while time.monotonic() < deadline:
        got = await client.rpc(
            "CallGetOutputs", {"call_id": new_call, "after": after, "timeout": 20}, timeout=60
        )
        if got["outputs"]:
            after = got["outputs"][-1]["seq"]
        if got["done"]:
            break
    shown = await client.rpc("CallShow", {"call_id": new_call, "limit": n})
    for row in shown["logs"]:
        sys.stderr.write(f"[replay] {row['text']}")
    by_idx = {r["idx"]: r for r in shown["results"]}
    return [by_idx.get(i["idx"]) for i in info["inputs"]]


def _replay_local(
    info: dict[str, Any], spec: FunctionSpec, use_pdb: bool
) -> list[dict[str, Any] | None]:
    """The inputs here, in this process, with the archived code."""
    import cloudpickle

    from .._serialization import unpack
    from ..guest.loop import _args_repr, _short_repr
    from ..guest.user_code import build_service

    spec = _local_code(spec)
    params = unpack(info["params"]) if info["params"] else None
    service = build_service(spec, params, "", {})
    fn = service.callables.get(info["method"])
    if fn is None:
        raise click.ClickException(f"{spec.tag} has no method {info['method']!r} here")
    outcomes: list[dict[str, Any] | None] = []
    for inp, original in zip(info["inputs"], info["results"], strict=True):
        data = inp["args"] if inp["args"] is not None else _blob(inp["blob_id"])
        args, kwargs = cloudpickle.loads(data)
        click.echo(f"input {inp['idx']}: {spec.tag}({_args_repr(args, kwargs)})")
        failed_before = bool(original) and original.get("status") in ERROR_STATUSES
        try:
            if use_pdb and not failed_before:
                import pdb

                value = pdb.runcall(fn, *args, **kwargs)
            else:
                value = fn(*args, **kwargs)
            if asyncio.iscoroutine(value):
                value = asyncio.run(value)
            outcomes.append({"status": "success", "result": _short_repr(value)})
        except Exception as exc:
            import traceback

            traceback.print_exc()
            if use_pdb:
                import pdb

                pdb.post_mortem(exc.__traceback__)
            outcomes.append({"status": "failure", "error": _short_repr(exc)})
    return outcomes


def _local_code(spec: FunctionSpec) -> FunctionSpec:
    """The spec with its code where this process can import it: a deploy's snapshot
    unpacked into a temporary folder, or the file the app was run from."""
    if spec.serialized_fn is not None or not spec.source:
        if spec.module_file and not Path(spec.module_file).is_file():
            raise click.ClickException(
                f"{spec.module_file} is not here any more: replay remotely (without --local)"
            )
        return spec
    from .. import _source

    target = Path(tempfile.mkdtemp(prefix="ketch-replay-")) / "src"
    root = _source.unpack_snapshot(_blob(spec.source["blob_id"]), target)
    rel = os.path.relpath(spec.module_file or "", spec.root_dir or "")
    return dataclasses.replace(spec, root_dir=str(root), module_file=str(root / rel), source=None)


def _blob(blob_id: str) -> bytes:
    async def get() -> bytes:
        return await (await _Client.get()).get_blob(blob_id)

    return _sync.run_sync(get())
