"""Per-asset input features, computed causally on each asset's own bars, and their train-only normalisation.

The panel (storage.panel.Panel) puts every asset on one union clock. An equity has no bar on a Saturday, so storage
forward-fills its prices there and says so in `observed`. Indicators computed on those forward-filled copies would be
wrong (a flat weekend is not a quiet market), so every indicator here runs on the asset's OWN bars only and is then
carried forward to the rows where its market is closed, with `mask` False there.

Causality: every feature at row t uses rows <= t only (pandas rolling/ewm look backwards; the scatter onto the union
clock forward-fills). The scaler is fitted on a given row range and stores plain lists so it can travel in a JSON
checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Sequence

import numpy as np
import pandas as pd

from storage.panel import Panel, check_panel, own_bars


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    formula: str
    why: str
    # Flags and sin/cos already live in a fixed small range; standardising them per asset would only turn a
    # constant column (BTC is always open) into 0/0.
    standardise: bool = True


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("ret_1", "log(c_t / c_{t-1})", "the latest move; the raw material of every forecast"),
    FeatureSpec("ret_5", "log(c_t / c_{t-5})", "short-term momentum / reversal"),
    FeatureSpec("ret_20", "log(c_t / c_{t-20})", "monthly-scale trend (20 bars)"),
    FeatureSpec("hl_range", "log(h_t / l_t)", "intrabar range: a volatility estimate that uses the high and low"),
    FeatureSpec("log_volume_z", "(log1p(v_t) - mean_50) / std_50 over own bars, 0 when std is 0",
                "activity relative to the asset's own recent normal; raw volume levels differ by orders of magnitude"),
    FeatureSpec("realised_vol_20", "sqrt(mean(ret_1^2) over 20 bars)", "volatility regime"),
    FeatureSpec("rsi_14", "(RSI_14 - 50) / 50, Wilder smoothing", "overbought / oversold, bounded to [-1, 1]"),
    FeatureSpec("macd", "(EMA_12(c) - EMA_26(c)) / c_t", "trend strength, scaled by price so assets compare"),
    FeatureSpec("macd_hist", "(MACD - EMA_9(MACD)) / c_t", "trend acceleration"),
    FeatureSpec("bollinger_pos", "(c_t - SMA_20) / (2 std_20), 0 when std is 0",
                "where the close sits in its 20-bar band: +-1 at the bands"),
    FeatureSpec("atr_14_rel", "ATR_14 (Wilder) / c_t", "volatility including gaps between bars"),
    FeatureSpec("hour_sin", "sin(2 pi hour / 24)", "intraday seasonality (constant on daily bars)", standardise=False),
    FeatureSpec("hour_cos", "cos(2 pi hour / 24)", "intraday seasonality (constant on daily bars)", standardise=False),
    FeatureSpec("dow_sin", "sin(2 pi weekday / 7)", "day-of-week effects", standardise=False),
    FeatureSpec("dow_cos", "cos(2 pi weekday / 7)", "day-of-week effects", standardise=False),
    FeatureSpec("market_open", "1 if the asset had its own bar at t else 0",
                "tells the model the other features are carried, not fresh", standardise=False),
    # The gap and volatility-state features (issue 15). An equity's first bar after a close carries the whole
    # overnight or weekend move: as a raw return it looks like a volatility burst, which swamps the hourly volatility
    # features, the regimes read from the state and the squared-error fits. Every one of these divides a return by
    # the square root of the time it took (a random walk's variance grows with time), so a gap bar counts like one
    # bar at the usual spacing, and says how long the gap was on its own.
    FeatureSpec("gap_log", "log(hours since the previous own bar / bar length), 0 at the usual spacing",
                "how much closed time the latest return spans (overnight, weekend)", standardise=False),
    FeatureSpec("next_gap_log", "gap_log of the bar that followed this asset's bar at the same weekday and time one "
                "week earlier (0 before there is one)",
                "a close or weekend ahead, learnt from the asset's own past calendar: the next return spans it",
                standardise=False),
    FeatureSpec("ret_1_gap", "ret_1 * sqrt(bar length / hours since the previous own bar)",
                "the latest move per usual bar: a gap's move no longer looks like a burst"),
    FeatureSpec("log_var_hl2", "log EWMA(ret_1_gap^2), half-life 2 own bars", "volatility now (GARCH-like memory)"),
    FeatureSpec("log_var_hl8", "log EWMA(ret_1_gap^2), half-life 8 own bars", "volatility over the last day or so"),
    FeatureSpec("log_var_hl32", "log EWMA(ret_1_gap^2), half-life 32 own bars", "volatility over the last week(s)"),
    FeatureSpec("log_var_hl128", "log EWMA(ret_1_gap^2), half-life 128 own bars",
                "the slow volatility level a regime moves"),
)
# Every feature the product can compute, in a fixed order.
ALL_FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURES)
# The first sixteen: the feature set of runs made before the gap features existed (their manifests list these). A
# run's FeatureConfig.names says which it reads; old manifests have no such field and get these.
FEATURE_NAMES: tuple[str, ...] = ALL_FEATURE_NAMES[: ALL_FEATURE_NAMES.index("gap_log")]
GAP_FEATURE_NAMES: tuple[str, ...] = ALL_FEATURE_NAMES[len(FEATURE_NAMES):]
# The features computed from the asset's own bars; the rest come from the clock and the observed flag.
INDICATOR_NAMES: tuple[str, ...] = FEATURE_NAMES[: FEATURE_NAMES.index("hour_sin")]
VARIANCE_HALF_LIVES: dict[str, float] = {"log_var_hl2": 2.0, "log_var_hl8": 8.0, "log_var_hl32": 32.0,
                                         "log_var_hl128": 128.0}
_SPECS = {spec.name: spec for spec in FEATURES}
VARIANCE_FLOOR = 1e-14


def features_table() -> pd.DataFrame:
    """The FEATURES table as a frame, for the Model page and the docs."""
    return pd.DataFrame([vars(spec) for spec in FEATURES])


# How far an unclipped feature (FeatureConfig.unclipped) may reach, in training standard deviations from its
# training mean: beyond every move of the planted family's 32 validation and held-out members (the largest is 33.7
# stds of any walk-forward fold's training span, at 4,380 and 8,760 hourly rows) and of the demo (19.8), so it bounds
# only what no market produces, a bad tick.
UNCLIPPED_BOUND_STDS = 50.0


@dataclass(frozen=True)
class FeatureConfig:
    volume_window: int = 50
    volume_min_periods: int = 20
    vol_window: int = 20
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bollinger_window: int = 20
    bollinger_width: float = 2.0
    atr_period: int = 14
    # Robust clipping: training values are winsorised at these quantiles before mean/std, and so is every value
    # transformed later, so one flash crash cannot blow up a standardised input.
    clip_quantile: float = 0.005
    # Features standardised without winsorising (their bounds stay infinite). The general recipe leaves ret_1
    # unclipped: the lead skip path and the lead-lag attention read it as a linear regressor, and clipping a
    # heavy-tailed, regime-switching leader's largest moves cut the lead's forecastable part (model-free, the lead
    # ridge captured 0.831 of the oracle's reduction on clipped ret_1 and 0.880 unclipped, validation members).
    unclipped: tuple[str, ...] = ()  # bounded only at UNCLIPPED_BOUND_STDS training stds from the mean
    # The features a run reads, in this order (the model's input columns). Default: the original sixteen, which the
    # shipped demo checkpoint and every run before issue 15 read; the general recipe adds GAP_FEATURE_NAMES.
    names: tuple[str, ...] = FEATURE_NAMES

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)  # a JSON manifest gives a list
        object.__setattr__(self, "unclipped", tuple(self.unclipped))
        unknown = [name for name in names if name not in _SPECS]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"FeatureConfig.names must be distinct names from {list(ALL_FEATURE_NAMES)}, got "
                             f"{list(names)}")
        if not set(self.unclipped) <= set(names) or len(set(self.unclipped)) != len(self.unclipped):
            raise ValueError(f"FeatureConfig.unclipped must be distinct names among the run's features {list(names)}, "
                             f"got {list(self.unclipped)}")


def _safe_ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """numerator / denominator, 0 where the denominator is 0 (a flat window), NaN where either is NaN (warm-up)."""
    ratio = numerator / denominator.where(denominator != 0)
    return ratio.where(~(denominator == 0), 0.0)


def _indicator_frame(bars: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Price/volume indicators on ONE asset's own consecutive bars; every window looks backwards only."""
    close, high, low = bars["close"], bars["high"], bars["low"]
    log_close = np.log(close)
    ret_1 = log_close.diff()

    log_volume = np.log1p(bars["volume"])
    volume_rolling = log_volume.rolling(config.volume_window, min_periods=config.volume_min_periods)
    log_volume_z = _safe_ratio(log_volume - volume_rolling.mean(), volume_rolling.std(ddof=0))

    realised_vol = np.sqrt((ret_1**2).rolling(config.vol_window, min_periods=config.vol_window).mean())

    # Wilder's smoothing is an EMA with alpha = 1/period.
    delta = close.diff()
    gain = delta.clip(lower=0).ewm(alpha=1 / config.rsi_period, adjust=False, min_periods=config.rsi_period).mean()
    loss = (-delta.clip(upper=0)).ewm(alpha=1 / config.rsi_period, adjust=False, min_periods=config.rsi_period).mean()
    # (RSI - 50) / 50 = (gain - loss) / (gain + loss); a window with no move at all is neutral (0).
    rsi_scaled = _safe_ratio(gain - loss, gain + loss)

    ema_fast = close.ewm(span=config.macd_fast, adjust=False, min_periods=config.macd_slow).mean()
    ema_slow = close.ewm(span=config.macd_slow, adjust=False, min_periods=config.macd_slow).mean()
    macd_line = ema_fast - ema_slow
    macd_signal = macd_line.ewm(span=config.macd_signal, adjust=False, min_periods=config.macd_signal).mean()

    band = close.rolling(config.bollinger_window, min_periods=config.bollinger_window)
    bollinger_pos = _safe_ratio(close - band.mean(), config.bollinger_width * band.std(ddof=0))

    previous_close = close.shift(1)
    true_range = pd.concat([high - low, (high - previous_close).abs(), (low - previous_close).abs()], axis=1).max(
        axis=1, skipna=False
    )
    atr = true_range.ewm(alpha=1 / config.atr_period, adjust=False, min_periods=config.atr_period).mean()

    return pd.DataFrame(
        {
            "ret_1": ret_1,
            "ret_5": log_close.diff(5),
            "ret_20": log_close.diff(20),
            "hl_range": np.log(high / low),
            "log_volume_z": log_volume_z,
            "realised_vol_20": realised_vol,
            "rsi_14": rsi_scaled,
            "macd": macd_line / close,
            "macd_hist": (macd_line - macd_signal) / close,
            "bollinger_pos": bollinger_pos,
            "atr_14_rel": atr / close,
        }
    )


def _gap_frame(bars: pd.DataFrame, bar_hours: float) -> pd.DataFrame:
    """The gap features on ONE asset's own bars (bars indexed by their union rows, with a 'ts' column)."""
    ret_1 = np.log(bars["close"]).diff()
    hours = pd.Series(bars["ts"].to_numpy(), index=bars.index).diff() / pd.Timedelta(hours=1)
    spacing = (hours / bar_hours).clip(lower=1.0)  # a gap shorter than the bar (a clock shift) counts as one bar
    normalised = ret_1 / np.sqrt(spacing)
    # The gap after a bar is only known once the next bar is in, so each bar reads the gap that followed the most
    # recent earlier bar at the same weekday and time of day: the session calendar, learnt causally.
    ts = pd.DatetimeIndex(bars["ts"])
    slot = pd.Series(ts.day_of_week * 1440 + ts.hour * 60 + ts.minute, index=bars.index)
    gap_after = np.log(spacing).shift(-1)
    next_gap = gap_after.groupby(slot.to_numpy()).shift(1).fillna(0.0)
    frame = {"gap_log": np.log(spacing), "next_gap_log": next_gap, "ret_1_gap": normalised}
    squared = normalised**2
    for name, half_life in VARIANCE_HALF_LIVES.items():
        # + VARIANCE_FLOOR: far below any traded bar's variance; keeps log finite after a run of unchanged closes
        frame[name] = np.log(squared.ewm(halflife=half_life, min_periods=min(int(half_life), 20)).mean()
                             + VARIANCE_FLOOR)
    return pd.DataFrame(frame)


def _calendar_columns(ts: pd.DatetimeIndex) -> dict[str, np.ndarray]:
    hour = ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0
    weekday = ts.day_of_week.to_numpy().astype(float)
    return {
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "dow_sin": np.sin(2 * np.pi * weekday / 7),
        "dow_cos": np.cos(2 * np.pi * weekday / 7),
    }


@dataclass(frozen=True)
class RawFeatures:
    values: np.ndarray  # float64 (A, T, F), unnormalised; NaN before an asset's first warmed-up bar
    mask: np.ndarray  # bool (A, T): own bar at t AND every feature warmed up
    names: tuple[str, ...]  # (F,)


def compute_raw_features(panel: Panel, config: FeatureConfig = FeatureConfig()) -> RawFeatures:
    """The features config.names, in that order, for every asset on the panel's clock."""
    check_panel(panel)
    names = config.names
    n_assets, n_rows = len(panel.symbols), len(panel.ts)
    values = np.full((n_assets, n_rows, len(names)), np.nan)
    observed = np.asarray(panel.observed).T  # (A, T)
    own = [name for name in names if name in INDICATOR_NAMES or name in GAP_FEATURE_NAMES]
    step = panel.clock_step
    if step is None and n_rows > 1:  # a panel that does not say its interval: the clock's usual step
        step = pd.Series(panel.ts).diff().median()
    bar_hours = step / pd.Timedelta(hours=1) if step is not None and step > pd.Timedelta(0) else 1.0
    for asset in range(n_assets):
        rows, bars = own_bars(panel, asset)
        if len(rows) == 0 or not own:
            continue
        parts = []
        if any(name in INDICATOR_NAMES for name in own):
            parts.append(_indicator_frame(bars, config))
        if any(name in GAP_FEATURE_NAMES for name in own):
            parts.append(_gap_frame(bars.assign(ts=panel.ts[rows]), bar_hours))
        indicators = pd.concat(parts, axis=1)[own].to_numpy()  # (n_own, F_own)
        # Scatter onto the union clock and carry the last own-bar value across closed rows (ffill looks back only).
        on_clock = np.full((n_rows, len(own)), np.nan)
        on_clock[rows] = indicators
        carried = pd.DataFrame(on_clock).ffill().to_numpy()
        for j, name in enumerate(own):
            values[asset, :, names.index(name)] = carried[:, j]
    for name, column in _calendar_columns(panel.ts).items():
        if name in names:
            values[:, :, names.index(name)] = column[None, :]
    if "market_open" in names:
        values[:, :, names.index("market_open")] = observed.astype(float)
    warmed_up = np.isfinite(values).all(axis=2)
    return RawFeatures(values=values, mask=observed & warmed_up, names=names)


@dataclass(frozen=True)
class FeatureScaler:
    """Per (asset, feature) winsorising bounds, mean and std, fitted on a training span only."""

    symbols: tuple[str, ...]
    names: tuple[str, ...]
    lower: np.ndarray  # (A, F)
    upper: np.ndarray  # (A, F)
    mean: np.ndarray  # (A, F)
    std: np.ndarray  # (A, F)
    fit_rows: tuple[int, int]  # [start, stop) of the rows it was fitted on, for the checkpoint's record

    @classmethod
    def fit(
        cls,
        raw: RawFeatures,
        symbols: Sequence[str],
        fit_rows: range,
        config: FeatureConfig = FeatureConfig(),
    ) -> "FeatureScaler":
        n_assets, n_rows, n_features = raw.values.shape
        if fit_rows.step != 1 or not 0 <= fit_rows.start < fit_rows.stop <= n_rows:
            raise ValueError(f"fit_rows {fit_rows} must be a contiguous range inside [0, {n_rows})")
        standardise = np.array([_SPECS[name].standardise for name in raw.names])
        lower = np.full((n_assets, n_features), -np.inf)
        upper = np.full((n_assets, n_features), np.inf)
        mean = np.zeros((n_assets, n_features))
        std = np.ones((n_assets, n_features))
        for asset in range(n_assets):
            usable = raw.mask[asset, fit_rows.start : fit_rows.stop]
            if not usable.any():
                raise ValueError(
                    f"{symbols[asset]} has no warmed-up bars in the fit rows {fit_rows.start}..{fit_rows.stop - 1}: "
                    "start the training span later or load more history"
                )
            sample = raw.values[asset, fit_rows.start : fit_rows.stop][usable][:, standardise]  # (n, F_std)
            low, high = np.quantile(sample, [config.clip_quantile, 1 - config.clip_quantile], axis=0)
            keep = np.array([name in config.unclipped for name in np.asarray(raw.names)[standardise]])
            low, high = np.where(keep, -np.inf, low), np.where(keep, np.inf, high)
            clipped = np.clip(sample, low, high)
            spread = clipped.std(axis=0)
            centre = clipped.mean(axis=0)
            # an unclipped feature is still bounded, far out: a bad tick cannot feed the model hundreds of stds
            reach = UNCLIPPED_BOUND_STDS * np.where(spread > 1e-12, spread, 1.0)
            low, high = np.where(keep, centre - reach, low), np.where(keep, centre + reach, high)
            lower[asset, standardise], upper[asset, standardise] = low, high
            mean[asset, standardise] = centre
            # A feature that never moved in training (volume of an index) carries no information: centre it only.
            std[asset, standardise] = np.where(spread > 1e-12, spread, 1.0)
        return cls(tuple(symbols), raw.names, lower, upper, mean, std, (fit_rows.start, fit_rows.stop))

    def transform(self, raw: RawFeatures) -> np.ndarray:
        """float32 (A, T, F): winsorised, standardised; 0 (the training mean) where no value exists yet."""
        if tuple(raw.names) != self.names:
            raise ValueError(f"features {list(raw.names)} do not match the scaler's {list(self.names)}")
        if raw.values.shape[0] != len(self.symbols):
            raise ValueError(f"features have {raw.values.shape[0]} assets, the scaler {len(self.symbols)}")
        clipped = np.clip(raw.values, self.lower[:, None, :], self.upper[:, None, :])
        scaled = (clipped - self.mean[:, None, :]) / self.std[:, None, :]
        return np.nan_to_num(scaled, nan=0.0).astype(np.float32)

    def to_dict(self) -> dict:
        """Plain lists and numbers only: json.dumps-able for the checkpoint (infinite bounds become None)."""

        def listed(array: np.ndarray) -> list:
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in array]

        return {
            "symbols": list(self.symbols),
            "names": list(self.names),
            "lower": listed(self.lower),
            "upper": listed(self.upper),
            "mean": listed(self.mean),
            "std": listed(self.std),
            "fit_rows": list(self.fit_rows),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureScaler":
        """The scaler of to_dict, checked: ValueError naming the key, the entry and what it holds otherwise.

        symbols and names are lists of strings; lower, upper, mean and std are (assets x features) lists of finite
        numbers (lower and upper may hold null for an unbounded side, as to_dict writes it); std > 0; lower <= upper;
        fit_rows is [start, stop) with 0 <= start < stop."""
        if not isinstance(data, dict):
            raise ValueError(f"scaler must be a JSON object, got {type(data).__name__}")
        required = ("symbols", "names", "lower", "upper", "mean", "std", "fit_rows")
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"scaler dict is missing {missing}")
        for key in ("symbols", "names"):
            values = data[key]
            if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) for v in values):
                raise ValueError(f"scaler {key!r} must be a non-empty list of strings, got {_short(values)}")
        shape = (len(data["symbols"]), len(data["names"]))

        def array(key: str, none_as: float | None) -> np.ndarray:
            rows = data[key]
            if not isinstance(rows, (list, tuple)):
                raise ValueError(f"scaler {key!r} must be a list of lists {shape} (assets, features), got "
                                 f"{_short(rows)}")
            if len(rows) != shape[0]:
                raise ValueError(f"scaler {key!r} has shape ({len(rows)}, ...), expected {shape} (assets, features)")
            values = np.empty(shape)
            for i, row in enumerate(rows):
                if not isinstance(row, (list, tuple)):
                    raise ValueError(f"scaler {key!r}[{i}] must be a list of {shape[1]} numbers (one per feature), "
                                     f"got {_short(row)}")
                if len(row) != shape[1]:
                    raise ValueError(f"scaler {key!r} has shape ({shape[0]}, {len(row)}) at row {i}, expected "
                                     f"{shape} (assets, features)")
                for j, value in enumerate(row):
                    if value is None and none_as is not None:
                        values[i, j] = none_as
                    elif isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
                        values[i, j] = value
                    else:
                        allowed = "a finite number or null" if none_as is not None else "a finite number"
                        raise ValueError(f"scaler {key!r}[{i}][{j}] is {_short(value)}: expected {allowed}")
            return values

        lower, upper = array("lower", -np.inf), array("upper", np.inf)
        mean, std = array("mean", None), array("std", None)
        if not (std > 0).all():
            i, j = np.argwhere(~(std > 0))[0]
            raise ValueError(f"scaler 'std'[{i}][{j}] is {float(std[i, j])!r}: it must be positive")
        if (lower > upper).any():
            i, j = np.argwhere(lower > upper)[0]
            raise ValueError(f"scaler bounds of asset {i}, feature {j} are reversed: lower {float(lower[i, j])!r} > "
                             f"upper {float(upper[i, j])!r}")
        rows = data["fit_rows"]
        if (not isinstance(rows, (list, tuple)) or len(rows) != 2
                or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in rows)
                or not 0 <= rows[0] < rows[1]):
            raise ValueError(f"scaler 'fit_rows' must be [start, stop) with 0 <= start < stop, got {_short(rows)}")
        return cls(
            symbols=tuple(data["symbols"]),
            names=tuple(data["names"]),
            lower=lower,
            upper=upper,
            mean=mean,
            std=std,
            fit_rows=(int(rows[0]), int(rows[1])),
        )


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class FeatureSet:
    """Model-ready features: what engine/training/dataset.py windows and the model reads."""

    values: np.ndarray  # float32 (A, T, F), standardised
    mask: np.ndarray  # bool (A, T): True = fresh own bar with warmed-up features; False = closed/carried or warm-up
    names: tuple[str, ...]  # (F,)
    scaler: FeatureScaler
    symbols: tuple[str, ...] = field(default=())
    ts: pd.DatetimeIndex | None = None


def build_feature_set(
    panel: Panel,
    fit_rows: range,
    config: FeatureConfig = FeatureConfig(),
    scaler: FeatureScaler | None = None,
) -> FeatureSet:
    """Features for the whole panel, normalised with a scaler fitted on fit_rows (or the one given, e.g. from a
    checkpoint, whose symbols must match the panel's)."""
    raw = compute_raw_features(panel, config)
    symbols = tuple(panel.symbols)
    if scaler is None:
        scaler = FeatureScaler.fit(raw, symbols, fit_rows, config)
    elif scaler.symbols != symbols:
        raise ValueError(f"scaler was fitted for {list(scaler.symbols)}, panel has {list(symbols)}")
    return FeatureSet(
        values=scaler.transform(raw), mask=raw.mask, names=raw.names, scaler=scaler, symbols=symbols, ts=panel.ts
    )
