"""Call the functions of `examples/deployed_app.py` from any process.

python examples/deployed_client.py call 7
python examples/deployed_client.py greet bonjour ada
python examples/deployed_client.py spawn 1 2 3      # prints one call id per input
python examples/deployed_client.py get ID [ID...]   # collects those results, even much later
"""

import sys

import ketch

APP_NAME = "deployed-demo"


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "call":
        square = ketch.Function.from_name(APP_NAME, "square")
        print(f"SQUARE {args[0]} = {square.remote(int(args[0]))}")
    elif command == "greet":
        Greeter = ketch.Cls.from_name(APP_NAME, "Greeter")
        print(f"GREETING {Greeter(greeting=args[0]).greet.remote(args[1])}")
    elif command == "spawn":
        slow_square = ketch.Function.from_name(APP_NAME, "slow_square")
        for x in args:
            call = slow_square.spawn(int(x))
            print(f"CALL {x} {call.object_id}", flush=True)
    elif command == "get":
        for call_id in args:
            result = ketch.FunctionCall.from_id(call_id).get(timeout=120)
            print(f"RESULT {call_id} {result}", flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
