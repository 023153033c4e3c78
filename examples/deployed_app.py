"""A deployed app: it keeps running after `ketch deploy` returns.

ketch deploy examples/deployed_app.py
python examples/deployed_client.py call 7
"""

import os
import time

import ketch

app = ketch.App("deployed-demo")


@app.function()
def square(x: int) -> int:
    print(f"DEPLOYED-SQUARE called with {x}")
    return x * x


@app.function()
def slow_square(x: int, delay: float = 1.0) -> int:
    time.sleep(delay)
    return x * x


@app.cls()
class Greeter:
    greeting: str = ketch.parameter(default="hello")

    @ketch.method()
    def greet(self, name: str) -> str:
        return f"{self.greeting}, {name}! (pid {os.getpid()})"
