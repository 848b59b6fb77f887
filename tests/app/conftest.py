"""AppTest fixtures: every test runs the real app script against its own DuckDB file.

Seeding the demo market takes about a second, so one seeded cache is built per session and copied for each test
that wants a populated cache; tests that check the empty-cache path get a fresh path instead.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

from engine.diagnostics.view_results import WARM_ENV_VAR
from storage.refresh import seed_demo_if_empty
from tests.fixtures.vendor_downloads import write_downloads

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
TIMEOUT_S = 120


@pytest.fixture(scope="session")
def seeded_cache_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seeded") / "bars.duckdb"
    assert seed_demo_if_empty(db_path=path)
    return path


SHARED_DIAGNOSTICS = "shared-diagnostics"  # under the session's base temp folder; tests/browser/conftest.py's too


@pytest.fixture(scope="session")
def diagnostics_dir(tmp_path_factory) -> Path:
    # Shared by every app test, and by the default browser test's server (tests/browser/conftest.py names the same
    # folder): entries are keyed by checkpoint, data and settings and checked on the way back in, so sharing is
    # safe, and the demo checkpoint's diagnostics and findings are computed once per test session.
    path = tmp_path_factory.getbasetemp() / SHARED_DIAGNOSTICS
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def seeded_db(tmp_path, seeded_cache_template, diagnostics_dir, monkeypatch) -> Path:
    path = tmp_path / "bars.duckdb"
    shutil.copy(seeded_cache_template, path)
    monkeypatch.setenv("REGIME_DB", str(path))
    monkeypatch.setenv("REGIME_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REGIME_DIAGNOSTICS", str(diagnostics_dir))
    monkeypatch.setenv(WARM_ENV_VAR, "0")  # no warm-up processes beside the tests (test_cached_pages_without_torch)
    _forget_cached_reads()
    return path


def _forget_cached_reads() -> None:
    """A new cache and runs directory: the frame's cached summary and run list (30 s) belong to the previous test's,
    and an earlier test's list would hide or replace this one's checkpoints."""
    import streamlit as st

    st.cache_data.clear()


@pytest.fixture
def empty_db(tmp_path, diagnostics_dir, monkeypatch) -> Path:
    path = tmp_path / "bars.duckdb"
    monkeypatch.setenv("REGIME_DB", str(path))
    monkeypatch.setenv("REGIME_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REGIME_DIAGNOSTICS", str(diagnostics_dir))
    monkeypatch.setenv(WARM_ENV_VAR, "0")
    _forget_cached_reads()
    return path


def page_url_paths() -> dict[str, str]:
    """{"views/data.py": "data", ...}: every st.Page(script, url_path=...) in app.py, read from its source."""
    tree = ast.parse(Path(APP).read_text())
    paths = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            keywords = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
            paths[node.args[0].value] = keywords.get("url_path", Path(node.args[0].value).stem)
    return paths


def open_page(page: str | None = None, **query) -> AppTest:
    """Run app.py (the navigation and shared frame) on `page` (a path like "views/data.py"; None: the root URL,
    which opens the Overview), as a browser opening the page's own URL does: one page runs, not the Overview first.

    AppTest's public switch_page needs a first run to learn the navigation's url paths (it would run the Overview
    before every page), so the first run is asked for the page's script hash the way a URL asks for it: st.Page
    hashes its url_path. The run must end on that page, or the test fails here (never on a different page)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    for key, value in query.items():
        at.query_params[key] = value
    if page is None:
        return at.run()
    url_path = page_url_paths()[page]
    at._page_hash = calc_hash(url_path)  # what /<url_path> requests; AppTest has no public way before a first run
    at.run()
    if not at.exception:
        assert at._finished_page_script_hash == calc_hash(url_path), f"the run did not end on {page}"
    return at


def figure_specs(at: AppTest) -> list[dict]:
    """The Plotly figures on the page as JSON dicts (AppTest returns them as unknown elements with .proto.spec)."""
    import json

    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


DEFAULT_SUITE_PAGES = ("views/overview.py", "views/lead_lag.py", "views/regimes.py")


def sampled(pages, keep=DEFAULT_SUITE_PAGES) -> list:
    """A page sweep whose pages outside `keep` run only with -m slow: the default suite still opens a model page
    of each kind on every market, within its ten minutes on two cores; `pytest -m slow` opens them all."""
    return [page if page in keep else pytest.param(page, marks=pytest.mark.slow) for page in pages]


# ----- the README's walkthrough (tests/app/test_real_data_walkthrough.py, tests/app/test_verdicts.py) --------------

QUICK_TRAINING = ["--epochs", "1", "--folds", "2"]


def readme_walkthrough() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough.*?```bash\n(.*?)```\n<!-- /walkthrough -->", text, re.DOTALL)
    assert block, "README.md lost its walkthrough block"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="session")
def walked_through(tmp_path_factory):
    """Run the README's commands on downloads in a fresh folder -> (home: cache, runs and diagnostics, outputs).

    Once per test session, here in the conftest: as a module fixture imported by two test modules it ran (a
    training included) once per module."""
    home = tmp_path_factory.mktemp("walkthrough")
    downloads = write_downloads(home / "Downloads")
    env = {**os.environ, "REGIME_DB": str(home / "bars.duckdb"), "REGIME_RUNS": str(home / "runs"),
           "REGIME_DIAGNOSTICS": str(home / "diagnostics"), "OMP_NUM_THREADS": "1"}
    outputs = []
    for command in readme_walkthrough():
        if command[:2] == ["streamlit", "run"]:
            continue  # the pages are opened below through AppTest
        assert command[:2] == ["python", "-m"], command
        argv = [sys.executable, *command[1:]] + (QUICK_TRAINING if command[2] == "engine.train" else [])
        argv = [arg.replace("~/Downloads", str(downloads["SPY"].parent)) for arg in argv]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                              check=False)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout + done.stderr)
    return home, outputs
