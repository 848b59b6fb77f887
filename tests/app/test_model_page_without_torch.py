"""The Model page's first paint imports neither torch nor the training settings' model code (issue 17: 2.98 s first
visit, the torch import), and still names the device: engine.device_probe asks engine.runtime's own rule in a child
process, and the page's caption reruns until it answers. Run in a fresh interpreter, as after a restart (this process
has long imported torch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.app.conftest import ROOT

OPEN_MODEL_PAGE = """
import json, sys, time
from tests.app.conftest import open_page
at = open_page("views/model.py")
first = [c.value for c in at.caption if c.value.startswith("Training runs on")]
loaded_on_paint = "torch" in sys.modules
from engine.device_probe import device_label_now
deadline = time.monotonic() + 120
while (label := device_label_now()) is None and time.monotonic() < deadline:
    time.sleep(0.2)
at.run()  # the page again (its caption fragment reruns alone in a browser; AppTest reruns the page)
later = [c.value for c in at.caption if c.value.startswith("Training runs on")]
print(json.dumps({"exception": [str(e.value) for e in at.exception], "first": first, "later": later,
                  "label": label, "torch_on_paint": loaded_on_paint, "torch_at_end": "torch" in sys.modules}))
"""
RULE = "from engine.runtime import device_label; print(device_label())"


def _fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_model_page_paints_without_torch_and_names_the_device_by_engine_runtimes_rule(seeded_db):
    result = json.loads(_fresh(OPEN_MODEL_PAGE))
    assert not result["exception"], result
    assert result["torch_on_paint"] is False and result["torch_at_end"] is False, result
    assert len(result["first"]) == 1 and "checking which" in result["first"][0], result
    expected = _fresh(RULE)  # engine.runtime.device_label in a process of its own, e.g. "CPU (2 threads)"
    assert result["label"] == expected, (result, expected)
    assert len(result["later"]) == 1 and f"Training runs on **{expected}**" in result["later"][0], result
