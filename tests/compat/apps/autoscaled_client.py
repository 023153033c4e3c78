"""Rescale a deployed function, then call a with_options variant of it (plain Python)."""

import sys
import time

import ketch as modal

greet = modal.Function.from_name("compat-autoscaled", "greet")
shout = greet.with_options(env={"PUNCT": "!"})
if sys.argv[1] == "scale":
    greet.update_autoscaler(min_containers=1, scaledown_window=30)
    deadline = time.monotonic() + 60
    while greet.get_current_stats().num_total_runners < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    print("WARM", greet.get_current_stats().num_total_runners)
    try:
        greet.update_autoscaler(min_containers=-1)
    except modal.exception.InvalidError as exc:
        print("BAD", "min_containers" in str(exc))
print("CALL", greet.remote("ann"), "|", shout.remote("bob"))
