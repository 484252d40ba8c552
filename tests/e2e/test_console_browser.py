"""The operator console in a real browser: Debian's Chromium through its chromedriver (installed by
``make tools``), driven by Selenium, against ``sm8cd web`` with a worker, beat and both simulators
behind it. Signs in, sees the fleet, links a pending staff member and sees the pair sync, opens a
job's trail after a dispatcher's change, and replays a dead letter. A screenshot of each page goes
to ``bench/out/console/`` (the README shows them). Without Chromium this skips locally and fails
in CI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import ROOT, cd_resources
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid, connection_namespace
from tests import days
from tests.conftest import CD_KEY, SM8_KEY
from tests.e2e.conftest import Stack, eventually

pytestmark = pytest.mark.e2e

PASSWORD = "console-e2e-7c41"
SHOTS = ROOT / "bench" / "out" / "console"


def _tools() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        why = "chromium and chromedriver are not installed: `make tools` installs Debian's"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return browser, driver


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _tools()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1100", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def console_stack(tmp_path: Path, redis_url: str, sm8_sim: Any, cd_sim: Any) -> Iterator[Stack]:
    s = Stack(tmp_path, redis_url, sm8_sim, cd_sim, sm8_key=SM8_KEY, cd_key=CD_KEY,
              CONSOLE_PASSWORD=PASSWORD, STAFF_MATCH_SECONDS="2")  # fmt: skip
    yield s
    s.stop()
    s.wipe()


def _shot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, max(700, min(int(height) + 40, 2400)))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def _text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def test_an_operator_signs_in_links_a_person_reads_a_trail_and_replays_a_dead_letter(
    console_stack, browser, sm8_sim, cd_sim
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    stack = console_stack
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=3, allocations=4, unmapped_staff=1)
    newcomer = biz.staff[-1]  # a staff member with no Coredination user by that e-mail
    stack.worker(concurrency=2)
    stack.beat()
    base = stack.web()
    eventually(lambda: len(cd_sim.jobs) == 3, timeout=60)

    # Sign in: a page without a session sends the browser to the sign-in form first.
    browser.get(f"{base}/console/c/{stack.connection}")
    assert "/console/sign-in" in browser.current_url
    _shot(browser, "sign-in")
    browser.find_element(By.ID, "user").send_keys("operator")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
    assert browser.current_url.endswith(f"/console/c/{stack.connection}")

    browser.get(f"{base}/console")
    fleet = _text(browser)
    assert stack.connection in fleet and "active" in fleet
    _shot(browser, "fleet")

    # The newcomer is booked; with no user to map to, the pair is parked.
    job = biz.jobs[0]
    sm8_sim.create("jobactivity", {"job_uuid": job, "staff_uuid": newcomer["uuid"],
                                   "activity_was_scheduled": 1, "start_date": days.stamp(3, 9),
                                   "end_date": days.stamp(3, 11)})  # fmt: skip
    eventually(lambda: any(k.endswith(newcomer["uuid"]) for k in stack.stores.parked.pending()),
               timeout=30)  # fmt: skip
    user = cd_sim.add_user("new.starter@example.net", newcomer["first"], "(new)")

    # Link the newcomer from the connection page: the pair syncs.
    browser.get(f"{base}/console/c/{stack.connection}")
    # The user is offered once a staff match has read Coredination's users again.
    row = eventually(lambda: _row(browser, base, stack.connection, newcomer["first"], user["id"]),
                     timeout=30)  # fmt: skip
    Select(row.find_element(By.TAG_NAME, "select")).select_by_value(str(user["id"]))
    _shot(browser, "connection")
    row.find_element(By.CSS_SELECTOR, "button.link").click()
    assert "linked" in _said(browser)
    eventually(lambda: _scheduled(cd_sim, cd_job_uuid(ns, job)) >= {user["id"]}, timeout=30)

    # A dispatcher unschedules someone in Coredination; the job's page tells what followed.
    other = next(
        a
        for a in biz.allocations
        if a["job_uuid"] == biz.jobs[1] and a["staff_uuid"] != newcomer["uuid"]
    )
    other_user = biz.user_for(other["staff_uuid"])["id"]
    cd_sim.resource_op(cd_job_uuid(ns, biz.jobs[1]), "unschedule", str(other_user))
    eventually(lambda: sm8_sim.records["joballocation"][other["uuid"]]["active"] == 0, timeout=30)
    browser.get(f"{base}/console/c/{stack.connection}")
    browser.find_element(By.ID, "job-ref").send_keys(cd_job_uuid(ns, biz.jobs[1]))
    browser.find_element(By.ID, "explain").click()
    trail = eventually(lambda: _text(browser) if "Coredination's side is taken" in
                       _text(browser) else browser.refresh(), timeout=20)  # fmt: skip
    assert "Changed in Coredination" in trail and "Now" in trail
    _shot(browser, "job")

    # Coredination refuses the third job: a dead letter. The refusal ends; replay it.
    refused = cd_job_uuid(ns, biz.jobs[2])
    cd_sim.faults.refusals[refused] = (400, "Invalid job: refused by the browser test")
    sm8_sim.create("jobactivity", {"job_uuid": biz.jobs[2], "staff_uuid": biz.staff[0]["uuid"],
                                   "activity_was_scheduled": 1, "start_date": days.stamp(5, 9),
                                   "end_date": days.stamp(5, 10)})  # fmt: skip
    eventually(lambda: stack.stores.work.dead_letters(), timeout=30)
    del cd_sim.faults.refusals[refused]
    browser.get(f"{base}/console/c/{stack.connection}")
    letters = browser.find_element(By.ID, "dead-letters")
    assert "refused by the browser test" in letters.text
    _shot(browser, "dead-letters")
    letters.find_element(By.CSS_SELECTOR, "button.replay").click()
    assert "replayed" in _said(browser)
    eventually(lambda: biz.jobs[2] not in stack.stores.work.failed_jobs(), timeout=30)
    wanted = biz.user_for(biz.staff[0]["uuid"])["id"]
    eventually(lambda: _scheduled(cd_sim, refused) >= {wanted}, timeout=30)
    assert stack.stores.work.dead_letters() == []


def _said(browser: Any) -> str:
    """What the page the form's post led to says: waited for, since a click that submits a form
    returns before the next page has loaded."""
    from selenium.webdriver.common.by import By

    found = eventually(lambda: browser.find_elements(By.ID, "said"), timeout=15, interval=0.1)
    return str(found[0].text)


def _scheduled(cd_sim: Any, cd_job: str) -> set[int]:
    people = cd_resources(cd_sim).get(cd_job, {})
    return {user for user, state in people.items() if state == "SCHEDULED"}


def _row(browser: Any, base: str, connection: str, name: str, user: int) -> Any:
    """The pending staff row of ``name`` once it offers ``user``, else None (and reload)."""
    from selenium.webdriver.common.by import By

    for row in browser.find_elements(By.CSS_SELECTOR, "#pending-staff tr"):
        offered = row.find_elements(By.CSS_SELECTOR, f'option[value="{user}"]')
        if name in row.text and offered:
            return row
    browser.get(f"{base}/console/c/{connection}")
    return None
