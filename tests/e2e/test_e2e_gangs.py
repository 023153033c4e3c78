"""Gangs (``@ketch.experimental.clustered``, issue 17) on one machine, end to end.

``examples/gang_all_reduce.py``: three containers started together learn their
ranks and addresses and sum a value over TCP; a member that dies takes the
gang's input with it, and the input runs again, whole, in a new gang. The same
example runs across the nodes of a Ray cluster in ``test_e2e_ray.py``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(240)


def _check(result: dict) -> None:
    assert result["rank"] == 0 and result["size"] == 3
    assert result["sum"] == 10 + 20 + 30  # (rank + 1) * 10 from each member
    leader = result["ids"][0]
    assert result["ids"] == [leader, f"{leader}-1", f"{leader}-2"]


def test_a_gang_of_three_all_reduces(ketch_env):
    run = ketch_env.run_example("gang_all_reduce.py", timeout=180)
    _check(run.value("reduce"))


def test_a_lost_member_retries_the_whole_gang(ketch_env):
    run = ketch_env.run_example("gang_all_reduce.py", "--lose-a-member", timeout=180)
    assert run.value("lost_once") is True  # the first gang lost rank 2 ...
    _check(run.value("reduce"))  # ... and a new gang ran the input


CLUSTERED_CLASS = """
import ketch

app = ketch.App("gang-class")


@app.cls()
@ketch.experimental.clustered(size=2)
class Pair:
    @ketch.enter()
    def join(self):
        self.info = ketch.experimental.get_cluster_info()
        self.calls = 0

    @ketch.method()
    def who(self, x):
        self.calls += 1
        return {"rank": self.info.rank, "size": self.info.size, "x": x, "calls": self.calls}


@app.local_entrypoint()
def main():
    pair = Pair()
    print("FIRST", pair.who.remote(1))
    print("SECOND", pair.who.remote(2))
"""


def test_a_clustered_class_is_a_gang_per_container(ketch_env, tmp_path):
    """``@app.cls`` over ``clustered(size=2)``: both members enter, every call reaches the
    gang, and the answer is rank 0's; the gang stays up between calls."""
    (tmp_path / "pair.py").write_text(CLUSTERED_CLASS)
    done = ketch_env.cli("run", "pair.py", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.describe()
    assert "FIRST {'rank': 0, 'size': 2, 'x': 1, 'calls': 1}" in done.stdout, done.describe()
    assert "SECOND {'rank': 0, 'size': 2, 'x': 2, 'calls': 2}" in done.stdout, done.describe()


def test_clustered_is_checked_at_decoration():
    import ketch

    with pytest.raises(ketch.exception.InvalidError, match="1 to 64"):
        ketch.experimental.clustered(size=0)
    with pytest.raises(ketch.exception.InvalidError, match="inside a"):
        ketch.experimental.get_cluster_info()
