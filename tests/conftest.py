"""Shared test settings: hardware-dependent tests skip themselves when the hardware is absent."""
from __future__ import annotations

import os
import shutil

import pytest

# Two cores are shared between pytest and the processes some tests start: keep torch to one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def chromium_path() -> str | None:
    return os.environ.get("BROWSER_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine")
    skip_browser = pytest.mark.skip(reason="no chromium installed (apt-get install chromium)")
    has_cuda = None
    has_browser = chromium_path() is not None
    for item in items:
        if "gpu" in item.keywords:
            if has_cuda is None:
                has_cuda = _has_cuda()
            if not has_cuda:
                item.add_marker(skip_gpu)
        if "browser" in item.keywords and not has_browser:
            item.add_marker(skip_browser)
