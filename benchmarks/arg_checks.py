#!/usr/bin/env python
"""What checking arguments against type hints costs a call (issue 19's target: <= 20 us).

Usage::

    .venv/bin/python benchmarks/arg_checks.py

Each row times ``Function._encode_args`` (bind the arguments to the signature, check
them, pickle them: what ``.remote``/``.spawn``/``.map`` do per input before anything is
sent) for one signature, with ``validate_args`` on and off, best of 5 runs of 20,000
calls. No control plane is needed: nothing is sent. The peer is pydantic's own
``validate_call`` wrapper around the same function, which checks and then calls it.
"""

from __future__ import annotations

import dataclasses
import timeit
from typing import Any

from pydantic import ConfigDict, validate_call

import ketch

app = ketch.App("bench-arg-checks")


@dataclasses.dataclass
class Config:
    lr: float
    layers: int


def scalars(lr: float, steps: int, name: str) -> None: ...


def containers(tags: list[str], weights: dict[str, float], shape: tuple[int, int]) -> None: ...


def objects(cfg: Config, path: str | None = None, *extra: int, **opts: bool) -> None: ...


CASES: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = [
    ("3 scalars (float, int, str)", scalars, (1, 10, "run"), {}),
    ("list[str], dict[str, float], tuple", containers, (["a"] * 8, {"x": 1.0}, (2, 3)), {}),
    ("dataclass, optional, *args, **kwargs", objects, (Config(0.1, 2), None, 1, 2), {"v": True}),
]


def best_us(fn: Any, n: int = 20_000) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def main() -> None:
    rows = []
    for label, raw, args, kwargs in CASES:
        checked = app.function(name=f"{raw.__name__}_on")(raw)
        plain = app.function(name=f"{raw.__name__}_off", validate_args=False)(raw)
        on, off = checked._ketch_impl, plain._ketch_impl
        on._encode_args(args, kwargs)  # build the checker (and import pydantic) once
        peer = validate_call(config=ConfigDict(arbitrary_types_allowed=True))(raw)
        t_on = best_us(lambda on=on, a=args, k=kwargs: on._encode_args(a, k))
        t_off = best_us(lambda off=off, a=args, k=kwargs: off._encode_args(a, k))
        t_peer = best_us(lambda peer=peer, a=args, k=kwargs: peer(*a, **k))
        rows.append((label, t_off, t_on, t_on - t_off, t_peer))
    print(
        f"{'signature':<40} {'off (us)':>9} {'on (us)':>9} {'check (us)':>11} {'pydantic validate_call (us)':>28}"
    )
    for label, t_off, t_on, extra, t_peer in rows:
        print(f"{label:<40} {t_off:>9.2f} {t_on:>9.2f} {extra:>11.2f} {t_peer:>28.2f}")
    print("\ntarget: check <= 20 us per call")


if __name__ == "__main__":
    main()
