"""A run's out-of-sample forecasts: computed over a span with a causal pass over the history before it, and stored
as plain arrays (predictions.npz, no pickle) beside the checkpoint, where the pages and evaluate read them."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.evaluation.scores import Predictions
from engine.features import FeatureSet
from engine.model.checkpoint import (
    CheckpointError,
)

if TYPE_CHECKING:  # torch where forecasts are computed: reading stored ones (the app's pages) needs none
    import torch
    from torch import Tensor

    from engine.model.hybrid import HybridModel

PREDICTIONS_FILE = "predictions.npz"


# ----- forecasting --------------------------------------------------------------------------------------------------


def forward_history(model: HybridModel, x: Tensor, mask: Tensor, stop: int, chunk: int):
    """The model over rows [0, stop) of x (1, A, T, F), chunk by chunk, carrying its state -> the chunks' outputs."""
    import torch

    outputs, state = [], None
    with torch.no_grad():
        for start in range(0, stop, chunk):
            end = min(start + chunk, stop)
            out = model(x[:, :, start:end], mask[:, :, start:end], state=state, return_state=True)
            state = out.state
            outputs.append(out)
    return outputs


def forecast_span(model: HybridModel, feature_set: FeatureSet, span: range, device: torch.device,
                  chunk: int = 2048) -> Predictions:
    """Forecasts at every row of `span` from a causal pass over the whole history before it; NaN where the asset
    had no fresh bar (closed market or warm-up), like the baselines."""
    import torch

    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(feature_set.values))[None].to(device)  # (1, A, T, F)
        mask = torch.from_numpy(np.ascontiguousarray(feature_set.mask))[None].to(device)  # (1, A, T)
        outputs = forward_history(model, x, mask, span.stop, chunk)
    finally:
        model.train(was_training)
    quantiles = torch.cat([o.quantiles[0] for o in outputs], dim=1)[:, span.start:].double().cpu().numpy()
    logit = torch.cat([o.direction_logit[0] for o in outputs], dim=1)[:, span.start:].double().cpu()
    log_vol = torch.cat([o.log_vol[0] for o in outputs], dim=1)[:, span.start:].double().cpu()
    has_mean = outputs[0].mean is not None
    mean = torch.cat([o.mean[0] for o in outputs], dim=1)[:, span.start:].double().cpu().numpy() if has_mean else None
    fresh = feature_set.mask[:, span.start : span.stop]  # (A, n)
    levels = tuple(model.config.quantiles)
    median = min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5))

    def only_fresh(array: np.ndarray) -> np.ndarray:
        shape = fresh.shape + (1,) * (array.ndim - 2)
        return np.where(fresh.reshape(shape), array, np.nan)

    return Predictions(
        rows=np.arange(span.start, span.stop),
        horizons=tuple(model.config.horizons),
        # The mean head when there is one (what MSE scores); else the median the pinball loss trains.
        point=only_fresh(mean if has_mean else quantiles[..., median]),
        quantiles=only_fresh(quantiles),
        quantile_levels=levels,
        prob_up=only_fresh(torch.sigmoid(logit).numpy()),
        volatility=only_fresh(torch.exp(log_vol).numpy()),
    )


def predictions_to_arrays(pred: Predictions, prefix: str = "") -> dict[str, np.ndarray]:
    """Plain arrays for np.savez (no pickle: every entry is numeric)."""
    arrays = {"rows": pred.rows, "horizons": np.asarray(pred.horizons, dtype=np.int64),
              "quantile_levels": np.asarray(pred.quantile_levels, dtype=np.float64)}
    for name in ("point", "quantiles", "prob_up", "volatility"):
        if getattr(pred, name) is not None:
            # float32: forecasts carry no more digits than that, and the shipped demo run must stay small
            arrays[name] = np.asarray(getattr(pred, name), dtype=np.float32)
    return {prefix + key: value for key, value in arrays.items()}


def predictions_from_arrays(arrays: Mapping[str, np.ndarray], prefix: str = "") -> Predictions:
    def get(name):
        if prefix + name not in arrays:
            return None
        value = np.asarray(arrays[prefix + name])
        return value.astype(np.float64) if value.dtype == np.float32 else value

    return Predictions(rows=get("rows"), horizons=tuple(int(h) for h in get("horizons")), point=get("point"),
                       quantiles=get("quantiles"), quantile_levels=tuple(float(q) for q in get("quantile_levels")),
                       prob_up=get("prob_up"), volatility=get("volatility"))


def save_predictions(path: Path, pred: Predictions, fold_of_row: np.ndarray, ts_us: np.ndarray) -> None:
    """The out-of-sample record next to the checkpoint: predictions plus the fold and UTC time of every row."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, fold=fold_of_row.astype(np.int64), ts_us=ts_us.astype(np.int64),
                        **predictions_to_arrays(pred))
    tmp.replace(path)


def load_predictions(run_dir: str | Path) -> tuple[Predictions, np.ndarray, np.ndarray]:
    """(predictions, fold per row, ts in epoch microseconds per row) of a finished run; never unpickles."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no {PREDICTIONS_FILE}: it is not a finished training run")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return predictions_from_arrays(arrays), arrays["fold"], arrays["ts_us"]
