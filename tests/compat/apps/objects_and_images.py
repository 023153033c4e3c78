"""Modal 1.1's ``objects`` namespaces, ``Secret.update``, and ``Image.build``/``Image.from_id``."""

import os

import modal

app = modal.App("compat-objects")
image = modal.Image.debian_slim().run_commands("echo built-once > /marker")


@app.function(secrets=[modal.Secret.from_name("compat-creds")])
def read_secret() -> list:
    return [os.environ.get("USER_NAME"), os.environ.get("PASSWORD")]


@app.function(
    image=modal.Image.from_id(os.environ["COMPAT_IMAGE_ID"])
    if "COMPAT_IMAGE_ID" in os.environ
    else image
)
def marker() -> str:
    with open("/marker") as fh:
        return fh.read().strip()


@app.local_entrypoint()
def main():
    for kind in (modal.Dict, modal.Queue, modal.Volume):
        kind.objects.create("compat-made")
        try:
            kind.objects.create("compat-made")
        except modal.exception.AlreadyExistsError:
            kind.objects.create("compat-made", allow_existing=True)
            names = [o.name for o in kind.objects.list()]
            kind.objects.delete("compat-made")
            kind.objects.delete("compat-made", allow_missing=True)
            after = [o.name for o in kind.objects.list()]
            print("OBJECTS", kind.__name__, "compat-made" in names, "compat-made" in after)

    # The test made compat-creds with Secret.objects.create before this app started.
    modal.Secret.objects.create("compat-creds", {"PASSWORD": "ignored"}, allow_existing=True)
    try:
        modal.Secret.objects.create("compat-creds", {"PASSWORD": "ignored"})
    except modal.exception.AlreadyExistsError:
        print("SECRET_EXISTS ok")
    print("SECRET_BEFORE", read_secret.remote())
    modal.Secret.from_name("compat-creds").update({"PASSWORD": "new"})
    print("SECRET_LISTED", "compat-creds" in [s.name for s in modal.Secret.objects.list()])
    print("MARKER", marker.remote())
