"""The page tests' browser: Debian's `chromium` driven by Playwright's Python package (never `playwright install`)."""
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # a bound on each wait in the page, not a speed assertion
NO_CHROMIUM = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                 reason="no chromium here (apt-get install chromium; .ci/run installs it)")
