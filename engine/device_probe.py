"""The device a model would run on, named without importing torch into the asking process.

`engine.runtime.device_label` holds the rule (CUDA when torch finds it, else the CPU with torch's thread count), and
asking it imports torch: 1.5-3 s on the 2-core box, which a page that only names the device (the Model page, before
any training) should not wait for. `device_label_now()` answers at once:

- torch already loaded here: `engine.runtime.device_label()` itself;
- else the answer of a child process that ran that same function (started on the first ask, at the lowest CPU
  priority), or None while it runs: ask again later (the page polls). A probe that fails answers with its reason.

The child inherits this process's environment, so it sees the same CUDA devices and OMP_NUM_THREADS; the rule is
never restated here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = "from engine.runtime import device_label; print(device_label())"

_lock = threading.Lock()
_state: dict = {}  # "process": the running child; "label": its answer


def device_label_now() -> str | None:
    """The device's name, or None while the probe runs (never blocks on torch's import)."""
    if "torch" in sys.modules:
        from engine.runtime import device_label

        return device_label()
    with _lock:
        if "label" in _state:
            return _state["label"]
        process = _state.get("process")
        if process is None:
            _state["process"] = _start()
            return None
        if process.poll() is None:
            return None
        out, err = process.communicate()
        if process.returncode == 0 and out.strip():
            _state["label"] = out.strip().splitlines()[-1]
        else:
            reason = (err.strip().splitlines() or [f"exit status {process.returncode}"])[-1]
            _state["label"] = f"unknown (the device probe failed: {reason})"
        del _state["process"]
        return _state["label"]


def _start() -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # the lowest CPU priority: it never competes with the app for the two cores
        os.setpriority(os.PRIO_PROCESS, process.pid, 19)
    except OSError:
        pass  # it finished (or the platform refuses): the answer is the same
    return process


def forget() -> None:
    """Tests: the next ask probes again."""
    with _lock:
        process = _state.pop("process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        _state.clear()
