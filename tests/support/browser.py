"""A real headless Chromium for the browser tests: Debian's `chromium` driven through Debian's
`chromedriver` (installed by `make setup`), never a driver Selenium would download.

Missing Chromium is a failure naming the fix, not a skip: a browser test that silently skipped
would let a broken page pass CI. Selenium is imported only here, inside the fixture, so a
checkout without it still runs every other test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CARDPAY_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CARDPAY_CHROMEDRIVER", "/usr/bin/chromedriver"))


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{path} ({package}) is missing"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium WebDriver (`selenium.webdriver.Chrome`), quit after the test."""
    missing = _missing()
    if missing is not None:
        pytest.fail(f"Chromium is needed for this test: {missing}; run `make setup`",
                    pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed; run `make setup`", pytrace=False)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--window-size=1400,1000",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to sandbox itself as root
    # an explicit driver path: Selenium Manager (which would download one) never runs
    service = Service(executable_path=str(CHROMEDRIVER),
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
