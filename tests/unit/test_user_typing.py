"""What users' type checkers see: mypy --strict on an app written against ketch's API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_user_app_type_checks() -> None:
    """tests/typing/user_app.py asserts the types of remote, map, spawn, .aio, ... with
    assert_type, and marks the calls that must be errors with type: ignore."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",
            "--no-incremental",
            "tests/typing/user_app.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _keyword_options(cls_name: str, method: str) -> dict[str, str]:
    tree = ast.parse((ROOT / "src/ketch/app.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    args = item.args
                    return {
                        a.arg: ast.unparse(d) if d is not None else ""
                        for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                    }
    raise AssertionError(f"{cls_name}.{method} not found in app.py")


@pytest.mark.parametrize("method", ["function", "cls"])
def test_app_stub_takes_the_implementation_options(method: str) -> None:
    """The App stub that type checkers read lists app.function()'s and app.cls()'s options
    again; a new option must be added to both, with the same default."""
    assert _keyword_options("App", method) == _keyword_options("_App", method)
