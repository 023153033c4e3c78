"""Running an app from a plain Python script, no CLI needed.

python examples/plain_script.py
"""

import os

import ketch

app = ketch.App("plain-script")


@app.function()
def cube(x: int) -> int:
    return x**3


@app.function(env={"GREETING": "bonjour"})
def read_env() -> str:
    return os.environ.get("GREETING", "<unset>")


if __name__ == "__main__":
    factor = 3

    # Defined inside the main block, so a container importing this file never
    # sees it: serialized=True ships the function itself instead.
    @app.function(serialized=True)
    def scale(x: int) -> int:
        return x * factor

    with app.run():
        print("CUBE:", cube.remote(3))
        print("CUBES:", list(cube.map([1, 2, 3])))
        print("ENV:", read_env.remote())
        print("SCALED:", scale.remote(14))
