"""From per-horizon forecasts on the panel clock to what the backtester reads (BacktestInputs), and the forecaster that
drives the Backtest page until the model's inference lands.

The forecasts arrive as the model and the baselines produce them: (A, T, H) arrays on the union clock, with P(up) of
the h-bar return and the predicted volatility (std) of the h-bar log return, NaN where no forecast was made. The
backtester trades one horizon and sizes on a per-bar volatility, so the h-bar std is scaled by 1/sqrt(h) (the
random-walk scaling the vol-target and inverse-vol sizings assume).

Annualisation per asset: 365 days for crypto and 252 sessions for equities, times bars per day (engine.calendar). An
asset that has any own bar on a Saturday or Sunday (UTC) trades around the clock, which is how the cache summary tells
the two apart too.

The backtested span is the bars with out-of-sample forecasts (the union of a run's walk-forward test spans), within
the chosen dates: the strategy can only trade there, so buy-and-hold is measured over the same bars. Bars after the
last forecast (a panel that has grown since training) are left out, and a bar whose previous bar has no forecast (a
gap between test spans) is not counted for either: its return is NaN, which earns nothing (engine.backtest.engine).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.backtest.engine import BacktestInputs
from engine.calendar import Annualisation
from engine.targets import compute_targets
from engine.training.splits import walk_forward
from storage.panel import Panel, check_panel

MARKETS = ("crypto", "equities")


# ------------------------------------------------------------------------------------------------ the panel side
def infer_markets(panel: Panel) -> tuple[str, ...]:
    """Per asset, "crypto" when it has an own bar on a Saturday or Sunday (UTC), else "equities"."""
    weekend = np.asarray(panel.ts.day_of_week >= 5)  # (T,)
    observed = np.asarray(panel.observed)  # (T, A)
    return tuple("crypto" if (observed[:, a] & weekend).any() else "equities" for a in range(len(panel.symbols)))


def bars_per_year_of(interval: str, markets: Sequence[str]) -> np.ndarray:
    """(A,) bars per year of each asset's own clock, e.g. 8,760 for hourly crypto, 1,764 for hourly equities."""
    return np.array([Annualisation.from_interval(interval, market).bars_per_year for market in markets])


def panel_simple_returns(panel: Panel) -> np.ndarray:
    """(T, A) close-to-close simple return on the union clock; NaN before an asset's first close.

    The panel carries an equity's last close through the hours its market is closed, so those bars return 0 and the
    weekend gap lands on the first open bar after it, where it was earned.
    """
    close = np.asarray(panel.fields["close"], dtype=np.float64)  # (T, A)
    returns = np.full_like(close, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        returns[1:] = close[1:] / close[:-1] - 1.0
    return returns


# ------------------------------------------------------------------------------------------------ the forecasts
def backtest_inputs_from_forecasts(
    panel: Panel,
    prob_up: np.ndarray,
    predicted_vol: np.ndarray,
    horizons: Sequence[int],
    horizon: int,
    interval: str,
    markets: Sequence[str] | None = None,
    start=None,
    end=None,
) -> BacktestInputs:
    """BacktestInputs for one forecast horizon over the backtested span: the bars from the first to the last with a
    forecast (forecast_span), within start <= ts < end (UTC times; None = unbounded).

    prob_up, predicted_vol: (A, T, H) on the panel clock (the layout of engine.targets / engine.evaluation.scores), P(h-bar log
    return > 0) and the std of the h-bar log return, NaN where there is no forecast. horizon: one of `horizons`.
    interval: the panel's bar size ("1h", "1d"...). markets: per asset "crypto" or "equities"; None infers them.
    The strategy and buy-and-hold are measured over the same bars: returns are counted only on bars that follow a
    bar with a forecast (NaN elsewhere), the only bars a position can be held on.
    """
    check_panel(panel)
    horizons = tuple(int(h) for h in horizons)
    n_assets, n_bars = len(panel.symbols), len(panel.ts)
    expected = (n_assets, n_bars, len(horizons))
    for name, values in (("prob_up", prob_up), ("predicted_vol", predicted_vol)):
        shape = np.shape(values)
        if shape != expected:
            raise ValueError(
                f"backtest_inputs_from_forecasts: {name} has shape {shape}, expected (assets, bars, horizons) = "
                f"{expected} for {list(panel.symbols)} over {n_bars} bars and horizons {horizons}"
            )
    if horizon not in horizons:
        raise ValueError(f"backtest_inputs_from_forecasts: horizon {horizon} is not among the forecast horizons {horizons}")
    markets = infer_markets(panel) if markets is None else tuple(markets)
    if len(markets) != n_assets or any(m not in MARKETS for m in markets):
        raise ValueError(
            f"backtest_inputs_from_forecasts: markets must give one of {MARKETS} per symbol {list(panel.symbols)}, "
            f"got {list(markets)}"
        )
    j = horizons.index(horizon)
    if start is not None and int(panel.ts.searchsorted(_utc(start))) >= n_bars:
        raise ValueError(f"backtest_inputs_from_forecasts: start {start} is after the last bar {panel.ts[-1]}")
    prob_up = np.asarray(prob_up, dtype=np.float64)
    has_forecast = forecast_bars(prob_up[:, :, j])
    keep = forecast_span(panel.ts, has_forecast, start, end, horizon)
    returns = panel_simple_returns(panel)[keep]
    # Bar t is earned by the position set at the close of bar t-1: with no forecast there, neither side counts it.
    returns[1:][~has_forecast[keep][:-1]] = np.nan
    per_bar_vol = np.asarray(predicted_vol, dtype=np.float64)[:, keep, j] / np.sqrt(horizon)  # (A, T')
    return BacktestInputs(
        ts=panel.ts[keep],
        symbols=tuple(panel.symbols),
        returns=returns,
        prob_up=prob_up[:, keep, j].T,  # (T', A)
        pred_vol=per_bar_vol.T,
        tradable=np.asarray(panel.observed, dtype=bool)[keep],
        bars_per_year=bars_per_year_of(interval, markets),
        horizon=horizon,
    )


def forecast_bars(prob_up: np.ndarray) -> np.ndarray:
    """(T,) bool: bars where any asset has a forecast. prob_up: (A, T) at one horizon, NaN = none."""
    return np.isfinite(prob_up).any(axis=0)


def forecast_span(ts: pd.DatetimeIndex, has_forecast: np.ndarray, start=None, end=None, horizon: int | None = None
                  ) -> slice:
    """The backtested rows: from the first to the last bar with a forecast, within start <= ts < end.

    Raises ValueError, saying where the forecasts are, when there are none or none in the chosen dates.
    """
    rows = np.flatnonzero(has_forecast)
    at = "" if horizon is None else f" at horizon {horizon}"
    if len(rows) == 0:
        raise ValueError(f"there are no out-of-sample forecasts{at} on these bars")
    first, stop = int(rows[0]), int(rows[-1]) + 1
    if start is not None:
        first = max(first, int(ts.searchsorted(_utc(start))))
    if end is not None:
        stop = min(stop, int(ts.searchsorted(_utc(end))))
    if first >= stop:
        raise ValueError(
            f"the chosen dates hold no out-of-sample forecasts{at}: they cover {ts[rows[0]]:%Y-%m-%d %H:%M} .. "
            f"{ts[rows[-1]]:%Y-%m-%d %H:%M} UTC; widen the date range"
        )
    return slice(first, stop)


def backtested_span_text(inputs: BacktestInputs) -> str:
    """The span the strategy and buy-and-hold are measured over, in words, for the page and the report."""
    ts = pd.DatetimeIndex(inputs.ts).tz_localize("UTC")
    return (f"{ts[0]:%Y-%m-%d %H:%M} .. {ts[-1]:%Y-%m-%d %H:%M} UTC, {len(ts):,} bars "
            "(the bars with out-of-sample forecasts, within the chosen dates)")


def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@dataclass(frozen=True, eq=False)
class Forecasts:
    """What a forecaster hands the Backtest page: out-of-sample forecasts on the panel clock, and what made them."""

    prob_up: np.ndarray  # (A, T, H), NaN outside the out-of-sample span
    predicted_vol: np.ndarray  # (A, T, H), std of the h-bar log return
    horizons: tuple[int, ...]
    out_of_sample_start: pd.Timestamp  # first bar with a forecast: every one from here on was made by a past fit
    description: str  # which forecaster, in words, for the page and the report


@dataclass(frozen=True)
class WalkForwardConfig:
    """Expanding-window folds for the baseline forecaster: refit on everything before each test span."""

    n_folds: int = 4
    train_fraction: float = 0.4  # the first fold trains on this share of the rows
    min_train_rows: int = 120

    def __post_init__(self) -> None:
        if self.n_folds < 1 or not 0 < self.train_fraction < 1 or self.min_train_rows < 1:
            raise ValueError(f"WalkForwardConfig: need n_folds >= 1, 0 < train_fraction < 1, min_train_rows >= 1; got {self}")


Forecaster = Callable[[Panel, Sequence[int]], Forecasts]


def baseline_forecasts(
    panel: Panel,
    horizons: Sequence[int] = (1, 5, 20),
    direction_baseline: str = "logistic",
    volatility_baseline: str = "har",
    config: WalkForwardConfig = WalkForwardConfig(),
) -> Forecasts:
    """Walk-forward baseline forecasts: P(up) from `direction_baseline`, volatility from `volatility_baseline`,
    each refitted on every fold's training span and run over its test span only (nothing in-sample is returned)."""
    # scipy/statsmodels behind the baselines cost about a second to import: only when a baseline drives the page.
    from engine.evaluation.baselines import BaselineInput, walk_forward_baselines

    horizons = tuple(int(h) for h in horizons)
    targets = compute_targets(panel, horizons)
    n_rows = len(panel.ts)
    purge = max(targets.max_reach(), max(horizons))
    min_train = max(config.min_train_rows, int(config.train_fraction * n_rows))
    # Baselines have nothing to choose on a validation span; the smallest one keeps the purge on both sides.
    val_size = 1
    test_size = (n_rows - min_train - 2 * purge - val_size) // config.n_folds
    if test_size < 1:
        raise ValueError(
            f"baseline_forecasts: {n_rows} bars are too few for {config.n_folds} walk-forward folds after "
            f"{min_train} training bars and a purge of {purge}: select a longer span or a finer interval"
        )
    folds = walk_forward(n_rows, config.n_folds, min_train, val_size, test_size, purge, max_horizon=max(horizons))
    data = BaselineInput.from_panel(panel, targets)
    names = tuple(dict.fromkeys((direction_baseline, volatility_baseline)))
    predictions = walk_forward_baselines(data, folds, names=names)
    direction, volatility = predictions[direction_baseline], predictions[volatility_baseline]
    if direction.prob_up is None or volatility.volatility is None:
        raise ValueError(
            f"baseline_forecasts: {direction_baseline!r} must forecast P(up) and {volatility_baseline!r} volatility"
        )
    shape = (len(panel.symbols), n_rows, len(horizons))
    prob_up, predicted_vol = np.full(shape, np.nan), np.full(shape, np.nan)
    prob_up[:, direction.rows] = direction.prob_up
    predicted_vol[:, volatility.rows] = volatility.volatility
    first_test = folds[0].test.start
    return Forecasts(
        prob_up=prob_up,
        predicted_vol=predicted_vol,
        horizons=horizons,
        out_of_sample_start=panel.ts[first_test],
        description=(
            f"baseline: P(up) from walk-forward {direction_baseline} regression on lagged returns, volatility from "
            f"walk-forward {volatility_baseline.upper()}; {config.n_folds} expanding folds, each refitted on the past "
            f"only; out-of-sample from {panel.ts[first_test]:%Y-%m-%d %H:%M} UTC"
        ),
    )


def model_forecasts(panel: Panel, run_dir, horizons: Sequence[int] = (1, 5, 20)) -> Forecasts:
    """The trained model's walk-forward forecasts: every fold's model on its own test span, as training saved them.

    Only those out-of-sample rows carry a forecast, so the backtest never trades on a bar the model learnt from.
    Rows are matched to the panel by time, so a panel that has grown since training still lines up (newer bars have
    no walk-forward forecast and are not traded).
    """
    from engine.evaluation.predictions import (
        load_predictions,  # torch-heavy: only when the model drives the page
    )

    predictions, fold_of_row, ts_us = load_predictions(run_dir)
    horizons = tuple(int(h) for h in horizons)
    missing = [h for h in horizons if h not in predictions.horizons]
    if missing or predictions.prob_up is None or predictions.volatility is None:
        raise ValueError(f"the run in {run_dir} has no P(up)/volatility forecasts for horizons {missing or horizons}")
    panel_us = np.asarray(panel.ts.as_unit("us").asi8)
    where = np.searchsorted(panel_us, ts_us)
    found = (where < len(panel_us)) & (panel_us[np.minimum(where, len(panel_us) - 1)] == ts_us)
    if not found.any():
        raise ValueError(f"none of the run's out-of-sample bars are in the selected panel ({panel.ts[0]} .. {panel.ts[-1]})")
    shape = (len(panel.symbols), len(panel.ts), len(horizons))
    prob_up, predicted_vol = np.full(shape, np.nan), np.full(shape, np.nan)
    columns = [predictions.horizons.index(h) for h in horizons]
    prob_up[:, where[found]] = predictions.prob_up[:, found][..., columns]
    predicted_vol[:, where[found]] = predictions.volatility[:, found][..., columns]
    first = panel.ts[where[found][0]]
    return Forecasts(
        prob_up=prob_up, predicted_vol=predicted_vol, horizons=horizons, out_of_sample_start=first,
        description=(f"model: walk-forward out-of-sample forecasts of {int(fold_of_row.max()) + 1} folds, each fold's "
                     f"model on its own test span only; from {first:%Y-%m-%d %H:%M} UTC"),
    )


FORECASTERS: Mapping[str, Forecaster] = {"logistic baseline": baseline_forecasts}
