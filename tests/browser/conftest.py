"""The real-browser harness: `streamlit run app.py` on a free localhost port, driven by the installed chromium.

Each server gets its own empty DuckDB file (REGIME_DB) and runs folder (REGIME_RUNS), so the first page load seeds
the demo market exactly as a new user's would. Playwright never downloads a browser: it launches Debian's chromium.
"""
from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.figures.export import HEADLESS_CHROMIUM_ARGS
from tests.conftest import chromium_path

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
HEALTH_TIMEOUT_S = 60
PAGE_TIMEOUT_MS = 45_000


def app_pages() -> list[tuple[str, str]]:
    """(title, url_path) of every st.Page in app.py's PAGES list, read from the source (app.py cannot be imported).

    The default page lives at the root URL (Streamlit answers its url_path with "Page not found").
    """
    tree = ast.parse((ROOT / "app.py").read_text())
    pages = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page":
            keywords = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
            url_path = "" if keywords.get("default") else keywords.get("url_path", "")
            pages.append((keywords["title"], url_path))
    if not pages:
        raise AssertionError("no st.Page(...) found in app.py")
    return pages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen
    log: Path


@contextmanager
def streamlit_server(db_path: Path, runs_dir: Path, log: Path, diagnostics_dir: Path | None = None):
    """A running app; yields once /_stcore/health answers, stops the server (its process only) afterwards.

    Its diagnostics cache is a folder of its own (beside the DuckDB file unless given), so the first load computes
    the model's diagnostics as a fresh clone would."""
    port = free_port()
    env = {**os.environ, "REGIME_DB": str(db_path), "REGIME_RUNS": str(runs_dir), "OMP_NUM_THREADS": "1",
           "REGIME_DIAGNOSTICS": str(diagnostics_dir or db_path.parent / "diagnostics")}
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
        "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url, log)
        yield AppServer(url, process, log)
    finally:
        stop_server(process)


def wait_until_serving(process: subprocess.Popen, url: str, log: Path, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Return once the server at url answers /_stcore/health; fail with its log if it exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"streamlit exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"streamlit did not answer /_stcore/health within {timeout_s}s: "
                                 f"{log.read_text()[-2000:]}")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def shared_diagnostics(tmp_path_factory) -> Path:
    """The test session's diagnostics folder, shared with the AppTests (tests/app/conftest.py's diagnostics_dir):
    a server given it finds the demo checkpoint's diagnostics and findings when an earlier test computed them, and
    computes them itself otherwise (entries are keyed by checkpoint, data and settings, and checked when read)."""
    path = tmp_path_factory.getbasetemp() / "shared-diagnostics"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def app_dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("browser-app")
    return {"db": base / "bars.duckdb", "runs": base / "runs", "log": base / "streamlit.log", "downloads": base}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True,
            args=[a for a in HEADLESS_CHROMIUM_ARGS if a != "--headless"],
        )
        try:
            yield launched
        finally:
            launched.close()


def wait_until_idle(page) -> None:
    """Until the script run (and any fragment run) has finished and the page shows its title."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector("h1", timeout=PAGE_TIMEOUT_MS)


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


FULL_LENGTH_MAX_PX = 9_000


def screenshot_full_length(page, name: str) -> Path:
    """The whole page at the viewport's width: Streamlit scrolls inside its own container, so the page's
    full_page screenshot holds one screen; the viewport is made as tall as the content (at most FULL_LENGTH_MAX_PX)
    for the shot and put back after."""
    viewport = page.viewport_size
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll('[data-testid="stMain"], section')]
                                               .map(el => el.scrollHeight), document.body.scrollHeight)""")
    page.set_viewport_size({"width": viewport["width"], "height": min(int(height) + 40, FULL_LENGTH_MAX_PX)})
    page.wait_for_timeout(800)  # charts re-layout
    try:
        return screenshot(page, name)
    finally:
        page.set_viewport_size(viewport)
