"""Modal 1.5's ``@app.server``: a class whose enter hook starts an HTTP server."""

import os
import subprocess
import sys
import tempfile

import modal

PORT = int(os.environ.get("COMPAT_SERVER_PORT", "8765"))
app = modal.App("compat-server")


@app.server(port=PORT, env={"COMPAT_SERVER_PORT": str(PORT)})
class Files:
    @modal.enter()
    def start(self):
        root = tempfile.mkdtemp()
        with open(os.path.join(root, "hello.txt"), "w") as fh:
            fh.write("served by a modal.Server\n")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(PORT), "--bind", "127.0.0.1", "-d", root]
        )

    @modal.exit()
    def stop(self):
        self.proc.terminate()
