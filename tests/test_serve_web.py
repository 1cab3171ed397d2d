"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python package; never
`playwright install`): it shows a live frame, the watch answer with its frame age, a typed question gets a
streamed reply, the latency chart fills, and closing the tab leaves no stream open on the server.

Set CROME_SERVE_SCREENSHOT=path.png to keep a screenshot of the page."""
import os
import shutil

import pytest
from tests.support.browser import NO_CHROMIUM, TIMEOUT_MS, page_at
from tests.support.bundles import tiny_bundle
from tests.support.serve import QUESTION, colour_source, serving, wait_for

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = NO_CHROMIUM


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def test_the_page_shows_frames_watch_answers_and_streams_a_reply(bundle, tmp_path):
    with serving(bundle, colour_source(), watch=[QUESTION]) as (server, base), sync_api.sync_playwright() as pw:
        with page_at(pw, base) as (page, errors):
            page.wait_for_function("document.getElementById('frame').naturalWidth > 0", timeout=TIMEOUT_MS)
            page.wait_for_function("document.getElementById('frame-info').textContent.startsWith('frame ')",
                                   timeout=TIMEOUT_MS)
            page.wait_for_function("document.getElementById('status').textContent === 'ok'", timeout=TIMEOUT_MS)
            answer = page.locator(".watch-list .answer").first
            page.wait_for_function(
                "['red', 'green', 'blue'].includes(document.querySelector('.watch-list .answer').textContent)",
                timeout=TIMEOUT_MS)
            assert answer.text_content() in ("red", "green", "blue")
            meta = page.locator(".watch-list .meta").first.text_content()
            assert "frame age at answer" in meta and " ms" in meta
            assert page.locator(".watch-list .prompt span").first.text_content() == QUESTION
            assert page.locator("#model").text_content() == "tiny-colour-fp32"

            page.fill("#question", QUESTION)
            page.click("#ask")
            page.wait_for_function("document.getElementById('reply-info').textContent.includes('first token')",
                                   timeout=TIMEOUT_MS)
            assert page.locator("#reply").text_content() in ("red", "green", "blue")
            assert "frame " in page.locator("#reply-info").text_content()
            assert int(page.locator("#chart-n").text_content()) > 0
            page.wait_for_function("document.getElementById('answers-rate').textContent.includes('answers/s')",
                                   timeout=TIMEOUT_MS)
            shot = tmp_path / "serve-page.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("CROME_SERVE_SCREENSHOT"):
                shutil.copy(shot, os.environ["CROME_SERVE_SCREENSHOT"])
            assert shot.stat().st_size > 10_000
            assert not errors, errors
            assert server.hub.subscribers == 1
            page.close()
            wait_for(lambda: server.hub.subscribers == 0, "the closed tab's watch stream to end on the server")
