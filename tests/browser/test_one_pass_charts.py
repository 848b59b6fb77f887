"""The Backtest and Forecasts charts draw in one pass (issue 17, speed): a chart whose labels, legend or colorbar need
more room than its layout's margins makes Plotly's automargin widen them and draw the whole chart again, which made
every chart on those pages cost about twice its drawing. engine.figures.style's ONE_PASS_* margins hold that room;
here, at 1280x800 and 1440x900, every chart's drawn margins (_fullLayout._size) are its layout's, a slider move on
Backtest included, and the Forecasts fans draw no WebGL trace and no range slider.
"""
from __future__ import annotations

import pytest

from tests.browser.conftest import PAGE_TIMEOUT_MS, streamlit_server, wait_until_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FIRST_LOAD_MS = 240_000

CHARTS = """
() => [...document.querySelectorAll('.js-plotly-plot')].map(d => {
  const m = d.layout.margin || {}, s = d._fullLayout._size;
  return {title: ((d.layout.title && d.layout.title.text) || '').slice(0, 40),
          layout: [m.l, m.r, m.t, m.b], drawn: [s.l, s.r, s.t, s.b].map(Math.round),
          gl: d.data.some(t => t.type === 'scattergl'),
          slider: Object.keys(d._fullLayout).some(k => k.startsWith('xaxis') && d._fullLayout[k].rangeslider &&
                                                       d._fullLayout[k].rangeslider.visible)};
})
"""


def _expanded(page, where: str) -> list[str]:
    page.wait_for_timeout(1500)  # the charts finish drawing after the script run
    charts = page.evaluate(CHARTS)
    assert charts, f"{where}: no chart drawn"
    return [f"{where} {c['title']!r}: margins {c['layout']} drawn as {c['drawn']}" for c in charts
            if c["layout"] != c["drawn"]] + [f"{where} {c['title']!r}: WebGL or range slider" for c in charts
                                             if where.endswith("forecasts") and (c["gl"] or c["slider"])]


def test_backtest_and_forecasts_charts_keep_their_margins_and_draw_once(browser, app_dirs):
    problems: list[str] = []
    with streamlit_server(app_dirs["db"], app_dirs["runs"], app_dirs["log"]) as server:
        for width, height in ((1280, 800), (1440, 900)):
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(server.url)  # seeds the demo and computes the diagnostics once
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=FIRST_LOAD_MS)
            for path in ("backtest", "backtest?bt_section=Metrics+and+tearsheet", "forecasts"):
                page.goto(f"{server.url}/{path}")
                wait_until_idle(page)
                problems += _expanded(page, f"{width}px {path}")
                if path.startswith("backtest"):  # a slider move redraws every chart of the open section
                    thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Threshold").locator(
                        'input[type="range"]').first
                    thumb.focus()
                    thumb.press("ArrowRight")
                    page.wait_for_url("**bt_threshold=0.025**")
                    wait_until_idle(page)
                    problems += _expanded(page, f"{width}px {path} after a slider move")
            context.close()
    assert not problems, "\n".join(problems)
