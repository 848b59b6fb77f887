"""Baselines the model must beat, each fitted on a fold's training span only and then run forward over the test span.

One interface: `baseline.fit(data, train_rows)` then `baseline.predict(data, test_rows) -> Predictions`.

Leakage is ruled out by construction, not by care:
- `fit` only ever sees the asset's own bars inside the training rows, with every target that reaches past the end of
  the span already marked invalid (`Targets.until`).
- `predict` sees past returns only (no targets at all), and each model's forecast at own bar k is a function of
  returns[:k + 1] with the fitted parameters held fixed: GARCH and the regime filter run forward from the start of the
  training span with the trained parameters, never refitting and never smoothing.

Each works on the asset's own bars (an equity's horizon h is h equity bars) and leaves rows where the asset's market is
closed as NaN. Point baselines get their quantiles, P(up) and volatility from the distribution of their in-sample
h-step residuals on the training span.

Baselines with a spread, for pinball: besides those residual quantiles, historical_quantiles (empirical quantiles of
the past h-bar returns over a rolling window) and garch_t (GARCH(1,1) with Student-t errors) forecast quantiles that
move with the data. Intraday volatility has an hour-of-week profile a plain GARCH/HAR lacks: seasonal_garch_t and
seasonal_har divide returns by the profile fitted on the training span, model what is left, and multiply the
forecast back by the profile of the bars ahead. They always run: on daily bars the hour-of-week of the bar open is the
day of the week (a weekday/weekend profile), on weekly bars one flat slot (then they equal garch_t and har).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats
from scipy.ndimage import uniform_filter1d

from engine.evaluation.scores import (
    DEFAULT_QUANTILE_LEVELS,
    Predictions,
    concat_predictions,
)
from engine.targets import Targets
from engine.training.splits import Fold
from storage.panel import Panel, own_bar_log_returns


@dataclass(frozen=True)
class BaselineConfig:
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILE_LEVELS
    min_train_bars: int = 60  # fewer own bars than this in a training span is an error, not a silent bad fit
    ridge_lookback: int = 20  # bars of returns the DLinear-style ridge sees
    ridge_trend_kernel: int = 5  # moving-average width of its trend/remainder split
    ridge_alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 4, 11))
    ridge_holdout_fraction: float = 0.2  # the last share of the training rows that picks alpha
    ridge_fallback_alpha: float = 100.0  # when the span is too short to hold any rows out
    logistic_lags: int = 5
    logistic_c: float = 1.0
    har_windows: tuple[int, int, int] = (1, 5, 22)  # "daily, weekly, monthly" in bars
    n_regimes: int = 2
    regime_em_iter: int = 50
    regime_max_fit_bars: int = 2000  # the Markov-switching fit uses at most this many of the latest training bars
    historical_window: int = 500  # own bars of past h-bar returns the historical quantiles are taken over
    seasonal_shrinkage: float = 10.0  # each hour-of-week variance is shrunk toward the overall one by this many bars


@dataclass(frozen=True)
class BaselineInput:
    """What baselines are fitted on and run over: own-bar returns on the union clock, plus the targets."""

    returns: np.ndarray  # (A, T) log return since the asset's previous own bar; NaN where closed and at its first bar
    observed: np.ndarray  # bool (A, T)
    targets: Targets
    symbols: tuple[str, ...]
    hour_of_week: np.ndarray | None = None  # int (T,): 24 * weekday + hour of each row's bar open, UTC (Monday 0)

    @classmethod
    def from_panel(cls, panel: Panel, targets: Targets) -> "BaselineInput":
        ts = pd.DatetimeIndex(panel.ts)
        ts = ts.tz_convert("UTC") if ts.tz is not None else ts
        hour_of_week = np.asarray(ts.day_of_week * 24 + ts.hour, dtype=np.int64)
        return cls(own_bar_log_returns(panel), np.asarray(panel.observed).T.copy(), targets, tuple(panel.symbols),
                   hour_of_week)


@dataclass(frozen=True)
class TrainBars:
    """One asset's own bars inside a training span, with targets purged at the span's end."""

    rows: np.ndarray  # (n,) union rows
    returns: np.ndarray  # (n,)
    target_return: np.ndarray  # (n, H), NaN where invalid
    target_vol: np.ndarray  # (n, H)
    target_up: np.ndarray  # bool (n, H)
    target_valid: np.ndarray  # bool (n, H)
    hour_of_week: np.ndarray | None = None  # int (n,), None when the data carries no bar times


@dataclass(frozen=True)
class PastBars:
    """One asset's own returns up to the end of a prediction span: no targets, so nothing from the future."""

    rows: np.ndarray  # (n,)
    returns: np.ndarray  # (n,)
    hour_of_week: np.ndarray | None = None  # int (n,)


class Baseline(ABC):
    name: ClassVar[str]

    def __init__(self, config: BaselineConfig = BaselineConfig()):
        self.config = config
        self.horizons: tuple[int, ...] = ()
        self.fitted: list[Any] = []  # one state per asset

    def fit(self, data: BaselineInput, train: range) -> "Baseline":
        _check_span(train, data.returns.shape[1], "train")
        purged = data.targets.until(train.stop)
        self.horizons = purged.horizons
        self.fitted = []
        for asset, symbol in enumerate(data.symbols):
            rows = np.flatnonzero(data.observed[asset, train.start : train.stop]) + train.start
            if len(rows) < self.config.min_train_bars:
                raise ValueError(
                    f"{self.name}: {symbol} has {len(rows)} own bars in training rows {train.start}..{train.stop - 1}, "
                    f"needs at least {self.config.min_train_bars}"
                )
            bars = TrainBars(
                rows=rows,
                returns=data.returns[asset, rows],
                target_return=purged.log_return[asset, rows],
                target_vol=purged.realised_vol[asset, rows],
                target_up=purged.direction[asset, rows],
                target_valid=purged.valid[asset, rows],
                hour_of_week=None if data.hour_of_week is None else data.hour_of_week[rows],
            )
            self.fitted.append(self._fit_asset(bars, train.start))
        return self

    def predict(self, data: BaselineInput, rows: range) -> Predictions:
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        _check_span(rows, data.returns.shape[1], "prediction")
        n_assets, n = len(data.symbols), len(rows)
        outputs: dict[str, np.ndarray] = {}
        for asset in range(n_assets):
            past_rows = np.flatnonzero(data.observed[asset, : rows.stop])
            past = PastBars(rows=past_rows, returns=data.returns[asset, past_rows],
                            hour_of_week=None if data.hour_of_week is None else data.hour_of_week[past_rows])
            at = np.flatnonzero(past_rows >= rows.start)  # own-bar positions to forecast from
            forecasts = self._predict_asset(self.fitted[asset], past, at)  # name -> (m, H[, K])
            for key, values in forecasts.items():
                if key not in outputs:
                    outputs[key] = np.full((n_assets, n) + values.shape[1:], np.nan)
                outputs[key][asset, past_rows[at] - rows.start] = values
        extras = {key: outputs.pop(key) for key in list(outputs) if key.startswith("extra_")}
        return Predictions(
            rows=np.arange(rows.start, rows.stop),
            horizons=self.horizons,
            point=outputs.get("point"),
            quantiles=outputs.get("quantiles"),
            quantile_levels=self.config.quantile_levels,
            prob_up=outputs.get("prob_up"),
            volatility=outputs.get("volatility"),
            extras={key.removeprefix("extra_"): value for key, value in extras.items()},
        )

    @abstractmethod
    def _fit_asset(self, bars: TrainBars, train_start: int) -> Any: ...

    @abstractmethod
    def _predict_asset(self, state: Any, past: PastBars, at: np.ndarray) -> dict[str, np.ndarray]:
        """Forecasts (m, H) from own-bar positions `at` of `past`, each using past.returns[:k + 1] only."""


def _check_span(span: range, n_rows: int, what: str) -> None:
    if span.step != 1 or not 0 <= span.start < span.stop <= n_rows:
        raise ValueError(f"{what} rows {span} must be a non-empty contiguous range inside [0, {n_rows})")


# ---- shared pieces ----


def lag_matrix(returns: np.ndarray, n_lags: int) -> np.ndarray:
    """(n, n_lags): row k holds returns[k - n_lags + 1 .. k], oldest first; NaN where the history is too short."""
    padded = np.concatenate([np.full(n_lags - 1, np.nan), returns])
    return np.lib.stride_tricks.sliding_window_view(padded, n_lags)


@dataclass(frozen=True)
class ResidualDistribution:
    """Empirical h-step errors of a point forecaster on its training span: its uncertainty, per horizon."""

    sorted_residuals: list[np.ndarray]  # H arrays
    quantile_offsets: np.ndarray  # (H, Q)
    rms: np.ndarray  # (H,)

    @classmethod
    def from_fit(cls, fitted: np.ndarray, bars: TrainBars, levels) -> "ResidualDistribution":
        """fitted (n, H): the forecaster's in-sample forecasts at the training bars."""
        residuals = []
        for j in range(fitted.shape[1]):
            ok = bars.target_valid[:, j] & np.isfinite(fitted[:, j])
            if ok.sum() < 2:
                raise ValueError(
                    f"only {ok.sum()} training bars (rows {bars.rows[0]}..{bars.rows[-1]}) have both a forecast and a "
                    f"target at horizon index {j}: lengthen the training span"
                )
            residuals.append(np.sort(bars.target_return[ok, j] - fitted[ok, j]))
        offsets = np.stack([np.quantile(r, levels) for r in residuals])
        rms = np.array([np.sqrt(np.mean(r**2)) for r in residuals])
        return cls(residuals, offsets, rms)

    def outputs(self, point: np.ndarray) -> dict[str, np.ndarray]:
        """point (m, H) -> point, quantiles (m, H, Q), prob_up = P(point + e > 0), volatility (m, H); NaN where the
        point forecast is NaN (not enough history yet)."""
        prob_up = np.stack(
            [1 - np.searchsorted(r, -point[:, j], side="right") / len(r) for j, r in enumerate(self.sorted_residuals)],
            axis=1,
        )
        missing = np.isnan(point)
        return {
            "point": point,
            "quantiles": point[:, :, None] + self.quantile_offsets[None],
            "prob_up": np.where(missing, np.nan, prob_up),
            "volatility": np.where(missing, np.nan, self.rms[None, :]),
        }


def normal_outputs(mean: np.ndarray, std: np.ndarray, levels) -> dict[str, np.ndarray]:
    """mean, std (m, H) of a Gaussian h-bar return -> point, quantiles, prob_up, volatility."""
    z = stats.norm.ppf(levels)  # (Q,)
    return {
        "point": mean,
        "quantiles": mean[:, :, None] + std[:, :, None] * z[None, None, :],
        "prob_up": stats.norm.sf(0.0, loc=mean, scale=std),
        "volatility": std,
    }


def student_t_outputs(mean: np.ndarray, std: np.ndarray, nu: np.ndarray, levels) -> dict[str, np.ndarray]:
    """mean, std, nu (m, H) of a Student-t h-bar return with unit-variance scaling (std is the standard deviation,
    nu > 2 the degrees of freedom) -> point, quantiles, prob_up, volatility."""
    unit = np.sqrt((nu - 2) / nu)  # a t(nu) variable times this has variance 1
    z = stats.t.ppf(np.asarray(levels)[None, None, :], nu[:, :, None]) * unit[:, :, None]
    return {
        "point": mean,
        "quantiles": mean[:, :, None] + std[:, :, None] * z,
        "prob_up": stats.t.sf(-mean / (std * unit), nu),
        "volatility": std,
    }


def h_bar_degrees_of_freedom(nu: float, step_var: np.ndarray) -> np.ndarray:
    """Degrees of freedom of a t matching the kurtosis of a sum of independent t(nu) steps with variances step_var
    (m, h) (GARCH's own variance dynamics, which fatten the tails further, are left out: a documented shortcut).

    Excess kurtosis of t(nu) is 6 / (nu - 4); of the weighted sum it is that times sum(v^2) / sum(v)^2 = 1 / h_eff,
    so nu_h = 4 + (nu - 4) h_eff: nu for one step, towards the normal as the steps add up. With nu <= 4 the kurtosis
    is infinite and stays so: nu_h = nu."""
    h_eff = step_var.sum(axis=1) ** 2 / (step_var**2).sum(axis=1)
    return np.full(len(step_var), nu) if nu <= 4 else 4 + (nu - 4) * h_eff


HOURS_PER_WEEK = 168


@dataclass(frozen=True)
class SeasonalProfile:
    """Volatility by hour of the week of the bar open (UTC), fitted on a training span's own bars only.

    scale[s]: root mean squared return of slot s over the overall one, each slot's variance shrunk toward the overall
    variance by `shrinkage` pseudo-bars (a slot seen a few times stays near 1), normalised so the training bars'
    mean squared scale is 1. What the bars ahead look like is learned from the span too: `ahead_var[s, j]` is the
    expected squared scale of the j-th own bar after a bar in slot s, from the slot-to-next-slot frequencies (an
    equity's bar after the last hourly bar of Friday is Monday's open; a 15-minute bar stays in its hour 3 times in 4).
    """

    scale: np.ndarray  # (168,)
    ahead_var: np.ndarray  # (168, n_steps)
    ahead_scale: np.ndarray  # (168, n_steps): expected scale (not squared), for the mean

    @classmethod
    def fit(cls, returns: np.ndarray, hour_of_week: np.ndarray, n_steps: int, shrinkage: float) -> "SeasonalProfile":
        ok = np.isfinite(returns)
        slots, squared = hour_of_week[ok], returns[ok] ** 2
        overall = squared.mean()
        if not overall > 0:
            raise ValueError("no price changes in the training span: no volatility profile to fit")
        sums = np.bincount(slots, weights=squared, minlength=HOURS_PER_WEEK)
        counts = np.bincount(slots, minlength=HOURS_PER_WEEK)
        scale = np.sqrt((sums + shrinkage * overall) / (counts + shrinkage) / overall)
        scale /= np.sqrt(np.mean(scale[slots] ** 2))
        # slot -> next own bar's slot frequencies; a slot never left in the span moves like the span's average bar
        pairs = np.bincount(hour_of_week[:-1] * HOURS_PER_WEEK + hour_of_week[1:],
                            minlength=HOURS_PER_WEEK**2).reshape(HOURS_PER_WEEK, HOURS_PER_WEEK).astype(float)
        frequency = np.bincount(hour_of_week, minlength=HOURS_PER_WEEK) / len(hour_of_week)
        leaving = pairs.sum(axis=1, keepdims=True)
        transition = np.where(leaving > 0, pairs / np.maximum(leaving, 1), frequency[None, :])
        ahead_var, ahead_scale, where = [], [], np.eye(HOURS_PER_WEEK)
        for _ in range(n_steps):
            where = where @ transition  # distribution of the slot j bars ahead, from each slot
            ahead_var.append(where @ scale**2)
            ahead_scale.append(where @ scale)
        return cls(scale, np.stack(ahead_var, axis=1), np.stack(ahead_scale, axis=1))

    def deseasonalise(self, returns: np.ndarray, hour_of_week: np.ndarray) -> np.ndarray:
        return returns / self.scale[hour_of_week]


def _hours(bars, name: str) -> np.ndarray:
    if bars.hour_of_week is None:
        raise ValueError(f"{name}: the data carries no bar times (BaselineInput.hour_of_week is None): build it with "
                         "BaselineInput.from_panel")
    return bars.hour_of_week


def _filter_origins(past: PastBars, at: np.ndarray, train_start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For filters that run forward from the training start: the own-bar positions they run over, the index in that
    run of each usable forecast origin, and which of `at` are usable (have a return on or after the start)."""
    positions = np.flatnonzero((past.rows >= train_start) & np.isfinite(past.returns))
    origin = np.searchsorted(positions, at)
    usable = origin < len(positions)
    usable[usable] = positions[origin[usable]] == at[usable]
    return positions, origin[usable], usable


# ---- the baselines ----


class ZeroReturn(Baseline):
    """Random walk: tomorrow's price is today's. Expected return 0, P(up) 1/2, spread from training h-returns."""

    name = "zero"

    def _fit_asset(self, bars, train_start):
        return ResidualDistribution.from_fit(np.zeros_like(bars.target_return), bars, self.config.quantile_levels)

    def _predict_asset(self, state, past, at):
        out = state.outputs(np.zeros((len(at), len(self.horizons))))
        out["prob_up"] = np.full_like(out["point"], 0.5)
        return out


class HistoricalMean(Baseline):
    """The training span's average h-bar return, every time."""

    name = "historical_mean"

    def _fit_asset(self, bars, train_start):
        mean = np.array([np.nanmean(np.where(bars.target_valid[:, j], bars.target_return[:, j], np.nan))
                         for j in range(len(self.horizons))])
        fitted = np.broadcast_to(mean, bars.target_return.shape)
        return mean, ResidualDistribution.from_fit(fitted, bars, self.config.quantile_levels)

    def _predict_asset(self, state, past, at):
        mean, residuals = state
        return residuals.outputs(np.broadcast_to(mean, (len(at), len(mean))).copy())


class HistoricalQuantiles(Baseline):
    """Empirical quantiles of the asset's past h-bar returns over the last `historical_window` own bars (the
    overlapping h-bar returns that ended at or before the origin: all known at t). Nothing is fitted; the window
    rolls forward through the test span. Quantiles only: a spread that follows recent volatility, for pinball."""

    name = "historical_quantiles"

    def _fit_asset(self, bars, train_start):
        return None

    def _predict_asset(self, state, past, at):
        levels = self.config.quantile_levels
        returns = pd.Series(past.returns)
        out = np.full((len(at), len(self.horizons), len(levels)), np.nan)
        for j, h in enumerate(self.horizons):
            h_bar = returns.rolling(h, min_periods=h).sum()  # return over own bars (k - h, k]
            window = h_bar.rolling(self.config.historical_window, min_periods=self.config.min_train_bars)
            for k, level in enumerate(levels):
                out[:, j, k] = window.quantile(level).to_numpy()[at]
        return {"quantiles": out}


class AR1(Baseline):
    """r_t = c + phi r_{t-1} + e (statsmodels AutoReg, OLS); h-bar forecast = sum of the iterated 1-step means."""

    name = "ar1"

    def _h_step(self, params: tuple[float, float], last_return: np.ndarray) -> np.ndarray:
        const, phi = params
        steps = np.arange(1, max(self.horizons) + 1)
        # E[r_{t+j}] = c (1 + phi + ... + phi^{j-1}) + phi^j r_t, then summed over j = 1..h
        step_means = const * np.cumsum(phi ** (steps - 1))[None, :] + phi**steps[None, :] * last_return[:, None]
        cumulative = np.cumsum(step_means, axis=1)  # (m, H_max)
        return cumulative[:, np.array(self.horizons) - 1]

    def _fit_asset(self, bars, train_start):
        from statsmodels.tsa.ar_model import AutoReg

        series = bars.returns[np.isfinite(bars.returns)]
        result = AutoReg(series, lags=1, trend="c").fit()
        params = (float(result.params[0]), float(result.params[1]))
        fitted = self._h_step(params, bars.returns)
        return params, ResidualDistribution.from_fit(fitted, bars, self.config.quantile_levels)

    def _predict_asset(self, state, past, at):
        params, residuals = state
        return residuals.outputs(self._h_step(params, past.returns[at]))


class DLinearRidge(Baseline):
    """DLinear-style: the lookback window of returns split into a moving-average trend and a remainder, one linear
    map (ridge on standardised inputs, alpha picked on a time-ordered holdout) to every horizon's h-bar return."""

    name = "dlinear_ridge"

    def _design(self, returns: np.ndarray) -> np.ndarray:
        window = lag_matrix(returns, self.config.ridge_lookback)  # (n, L)
        trend = uniform_filter1d(np.nan_to_num(window), self.config.ridge_trend_kernel, axis=1, mode="nearest")
        design = np.concatenate([trend, window - trend], axis=1)  # (n, 2L)
        return np.where(np.isfinite(window).all(axis=1, keepdims=True), design, np.nan)

    def _pipeline(self, alpha: float):
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), Ridge(alpha=alpha))

    def _holdout_alpha(self, design: np.ndarray, target: np.ndarray) -> float:
        """The alpha with the lowest error on the last part of the training rows, fitted on the part before it
        minus a gap of the longest horizon (overlapping h-bar targets would otherwise leak across the cut)."""
        n = len(design)
        cut = int(n * (1 - self.config.ridge_holdout_fraction))
        inner = cut - max(self.horizons)
        if inner < 2 * design.shape[1] or n - cut < 10:
            return self.config.ridge_fallback_alpha
        errors = [
            np.mean((self._pipeline(alpha).fit(design[:inner], target[:inner]).predict(design[cut:]) - target[cut:]) ** 2)
            for alpha in self.config.ridge_alphas
        ]
        return float(self.config.ridge_alphas[int(np.argmin(errors))])

    def _fit_asset(self, bars, train_start):
        design = self._design(bars.returns)
        ok = np.isfinite(design).all(axis=1) & bars.target_valid.all(axis=1)
        alpha = self._holdout_alpha(design[ok], bars.target_return[ok])
        model = self._pipeline(alpha).fit(design[ok], bars.target_return[ok])
        fitted = np.full(bars.target_return.shape, np.nan)
        fitted[ok] = model.predict(design[ok])
        return model, ResidualDistribution.from_fit(fitted, bars, self.config.quantile_levels)

    def _predict_asset(self, state, past, at):
        model, residuals = state
        design = self._design(past.returns)[at]
        point = np.full((len(at), len(self.horizons)), np.nan)
        ok = np.isfinite(design).all(axis=1)
        if ok.any():
            point[ok] = model.predict(design[ok])
        return residuals.outputs(point)


class LaggedLogistic(Baseline):
    """Logistic regression of the direction of the h-bar return on the last few 1-bar returns: P(up) only."""

    name = "logistic"

    def _fit_asset(self, bars, train_start):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        design = lag_matrix(bars.returns, self.config.logistic_lags)
        rows_ok = np.isfinite(design).all(axis=1)
        models = []
        for j in range(len(self.horizons)):
            ok = rows_ok & bars.target_valid[:, j]
            outcome = bars.target_up[ok, j]
            if outcome.all() or not outcome.any():
                models.append(float(outcome.mean()))  # one class only: its frequency is the only honest forecast
                continue
            model = make_pipeline(StandardScaler(), LogisticRegression(C=self.config.logistic_c))
            models.append(model.fit(design[ok], outcome))
        return models

    def _predict_asset(self, state, past, at):
        design = lag_matrix(past.returns, self.config.logistic_lags)[at]
        ok = np.isfinite(design).all(axis=1)
        prob = np.full((len(at), len(self.horizons)), np.nan)
        for j, model in enumerate(state):
            if isinstance(model, float):
                prob[:, j] = model
            elif ok.any():
                prob[ok, j] = model.predict_proba(design[ok])[:, 1]
        return {"prob_up": prob}


@dataclass(frozen=True)
class _GarchState:
    params: np.ndarray
    scale: float  # returns are multiplied by this before arch sees them (unit training variance)
    train_start: int
    profile: SeasonalProfile | None = None  # seasonal variants: returns are divided by it first


class Garch11(Baseline):
    """GARCH(1,1) with constant mean and normal errors (arch), fitted on the training span; over the test span the
    variance recursion runs forward with those parameters, so the forecast at t uses returns up to t only."""

    name = "garch11"
    dist: ClassVar[str] = "normal"
    seasonal: ClassVar[bool] = False

    def _arch(self, series: np.ndarray):
        from arch import arch_model

        return arch_model(series, mean="Constant", vol="GARCH", p=1, q=1, dist=self.dist, rescale=False)

    def _fit_asset(self, bars, train_start):
        returns, profile = bars.returns, None
        if self.seasonal:
            hours = _hours(bars, self.name)
            profile = SeasonalProfile.fit(returns, hours, max(self.horizons), self.config.seasonal_shrinkage)
            returns = profile.deseasonalise(returns, hours)
        series = returns[np.isfinite(returns)]
        scale = 1.0 / series.std()
        result = self._arch(series * scale).fit(disp="off", show_warning=False)
        return _GarchState(np.asarray(result.params), scale, train_start, profile)

    def _predict_asset(self, state, past, at):
        # the same starting point as the fit, so the variance backcast is the one the parameters were fitted with
        positions, origin, usable = _filter_origins(past, at, state.train_start)
        if not usable.any():
            return {}
        series = past.returns[positions]
        if state.profile is not None:
            series = state.profile.deseasonalise(series, _hours(past, self.name)[positions])
        first = int(origin[0])
        forecast = self._arch(series * state.scale).fix(state.params).forecast(
            horizon=max(self.horizons), start=first, reindex=False)
        step_mean = forecast.mean.to_numpy()[origin - first]  # (m_usable, H_max)
        step_var = forecast.variance.to_numpy()[origin - first]
        if state.profile is not None:  # back to returns: times the profile of each bar ahead
            origin_hours = _hours(past, self.name)[positions[origin]]
            step_mean = step_mean * state.profile.ahead_scale[origin_hours]
            step_var = step_var * state.profile.ahead_var[origin_hours]
        take = np.array(self.horizons) - 1
        mean = np.full((len(at), len(self.horizons)), np.nan)
        std = np.full((len(at), len(self.horizons)), np.nan)
        mean[usable] = np.cumsum(step_mean, axis=1)[:, take] / state.scale
        std[usable] = np.sqrt(np.cumsum(step_var, axis=1)[:, take]) / state.scale
        if self.dist == "normal":
            return normal_outputs(mean, std, self.config.quantile_levels)
        nu = float(state.params[-1])
        dof = np.full((len(at), len(self.horizons)), np.nan)
        dof[usable] = np.column_stack([h_bar_degrees_of_freedom(nu, step_var[:, :h]) for h in self.horizons])
        return student_t_outputs(mean, std, dof, self.config.quantile_levels)


class GarchT(Garch11):
    """GARCH(1,1) with Student-t errors (arch, degrees of freedom fitted), refitted per fold on the training span.
    Its quantiles of the h-bar return are a t with the summed conditional variance and the kurtosis of a sum of
    h t-steps (h_bar_degrees_of_freedom): a baseline with a spread that moves with volatility, for pinball."""

    name = "garch_t"
    dist = "t"


class SeasonalGarchT(GarchT):
    """GARCH-t on returns divided by their hour-of-week volatility profile (SeasonalProfile, fitted on the training
    span), the forecast multiplied back by the profile of the bars ahead: the fair volatility baseline for intraday
    bars, where a plain GARCH is beaten by anything that knows the time of day."""

    name = "seasonal_garch_t"
    seasonal = True


class HAR(Baseline):
    """HAR in volatility units: realised volatility over the next h bars regressed (least squares) on the realised
    volatility of the last 1, 5 and 22 bars ("daily, weekly, monthly"). Volatility, not variance, on both sides
    keeps a few turbulent bars from dominating the fit. Volatility only."""

    name = "har"

    def _design(self, returns: np.ndarray) -> np.ndarray:
        """(n, 3): sqrt(mean squared return) over each window ending at k; NaN until the longest window is full."""
        squared = returns**2
        columns = [np.sqrt(lag_matrix(squared, w).mean(axis=1)) for w in self.config.har_windows]
        return np.column_stack(columns)

    def _fit_asset(self, bars, train_start):
        from sklearn.linear_model import LinearRegression

        design = self._design(bars.returns)
        models = []
        for j in range(len(self.horizons)):
            ok = np.isfinite(design).all(axis=1) & bars.target_valid[:, j]
            vol = bars.target_vol[ok, j]
            # a volatility forecast must stay positive: floor it at a small share of the training average
            models.append((LinearRegression().fit(design[ok], vol), 0.1 * vol.mean()))
        return models

    def _predict_asset(self, state, past, at):
        design = self._design(past.returns)[at]
        ok = np.isfinite(design).all(axis=1)
        vol = np.full((len(at), len(self.horizons)), np.nan)
        for j, (model, floor) in enumerate(state):
            if ok.any():
                vol[ok, j] = np.maximum(model.predict(design[ok]), floor)
        return {"volatility": vol}


class SeasonalHAR(HAR):
    """HAR on returns divided by their hour-of-week volatility profile (fitted on the training span): the regression
    forecasts the deseasonalised h-bar volatility, which is multiplied back by the profile of the h bars ahead."""

    name = "seasonal_har"

    def _fit_asset(self, bars, train_start):
        from sklearn.linear_model import LinearRegression

        hours = _hours(bars, self.name)
        profile = SeasonalProfile.fit(bars.returns, hours, max(self.horizons), self.config.seasonal_shrinkage)
        z = profile.deseasonalise(bars.returns, hours)
        design = self._design(z)
        cumulative = np.concatenate([[0.0], np.cumsum(np.nan_to_num(z**2))])  # sum over own bars (k, k+h]
        models = []
        for j, h in enumerate(self.horizons):
            ahead = np.full(len(z), np.nan)
            ahead[: len(z) - h] = np.sqrt(cumulative[h + 1 :] - cumulative[1 : len(z) - h + 1])
            ok = np.isfinite(design).all(axis=1) & bars.target_valid[:, j] & np.isfinite(ahead)
            vol = ahead[ok]
            models.append((LinearRegression().fit(design[ok], vol), 0.1 * vol.mean()))
        return profile, models

    def _predict_asset(self, state, past, at):
        profile, models = state
        hours = _hours(past, self.name)
        design = self._design(profile.deseasonalise(past.returns, hours))[at]
        ok = np.isfinite(design).all(axis=1)
        vol = np.full((len(at), len(self.horizons)), np.nan)
        for j, (model, floor) in enumerate(models):
            h = self.horizons[j]
            if ok.any():
                z_vol = np.maximum(model.predict(design[ok]), floor)
                # deseasonalised h-bar vol -> per-bar variance -> times the mean squared profile of the bars ahead
                vol[ok, j] = z_vol * np.sqrt(profile.ahead_var[hours[at[ok]], :h].mean(axis=1))
        return {"volatility": vol}


@dataclass(frozen=True)
class _RegimeState:
    params: np.ndarray  # statsmodels' order, for filter()
    means: np.ndarray  # (K,) per-bar mean in each regime (scaled units)
    variances: np.ndarray  # (K,)
    order: np.ndarray  # regimes sorted calm -> turbulent (by variance), so labels are stable across folds
    scale: float
    train_start: int  # first row of the bars it was fitted on: the forward filter starts here


class MarkovRegime(Baseline):
    """Markov-switching mean and variance (statsmodels MarkovRegression). Over the test span only FILTERED regime
    probabilities are used (forward recursion, data up to t), never smoothed or Viterbi paths, which peek ahead.
    The h-bar forecast propagates the filtered probabilities through the transition matrix."""

    name = "markov_regime"

    def _model(self, series: np.ndarray):
        from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

        return MarkovRegression(series, k_regimes=self.config.n_regimes, switching_variance=True)

    def _fit_asset(self, bars, train_start):
        # EM costs O(bars) per iteration: fit on the most recent bars only, and start the forward filter there too
        recent = slice(max(0, len(bars.rows) - self.config.regime_max_fit_bars), None)
        returns, fit_start = bars.returns[recent], int(bars.rows[recent][0])
        series = returns[np.isfinite(returns)]
        scale = 1.0 / series.std()
        model = self._model(series * scale)  # outside the filter: statsmodels' first import resets warning filters
        with warnings.catch_warnings():
            # EM only (maxiter=0 skips the quasi-Newton polish): about the same likelihood in a quarter of the time;
            # statsmodels then warns that the (skipped) optimiser did not converge.
            warnings.simplefilter("ignore")
            result = model.fit(disp=False, em_iter=self.config.regime_em_iter, maxiter=0)
        params = dict(zip(result.model.param_names, np.asarray(result.params)))
        k = self.config.n_regimes
        means = np.array([params[f"const[{i}]"] for i in range(k)])
        variances = np.array([params[f"sigma2[{i}]"] for i in range(k)])
        return _RegimeState(np.asarray(result.params), means, variances, np.argsort(variances), scale, fit_start)

    def _predict_asset(self, state, past, at):
        positions, origin, usable = _filter_origins(past, at, state.train_start)
        if not usable.any():
            return {}
        model = self._model(past.returns[positions] * state.scale)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            filtered = model.filter(state.params)
        filtered_probs = np.asarray(filtered.filtered_marginal_probabilities)[origin]  # (m_usable, K), data <= t
        transition = np.asarray(filtered.regime_transition)[:, :, 0]  # (K, K): [to, from]
        probs, step_mean, step_var = filtered_probs, [], []
        for _ in range(max(self.horizons)):
            probs = probs @ transition.T  # regime distribution one bar further ahead
            mean = probs @ state.means
            step_mean.append(mean)
            step_var.append(probs @ (state.variances + state.means**2) - mean**2)
        take = np.array(self.horizons) - 1
        mean = np.full((len(at), len(self.horizons)), np.nan)
        std = np.full((len(at), len(self.horizons)), np.nan)
        # summing per-step variances ignores the autocorrelation regime persistence adds: a documented shortcut
        mean[usable] = np.cumsum(np.stack(step_mean, axis=1), axis=1)[:, take] / state.scale
        std[usable] = np.sqrt(np.cumsum(np.stack(step_var, axis=1), axis=1)[:, take]) / state.scale
        out = normal_outputs(mean, std, self.config.quantile_levels)
        regime_prob = np.full((len(at), len(state.order)), np.nan)
        regime_prob[usable] = filtered_probs[:, state.order]
        out["extra_regime_prob"] = regime_prob
        return out


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (ZeroReturn, HistoricalMean, HistoricalQuantiles, AR1, DLinearRidge, LaggedLogistic,
                              Garch11, GarchT, SeasonalGarchT, HAR, SeasonalHAR, MarkovRegime)
}


def fit_predict_baselines(
    data: BaselineInput,
    train: range,
    test: range,
    names: tuple[str, ...] | None = None,
    config: BaselineConfig = BaselineConfig(),
) -> dict[str, Predictions]:
    """Every baseline (or those named) fitted on `train` and predicting `test`."""
    unknown = set(names or ()) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: choose from {sorted(BASELINES)}")
    return {
        name: BASELINES[name](config).fit(data, train).predict(data, test)
        for name in (names or tuple(BASELINES))
    }


def walk_forward_baselines(
    data: BaselineInput,
    folds: list[Fold],
    names: tuple[str, ...] | None = None,
    config: BaselineConfig = BaselineConfig(),
) -> dict[str, Predictions]:
    """Each baseline refitted on every fold's training span, its test-span forecasts joined into one out-of-sample
    record per baseline (what the Forecasts page and score_table take)."""
    per_fold = [fit_predict_baselines(data, fold.train, fold.test, names, config) for fold in folds]
    return {name: concat_predictions([fold[name] for fold in per_fold]) for name in per_fold[0]}
