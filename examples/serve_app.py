"""`ketch serve`: edit this file while it is served, and the same URL answers with the new code.

ketch serve examples/serve_app.py     # prints: web endpoint greet => http://127.0.0.1:PORT
curl http://127.0.0.1:PORT/           # {"greeting": "hello"}
# change GREETING below and save: within a second or two the same URL says the new greeting
"""

import ketch

app = ketch.App("serve-demo")
GREETING = "hello"


@app.function()
@ketch.fastapi_endpoint()
def greet() -> dict:
    return {"greeting": GREETING}
