"""All diagnostics of one model over one panel, computed together: what the dashboard's model views read.

    features --run_inference--> forecasts, embeddings, effective look-back, attention (engine/model/inference.py)
             --fit_regimes (training rows only)--> PCA coordinates, regime labels, transitions
             --lead_lag_map--> alpha[target, source, lag] over the target's open bars

Cheap views (the rolling lead-lag map for a chosen window, the strongest pairs, look-back per regime) are methods,
computed on demand from the stored arrays, so a cached bundle serves any window the user picks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from engine.diagnostics.lead_lag import (
    lead_lag_map,
    rolling_lead_lag,
    rolling_lead_lag_of,
    strongest_pairs,
)
from engine.diagnostics.lookback import lookback_by_regime
from engine.diagnostics.regimes import RegimeConfig, RegimeResult, fit_regimes
from engine.features import FeatureSet
from engine.model.inference import InferenceConfig, InferenceResult, run_inference

if TYPE_CHECKING:  # a bundle read back from the cache needs no torch
    from engine.model.hybrid import HybridModel


@dataclass(frozen=True)
class DiagnosticsConfig:
    regimes: RegimeConfig = field(default_factory=RegimeConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def identity(self) -> dict:
        """What changes the numbers (the cache key); chunking does not, beyond float rounding."""
        return {"regimes": asdict(self.regimes), "attention_budget_mb": self.inference.attention_budget_mb}


@dataclass(frozen=True)
class DiagnosticsBundle:
    inference: InferenceResult
    regimes: RegimeResult
    lead_lag: np.ndarray  # (A_tgt, A_src, K+1) over the whole span, target-open bars only

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.inference.symbols

    @property
    def attention_rows(self) -> range:
        """The rows whose per-bar attention is kept (all of them unless a wide universe hit the memory budget,
        engine.model.inference.InferenceConfig.attention_budget_mb); maps over other rows use only these."""
        return range(self.inference.attention_start, len(self.inference.ts))

    def _kept_open(self) -> np.ndarray:
        return self.inference.mask[:, self.inference.attention_start:]

    def rolling_lead_lag(self, window: int) -> np.ndarray:
        """(T_kept, A, A, K+1): the lead-lag map over the trailing `window` rows at every kept bar."""
        return rolling_lead_lag(self.inference.attention, self._kept_open(), window)

    def rolling_lead_lag_of(self, target: str, window: int) -> np.ndarray:
        """(T, A_src, K+1): one target's trailing-window map at every bar; NaN before the kept rows."""
        kept = rolling_lead_lag_of(self.inference.attention, self._kept_open(), window, self.symbols.index(target))
        out = np.full((len(self.inference.ts),) + kept.shape[1:], np.nan, dtype=np.float32)
        out[self.inference.attention_start:] = kept
        return out

    def lead_lag_over(self, rows: range) -> np.ndarray:
        """The map over `rows`, from the kept rows among them (all, but for a universe past the budget)."""
        if rows.start <= 0 and rows.stop >= len(self.inference.ts):
            return self.lead_lag
        start = self.inference.attention_start
        kept = range(max(rows.start, start) - start, max(rows.stop - start, 0))
        return lead_lag_map(self.inference.attention, self._kept_open(), kept)

    def strongest_pairs(self, top: int = 5, rows: range | None = None) -> pd.DataFrame:
        weights = self.lead_lag if rows is None else self.lead_lag_over(rows)
        return strongest_pairs(weights, self.symbols, top)

    def lookback_by_regime(
        self,
        labels: np.ndarray | None = None,
        regime_names: Sequence[str] | None = None,
        rows: range | None = None,
    ) -> pd.DataFrame:
        """Effective look-back per (asset, regime); labels default to the regimes found in the embeddings."""
        return lookback_by_regime(
            self.inference.lookback_median, self.inference.mask,
            self.regimes.labels if labels is None else labels, self.symbols, regime_names, rows,
        )


def compute_diagnostics(
    model: HybridModel, features: FeatureSet, fit_rows: range, config: DiagnosticsConfig = DiagnosticsConfig()
) -> DiagnosticsBundle:
    """Run the model over every bar and derive the diagnostics; PCA and clusters see fit_rows (training) only."""
    inference = run_inference(model, features, config.inference)
    regimes = fit_regimes(inference.embeddings, inference.mask, fit_rows, config.regimes)
    return DiagnosticsBundle(inference, regimes, inference.lead_lag)
