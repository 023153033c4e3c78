"""Run an image's ``run_function`` step: ``python -m ketch.guest.build_fn FILE``.

``FILE`` holds ``cloudpickle.dumps((fn, args, kwargs))``; the step fails when
the function raises (its traceback is the step's output).
"""

from __future__ import annotations

import sys

import cloudpickle


def main(path: str) -> None:
    with open(path, "rb") as fh:
        fn, args, kwargs = cloudpickle.load(fh)
    fn(*args, **kwargs)


if __name__ == "__main__":
    main(sys.argv[1])
