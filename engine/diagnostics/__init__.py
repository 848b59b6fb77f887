"""What the model sees: regimes from its SSM states, the lead-lag map from its attention, effective look-back,
the SSM's hidden attention for one bar, and an on-disk cache of all of it. No Streamlit here.

The names below are imported on first use (PEP 562), not with the package: importing any submodule runs this file,
and a page that reads cached diagnostics (engine.diagnostics.regimes, .cache) must not pay for torch, which the
model-running parts (hidden_attention, for_run's model) import.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

_WHERE = {
    "DiagnosticsBundle": "bundle", "DiagnosticsConfig": "bundle", "compute_diagnostics": "bundle",
    "load_or_compute_diagnostics": "cache",
    "diagnostics_for_run": "for_run", "run_on_panel": "for_run",
    "hidden_attention": "hidden_attention",
    "lead_lag_map": "lead_lag", "rolling_lead_lag": "lead_lag", "strongest_pairs": "lead_lag",
    "strongest_source": "lead_lag",
    "lookback_by_regime": "lookback",
    "RegimeConfig": "regimes", "RegimeResult": "regimes", "fit_regimes": "regimes",
}

__all__ = [
    "DiagnosticsBundle", "DiagnosticsConfig", "RegimeConfig", "RegimeResult", "compute_diagnostics",
    "diagnostics_for_run", "fit_regimes", "hidden_attention", "lead_lag_map", "load_or_compute_diagnostics",
    "lookback_by_regime", "rolling_lead_lag", "run_on_panel", "strongest_pairs", "strongest_source",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


class _Package(types.ModuleType):
    """`engine.diagnostics.hidden_attention` is the function, as when this file imported it eagerly: importing the
    submodule of the same name binds the module here, and that binding is turned into the function it holds."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
    from engine.diagnostics.bundle import (
        DiagnosticsBundle,
        DiagnosticsConfig,
        compute_diagnostics,
    )
    from engine.diagnostics.cache import load_or_compute_diagnostics
    from engine.diagnostics.for_run import diagnostics_for_run, run_on_panel
    from engine.diagnostics.hidden_attention import hidden_attention
    from engine.diagnostics.lead_lag import (
        lead_lag_map,
        rolling_lead_lag,
        strongest_pairs,
        strongest_source,
    )
    from engine.diagnostics.lookback import lookback_by_regime
    from engine.diagnostics.regimes import RegimeConfig, RegimeResult, fit_regimes
