"""The dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven
by Selenium; no browser is ever downloaded): the page lists the tickets of a real run, shows
progress and a failure's text, and its Retry button runs the failed ticket again.

When selenium, Chromium or its driver is missing or cannot start, the test fails under CI=true
(naming the packages) and is skipped elsewhere.

The screenshot goes to the test's temporary folder; with ``CONVERT_AGENT_SCREENSHOTS=1`` (or when
``docs/dashboard.png`` is missing) it also refreshes ``docs/dashboard.png``.

Selenium's calls block, and the emulator and the agent run on this test's loop, so every browser
step runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dash_helpers import dash, drop_ticket, running_agent, wait_for

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"

try:
    from selenium.webdriver.common.by import By
except ImportError:  # the browser fixture says so (and fails under CI=true)
    By = None

CHROMIUM_PACKAGES = "apt-get install chromium chromium-driver"

Driver = Any  # selenium.webdriver.Chrome


@pytest.fixture
def browser(unavailable: Callable[[str, str], None]) -> Iterator[Driver]:
    if importlib.util.find_spec("selenium") is None:
        unavailable("selenium is not installed", "pip install -e '.[test]' (scripts/test does)")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        unavailable(f"the headless Chromium test needs {', '.join(missing)}", CHROMIUM_PACKAGES)
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="convert-agent-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1360,720",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except WebDriverException as exc:  # installed but unusable (no shared memory, …)
        shutil.rmtree(profile, ignore_errors=True)
        unavailable(f"chromium is installed but could not start: {exc.msg}", CHROMIUM_PACKAGES)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


ROWS_JS = """
return Array.from(document.querySelectorAll("#tickets tr[data-ticket]")).map((tr) => ({
  name: tr.dataset.ticket,
  phase: tr.dataset.phase,
  error: tr.querySelector("td.error").innerText,
  progress: String(tr.querySelectorAll("progress").length),
  buttons: Array.from(tr.querySelectorAll("button")).map((b) => b.textContent).join(" "),
  text: tr.innerText,
}));
"""


def _rows(driver: Driver) -> dict[str, dict[str, str]]:
    """The ticket table as the user sees it, read in one go (the page re-renders on change)."""
    return {r["name"]: r for r in driver.execute_script(ROWS_JS)}


def _until(driver: Driver, cond: Callable[[Driver], Any], what: str, timeout: float = 20) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(cond, message=what)


async def test_dashboard_in_chromium_lists_tickets_shows_errors_and_retries(
    tmp_path: Path, make_emulator: MakeEmulator, browser: Driver
) -> None:
    emu = await make_emulator(processing_seconds=1.5, faults=(FaultSpec("job", "fail", count=1),))
    async with running_agent(tmp_path, emu.base_url) as agent:
        d = dash(agent)
        inbox = tmp_path / "inbox"
        broken = drop_ticket(inbox, "scan-2024-03", color="gray")
        await wait_for(lambda: broken.with_name(broken.name + ".failed").exists(), 20, "failure")
        for stem, target in (("holiday-photo", "webp"), ("logo", "gif")):
            drop_ticket(inbox, stem, target=target, color="blue")
        await wait_for(
            lambda: (
                (inbox / "holiday-photo.job.done").exists() and (inbox / "logo.job.done").exists()
            ),
            20,
            "two tickets done",
        )
        drop_ticket(inbox, "poster-a2", target="jpg", color="green")  # still converting below

        # Open the URL the tray opens: the token is swapped for a cookie and leaves the URL.
        assert d.open_url is not None
        await asyncio.to_thread(browser.get, d.open_url)
        assert "token=" not in browser.current_url
        cookies = await asyncio.to_thread(browser.get_cookies)
        assert any(c["name"] == f"convert_agent_{d.port}" and c["httpOnly"] for c in cookies)

        def shown_running(drv: Driver) -> dict[str, dict[str, str]] | None:
            rows = _rows(drv)
            poster = rows.get("poster-a2.job")
            return rows if poster and poster["phase"] in ("processing", "starting") else None

        rows = await asyncio.to_thread(_until, browser, shown_running, "the page to go live")
        assert set(rows) == {"scan-2024-03.job", "holiday-photo.job", "logo.job", "poster-a2.job"}
        assert rows["holiday-photo.job"]["phase"] == "done"
        assert (
            rows["poster-a2.job"]["progress"] == "1"
            and "Cancel" in rows["poster-a2.job"]["buttons"]
        )
        failed = rows["scan-2024-03.job"]
        assert failed["phase"] == "failed" and "Retry" in failed["buttons"]
        assert "conversion failed" in failed["error"] and "6005" in failed["error"]
        assert "verified" in rows["logo.job"]["text"]
        live = await asyncio.to_thread(lambda: browser.find_element(By.ID, "live").text)
        assert live.startswith("live")

        shot = tmp_path / "dashboard.png"
        assert await asyncio.to_thread(browser.save_screenshot, str(shot))
        if os.environ.get("CONVERT_AGENT_SCREENSHOTS") == "1" or not DOCS_SHOT.exists():
            shutil.copyfile(shot, DOCS_SHOT)

        # The fault is spent (count 1) and cleared: the retry goes through this time.
        emu.state.faults.set([], replace=True)

        def click_retry(drv: Driver) -> bool:
            drv.find_element(
                By.CSS_SELECTOR, 'tr[data-ticket="scan-2024-03.job"] button.retry'
            ).click()
            return True

        await asyncio.to_thread(_until, browser, click_retry, "a click on Retry")

        def went_again(drv: Driver) -> bool:
            return _rows(drv).get("scan-2024-03.job", {}).get("phase") not in (None, "failed")

        await asyncio.to_thread(_until, browser, went_again, "the failed ticket to go again")

        def all_done(drv: Driver) -> bool:
            return all(r["phase"] == "done" for r in _rows(drv).values())

        await asyncio.to_thread(_until, browser, all_done, "every ticket done", 30)
        assert broken.with_name(broken.name + ".done").exists()
        rows = await asyncio.to_thread(_rows, browser)
        assert rows["scan-2024-03.job"]["error"] == ""


async def test_chromium_without_the_token_gets_401(
    tmp_path: Path, make_emulator: MakeEmulator, browser: Driver
) -> None:
    emu = await make_emulator()
    async with running_agent(tmp_path, emu.base_url) as agent:
        d = dash(agent)
        await asyncio.to_thread(browser.get, d.url)
        body = await asyncio.to_thread(lambda: browser.find_element(By.TAG_NAME, "body").text)
        assert "needs its token" in body
        assert "<table" not in await asyncio.to_thread(lambda: browser.page_source)
        status = await asyncio.to_thread(
            browser.execute_script,
            "return performance.getEntriesByType('navigation')[0].responseStatus;",
        )
        assert status == 401
