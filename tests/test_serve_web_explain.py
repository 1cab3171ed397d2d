"""The page's heat-map toggles (ask box, watch card) in a real headless Chromium (Debian's `chromium`, driven by Playwright, as
tests/support/browser.py): with the toggle on, a question asks for the map and the overlay canvas over the frame gets
coloured pixels; off, the canvas is hidden and blank.

Set CROME_SERVE_SCREENSHOT_EXPLAIN=path.png to keep a screenshot of the page with the map drawn."""
import os
import shutil

import httpx
import pytest
from tests.support.bundles import tiny_bundle
from tests.support.serve import QUESTION, colour_source, serving
from tests.support.browser import NO_CHROMIUM, TIMEOUT_MS, page_at

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = NO_CHROMIUM

PAINTED = """() => { const c = document.getElementById('overlay');
  if (c.hidden || !c.width || !c.height) return 0;
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++; return n; }"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def test_the_toggle_draws_the_answers_heat_map_over_the_frame(bundle, tmp_path):
    with serving(bundle, colour_source()) as (_, base), sync_api.sync_playwright() as pw:
        with page_at(pw, base) as (page, errors):
            page.wait_for_function("document.getElementById('frame').naturalWidth > 0", timeout=TIMEOUT_MS)
            assert page.evaluate(PAINTED) == 0  # nothing drawn before a map was asked for
            page.check("#explain-toggle")
            page.fill("#question", QUESTION)
            page.click("#ask")
            page.wait_for_function("document.getElementById('explain-info').textContent.includes('grid')",
                                   timeout=TIMEOUT_MS)
            info = page.locator("#explain-info").text_content()
            assert "heat map of colour" in info and "4×4 grid" in info
            painted = page.evaluate(PAINTED)
            box = page.evaluate("[document.getElementById('overlay').width, document.getElementById('overlay').height]")
            assert painted > 0.2 * box[0] * box[1]  # the map covers the picture's area (the frame box, less letterbox)
            shot = tmp_path / "serve-explain.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("CROME_SERVE_SCREENSHOT_EXPLAIN"):
                shutil.copy(shot, os.environ["CROME_SERVE_SCREENSHOT_EXPLAIN"])
            page.uncheck("#explain-toggle")
            assert page.evaluate(PAINTED) == 0 and page.locator("#overlay").is_hidden()
            page.check("#explain-toggle")  # the last map comes back without asking again
            assert page.evaluate(PAINTED) == painted
            assert not errors, errors


def test_the_watch_cards_toggle_draws_the_latest_watch_answers_map(bundle):
    with serving(bundle, colour_source(), watch=[QUESTION]) as (server, base), sync_api.sync_playwright() as pw:
        with page_at(pw, base) as (page, errors):
            page.wait_for_function("document.getElementById('frame').naturalWidth > 0", timeout=TIMEOUT_MS)
            assert not server.hub.explain_wanted  # maps are not computed for a page that did not ask
            page.check("#watch-explain-toggle")
            page.wait_for_function("document.getElementById('watch-explain-info').textContent.includes('heat map of')",
                                   timeout=TIMEOUT_MS)
            assert server.hub.explain_wanted
            assert QUESTION in page.locator("#watch-explain-info").text_content()
            # the map is drawn over the frame the answer was about, not the newest one
            page.wait_for_function("document.getElementById('frame-info').textContent.includes('the watch answer is about')",
                                   timeout=TIMEOUT_MS)
            assert page.evaluate(PAINTED) > 0
            shown = int(page.locator("#frame-info").text_content().split()[1])
            kept = httpx.get(f"{base}/v1/frame.jpg", params={"id": shown}, timeout=30)
            assert kept.status_code == 200 and kept.headers["X-Frame-Id"] == str(shown)
            for bad, status in (("-1", 400), ("x", 400), ("1" * 19, 400), (str(10**9), 404)):
                refused = httpx.get(f"{base}/v1/frame.jpg", params={"id": bad}, timeout=30)
                assert refused.status_code == status and refused.json()["error"]["message"], (bad, refused.text)
            page.uncheck("#watch-explain-toggle")
            assert page.evaluate(PAINTED) == 0
            assert not errors, errors
