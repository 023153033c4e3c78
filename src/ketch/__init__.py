"""ketch: run Python functions in containers on your own machines, with Modal's API.

Example::

    import ketch

    app = ketch.App("demo")

    @app.function()
    def square(x: int) -> int:
        return x * x

    @app.local_entrypoint()
    def main():
        print(square.remote(4))
"""

from __future__ import annotations

import os as _os
import sys as _sys

# Inside sandbox containers ketch's own dependencies live in a directory of
# their own, searched after the image's packages so that the user's pins win.
if (_deps := _os.environ.get("KETCH_BUNDLE_DEPS")) and _deps not in _sys.path:
    _sys.path.append(_deps)

__version__ = "0.1.0"

from . import exception, experimental, gpu
from ._current import current_function_call_id, current_input_id, is_local
from ._dict import Dict
from ._interact import interact
from ._queue import Queue
from ._secret import Secret
from ._server import Server
from ._tunnel import Tunnel, forward
from ._volume import FileEntry, FileEntryType, Volume
from ._web import asgi_app, fastapi_endpoint, web_server, wsgi_app
from .app import App
from .cls import Cls
from .functions import Function, FunctionCall
from .image import Image
from .output import enable_output
from .partial import batched, concurrent, enter, exit, method, parameter
from .retries import Retries
from .sandbox import ContainerProcess, Probe, Sandbox
from .schedule import Cron, Period

Error = exception.Error  # Modal's top-level name for the base of its errors

__all__ = [
    "App",
    "Cls",
    "Cron",
    "Dict",
    "Function",
    "FunctionCall",
    "Image",
    "Period",
    "Probe",
    "Queue",
    "Retries",
    "Sandbox",
    "ContainerProcess",
    "Secret",
    "Server",
    "Tunnel",
    "Volume",
    "FileEntry",
    "FileEntryType",
    "__version__",
    "asgi_app",
    "batched",
    "concurrent",
    "current_function_call_id",
    "current_input_id",
    "enable_output",
    "enter",
    "exception",
    "Error",
    "gpu",
    "experimental",
    "exit",
    "fastapi_endpoint",
    "forward",
    "interact",
    "is_local",
    "method",
    "parameter",
    "web_endpoint",
    "web_server",
    "wsgi_app",
]

web_endpoint = fastapi_endpoint  # Modal's older name
