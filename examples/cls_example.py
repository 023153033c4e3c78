"""Classes: parameters, lifecycle hooks and methods.

    ketch run examples/cls_example.py --workdir /tmp/some-dir

Every distinct set of parameter values gets its own container, and
``@ketch.enter()`` runs once per container before the first input.
"""

import json
import os
from pathlib import Path

import ketch

app = ketch.App("cls-example")


@app.cls(scaledown_window=30)
class Counter:
    start: int = ketch.parameter(default=0)
    exit_marker: str = ketch.parameter(default="")

    @ketch.enter()
    def setup(self):
        self.base = self.start * 10
        self.calls = 0
        print(f"container for start={self.start} is ready")

    @ketch.method()
    def info(self, inc: int) -> dict:
        self.calls += 1
        return {
            "pid": os.getpid(),
            "container": os.environ.get("KETCH_CONTAINER_ID"),
            "start": self.start,
            "value": self.base + inc,
            "calls": self.calls,
        }

    @ketch.method()
    def total(self, values: list[int]) -> int:
        return self.base + sum(values)

    @ketch.exit()
    def teardown(self):
        print(f"container for start={self.start} is shutting down")
        if self.exit_marker:
            Path(self.exit_marker).write_text(f"exited start={self.start}")


@app.cls()
class Broken:
    @ketch.enter()
    def setup(self):
        raise RuntimeError("setup failed on purpose")

    @ketch.method()
    def run(self) -> str:
        return "unreachable"


@app.cls()
class Named:
    name: str = ketch.parameter()  # no default: callers must pass it

    @ketch.method()
    def hello(self) -> str:
        return f"hello {self.name}"


def show(step, fn):
    try:
        value = fn()
    except Exception as exc:
        line = {"step": step, "error": f"{type(exc).__name__}: {exc}"}
    else:
        line = {"step": step, "value": value}
    print("RESULT " + json.dumps(line, default=repr), flush=True)


@app.local_entrypoint()
def main(workdir: str):
    show("one_a", lambda: Counter(start=1).info.remote(1))
    show("one_b", lambda: Counter(start=1).info.remote(2))
    show("two", lambda: Counter(start=2).info.remote(1))
    show("default", lambda: Counter().info.remote(5))
    show("second_method", lambda: Counter(start=1).total.remote([1, 2, 3]))
    show("map", lambda: list(Counter(start=4).info.map([1, 2, 3])))
    show("spawn", lambda: Counter(start=4).info.spawn(7).get()["value"])
    show("local", lambda: Counter(start=5).info.local(1))
    marker = os.path.join(workdir, "exit-marker.txt")
    show("with_exit_marker", lambda: Counter(start=3, exit_marker=marker).info.remote(0))

    def broken_enter():
        try:
            Broken().run.remote()
        except Exception as exc:
            return {"raised": type(exc).__name__, "message": str(exc)}
        return {"returned": True}

    show("broken_enter", broken_enter)

    show("required_parameter", lambda: Named(name="ada").hello.remote())

    def missing_parameter():
        try:
            Named().hello.remote()
        except Exception as exc:
            return {"raised": type(exc).__name__, "message": str(exc)}
        return {"returned": True}

    show("missing_parameter", missing_parameter)
