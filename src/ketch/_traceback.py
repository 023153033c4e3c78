"""Tracebacks that show the user's frames, local and remote, without ketch's plumbing."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import TextIO

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_HIDDEN = (_PACKAGE_DIR, "/click/", "/asyncio/", "/concurrent/futures/")


def _is_user_frame(tb: TracebackType) -> bool:
    filename = tb.tb_frame.f_code.co_filename
    return not any(marker in filename for marker in _HIDDEN)


def user_frames(tb: TracebackType | None) -> TracebackType | None:
    """Relink ``tb`` keeping only frames outside ketch, click and asyncio."""
    kept = []
    while tb is not None:
        if _is_user_frame(tb):
            kept.append(tb)
        tb = tb.tb_next
    head: TracebackType | None = None
    for frame_tb in reversed(kept):
        head = TracebackType(head, frame_tb.tb_frame, frame_tb.tb_lasti, frame_tb.tb_lineno)
    return head


def print_user_traceback(exc: BaseException, file: TextIO | None = None) -> None:
    out = file or sys.stderr
    tb = user_frames(exc.__traceback__)
    if tb is not None:
        out.write("Traceback (most recent call last):\n")
        out.write("".join(traceback.format_tb(tb)))
    out.write("".join(traceback.format_exception_only(type(exc), exc)))
