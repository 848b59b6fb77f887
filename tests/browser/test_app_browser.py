"""The app in a real browser: every page opens, a slider move updates the metrics (a fragment rerun, which AppTest
cannot simulate), and Export report downloads a report that holds the view. Timings are printed, never asserted."""
from __future__ import annotations

import time

import pytest

from tests.browser.conftest import PAGE_TIMEOUT_MS, app_pages, screenshot, streamlit_server, wait_until_idle

pytestmark = pytest.mark.browser

TIMINGS: list[tuple[str, float]] = []


def timed(label: str, action) -> None:
    start = time.perf_counter()
    action()
    TIMINGS.append((label, time.perf_counter() - start))


def metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text()


@pytest.mark.slow  # ~110 s: the timed walkthrough; the default suite opens every page in a browser in
# tests/browser/test_offline_and_links.py (default-suite budget)
def test_the_app_in_a_browser(browser, app_dirs, capsys):
    with streamlit_server(app_dirs["db"], app_dirs["runs"], app_dirs["log"]) as server:
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)

        def first_load():
            page.goto(server.url)
            wait_until_idle(page)
            page.get_by_text("Last close").first.wait_for()  # the Overview, with the model's results

        timed("first load (empty cache: demo seeded, diagnostics computed)", first_load)
        assert app_dirs["db"].exists()

        for title, url_path in app_pages():
            def open_page(url_path=url_path):
                page.goto(f"{server.url}/{url_path}")
                wait_until_idle(page)
            timed(f"open {title} by URL", open_page)
            assert page.locator('[data-testid="stException"]').count() == 0, f"{title} shows an exception"
            assert page.get_by_text("Page not found").count() == 0, f"{title}: no page at /{url_path}"
            screenshot(page, url_path or "home")

        # A model view's own report: its charts, the checkpoint and the link that reopens it.
        page.goto(f"{server.url}/forecasts")
        wait_until_idle(page)
        with page.expect_download(timeout=PAGE_TIMEOUT_MS) as download_info:
            page.get_by_role("button", name="Export report (HTML)").click()
        forecasts_report = app_dirs["downloads"] / "forecasts-report.html"
        download_info.value.save_as(forecasts_report)
        text = forecasts_report.read_text(encoding="utf-8")
        assert "Forecasts" in text and "demo-1h" in text and "SYNTHETIC DEMO DATA" in text
        assert text.count('class="plotly-graph-div"') >= 4  # latest fans of 3 assets, walk-forward fans, calibration

        # The sidebar's selection lives in the URL: choosing an interval writes it there, and the link restores it.
        page.goto(server.url)  # the default page (Overview)
        wait_until_idle(page)
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Interval").click()
        page.get_by_role("option", name="1d").click()
        page.wait_for_url("**interval=1d**")
        wait_until_idle(page)
        shared = page.url
        other = context.new_page()
        other.goto(shared)
        wait_until_idle(other)
        # The shipped checkpoint is hourly: a page opened on daily bars says no checkpoint fits them.
        other.get_by_text("No checkpoint fits BTC, SPY, AAPL at 1d").first.wait_for()
        other.close()
        page.goto(server.url)
        wait_until_idle(page)

        def switch_to_backtest():
            page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Backtest").first.click()
            page.wait_for_url("**/backtest**")
            wait_until_idle(page)
            page.get_by_text("Export report", exact=True).first.wait_for()

        timed("page switch Overview -> Backtest", switch_to_backtest)

        before = metric_value(page, "Sharpe ratio")
        thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Threshold").locator('input[type="range"]')

        def move_slider():
            thumb.focus()
            thumb.press("ArrowRight")  # one step: 0.02 -> 0.025

        def metrics_change():
            page.wait_for_function(
                """([label, before]) => [...document.querySelectorAll('[data-testid="stMetric"]')]
                       .some(m => m.innerText.includes(label) &&
                                  m.querySelector('[data-testid="stMetricValue"]').innerText !== before)""",
                arg=["Sharpe ratio", before], timeout=PAGE_TIMEOUT_MS, polling="raf",
            )

        slider_started = time.perf_counter()
        move_slider()
        metrics_change()
        TIMINGS.append(("slider move -> updated metrics", time.perf_counter() - slider_started))
        wait_until_idle(page)
        TIMINGS.append(("slider move -> fragment done (every chart redrawn)", time.perf_counter() - slider_started))
        assert metric_value(page, "Sharpe ratio") != before
        assert "bt_threshold=0.025" in page.url  # the slider is bound to the URL: the view can be shared
        # Every distinct threshold the slider passed through was run, so each is a trial (0.02 and 0.025).
        dsr_label = page.locator('[data-testid="stMetric"]').filter(has_text="DSR (").first.inner_text()
        assert int(dsr_label.split("DSR (")[1].split()[0]) >= 2, dsr_label
        screenshot(page, "backtest-after-slider")

        with page.expect_download(timeout=PAGE_TIMEOUT_MS) as download_info:
            page.get_by_role("button", name="Export report (HTML)").click()
        report_path = app_dirs["downloads"] / "report.html"
        download_info.value.save_as(report_path)
        report = report_path.read_text(encoding="utf-8")
        assert report.startswith("<!DOCTYPE html>") and "Backtest" in report
        # every section's charts, whichever is open: performance (equity, drawdown, rolling Sharpe), monthly, and the
        # tearsheet's return distribution and yearly returns
        assert report.count('class="plotly-graph-div"') >= 4
        assert "threshold" in report and "0.025" in report and "SYNTHETIC DEMO DATA" in report
        assert "bt_threshold=0.025" in report  # the shareable URL of this view
        context.close()

    # A later cold start: a new server process over the now-seeded cache, a new browser session.
    with streamlit_server(app_dirs["db"], app_dirs["runs"], app_dirs["log"]) as server:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()

        def cold_start():
            page.goto(f"{server.url}/backtest")
            wait_until_idle(page)
            page.get_by_text("Export report", exact=True).first.wait_for()

        timed("later cold start (new server, seeded cache) -> Backtest", cold_start)
        context.close()

    with capsys.disabled():
        print("\n\nbrowser timings (wall seconds, this machine; not asserted)")
        print(f"{'step':<60}{'seconds':>10}")
        for label, seconds in TIMINGS:
            print(f"{label:<60}{seconds:>10.2f}")
