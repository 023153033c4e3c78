"""Secrets as environment variables in containers.

    ketch secret create example-api API_KEY=s3cr3t      # once
    ketch run examples/secrets_example.py

Values are encrypted at rest in the control plane and only decrypted into the
environment of the containers that ask for them; `ketch secret list` never
shows them.
"""

import json
import os

import ketch

app = ketch.App("secrets-example")

inline = ketch.Secret.from_dict({"REGION": "eu-west", "DEBUG": "0"})
named = ketch.Secret.from_name("example-api")


@app.function(secrets=[named, inline], env={"DEBUG": "1"})
def whoami() -> dict:
    key = os.environ["API_KEY"]
    return {
        "api_key_length": len(key),
        "region": os.environ["REGION"],
        "debug": os.environ["DEBUG"],
    }


@app.local_entrypoint()
def main():
    value = whoami.remote()  # env= wins over secrets, later secrets over earlier ones
    print("RESULT " + json.dumps({"step": "secrets", "value": value}), flush=True)
