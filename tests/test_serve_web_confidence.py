"""The web page shows how sure each answer was and which adapter version gave it (issue 24 item 3), in a real
headless Chromium (Debian's `chromium` via Playwright, as tests/test_serve_web.py): the watch card's line under its
answer and the ask box's line under its streamed reply both name the adapter with its short sha256, the first-token
margin, and the closed set's most likely answers with their probabilities; a watch answer under --min-margin is
marked low."""
import re

import pytest
from tests.support.browser import NO_CHROMIUM, TIMEOUT_MS, page_at
from tests.support.bundles import tiny_bundle
from tests.support.serve import QUESTION, colour_source, serving

from crome_runtime.manifest import read_manifest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = NO_CHROMIUM
LINE = re.compile(r"colour @ ([0-9a-f]{7})margin (\d\.\d\d)( \(low\))?((?:red|green|blue) \d+%( · )?){3}")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def test_watch_card_and_ask_box_show_confidence_and_version(bundle):
    version = read_manifest(bundle, verify=False).adapters[0].sha256
    with serving(bundle, colour_source(), watch=[QUESTION], min_margin=1.0) as (server, base), \
            sync_api.sync_playwright() as pw:
        with page_at(pw, base) as (page, errors):
            page.wait_for_selector(".watch-list .confidence", timeout=TIMEOUT_MS)
            watch = page.locator(".watch-list .confidence").first
            match = LINE.fullmatch(watch.text_content())
            assert match, watch.text_content()
            assert match.group(1) == version[:7] and match.group(3) == " (low)"  # every margin is under 1.0
            assert "low" in watch.get_attribute("class")
            assert page.locator(".watch-list .adapter-version").first.get_attribute("title") == "adapter sha256 " + version

            page.fill("#question", QUESTION)
            page.click("#ask")
            page.wait_for_selector("#reply-confidence .confidence", timeout=TIMEOUT_MS)
            line = page.locator("#reply-confidence .confidence").text_content()
            match = LINE.fullmatch(line)
            assert match and match.group(1) == version[:7] and match.group(3) is None, line
            reply = page.locator("#reply").text_content()
            assert 0.0 < float(match.group(2)) <= 1.0
            candidates = page.locator("#reply-confidence .candidates").text_content()
            assert candidates.startswith(reply + " ")  # greedy said the set's most likely answer
            assert not errors, errors
