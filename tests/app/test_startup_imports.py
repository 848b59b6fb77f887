"""What a page pays for at the app's start: the frame and the cached findings' key do not load heavy libraries.

Each check runs in a fresh interpreter (this process has long imported everything). torch costs 1.5-3 s to import on
the 2-core box and scipy.stats 1.8 s; the frame runs on every page, and the findings' cache key is computed on every
model page's first run after a restart.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_the_frame_and_the_checkpoint_registry_do_not_import_torch():
    out = run_python(
        "import sys, views.frame\n"
        "from engine.model.checkpoint import DEMO_CHECKPOINT_DIR, fitting_runs, list_runs, read_manifest\n"
        "runs = list_runs()\n"
        "read_manifest(DEMO_CHECKPOINT_DIR)\n"
        "fitting_runs(runs, ('BTC', 'SPY', 'AAPL'), '1h')\n"
        "print('torch' in sys.modules, len(runs))"
    )
    loaded, runs = out.split()
    assert loaded == "False" and int(runs) >= 1, out


def test_the_findings_cache_key_reads_the_scores_file_without_loading_scipy(tmp_path):
    from engine.evaluation.run_scores import SCORES_JSON

    (tmp_path / SCORES_JSON).write_text('{"rows": []}')  # the file engine.evaluate writes, by its own name
    out = run_python(
        "import sys\n"
        "from pathlib import Path\n"
        "from engine.diagnostics.findings import _scores_file_digest\n"
        f"print(_scores_file_digest(Path({str(tmp_path)!r})), 'scipy' in sys.modules)"
    )
    digest, loaded = out.split()
    assert digest not in ("none", "unreadable") and loaded == "False", out
