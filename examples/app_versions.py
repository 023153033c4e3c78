"""Versions of a deployed app: deploy, edit, deploy again, look at the history, roll back.

ketch deploy examples/app_versions.py        # v1
# edit VERSION below, then
ketch deploy examples/app_versions.py        # v2: new calls run the new code;
                                             # calls already running finish on v1's containers
ketch app history versions-demo              # v2 (live), v1, with a hash of the source
ketch app rollback versions-demo             # v1's code is live again (recorded as v3)

Each deploy uploads a snapshot of the app's source, so a version keeps the
code it was deployed with even after the file changes.
"""

import time

import ketch

app = ketch.App("versions-demo")
VERSION = "first"


@app.function(scaledown_window=2)
@ketch.fastapi_endpoint()
def which() -> dict:
    return {"version": VERSION}


@app.function()
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return VERSION
