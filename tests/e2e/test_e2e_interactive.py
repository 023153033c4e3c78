"""``ketch run -i``: a ``breakpoint()`` or ``ketch.interact()`` in remote code gets the
user's terminal (issue 16), driven through a real pseudo-terminal with pexpect."""

from __future__ import annotations

import textwrap

import pexpect
import pytest
from ketch_testing import _ketch_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

APP = textwrap.dedent(
    """
    import ketch

    app = ketch.App("interactive-e2e")


    @app.function()
    def compute(x):
        y = x * 2
        breakpoint()
        z = y + 1
        return z


    @app.function()
    def ask():
        ketch.interact()
        return "hello " + input("name? ")


    @app.local_entrypoint()
    def main():
        print("RESULT", compute.remote(20))
        print("ASKED", ask.remote())
    """
)


def _spawn(ketch_env, tmp_path, *args: str) -> pexpect.spawn:
    (tmp_path / "interactive_app.py").write_text(APP)
    command = _ketch_command()
    return pexpect.spawn(
        command[0],
        [*command[1:], "run", *args, "interactive_app.py"],
        cwd=str(tmp_path),
        env=ketch_env.env,
        encoding="utf-8",
        timeout=120,
    )


def test_a_breakpoint_in_remote_code_opens_pdb_in_this_terminal(ketch_env, tmp_path):
    child = _spawn(ketch_env, tmp_path, "-i")
    try:
        child.expect(r"\(Pdb\) ")
        assert "z = y + 1" in child.before  # stopped in the remote frame
        child.sendline("p y")
        child.expect("40")
        child.sendline("y = 100")  # the remote frame's variable, changed from here
        child.expect(r"\(Pdb\) ")
        child.sendline("c")
        child.expect("RESULT 101")
        child.expect("name\\? ")  # ketch.interact(): input() reads this terminal
        child.sendline("world")
        child.expect("ASKED hello world")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_without_i_a_breakpoint_says_how_and_goes_on(ketch_env, tmp_path):
    child = _spawn(ketch_env, tmp_path)
    try:
        child.expect(pexpect.EOF)
        seen = child.before  # the container's logs and the client's prints, in any order
    finally:
        child.close(force=True)
    assert "breakpoint() at " in seen and "passed over: run the app with `ketch run -i`" in seen
    assert "RESULT 41" in seen  # not stopped, not failed
    assert "interact() does nothing without `ketch run -i`" in seen
    assert "EOFError" in seen  # input() on a container's empty stdin
    assert child.exitstatus == 1
