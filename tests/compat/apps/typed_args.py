"""ketch's own addition: arguments checked against type hints before they travel."""

import modal

app = modal.App("compat-typed-args")
ran = modal.Dict.from_name("compat-typed-ran", create_if_missing=True)


@app.function()
def train(lr: float, steps: int, tags: list[str]) -> str:
    ran["train"] = ran.get("train", 0) + 1
    return f"lr={lr} steps={steps} tags={tags}"


@app.function(validate_args=False)
def unchecked(steps: int) -> str:
    return f"got {steps!r}"


@app.cls()
class Model:
    @modal.method()
    def predict(self, x: int) -> int:
        return x * 2


@app.local_entrypoint()
def main():
    print("OK", train.remote(1, 10, ["a"]))
    for call in (
        lambda: train.remote("0.1", "ten", []),
        lambda: train.spawn(0.1, 10, "not-a-list"),
        lambda: list(train.map([0.1, "x"], [1, 2], [[], []])),
        lambda: Model().predict.remote("seven"),
    ):
        try:
            call()
            print("NOT CHECKED")
        except modal.exception.InvalidError as exc:
            print("REFUSED", str(exc).split(":")[0], str(exc).split("argument ")[1].split(" ")[0])
    print("RAN", ran.get("train"))
    print("UNCHECKED", unchecked.remote("ten"))
