"""Modal's older GPU objects (``gpu=modal.gpu.A100(count=2, size="80GB")``), kept for apps
that still use them: each is the string ``gpu=`` takes today (``"A100-80GB:2"``)."""

from __future__ import annotations

from .exception import InvalidError


class _GPU(str):
    """A GPU request spelled as an object; it is its string form."""

    _name = ""
    _sizes: tuple[str, ...] = ()

    def __new__(cls, *, count: int = 1, size: str | None = None) -> _GPU:
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidError(f"{cls.__name__}(count=) must be a positive int, not {count!r}")
        name = cls._name
        if size is not None:
            if size not in cls._sizes:
                offered = ", ".join(map(repr, cls._sizes)) or "none"
                raise InvalidError(f"{cls.__name__}(size={size!r}): sizes are {offered}")
            name = f"{name}-{size}"
        return super().__new__(cls, name if count == 1 else f"{name}:{count}")


class T4(_GPU):
    _name = "T4"


class L4(_GPU):
    _name = "L4"


class A10G(_GPU):
    _name = "A10G"


class A100(_GPU):
    _name = "A100"
    _sizes = ("40GB", "80GB")


class L40S(_GPU):
    _name = "L40S"


class H100(_GPU):
    _name = "H100"


class H200(_GPU):
    _name = "H200"


class B200(_GPU):
    _name = "B200"


class Any(_GPU):
    _name = "any"
