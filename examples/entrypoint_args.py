"""Local entrypoints: their parameters become command-line options.

ketch run examples/entrypoint_args.py::main --n 3 --name ketch --shout
ketch run examples/entrypoint_args.py::other
"""

import ketch

app = ketch.App("entrypoint-args")


@app.function()
def greet(name: str, times: int) -> str:
    return " ".join([f"hello {name}"] * times)


@app.local_entrypoint()
def main(n: int = 1, name: str = "world", shout: bool = False):
    message = greet.remote(name, n)
    if shout:
        message = message.upper()
    print(f"GREETING: {message}")
    print(f"N_TYPE: {type(n).__name__}")


@app.local_entrypoint()
def other():
    print("OTHER-ENTRYPOINT ran")
