"""The operator console in a real browser: Debian's chromium driven by selenium through
Debian's chromedriver, against a running pushbridge (API, workers, emulator, receiver on
127.0.0.1). Sign in, see the jobs, show the failed deliveries, open one and see its 500
answers, redeliver it and see it delivered, cancel a running job.

`make test` installs chromium and chromium-driver first (tools/get_chromium.sh, as root
with apt-get); where they cannot be installed this test is skipped and says why.
`UPDATE_SCREENSHOT=1` saves the console as the flow shows it to docs/console.png (the
README's picture).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.dev.emulators.octoai import EmulatorSettings
from bridge.dev.receiver import Reply
from tests.conftest import API_KEY, UPSTREAM_TOKEN

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1500,940",
)
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "console.png"
WAIT_S = 15

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        f"{CHROMIUM} or {CHROMEDRIVER} is missing: tools/get_chromium.sh installs Debian's "
        "chromium and chromium-driver (as root, with apt-get)",
        allow_module_level=True,
    )

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    def safe(d: Any) -> Any:
        try:
            return condition(d)
        except StaleElementReferenceException:  # the table was redrawn meanwhile
            return False

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(safe, f"waiting for {what}")


def _row_ids(driver: Any) -> list[str]:
    return [
        tr.get_attribute("data-id")
        for tr in driver.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    ]


def _attempt_codes(driver: Any) -> list[str]:
    return [
        td.text for td in driver.find_elements(By.CSS_SELECTOR, "#attempts tbody td:nth-child(3)")
    ]


def _text(driver: Any, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def _choose(driver: Any, label: str) -> None:
    chip = driver.find_element(
        By.XPATH, f"//label[contains(@class,'chip')][normalize-space()='{label}']"
    )
    chip.click()


async def _in_thread(step: Callable[[], Any]) -> Any:
    """Selenium blocks: run it beside the event loop that serves the bridge."""
    return await asyncio.to_thread(step)


async def test_console_flow_in_chromium(make_stack, browser):
    s = await make_stack(EmulatorSettings(duration_s=0.2, token=UPSTREAM_TOKEN, seed=3))
    await _flow(s, browser)


async def _flow(s: Any, browser: Any) -> None:
    s.receiver.path_defaults["/orders"] = Reply(500, body=b'{"error": "database unavailable"}')
    delivered = [
        (await s.submit(metadata={"order": 1040 + i}, callback_url=s.hook("/hook"))).json()["id"]
        for i in range(4)
    ]
    failing = [
        (await s.submit(metadata={"order": 1050 + i}, callback_url=s.hook("/orders"))).json()["id"]
        for i in range(2)
    ]
    running = (
        await s.submit(inputs={"_emulate": {"duration_s": 120}}, metadata={"order": 1060})
    ).json()["id"]
    # wait for every failing delivery to give up (1 + 3 retries, 0.2 s apart)
    assert await s.receiver.wait_for(lambda: len(s.receiver.to("/orders")) == 8, 20)
    assert await s.receiver.wait_for(lambda: len(s.receiver.to("/hook")) == 4, 20)
    for job_id in failing:
        for _ in range(50):
            if (await s.job(job_id))["delivery"]["state"] == "failed":
                break
            await asyncio.sleep(0.1)
    all_ids = {*delivered, *failing, running}
    url = f"{s.bridge.url}/console"

    def sign_in() -> None:
        browser.get(url)
        key = _wait(browser, lambda d: d.find_element(By.ID, "key"), "the sign-in form")
        key.send_keys(API_KEY, Keys.ENTER)
        _wait(browser, lambda d: set(_row_ids(d)) == all_ids, "the tenant's jobs")
        assert API_KEY not in browser.current_url
        stored = browser.execute_script("return [sessionStorage.length, localStorage.length]")
        assert stored == [1, 0]
        statuses = {
            tr.get_attribute("data-id"): tr.find_element(By.CSS_SELECTOR, "td:nth-child(3)").text
            for tr in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
        }
        assert {statuses[i] for i in failing} == {"failed"}

    await _in_thread(sign_in)

    def failed_deliveries() -> None:
        _choose(browser, "Failed deliveries")
        _wait(browser, lambda d: set(_row_ids(d)) == set(failing), "only the failed deliveries")
        browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-id="{failing[0]}"] button').send_keys(
            Keys.ENTER
        )
        _wait(browser, lambda d: _attempt_codes(d) == ["500"] * 4, "the four 500 answers")
        assert _text(browser, "d-id") == failing[0]
        assert "database unavailable" in _text(browser, "attempts")
        assert browser.find_element(By.ID, "cancel").get_attribute("disabled") == "true"

    await _in_thread(failed_deliveries)
    s.receiver.path_defaults["/orders"] = Reply(200)  # the receiver was fixed

    def redeliver() -> None:
        browser.find_element(By.ID, "redeliver").click()
        _wait(browser, lambda d: _attempt_codes(d) == ["500"] * 4 + ["200"], "a 200 answer")
        _wait(browser, lambda d: "delivered" in _text(d, "d-delivery"), "the job delivered")
        _wait(browser, lambda d: _row_ids(d) == [failing[1]], "it leaves the failed deliveries")
        _choose(browser, "All")
        _wait(browser, lambda d: set(_row_ids(d)) == all_ids, "every job again")
        shot = browser.get_screenshot_as_png()
        if os.environ.get("UPDATE_SCREENSHOT"):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.write_bytes(shot)

    await _in_thread(redeliver)
    assert [d.webhook_id for d in s.receiver.to("/orders")][-1] == "msg_" + failing[0][4:]

    def cancel() -> None:
        browser.switch_to.active_element.send_keys(Keys.ESCAPE)  # close with the keyboard
        _wait(browser, lambda d: not d.find_element(By.ID, "detail").is_displayed(), "closed")
        _choose(browser, "In flight")
        _wait(browser, lambda d: _row_ids(d) == [running], "the running job")
        browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-id="{running}"] button').click()
        _wait(browser, lambda d: _text(d, "d-status") == "running", "its detail")
        button = browser.find_element(By.ID, "cancel")
        button.click()
        assert button.text == "Confirm cancel"  # armed: a second press cancels
        button.click()
        _wait(browser, lambda d: _text(d, "d-status") == "cancelled", "the job cancelled")
        _wait(browser, lambda d: _row_ids(d) == [], "no job in flight")

    await _in_thread(cancel)
    assert (await s.job(running))["status"] == "cancelled"
