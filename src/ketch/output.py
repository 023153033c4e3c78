"""``ketch.enable_output()``, Modal's context manager that shows build and container output.

ketch shows both by default (``app.run(show_logs=True)``, ``ketch run``): image
build lines as they come, and each container's stdout and stderr. So entering
it changes nothing; it exists so that apps written for Modal run unchanged.

Example::

    with ketch.enable_output(), app.run():
        f.remote()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def enable_output(show_progress: bool = True) -> Iterator[None]:
    """Show build and container output inside the block (ketch already does)."""
    yield
