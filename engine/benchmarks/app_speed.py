"""`python -m engine.benchmarks.app_speed`: the speed a person feels, in a real browser, one row per budget.

It starts `streamlit run app.py` in a subprocess on a free localhost port (its own empty cache, runs and diagnostics
folders, so the first load is a fresh copy's), drives Debian's chromium with playwright, and times what an analyst
waits for, as the median of `--repeats` tries (3 by default) with the spread:

- cold start of a fresh copy to a rendered Overview (the demo seeded and the diagnostics computed on the way)
- demo seeding alone (storage.refresh.seed_demo_if_empty on an empty cache, in this process)
- restart: a new server over the seeded cache to a rendered Overview
- each page's first visit (a click in the navigation, in a session already open) and each page opened by its URL
- all charts after a slider move (Backtest's threshold: the fragment reruns and every chart is redrawn)
- chart HTML export size: every chart's "HTML" download on every page, the largest (budget 500 KB)
- training ETA error after the first epoch (engine.training.progress.EtaEstimator against the time the training
  then took; the Model page's default run on the demo's daily bars)

It takes several minutes, so `python -m engine.bench` lists it with a pointer instead of running it (`rows`).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE_TIMEOUT_MS = 180_000
BUDGETS_S = {"cold": 8.0, "seed": 3.0, "restart": 3.0, "first_visit": 2.0, "by_url": 3.0, "slider": 0.5}
HTML_BUDGET_KB = 500
ETA_BUDGET = 0.30
PAGES = (("Overview", "overview"), ("Forecasts", "forecasts"), ("Backtest", "backtest"), ("Regimes", "regimes"),
         ("Lead-lag", "lead-lag"), ("Lookback", "lookback"), ("Data", "data"), ("Model", "model"))


def rows(device=None) -> list[dict]:
    """For `python -m engine.bench`: a pointer, not a run (this benchmark starts servers and a browser)."""
    del device
    return [{"benchmark": "app speed (browser)", "how": "python -m engine.benchmarks.app_speed",
             "note": "several minutes: starts streamlit and chromium; not run by engine.bench"}]


# --- the server and the browser ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`streamlit run app.py` on its own cache; `with Server(folder) as url:`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        port = _free_port()
        env = {**os.environ, "REGIME_DB": str(self.folder / "bars.duckdb"), "REGIME_RUNS": str(self.folder / "runs"),
               "REGIME_DIAGNOSTICS": str(self.folder / "diagnostics"), "OMP_NUM_THREADS": "1"}
        log = open(self.folder / "server.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
             "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited: {(self.folder / 'server.log').read_text()[-1500:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("streamlit did not answer within 120 s")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _idle(page, title: str | None = None) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector("h1", timeout=PAGE_TIMEOUT_MS)
    if title:
        page.locator("h1").filter(has_text=title).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=PAGE_TIMEOUT_MS)


def _overview_rendered(page) -> None:
    _idle(page, "Overview")
    page.get_by_text("Last close").first.wait_for(timeout=PAGE_TIMEOUT_MS)


def _timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _open_timed(page, url: str, title: str, rendered: Callable | None = None) -> float:
    """Seconds from asking for `url` to the page `title` drawn (its script run finished)."""
    start = time.perf_counter()
    page.goto(url)
    (rendered or (lambda p: _idle(p, title)))(page)
    return time.perf_counter() - start


# --- the measurements ----------------------------------------------------------------------------------------------


def _row(what: str, seconds: list[float], budget: float, note: str = "") -> dict:
    median = statistics.median(seconds)
    return {"measure": what, "median": f"{median:.2f} s", "spread": f"{min(seconds):.2f}..{max(seconds):.2f} s",
            "n": len(seconds), "budget": f"{budget:g} s", "pass": "PASS" if median <= budget else
            f"FAIL (+{median - budget:.1f} s, x{median / budget:.1f})", "note": note}


def measure(repeats: int = 3, log: Callable[[str], None] = print, quick: bool = False) -> list[dict]:
    """quick: the cold start and the HTML exports once, untimed (the copy is seeded by it); restart, page and slider
    rows as usual, ~40 s a repeat instead of ~70."""
    from playwright.sync_api import sync_playwright

    from engine.figures.export import HEADLESS_CHROMIUM_ARGS, browser_path
    from storage.refresh import seed_demo_if_empty

    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="app-speed-") as scratch:
        scratch = Path(scratch)
        seeding = []
        for i in range(repeats):
            seeding.append(_timed(lambda i=i: seed_demo_if_empty(db_path=scratch / f"seed-{i}.duckdb")))
        log(f"seeding: {seeding}")

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path(), headless=True,
                                                 args=[a for a in HEADLESS_CHROMIUM_ARGS if a != "--headless"])
            def new_page():
                return browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True).new_page()

            cold, restart, first_visit, by_url, slider = [], [], {}, {}, []
            html_sizes: dict[str, int] = {}
            for i in range(repeats):
                folder = scratch / f"copy-{0 if quick else i}"
                if not quick or i == 0:
                    folder.mkdir()
                    with Server(folder) as url:
                        page = new_page()
                        cold.append(_open_timed(page, url, "Overview", rendered=_overview_rendered))
                        log(f"cold start {i}: {cold[-1]:.1f} s")
                        page.context.close()
                with Server(folder) as url:  # the same copy, restarted: its cache is seeded and its diagnostics on disk
                    page = new_page()
                    restart.append(_open_timed(page, url, "Overview", rendered=_overview_rendered))
                    log(f"restart {i}: {restart[-1]:.1f} s")
                    for title, path in PAGES[1:] + PAGES[:1]:
                        link = page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first
                        start = time.perf_counter()
                        link.click()
                        _idle(page, title)
                        first_visit.setdefault(title, []).append(time.perf_counter() - start)
                    for title, path in PAGES:
                        by_url.setdefault(title, []).append(_open_timed(page, f"{url}/{path}", title))
                    log(f"pages {i}: first visits {[round(v[-1], 1) for v in first_visit.values()]}, "
                        f"by URL {[round(v[-1], 1) for v in by_url.values()]}")
                    slider.append(_slider_move(page, url))
                    log(f"slider {i}: {slider[-1]:.2f} s")
                    if i == 0 and not quick:
                        html_sizes = _html_exports(page, url, scratch)
                        log(f"html exports: {html_sizes}")
                    page.context.close()
            browser.close()

    results.append(_row("cold start of a fresh copy -> rendered Overview", cold, BUDGETS_S["cold"],
                        "empty cache: demo seeded, model diagnostics computed"))
    results.append(_row("demo seeding (empty cache)", seeding, BUDGETS_S["seed"]))
    results.append(_row("restart (new server, seeded cache) -> rendered Overview", restart, BUDGETS_S["restart"]))
    for title, _ in PAGES:
        results.append(_row(f"first visit: {title} (navigation click)", first_visit[title], BUDGETS_S["first_visit"]))
    for title, _ in PAGES:
        results.append(_row(f"by URL: {title} (new session)", by_url[title], BUDGETS_S["by_url"]))
    results.append(_row("all charts after a slider move (Backtest threshold)", slider, BUDGETS_S["slider"]))
    if html_sizes:
        name, size = max(html_sizes.items(), key=lambda item: item[1])
        results.append({"measure": "chart HTML export, largest of every chart's download", "median": f"{size / 1e3:.0f} KB",
                        "spread": f"{min(html_sizes.values()) / 1e3:.0f}..{size / 1e3:.0f} KB", "n": len(html_sizes),
                        "budget": f"{HTML_BUDGET_KB} KB",
                        "pass": "PASS" if size <= HTML_BUDGET_KB * 1000 else f"FAIL (x{size / 1e3 / HTML_BUDGET_KB:.1f})",
                        "note": f"largest: {name}"})
    return results


def _slider_move(page, url: str) -> float:
    page.goto(f"{url}/backtest")
    _idle(page, "Backtest")
    thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Threshold").locator('input[type="range"]').first
    thumb.focus()
    start = time.perf_counter()
    thumb.press("ArrowRight")
    try:  # the rerun may start and end between two polls: then the URL's new value says it ran
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]', timeout=5_000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError; checked just below
        page.wait_for_url("**bt_threshold=0.025**", timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=PAGE_TIMEOUT_MS)
    return time.perf_counter() - start


def _html_exports(page, url: str, scratch: Path) -> dict[str, int]:
    """Every chart's HTML download on every page: {page: chart file name -> bytes}."""
    sizes = {}
    for title, path in PAGES:
        page.goto(f"{url}/{path}")
        _idle(page, title)
        buttons = page.get_by_role("button", name="HTML", exact=True)
        _settled_count(buttons)
        for index in range(buttons.count()):
            with page.expect_download(timeout=PAGE_TIMEOUT_MS) as info:
                buttons.nth(index).click()
            target = scratch / f"{path}-{index}.html"
            info.value.save_as(target)
            sizes[f"{title}: {info.value.suggested_filename}"] = target.stat().st_size
    return sizes


def _settled_count(locator, quiet_s: float = 1.0, limit_s: float = 15.0) -> int:
    """The locator's count once it has not changed for quiet_s (at most limit_s): a page opened by URL can report
    its run finished before a fragment's elements are drawn (the Backtest page's six downloads were missed so)."""
    deadline, count, since = time.monotonic() + limit_s, locator.count(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        now = locator.count()
        if now != count:
            count, since = now, time.monotonic()
    return count


def eta_row() -> dict:
    """The Model page's default run (3 folds, at most 15 epochs) on the demo's daily bars, the ETA after the first
    epoch against the time the training then took."""
    from engine.training.progress import EtaEstimator
    from engine.training.run import run_training
    from engine.training.settings import settings_for_panel
    from storage.panel import cached_panel
    from storage.refresh import seed_demo_if_empty

    with tempfile.TemporaryDirectory(prefix="app-speed-eta-") as scratch:
        scratch = Path(scratch)
        db = scratch / "bars.duckdb"
        seed_demo_if_empty(db_path=db)
        loaded = cached_panel(("BTC", "SPY", "AAPL"), "1d", db_path=db)
        config = settings_for_panel(loaded.panel, "1d", n_folds=3, max_epochs=15, seed=0)
        estimator, seen = EtaEstimator(config.patience), {}

        def progress(event):
            eta = estimator.observe(event)
            if event.phase == "epoch" and "first" not in seen:
                seen["first"] = (eta, event.elapsed_s)
            if event.phase == "done":
                seen["end"] = event.elapsed_s

        os.environ.setdefault("REGIME_DIAGNOSTICS", str(scratch / "diagnostics"))
        run_training(loaded, config, scratch / "run", run_id="eta-bench", progress=progress, cancel=lambda: False)
    eta, at = seen["first"]
    actual = seen["end"] - at
    error = (eta - actual) / actual
    return {"measure": "training ETA after the first epoch (demo 1d, 3 folds, <= 15 epochs)",
            "median": f"{error:+.0%}", "spread": f"said {eta:.1f} s, took {actual:.1f} s", "n": 1,
            "budget": f"±{ETA_BUDGET:.0%}", "pass": "PASS" if abs(error) <= ETA_BUDGET else "FAIL",
            "note": "training only; scoring against the baselines follows"}


def format_rows(table: list[dict]) -> str:
    columns = ["measure", "median", "spread", "n", "budget", "pass", "note"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in table)) for c in columns}
    lines = [" | ".join(c.ljust(widths[c]) for c in columns), "-|-".join("-" * widths[c] for c in columns)]
    lines += [" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-eta", action="store_true", help="leave out the training ETA row (a training run)")
    parser.add_argument("--only-eta", action="store_true", help="only the training ETA row")
    parser.add_argument("--quick", action="store_true",
                        help="one cold start (untimed beyond its one row), no HTML export pass: to check a change")
    args = parser.parse_args(argv)
    from engine.benchmarks._measure import machine_line

    print(f"# app speed in a browser (chromium, 1440x900), medians of {args.repeats}\n{machine_line('cpu')}\n",
          flush=True)
    table = [] if args.only_eta else measure(args.repeats, log=lambda line: print(f"  .. {line}", file=sys.stderr,
                                                                                flush=True), quick=args.quick)
    if not args.skip_eta:
        table.append(eta_row())
    print(format_rows(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
