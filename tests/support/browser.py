"""The page tests' browser: Debian's `chromium` driven by Playwright's Python package (never `playwright install`)."""
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # a bound on each wait in the page, not a speed assertion
NO_CHROMIUM = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                 reason="no chromium here (apt-get install chromium; .ci/run installs it)")


@contextmanager
def page_at(playwright, base: str):
    """A headless page on the server at `base`, and the list its uncaught page errors land in; the browser closes
    after."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base + "/")
        yield page, errors
    finally:
        browser.close()
