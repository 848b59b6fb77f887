"""In a real browser: nothing is fetched from outside, every page has a path, and a link reproduces the view.

One server on an empty cache (the demo is seeded as for a new user). Every page is opened by its URL while every
request the page makes is recorded; none may go to a host other than the app's (localhost / 127.0.0.1). Then the
root URL must land on /overview with the frame's settings (defaults included) in the URL, and that URL opened in a
new browser session must show the same selection and checkpoint.
"""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.conftest import (
    PAGE_TIMEOUT_MS,
    app_pages,
    streamlit_server,
    wait_until_idle,
)

pytestmark = pytest.mark.browser

FIRST_LOAD_MS = 240_000
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}
LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "chrome-extension", "devtools"}


def outside(urls: list[str]) -> list[str]:
    """The requested URLs that would leave this machine."""
    found = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in LOCAL_SCHEMES:
            continue
        if parts.hostname not in LOCAL_HOSTS:
            found.append(url)
    return found


def test_outside():
    assert outside(["http://127.0.0.1:8501/_stcore/health", "data:image/png;base64,AA", "ws://localhost:1/x"]) == []
    assert outside(["https://fonts.gstatic.com/s/materialsymbols.woff2"]) == [
        "https://fonts.gstatic.com/s/materialsymbols.woff2"]


# a server, a first load that seeds the demo, every page: ~80 s on two idle cores; the default suite's browser test
def test_no_request_leaves_the_machine_and_links_reproduce_the_view(browser, app_dirs, shared_diagnostics):
    # An empty cache (the demo is seeded by the first load, as for a new user); the model's diagnostics come from
    # the session's shared folder when the AppTests computed them (the cold first load is timed by
    # engine.benchmarks.app_speed and walked by the slow tests/browser/test_overflow.py)
    with streamlit_server(app_dirs["db"], app_dirs["runs"], app_dirs["log"], shared_diagnostics) as server:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        requested: list[str] = []
        context.on("request", lambda request: requested.append(request.url))
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)

        # The root URL opens the Overview at its own path, with every setting of the frame in the URL.
        page.goto(server.url)
        # the first load seeds the demo and computes the model's diagnostics: on a busy 2-core box, minutes
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=FIRST_LOAD_MS)
        wait_until_idle(page)
        page.wait_for_url("**/overview?**")
        page.get_by_text("Last close").first.wait_for()
        query = parse_qs(urlsplit(page.url).query)
        assert query.get("interval") == ["1h"] and sorted(query.get("symbols", [])) == ["AAPL", "BTC", "SPY"], query
        assert query.get("checkpoint") == ["demo-1h"] and len(query.get("dates", [])) == 2, query
        shared = page.url

        for title, url_path in app_pages():
            page.goto(f"{server.url}/{url_path}")
            wait_until_idle(page)
            assert page.get_by_text("Page not found").count() == 0, f"{title}: no page at /{url_path}"
            errors = page.locator('[data-testid="stException"]')
            assert errors.count() == 0, f"{title} shows an exception: {errors.first.inner_text()[:1500]}"
            page.wait_for_timeout(500)  # late requests (fonts, favicons) of this page
        # the favicon of every page is local (a :material/ page icon made the browser ask a font CDN)
        assert outside(requested) == [], sorted(set(outside(requested)))
        assert any("/_stcore/" in url for url in requested)  # the recorder saw the app's own traffic

        # The shared link, opened in a new session, shows the same view.
        other = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        narrowed = shared.replace("symbols=AAPL&", "").replace("&symbols=AAPL", "")
        other.goto(narrowed.replace("/overview?", "/data?"))
        wait_until_idle(other)
        sidebar = other.locator('[data-testid="stSidebar"]')
        assert "AAPL" not in sidebar.locator('[data-testid="stMultiSelect"]').first.inner_text()
        kept = parse_qs(urlsplit(other.url).query)
        assert kept.get("symbols") and "AAPL" not in kept["symbols"] and kept.get("interval") == ["1h"], other.url
        other.context.close()
        context.close()
