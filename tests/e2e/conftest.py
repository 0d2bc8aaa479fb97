"""Fixtures of the e2e tests: Debian's Chromium driven by Playwright, screenshots in test-artifacts/e2e/."""

from __future__ import annotations

import os

import pytest
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, SCREEN, Screenshots
from tests.support.orthanc import REPO

ARTIFACTS = REPO / "test-artifacts" / "e2e"


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page at the size of a laptop screen."""
    context = browser.new_context(viewport=SCREEN, locale="en-GB", timezone_id="Europe/Brussels")
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def screenshots(request) -> Screenshots:
    return Screenshots(ARTIFACTS / request.node.name.replace("[", "-").rstrip("]"))
