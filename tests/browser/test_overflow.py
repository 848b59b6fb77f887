"""Readable at 1280x800 (a 13-inch laptop), 1440x900 and 1920x1080: on every page, no text is cut (an element
whose text is wider than its box while its overflow is hidden or ellipsised), no table scrolls sideways inside
itself (a cut column), and no chart's title overlaps its legend, annotations or axis titles.

Each page is opened once and then resized through the three viewports. Screenshots of every page at 1280x800 go to
test-artifacts/screenshots/1280x800-<page>.png, and of the whole page at 1280 px wide to 1280-full-<page>.png. A
failure lists every problem as `viewport page: what (text)`.
"""
from __future__ import annotations

import pytest

from tests.browser.conftest import (
    PAGE_TIMEOUT_MS,
    app_pages,
    screenshot,
    screenshot_full_length,
    streamlit_server,
    wait_until_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEWPORTS = ((1280, 800), (1440, 900), (1920, 1080))
BACKTEST_SECTIONS = ("Metrics+and+tearsheet", "Trades")  # views/backtest.py SECTIONS after the default
FIRST_LOAD_MS = 240_000

# Returns a list of problems on the page as it is laid out now.
FIND_PROBLEMS = """
() => {
  const problems = [];
  const text = (el) => (el.innerText || el.textContent || '').trim().replace(/\\s+/g, ' ').slice(0, 80);
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const cut = 'h1, h2, h3, h4, h5, p, li, label, button, [data-testid="stMetricValue"], [data-testid="stMetricLabel"], ' +
              '[data-testid="stMetricDelta"], [data-testid="stCaptionContainer"], [data-testid="stSidebarNavLink"] span, ' +
              '[data-baseweb="select"] [title], [data-baseweb="select"] div[class*="ValueContainer"] > div, ' +
              '[data-baseweb="tag"] span, [data-testid="stMarkdownContainer"] code';
  for (const el of document.querySelectorAll(cut)) {
    if (!visible(el) || !text(el)) continue;
    const style = getComputedStyle(el);
    const clipped = style.overflowX === 'hidden' || style.overflowX === 'clip' || style.textOverflow === 'ellipsis';
    if (clipped && el.scrollWidth > el.clientWidth + 1) {
      problems.push(`text cut (${el.scrollWidth}px in ${el.clientWidth}px): ${text(el)}`);
    }
  }
  // anything the page ellipsises (metric deltas, select values, tags...): cut when its text is wider than it
  for (const el of document.querySelectorAll('body *')) {
    if (el.children.length > 2 || !visible(el)) continue;
    const style = getComputedStyle(el);
    if (style.textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth + 1 && text(el)) {
      problems.push(`text cut with an ellipsis (${el.scrollWidth}px in ${el.clientWidth}px): ${text(el)}`);
    }
  }
  for (const frame of document.querySelectorAll('[data-testid="stDataFrame"], [data-testid="stTable"]')) {
    if (!visible(frame)) continue;
    const scroller = frame.querySelector('.dvn-scroller') || frame.querySelector('table')?.parentElement;
    if (scroller && scroller.scrollWidth > scroller.clientWidth + 2) {
      const head = frame.querySelector('[role="columnheader"], th');
      problems.push(`table scrolls sideways (${scroller.scrollWidth}px in ${scroller.clientWidth}px)` +
                    (head ? `: first column ${text(head)}` : ''));
    }
  }
  const box = (el) => el.getBoundingClientRect();
  const overlap = (a, b) => a.left < b.right - 3 && b.left < a.right - 3 && a.top < b.bottom - 3 && b.top < a.bottom - 3;
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    const title = plot.querySelector('.gtitle text, text.gtitle') || plot.querySelector('.gtitle');
    if (!title || !visible(title)) continue;
    const t = box(title);
    // text on text: the legend's entries, each annotation, the axis titles (boxes may touch by a few pixels)
    const others = [...plot.querySelectorAll('.legend .legendtext, .annotation-text-g text, .g-xtitle text, .g-ytitle text, ' +
                                             '.g-x2title text, .g-y2title text')];
    for (const other of others) {
      if (visible(other) && overlap(t, box(other))) {
        const what = other.closest('.legend') ? 'legend' : other.closest('.annotation') ? 'annotation' : 'axis title';
        const whose = other;
        problems.push(`chart title overlaps its ${what}: ${text(title)} / ${text(whose)}`);
      }
    }
  }
  return problems;
}
"""


def test_no_text_is_cut_or_overlapping_at_three_screen_sizes(browser, app_dirs):
    problems: list[str] = []
    with streamlit_server(app_dirs["db"], app_dirs["runs"], app_dirs["log"]) as server:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(server.url)  # seeds the demo and computes the diagnostics once
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=FIRST_LOAD_MS)
        wait_until_idle(page)
        # every page, and the Backtest's other sections (one is drawn at a time: bt_section)
        views = [*app_pages(), *[("Backtest", f"backtest?bt_section={section}") for section in BACKTEST_SECTIONS]]
        for title, url_path in views:
            if not url_path:
                continue  # the root redirects to /overview
            page.set_viewport_size({"width": 1280, "height": 800})
            page.goto(f"{server.url}/{url_path}")
            wait_until_idle(page)
            page.wait_for_timeout(800)  # charts finish their layout after the script run
            name = url_path.replace("?bt_section=", "-").replace("+", "-").lower()
            screenshot(page, f"1280x800-{name}")
            screenshot_full_length(page, f"1280-full-{name}")
            for width, height in VIEWPORTS:
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(600)  # re-layout
                problems += [f"{width}x{height} {title}: {problem}" for problem in page.evaluate(FIND_PROBLEMS)]
        context.close()
    assert not problems, "\n".join(sorted(set(problems)))
