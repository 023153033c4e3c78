"""Arguments checked against type hints before they travel (``ketch._typecheck``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import ketch
from ketch._typecheck import checker_for
from ketch.exception import InvalidError


@dataclasses.dataclass
class Config:
    lr: float
    layers: int


def train(
    lr: float,
    steps: int,
    names: list[str],
    cfg: Config,
    path: Path | None = None,
    *extra: int,
    mode: str = "fast",
    **opts: bool,
) -> None: ...


def _check(fn, *args, method=False, batched=False, **kwargs):
    import inspect

    checker = checker_for(fn, method, batched)
    bound = inspect.signature(fn).bind(*((None,) if method else ()), *args, **kwargs)
    checker.check(fn.__name__, bound.arguments)


def test_well_typed_and_lax_arguments_pass():
    cfg = Config(0.1, 2)
    _check(train, 1, 10, ["a"], cfg)  # an int for a float
    _check(train, 0.5, 10.0, ("a", "b"), cfg, "/tmp/x", 1, 2, mode="slow", verbose=True)


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        (("x", 10, [], Config(1, 1)), {}, "'lr' must be float, got str 'x'"),
        ((0.1, 1.5, [], Config(1, 1)), {}, "'steps' must be int"),
        ((0.1, 1, ["a", 3], Config(1, 1)), {}, "'names' must be list[str]"),
        ((0.1, 1, [], {"lr": 1}), {}, "'cfg' must be Config"),
        ((0.1, 1, [], Config(1, 1), None, 1, "two"), {}, "'extra' must be int"),
        ((0.1, 1, [], Config(1, 1)), {"mode": 3}, "'mode' must be str"),
        ((0.1, 1, [], Config(1, 1)), {"flag": []}, "'opts' must be bool"),
    ],
)
def test_a_wrong_argument_names_the_parameter_and_the_type(args, kwargs, named):
    with pytest.raises(InvalidError, match="validate_args=False") as info:
        _check(train, *args, **kwargs)
    assert named in str(info.value)


class Model:
    def predict(self, x: int, scale: float | None = None) -> int: ...

    def embed(self, xs: list[str]) -> list: ...


def test_methods_skip_self_and_batched_functions_check_each_item():
    _check(Model.predict, 3, method=True)
    with pytest.raises(InvalidError, match="'x' must be int"):
        _check(Model.predict, "3x", method=True)
    _check(Model.embed, "one item", method=True, batched=True)
    with pytest.raises(InvalidError, match="'xs' must be str"):
        _check(Model.embed, 5, method=True, batched=True)


def unresolvable(x: NoSuchType) -> None: ...  # noqa: F821


def nothing(x, y: Any, z: object) -> None: ...


def test_no_check_when_hints_are_missing_or_unresolvable():
    assert checker_for(unresolvable, False) is None
    assert checker_for(nothing, False) is None
    assert checker_for(None, False) is None


def uses_a_dict(store: ketch.Dict, stores: list[ketch.Dict]) -> None: ...


def test_ketch_objects_pass_as_their_public_class():
    """The SDK unwraps ``ketch.Dict`` to its implementation before encoding arguments: the
    check still sees a ``ketch.Dict``."""
    from ketch._dict import _Dict

    _check(uses_a_dict, _Dict(name="d"), [ketch.Dict.from_name("e")])
    with pytest.raises(InvalidError, match="'store' must be Dict"):
        _check(uses_a_dict, {"not": "a dict handle"}, [])
