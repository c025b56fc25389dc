"""The dashboard in a real browser: Debian's chromium driven by Selenium (chromium-driver)
against a live server on the real PostgreSQL and its streaming replica.

``scripts/ensure-chromium`` (run by ``scripts/test``) installs both packages. Waits are for
conditions, generous, and never assert a speed. The screenshots land in a temporary
directory, or in ``DASHBOARD_SHOTS_DIR`` when set (``DASHBOARD_SHOTS_DIR=docs/dashboard``
refreshes the manual's on purpose): a test run never rewrites the committed ones.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connections

from django_poolkit import get_engine
from django_poolkit.dashboard import data
from testproject.demo.models import Note

from .helpers.routing import replica_paused
from .helpers.users import view_dashboard

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "browser-test-only-7c1e"
WAIT_S = 60.0


def _chrome(width: int, height: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run scripts/ensure-chromium (as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    return driver


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: never the repository's docs/dashboard/ unless asked."""
    chosen = os.environ.get("DASHBOARD_SHOTS_DIR")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("dashboard-shots")


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = _chrome(1280, 900)
    try:
        yield driver
    finally:
        driver.quit()


def _until(what: Callable[[], Any], message: str, timeout: float = WAIT_S) -> Any:
    """Poll ``what`` until it returns something truthy (a condition, not a speed)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = what()
        except Exception as error:  # the page is being swapped: try again
            last_error = error
        else:
            if found:
                return found
        time.sleep(0.25)
    pytest.fail(f"{message} (waited {timeout:g} s; last error: {last_error!r})")


def _text(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def _screenshot(driver: Any, target: Path, width: int, *, screen: str | None = None) -> Path:
    """A full-page screenshot at ``width`` CSS pixels, or with ``screen`` (a CSS selector)
    one phone screen (``width`` x 844) scrolled to that element."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if screen is not None:
        driver.set_window_size(width, 844)
        driver.execute_script("document.querySelector(arguments[0]).scrollIntoView();", screen)
    else:
        driver.set_window_size(width, 900)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(int(height) + 150, 16000))
    driver.save_screenshot(str(target))
    driver.set_window_size(1280, 900)
    driver.execute_script("window.scrollTo(0, 0);")
    return target


def _log_in(driver: Any, base: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/poolkit/")
    _until(lambda: "/admin/login/" in driver.current_url, "no redirect to the admin login")
    driver.find_element(By.ID, "id_username").send_keys("operator")
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _until(lambda: driver.current_url.rstrip("/").endswith("/poolkit")
           or "/poolkit/?" in driver.current_url, "login did not lead to the dashboard")


def test_anonymous_browser_is_sent_to_the_login(browser: Any, live_server: Any) -> None:
    browser.get(f"{live_server.url}/poolkit/")
    _until(lambda: "/admin/login/" in browser.current_url, "anonymous was not redirected")
    assert "next=/poolkit/" in browser.current_url
    assert "id_username" in browser.page_source


def test_staff_watches_pools_and_replicas_change(browser: Any, live_server: Any,
                                                 route: Callable[..., None],
                                                 shots: Path) -> None:
    from selenium.webdriver.common.by import By

    # Reads of the demo app go to the replica; auth and sessions stay on the primary, so a
    # paused replica cannot log the operator out.
    route(probe_interval=0.5, max_lag=2, readmit_lag=1, cluster={"apps": ["demo"]})
    data.reset()
    operator = get_user_model().objects.create_user("operator", password=PASSWORD,
                                                    is_staff=True)
    operator.user_permissions.add(view_dashboard())
    _log_in(browser, live_server.url)
    browser.get(f"{live_server.url}/poolkit/?refresh=2")

    # Every section is there, with its heading and its tables' headers.
    for section, heading in (("pk-health", "Health"), ("pk-pools", "Pools of this process"),
                             ("pk-replicas", "Replicas"), ("pk-server", "Server view"),
                             ("pk-plan", "Connection budget"), ("pk-workers", "All workers")):
        assert heading in _text(browser, f"#{section} h2")
    assert browser.find_elements(By.CSS_SELECTOR, "#pk-pools table th[scope=col]")
    # With the admin's stylesheet (Django 6 underlines content links; 5.2 styles only its
    # div.breadcrumbs): the section links are not underlined, the breadcrumbs are a bar.
    assert browser.execute_script(
        "return [getComputedStyle(document.querySelector('.pk-toc a')).textDecorationLine,"
        "        getComputedStyle(document.querySelector('ol.pk-breadcrumbs')).backgroundColor];"
    ) == ["none", "rgb(38, 75, 93)"]
    assert "primary" in _text(browser, "#pk-server")
    assert "PROMETHEUS_MULTIPROC_DIR" in _text(browser, "#pk-workers")
    _until(lambda: "in rotation" in _text(browser, "tr[data-replica=replica]")
           and "out of" not in _text(browser, "tr[data-replica=replica]"),
           "the replica never showed in rotation")
    _until(lambda: "fresh" in _text(browser, "#pk-server"), "the server view never got fresh")

    # Hold connections checked out, in steps: the gauges and the time series follow on the
    # next refreshes. The page's own request holds one connection (its session), so the
    # figures are compared with what the page showed before.
    connections.close_all()
    out_cell = ".pk-pool[data-alias=default][data-kind=sync] td.pk-out"
    dashboard = browser.find_element(By.ID, "poolkit-dashboard")
    refreshes = int(dashboard.get_attribute("data-refreshes"))
    _until(lambda: int(browser.find_element(By.ID, "poolkit-dashboard").get_attribute(
        "data-refreshes")) > refreshes, "the page never refreshed itself")
    baseline = int(_text(browser, out_cell))
    engine = get_engine("default")
    held: list[Any] = []
    try:
        for step in (2, 5, 8):
            held += [engine.connect() for _ in range(step - len(held))]
            _until(lambda step=step: int(_text(browser, out_cell)) >= baseline + step,
                   f"the checked-out gauge never showed {step} held connections")
        _until(lambda: int(re.search(r"solid: checked out now \d+, max (\d+)", _text(
            browser, "#pk-alias-default figcaption")).group(1)) >= 8,
               "the time series never showed the held connections")
        line = browser.find_element(By.CSS_SELECTOR, "#pk-alias-default polyline.pk-line-out")
        assert len(line.get_attribute("points").split()) >= 3
        assert "overflow" in _text(browser, "#pk-alias-default").lower()
        assert "application_name" in _text(browser, "#pk-server").lower()
        _screenshot(browser, shots / "desktop.png", 1280)
        _screenshot(browser, shots / "phone.png", 390, screen="#pk-alias-default")
        _screenshot(browser, shots / "phone-top.png", 390, screen="body")
    finally:
        for connection in held:
            connection.close()
    _until(lambda: int(_text(browser, out_cell)) <= baseline, "the gauge never went back down")

    # Pause replay and keep writing: the replica leaves the rotation, and the page says why.
    with replica_paused():
        def out_with_reason() -> bool:
            Note.objects.create(title="lag", body="written while replay is paused")
            connections.close_all()
            row = _text(browser, "tr[data-replica=replica]")
            reason = _text(browser, "tr[data-replica=replica] td.pk-reason")
            return "out of rotation" in row and reason not in ("", "-")
        _until(out_with_reason, "the paused replica never left the rotation on the page", 90)
        # Normally "lagging: lag ... > 2 s"; the shared replica may also be restarted by
        # another job meanwhile ("down"), which the page must explain just the same.
        assert any(word in _text(browser, "tr[data-replica=replica] td.pk-reason")
                   for word in ("lag", "connection"))
        _screenshot(browser, shots / "replica-out.png", 1280)

    # Hidden tab: the refresh pauses and says so.
    browser.execute_script(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'));")
    assert "paused" in _text(browser, "#pk-refresh-status")

    # JavaScript off: a reload still shows every figure.
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    browser.get(f"{live_server.url}/poolkit/")
    assert "reload the page" in _text(browser, "#pk-refresh-status")
    assert "in rotation" in _text(browser, "#pk-replicas") or "out of rotation" in _text(
        browser, "#pk-replicas")


def test_the_page_is_usable_when_nobody_serves_static_files(browser: Any, live_server: Any,
                                                            shots: Path) -> None:
    """gunicorn serves no STATIC_URL: with every /static/ request blocked (the admin's
    stylesheet too) the charts keep their sizes, the script runs and the bars are styled."""
    operator = get_user_model().objects.create_user("operator", password=PASSWORD,
                                                    is_staff=True)
    operator.user_permissions.add(view_dashboard())
    _log_in(browser, live_server.url)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/static/*"]})
    browser.get(f"{live_server.url}/poolkit/?refresh=2")
    # The admin's stylesheet did not load (its custom properties are missing).
    assert browser.execute_script(
        "return getComputedStyle(document.documentElement).getPropertyValue('--body-bg')"
    ).strip() == ""
    _until(lambda: "Refreshing every 2 s" in _text(browser, "#pk-refresh-status")
           or "Updated" in _text(browser, "#pk-refresh-status"), "the inline script never ran")
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('#pk-body svg')).map(function (svg) {"
        "  var box = svg.getBoundingClientRect(); return [svg.getAttribute('class') || '',"
        "  box.width, box.height]; });")
    assert sizes
    for name, width, height in sizes:
        assert 0 < width <= 700, (name, width, height)
        assert 0 < height <= 120, (name, width, height)
    style = browser.execute_script(
        "var crumbs = document.querySelector('ol.pk-breadcrumbs');"
        "var toc = document.querySelector('.pk-toc a');"
        "return [getComputedStyle(crumbs).backgroundColor, getComputedStyle(crumbs).listStyleType,"
        "        getComputedStyle(toc).textDecorationLine];")
    assert style == ["rgb(38, 75, 93)", "none", "none"]
    target = _screenshot(browser, shots / "no-static.png", 1280)
    assert target.stat().st_size > 0
