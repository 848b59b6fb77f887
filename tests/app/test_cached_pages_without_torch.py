"""A restarted app shows a checkpoint's pages from the disk cache without importing torch or sklearn (issue 17).

With the diagnostics and findings of (checkpoint, data) on disk, and the default views' further results that the
app computes ahead after its first page (engine.diagnostics.view_results: Lookback's hidden attention of the last
bar and its per-regime tests, Regimes' cluster tests), the model is loaded only for what runs it live (the hidden
attention of a bar picked for the first time, training on the Model page): torch costs 1.5-3 s to import on the
2-core box, sklearn about 1.8 s, arch (the cluster test's GARCH, with scipy.stats) about 1.5 s and statsmodels (the
look-back test's Holm correction) about 1.1 s, once per server process. The pages run in a fresh interpreter, as
after a restart (this process has long imported them all), one after the other as one server runs them, through
the real app script.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.diagnostics.view_results import WARM_ENV_VAR
from tests.app.conftest import ROOT

# every page that shows cached results only, in its default view (Lookback's picked bar: the last one)
WITHOUT_MODEL = ("views/overview.py", "views/forecasts.py", "views/backtest.py", "views/regimes.py",
                 "views/lead_lag.py", "views/lookback.py", "views/data.py")
HEAVY = ("torch", "sklearn", "arch", "statsmodels")

RUN_PAGES = """
import json, sys
from tests.app.conftest import figure_specs, open_page
out = []
for page in sys.argv[1:]:
    at = open_page(page)
    out.append({"page": page, "exception": [str(e.value) for e in at.exception], "charts": len(figure_specs(at)),
                "errors": [e.value for e in at.error], "loaded": [m for m in HEAVY if m in sys.modules],
                "device": [c.value for c in at.caption if "device:" in c.value]})
print(json.dumps(out))
""".replace("HEAVY", repr(HEAVY))


def run_fresh(*pages: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", RUN_PAGES, *pages], cwd=ROOT, env={**os.environ},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def warm_cache(db_path, through_the_warm_up_process: bool = False):
    """The demo checkpoint's diagnostics, every findings part and the default views' further results on the seeded
    data, in the session's shared diagnostics folder (computed once per session; the shipped findings are copied
    when their key matches), as the app's first start leaves them -> the diagnostics' entry folder. The default
    views: in this process (warm_default_views), or through_the_warm_up_process that the app starts
    (views.model_results._load -> engine.diagnostics.view_results.start_warm_up; it imports torch afresh)."""
    from engine.diagnostics.cache import entry_folder
    from engine.diagnostics.findings import findings_for_run
    from engine.diagnostics.for_run import diagnostics_for_run, run_on_panel
    from engine.diagnostics.view_results import (
        is_warm,
        start_warm_up,
        warm_default_views,
    )
    from engine.model.checkpoint import DEMO_CHECKPOINT_DIR
    from storage.panel import cached_panel
    from storage.sources.demo import DEMO_SYMBOLS

    loaded = cached_panel(DEMO_SYMBOLS, "1h", db_path=db_path)
    bundle, _ = diagnostics_for_run(DEMO_CHECKPOINT_DIR, loaded)
    findings_for_run(DEMO_CHECKPOINT_DIR, loaded, bundle)
    run = run_on_panel(DEMO_CHECKPOINT_DIR, loaded, lazy=True)
    entry = entry_folder(run.manifest.cache_id, loaded.fingerprint(), run.fit_rows)
    if through_the_warm_up_process:
        process = start_warm_up(DEMO_CHECKPOINT_DIR, db_path, DEMO_SYMBOLS, "1h", entry)
        if process is not None:
            assert process.wait(timeout=240) == 0, (entry / "views" / "warm-up.log").read_text()[-3000:]
    elif not is_warm(entry):
        warm_default_views(entry, run, loaded, bundle)
    assert is_warm(entry)
    return entry


def test_with_the_cache_warm_the_pages_render_without_torch_or_sklearn(seeded_db):
    warm_cache(seeded_db)
    for result in run_fresh(*WITHOUT_MODEL):
        assert not result["exception"] and not result["errors"], result
        assert result["charts"] >= 1, result  # the page drew its charts, not a message
        assert result["loaded"] == [], f"{result['page']} imported {result['loaded']}"
        said = "no model on this page" if result["page"] == "views/data.py" else "model's results were read from disk"
        assert len(result["device"]) == 1 and said in result["device"][0], result  # the status line says why


@pytest.mark.slow  # ~15 s: the warm-up process imports torch, statsmodels and arch afresh
def test_the_warm_up_process_the_app_starts_computes_the_default_views(seeded_db, tmp_path, monkeypatch):
    import shutil

    from engine.diagnostics.view_results import WARM_MARKER

    shared = warm_cache(seeded_db)  # the diagnostics entry, copied without its views into a cache of its own
    cache = tmp_path / "diagnostics"
    shutil.copytree(shared, cache / shared.name, ignore=shutil.ignore_patterns("views"))
    monkeypatch.setenv("REGIME_DIAGNOSTICS", str(cache))
    monkeypatch.setenv(WARM_ENV_VAR, "1")  # the fixtures turn the app's warm-up off; here it is what is tested
    entry = warm_cache(seeded_db, through_the_warm_up_process=True)
    assert entry == cache / shared.name and (entry / "views" / WARM_MARKER).exists()
    assert sorted(p.name.rsplit("-", 1)[0] for p in (entry / "views").glob("*.npz")) == sorted(
        p.name.rsplit("-", 1)[0] for p in (shared / "views").glob("*.npz"))
    for result in run_fresh("views/regimes.py", "views/lookback.py"):
        assert not result["exception"] and not result["errors"], result
        assert result["loaded"] == [], f"{result['page']} imported {result['loaded']}"
