"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
installed by scripts/system-deps, driven by Selenium): log in with the one-time link, see
an app that just ran, open its failed call (traceback and logs), watch a live log line
arrive, see the usage chart. With ``KETCH_SCREENSHOTS=DIR`` it saves the main pages there."""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

APP = """
import time

import ketch

app = ketch.App("dash-e2e")


@app.function()
def boom(x: int) -> int:
    print("about to fail", x)
    raise ValueError(f"bad input {x}")


@app.function()
def double(x: int) -> int:
    return 2 * x


@app.function()
def ticker(n: int) -> None:
    for i in range(n):
        print(f"tick {i}", flush=True)
        time.sleep(0.4)
"""

CALLS = """
import ketch

boom = ketch.Function.from_name("dash-e2e", "boom")
double = ketch.Function.from_name("dash-e2e", "double")
print("DOUBLED", list(double.map(range(5))))
failing = boom.spawn(7)
try:
    failing.get()
except ValueError:
    pass
print("FAILED", failing.object_id)
notes = ketch.Dict.from_name("dash-e2e-notes", create_if_missing=True)
notes["a"], notes["b"] = 1, 2
"""


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromium-driver are not installed (scripts/system-deps)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _wait(driver, predicate, timeout=30.0, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - the page is still rendering
            pass
        time.sleep(0.2)
    raise AssertionError(
        f"{what} never showed it; page text:\n{driver.find_element('tag name', 'body').text}"
    )


def _shot(driver, name):
    folder = os.environ.get("KETCH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_the_dashboard_in_a_real_browser(ketch_env, tmp_path):
    (tmp_path / "dash_app.py").write_text(APP)
    ketch_env.cli("deploy", "dash_app.py", cwd=tmp_path).check()
    made = ketch_env.python("-c", CALLS, cwd=tmp_path, timeout=120)
    assert made.returncode == 0, made.describe()
    failed = re.search(r"FAILED (fc-\S+)", made.stdout).group(1)
    link = ketch_env.cli("dashboard", "--no-browser").check().stdout.split()[-1]
    base = link.split("/dashboard/")[0]

    # Without the session cookie nothing is served; a login link works once.
    for url in (f"{base}/dashboard/", f"{base}/dashboard/api/apps"):
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401

    driver = _browser()
    try:
        driver.get(link)
        _wait(driver, lambda: "dash-e2e" in driver.find_element("id", "apps").text, what="apps")
        assert "deployed v1" in driver.find_element("id", "apps").text
        _shot(driver, "apps")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(link, timeout=10)  # used: good once

        driver.get(f"{base}/dashboard/#/app/dash-e2e")
        bars = ".calls-chart[data-function='double'] svg rect"
        _wait(
            driver,
            lambda: any(
                float(r.get_attribute("height")) > 0
                for r in driver.find_elements("css selector", bars)
            ),
            what="a bar of the app page's calls chart",
        )
        page = driver.find_element("tag name", "body").text
        assert "p50" in page and "queue time mean" in page and "1 failed" in page, page
        _shot(driver, "app")

        driver.find_element("link text", failed).click()
        _wait(
            driver,
            lambda: (
                "ValueError: bad input 7" in driver.find_element("css selector", ".traceback").text
            ),
            what="the call",
        )
        body = driver.find_element("tag name", "body").text
        assert "about to fail 7" in body and f"ketch call replay {failed}" in body, body
        assert "arguments: (7)" in body, body
        assert "container ta-" in body, body
        _shot(driver, "call")
        # The replay button runs it again (remote, the same code): the new call fails alike.
        driver.find_element("id", "replay").click()
        _wait(driver, lambda: driver.find_elements("css selector", "#replayed a"), what="a replay")
        replayed = driver.find_element("css selector", "#replayed a").text
        driver.find_element("css selector", "#replayed a").click()
        _wait(
            driver,
            lambda: (
                replayed in driver.find_element("tag name", "h1").text
                and "ValueError: bad input 7"
                in driver.find_element("css selector", ".traceback").text
            ),
            timeout=60,
            what="the replayed call",
        )
        forged = urllib.request.Request(f"{base}/dashboard/replay?id={failed}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as no_cookie:
            urllib.request.urlopen(forged, timeout=10)
        assert no_cookie.value.code == 401
        # With the session cookie but without the dashboard's header (another site's form):
        session = driver.get_cookie("ketch_dashboard")["value"]
        forged.add_header("Cookie", f"ketch_dashboard={session}")
        with pytest.raises(urllib.error.HTTPError) as no_header:
            urllib.request.urlopen(forged, timeout=10)
        assert no_header.value.code == 403

        driver.get(f"{base}/dashboard/#/logs?app=dash-e2e")
        _wait(
            driver,
            lambda: driver.find_element("id", "live").get_attribute("class") == "on",
            what="the live log stream",
        )
        spawn = "import ketch\nketch.Function.from_name('dash-e2e', 'ticker').remote(6)\n"
        ketch_env.python("-c", spawn, cwd=tmp_path, timeout=120).check()
        _wait(
            driver,
            lambda: "tick 5" in driver.find_element("id", "log-lines").text,
            what="live log lines",
        )
        _shot(driver, "logs")

        driver.get(f"{base}/dashboard/#/objects")
        _wait(
            driver,
            lambda: "dash-e2e-notes" in driver.find_element("tag name", "body").text,
            what="the objects",
        )
        assert "2 entries" in driver.find_element("tag name", "body").text

        driver.get(f"{base}/dashboard/#/usage")
        _wait(
            driver,
            lambda: driver.find_elements("css selector", ".usage-chart svg rect"),
            what="the usage chart",
        )
        assert "double" in driver.find_element("tag name", "body").text
        _shot(driver, "usage")
    finally:
        driver.quit()
    ketch_env.cli("app", "stop", "dash-e2e").check()
