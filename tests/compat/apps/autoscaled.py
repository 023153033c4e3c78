"""A deployed Modal app whose function is rescaled, and given options, from outside."""

import os

import modal

app = modal.App("compat-autoscaled")


@app.function(env={"GREETING": os.environ.get("GREETING", "hello")})
def greet(name: str) -> str:
    return f"{os.environ['GREETING']} {name} {os.environ.get('PUNCT', '')}".strip()
