"""Scheduled functions: they run on their own once the app is deployed.

ketch deploy examples/schedules.py
ketch app info schedules-demo        # the next run of each schedule, and the last one
ketch app logs schedules-demo        # what the runs printed
ketch app stop schedules-demo        # schedules stop with the app

A run that is due while the previous run of the same function is still going
is skipped. Runs are calls: `ketch.FunctionCall.from_id(id).get()` gets one's result.
"""

import time

import ketch

app = ketch.App("schedules-demo")
ticks = ketch.Dict.from_name("schedules-demo-ticks", create_if_missing=True)


@app.function(schedule=ketch.Period(seconds=2))
def heartbeat() -> float:
    now = time.time()
    ticks.put(f"tick-{now:.3f}", now)
    print(f"heartbeat at {now:.3f}")
    return now


@app.function(schedule=ketch.Cron("0 3 * * *", timezone="Europe/Paris"))
def nightly_cleanup() -> str:
    print("cleaning up")
    return "done"
