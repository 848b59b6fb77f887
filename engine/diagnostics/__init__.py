"""What the model sees: regimes from its SSM states, the lead-lag map from its attention, effective look-back,
the SSM's hidden attention for one bar, and an on-disk cache of all of it. No Streamlit here."""
from engine.diagnostics.bundle import DiagnosticsBundle, DiagnosticsConfig, compute_diagnostics
from engine.diagnostics.cache import load_or_compute_diagnostics
from engine.diagnostics.for_run import diagnostics_for_run, run_on_panel
from engine.diagnostics.hidden_attention import hidden_attention
from engine.diagnostics.lead_lag import lead_lag_map, rolling_lead_lag, strongest_pairs, strongest_source
from engine.diagnostics.lookback import lookback_by_regime
from engine.diagnostics.regimes import RegimeConfig, RegimeResult, fit_regimes

__all__ = [
    "DiagnosticsBundle", "DiagnosticsConfig", "RegimeConfig", "RegimeResult", "compute_diagnostics", "diagnostics_for_run", "fit_regimes",
    "hidden_attention", "lead_lag_map", "load_or_compute_diagnostics", "lookback_by_regime",
    "rolling_lead_lag", "run_on_panel", "strongest_pairs", "strongest_source",
]
