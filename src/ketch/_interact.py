"""``ketch.interact()``: remote code reads the user's terminal (under ``ketch run -i``).

Example::

    @app.function()
    def ask():
        ketch.interact()
        return input("name? ")
"""

from __future__ import annotations

from ._config import in_container


def interact() -> None:
    """Inside a container of an app run with ``ketch run -i``, make ``sys.stdin`` the
    user's terminal; outside a container the terminal is already there (nothing to do)."""
    if in_container():
        from .guest.interact import interact as in_the_container

        in_the_container()
