"""Retry policy for function inputs.

Example::

    @app.function(retries=ketch.Retries(max_retries=3, backoff_coefficient=2.0, initial_delay=1.0))
    def flaky(): ...
"""

from __future__ import annotations

from dataclasses import dataclass

from .exception import InvalidError

MAX_RETRIES = 10


@dataclass(frozen=True)
class Retries:
    """How often and how patiently a failed input is tried again.

    The delay before retry ``n`` (1-based) is
    ``min(initial_delay * backoff_coefficient ** (n - 1), max_delay)``.
    """

    max_retries: int
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool):
            raise InvalidError(f"max_retries must be an int, not {self.max_retries!r}")
        if not 0 <= self.max_retries <= MAX_RETRIES:
            raise InvalidError(
                f"max_retries must be between 0 and {MAX_RETRIES}, got {self.max_retries}"
            )
        if not 1.0 <= self.backoff_coefficient <= 10.0:
            raise InvalidError("backoff_coefficient must be between 1.0 and 10.0")
        if not 0.0 <= self.initial_delay <= 60.0:
            raise InvalidError("initial_delay must be between 0 and 60 seconds")
        if not 1.0 <= self.max_delay <= 60.0:
            raise InvalidError("max_delay must be between 1 and 60 seconds")

    def delay(self, retry_number: int) -> float:
        return min(
            self.initial_delay * self.backoff_coefficient ** (retry_number - 1), self.max_delay
        )

    @classmethod
    def coerce(cls, value: int | Retries | None) -> Retries:
        """Modal's shorthand: ``retries=3`` means 3 retries with a 1 s delay, doubling."""
        if value is None:
            return cls(max_retries=0)
        if isinstance(value, Retries):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_retries=value)
        raise InvalidError(f"retries must be an int or ketch.Retries, not {type(value).__name__}")
