"""Vectorised backtest of the model's P(up) forecasts for one horizon.

Timing (the one rule that keeps a backtest honest): a forecast known at the CLOSE of bar t sets the position held
over bar t+1, which earns returns[t+1]. The bar that produced a signal never pays it. A trade needs the market to
be open at that close (tradable[t]); on closed bars positions are carried unchanged.

Sizing, at each decision bar (every `holding_horizon`-th open bar; positions are carried in between):
direction +1 when P(up) > 0.5 + threshold, -1 when P(up) < 0.5 - threshold (long_short), else flat; size 1, or
2 |P(up) - 0.5| with size_by_confidence; times vol_target / predicted annual vol, or else (inverse_vol) the asset's
mean predicted vol so far / predicted vol; capped at max_position. No forecast, or no usable vol when sizing
needs one, means flat.

Book-keeping:
- each asset is a sleeve funded with its portfolio weight at the start; a position is a fraction of the sleeve's
  equity (negative = short), and sleeves are not rebalanced against each other, so "always long" reproduces the
  buy-and-hold benchmark exactly;
- costs: (commission + slippage) / 1e4 x |position change|, charged on the bar the new position is first held;
  the drift of a position between decisions is not charged (positions are fractions of equity);
- idle cash (1 - |position|, never negative) earns `cash_rate` (annual, on the panel clock); a NaN return (bar not
  known) earns nothing;
- the benchmark buys every selected asset with equal weights at the first close it can, pays the same entry cost,
  and holds to the end.

Everything below works on (settings S, assets A, time T) arrays, time last so that cumulative products run over
contiguous memory; a single backtest is S = 1 and the parameter sweep (engine/sweep.py) reuses the same functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np
import pandas as pd

from engine.backtest import metrics
from engine.calendar import describe_annualisation, portfolio_bars_per_year


# ------------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True, eq=False)
class BacktestInputs:
    """The model's forecasts for ONE horizon, aligned with what happened, on the panel clock."""

    ts: np.ndarray  # (T,) datetime64, UTC bar open times, strictly increasing
    symbols: tuple[str, ...]  # (A,)
    returns: np.ndarray  # (T, A) simple return of bar t (close t-1 -> close t); NaN = unknown
    prob_up: np.ndarray  # (T, A) P(up) known at the close of bar t; NaN = no forecast
    pred_vol: np.ndarray  # (T, A) predicted per-bar volatility known at the close of bar t
    tradable: np.ndarray  # (T, A) bool: market open at bar t
    bars_per_year: np.ndarray  # (A,) e.g. 365 * 24 for hourly crypto, 252 * 7 for hourly equities
    horizon: int | None = None  # forecast horizon in bars, for messages
    panel_bars_per_year: float | None = None  # the panel clock; None = the fastest asset's clock

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: normalise the arrays once, here
        set_field(self, "ts", _as_utc_datetime64(self.ts))
        set_field(self, "symbols", tuple(str(s) for s in self.symbols))
        n_bars, n_assets = len(self.ts), len(self.symbols)
        if n_assets == 0 or n_bars == 0:
            raise ValueError(
                f"BacktestInputs: need at least one bar and one symbol, got {n_bars} bars and {n_assets} symbols"
            )
        if len(set(self.symbols)) != n_assets:
            raise ValueError(f"BacktestInputs: duplicate symbols in {self.symbols}")
        for name in ("returns", "prob_up", "pred_vol"):
            set_field(self, name, _float_panel(getattr(self, name), name, (n_bars, n_assets)))
        tradable = np.asarray(self.tradable)
        if tradable.shape != (n_bars, n_assets) or tradable.dtype != np.bool_:
            raise ValueError(
                f"BacktestInputs.tradable must be a bool array of shape {(n_bars, n_assets)}, "
                f"got {tradable.dtype} {tradable.shape}"
            )
        set_field(self, "tradable", tradable)
        bars_per_year = np.asarray(self.bars_per_year, dtype=np.float64).reshape(-1)
        if bars_per_year.shape != (n_assets,) or not np.all(bars_per_year > 0):
            raise ValueError(f"BacktestInputs.bars_per_year must be {n_assets} positive numbers, got {bars_per_year}")
        set_field(self, "bars_per_year", bars_per_year)
        if self.panel_bars_per_year is not None and not self.panel_bars_per_year > 0:
            raise ValueError(f"BacktestInputs.panel_bars_per_year must be positive, got {self.panel_bars_per_year}")
        self._check_values()

    def _check_values(self) -> None:
        if np.any(np.isinf(self.returns)) or np.any(self.returns < -1):
            bar, asset = np.argwhere(np.isinf(self.returns) | (self.returns < -1))[0]
            raise ValueError(
                f"BacktestInputs.returns: {self.returns[bar, asset]} for {self.symbols[asset]} at bar {bar} "
                f"({self.ts[bar]}) is not a simple return (must be finite and >= -1)"
            )
        with np.errstate(invalid="ignore"):
            bad_prob = (self.prob_up < 0) | (self.prob_up > 1) | np.isinf(self.prob_up)
            bad_vol = (self.pred_vol < 0) | np.isinf(self.pred_vol)
        for name, bad in (("prob_up", bad_prob), ("pred_vol", bad_vol)):
            if bad.any():
                bar, asset = np.argwhere(bad)[0]
                allowed = "in [0, 1]" if name == "prob_up" else "finite and >= 0"
                raise ValueError(
                    f"BacktestInputs.{name}: {getattr(self, name)[bar, asset]} for {self.symbols[asset]} at bar "
                    f"{bar} ({self.ts[bar]}) must be {allowed} (or NaN for none)"
                )

    @property
    def n_bars(self) -> int:
        return len(self.ts)

    @property
    def portfolio_periods_per_year(self) -> float:
        if self.panel_bars_per_year is not None:
            return float(self.panel_bars_per_year)
        return portfolio_bars_per_year(self.bars_per_year)

    def describe_annualisation(self) -> str:
        return describe_annualisation(self.bars_per_year, self.symbols, self.portfolio_periods_per_year)

    # Derived arrays are cached on the instance; pickling (st.cache_data copies) carries only the fields.
    def __getstate__(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @cached_property
    def reusable(self) -> dict:
        """Work that only some sliders change (held signals per holding horizon, the benchmark), kept across runs."""
        return {}

    @cached_property
    def open_bars(self) -> list[np.ndarray]:
        """Per asset, the indices of its open bars: its own clock."""
        return [np.flatnonzero(row) for row in self.tradable_by_asset]

    # Time-last copies for the vectorised core: (A, T), contiguous.
    @cached_property
    def returns_by_asset(self) -> np.ndarray:
        return np.ascontiguousarray(np.nan_to_num(self.returns, nan=0.0).T)

    @cached_property
    def tradable_by_asset(self) -> np.ndarray:
        return np.ascontiguousarray(self.tradable.T)

    @cached_property
    def prob_by_asset(self) -> np.ndarray:
        return np.ascontiguousarray(self.prob_up.T)

    @cached_property
    def vol_by_asset(self) -> np.ndarray:
        return np.ascontiguousarray(self.pred_vol.T)

    @cached_property
    def has_forecast(self) -> np.ndarray:
        """(A,) bool: the asset has at least one forecast."""
        return ~np.all(np.isnan(self.prob_up), axis=0)

    @cached_property
    def decision_clock(self) -> tuple[np.ndarray, np.ndarray]:
        """(counting, open_bar_number), both (A, T): the bars on which an asset can act, and their count.

        An asset acts on its open bars from its first open bar with a forecast on; a holding horizon of h makes
        every h-th of them a decision bar.
        """
        tradable = self.tradable_by_asset
        with_forecast = tradable & ~np.isnan(self.prob_by_asset)
        first_forecast = np.where(self.has_forecast, np.argmax(with_forecast, axis=1), self.n_bars)
        counting = tradable & (np.arange(self.n_bars) >= first_forecast[:, None])
        return counting, np.cumsum(counting, axis=1) - 1

    @cached_property
    def mean_vol_so_far(self) -> np.ndarray:
        """(A, T) mean predicted vol up to each bar: the causal reference level for inverse-vol sizing."""
        known = ~np.isnan(self.vol_by_asset)
        total = np.cumsum(np.where(known, self.vol_by_asset, 0.0), axis=1)
        return total / np.maximum(np.cumsum(known, axis=1), 1)


def _as_utc_datetime64(ts) -> np.ndarray:
    if isinstance(ts, (pd.DatetimeIndex, pd.Series)) or np.asarray(ts).dtype == object:
        index = pd.DatetimeIndex(ts)
        if index.tz is None:
            raise ValueError("BacktestInputs.ts: naive timestamps; pass UTC datetime64 or tz-aware timestamps")
        values = index.tz_convert("UTC").tz_localize(None).to_numpy()
    else:
        values = np.asarray(ts)
    if values.ndim != 1 or values.dtype.kind != "M":
        raise ValueError(f"BacktestInputs.ts must be a 1-D datetime64 array, got {values.dtype} {values.shape}")
    if values.size > 1 and not np.all(values[1:] > values[:-1]):
        bar = int(np.flatnonzero(values[1:] <= values[:-1])[0]) + 1
        raise ValueError(f"BacktestInputs.ts must be strictly increasing; bar {bar} ({values[bar]}) is not")
    return values


def _float_panel(values, name: str, shape: tuple[int, int]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"BacktestInputs.{name} must have shape (bars, assets) = {shape}, got {array.shape}")
    return array


# ------------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class StrategyConfig:
    """The Backtest page's sliders. Hashable, so a TrialCounter can count distinct settings."""

    threshold: float = 0.02  # trade when P(up) > 0.5 + threshold (long) or < 0.5 - threshold (short)
    max_position: float = 1.0  # cap on |position| as a fraction of the sleeve
    long_short: bool = True  # False: long or flat only
    size_by_confidence: bool = False  # size = 2 |P(up) - 0.5| instead of 1
    inverse_vol: bool = False  # size x (average predicted vol so far / predicted vol); off under a vol target
    vol_target: float | None = None  # annual volatility target: size x target / predicted annual vol
    holding_horizon: int = 1  # re-evaluate the signal every this many of the asset's open bars
    commission_bps: float = 1.0
    slippage_bps: float = 2.0
    cash_rate: float = 0.0  # annual rate earned by idle cash
    weights: tuple[float, ...] | None = None  # per asset, normalised to sum 1; None = equal

    def __post_init__(self) -> None:
        checks = [
            ("threshold", 0 <= self.threshold < 0.5, "must be in [0, 0.5)"),
            ("max_position", math.isfinite(self.max_position) and self.max_position > 0, "must be positive"),
            ("vol_target", self.vol_target is None or 0 < self.vol_target < math.inf, "must be None or positive"),
            (
                "holding_horizon",
                isinstance(self.holding_horizon, (int, np.integer)) and self.holding_horizon >= 1,
                "must be an integer >= 1",
            ),
            ("commission_bps", 0 <= self.commission_bps < math.inf, "must be >= 0"),
            ("slippage_bps", 0 <= self.slippage_bps < math.inf, "must be >= 0"),
            ("cash_rate", -1 < self.cash_rate < math.inf, "must be > -1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"StrategyConfig.{name} {rule}, got {getattr(self, name)!r}")
        object.__setattr__(self, "holding_horizon", int(self.holding_horizon))
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if not all(w >= 0 and math.isfinite(w) for w in weights) or sum(weights) <= 0:
                raise ValueError(f"StrategyConfig.weights must be >= 0 with a positive sum, got {self.weights}")
            object.__setattr__(self, "weights", weights)

    @property
    def cost_rate(self) -> float:
        """Cost per unit of position change, as a fraction."""
        return (self.commission_bps + self.slippage_bps) / 1e4

    def normalised_weights(self, n_assets: int) -> np.ndarray:
        """(A,) weights summing to 1."""
        if self.weights is None:
            return np.full(n_assets, 1.0 / n_assets)
        if len(self.weights) != n_assets:
            raise ValueError(f"StrategyConfig.weights has {len(self.weights)} values for {n_assets} assets")
        weights = np.asarray(self.weights)
        return weights / weights.sum()


# Settings that change how positions are formed (a separate pass each); the other fields are numbers that
# NumericSettings broadcasts over many settings at once.
STYLE_FIELDS = ("holding_horizon", "long_short", "size_by_confidence", "inverse_vol", "weights")


# ------------------------------------------------------------------------------------------- held signals (A, T)
class HeldSignals:
    """The forecast in force at each bar: the one from the last decision bar at or before t (one holding horizon).

    Any setting that maps a forecast to a position bar by bar (threshold, sizing, caps) commutes with "carry the
    last decision forward", so this is computed once per holding horizon and shared by every such setting.
    The size factors are gathered only when a setting asks for them.
    """

    def __init__(self, inputs: BacktestInputs, holding_horizon: int) -> None:
        self._inputs = inputs
        counting, open_bar_number = inputs.decision_clock
        decision = counting if holding_horizon == 1 else counting & (open_bar_number % holding_horizon == 0)
        source = np.where(decision, np.arange(inputs.n_bars), -1)
        np.maximum.accumulate(source, axis=1, out=source)  # (A, T) last decision bar so far, -1 = none yet
        self._before_first_decision = source < 0
        np.maximum(source, 0, out=source)
        source += (np.arange(len(inputs.symbols)) * inputs.n_bars)[:, None]
        self._source = source  # (A, T) flat index into any (A, T) array of the decision in force

    def _held(self, values: np.ndarray) -> np.ndarray:
        """values (A, T) at the decision in force, NaN before the first decision."""
        held = values.take(self._source)
        held[self._before_first_decision] = np.nan
        return held

    @cached_property
    def edge(self) -> np.ndarray:
        """(A, T) P(up) - 0.5 at the decision in force; NaN = no forecast in force."""
        edge = self._held(self._inputs.prob_by_asset)
        edge -= 0.5
        return edge

    @cached_property
    def abs_edge(self) -> np.ndarray:
        """(A, T) |edge|, NaN where no forecast (compares False with any threshold)."""
        return np.abs(self.edge)

    @cached_property
    def long_short_direction(self) -> np.ndarray:
        """(A, T) +1 / -1 / 0 by the sign of the edge; 0 where no forecast."""
        return np.nan_to_num(np.sign(self.edge), nan=0.0)

    @cached_property
    def long_only_direction(self) -> np.ndarray:
        """(A, T) 1 where the edge is positive, else 0."""
        return (self.edge > 0).astype(np.float64)

    @cached_property
    def confidence(self) -> np.ndarray:
        """(A, T) 2 |edge| in [0, 1]; 0 where no forecast."""
        return np.nan_to_num(2.0 * self.abs_edge, nan=0.0)

    @cached_property
    def _held_vol(self) -> np.ndarray:
        return self._held(self._inputs.vol_by_asset)

    @cached_property
    def relative_inverse_vol(self) -> np.ndarray:
        """(A, T) the asset's mean predicted vol up to the decision / predicted vol at it; 0 if unknown."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return _finite_or_zero(self._held(self._inputs.mean_vol_so_far) / self._held_vol)

    @cached_property
    def inverse_annual_vol(self) -> np.ndarray:
        """(A, T) 1 / predicted annualised vol at the decision; 0 if unknown."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return _finite_or_zero(1.0 / (self._held_vol * np.sqrt(self._inputs.bars_per_year)[:, None]))


def hold_signals(inputs: BacktestInputs, holding_horizon: int, remember: bool = True) -> HeldSignals:
    """HeldSignals for one holding horizon; remembered on the inputs so slider moves other than h reuse them."""
    key = ("held signals", holding_horizon)
    if key in inputs.reusable:
        return inputs.reusable[key]
    held = HeldSignals(inputs, holding_horizon)
    if remember:
        inputs.reusable[key] = held
    return held


def _finite_or_zero(values: np.ndarray) -> np.ndarray:
    """A size factor we cannot compute (vol unknown or zero) means no position."""
    values[~np.isfinite(values)] = 0.0
    return values


# ------------------------------------------------------------------------------------------ positions (S, A, T)
@dataclass(frozen=True)
class NumericSettings:
    """The numeric sliders of S settings that share one style, as (S,) arrays."""

    threshold: np.ndarray
    max_position: np.ndarray
    vol_target: np.ndarray  # ignored when the style has no vol target
    cost_rate: np.ndarray
    cash_rate: np.ndarray

    @classmethod
    def of(cls, configs: list[StrategyConfig]) -> NumericSettings:
        return cls(
            threshold=np.array([c.threshold for c in configs]),
            max_position=np.array([c.max_position for c in configs]),
            vol_target=np.array([c.vol_target or 0.0 for c in configs]),
            cost_rate=np.array([c.cost_rate for c in configs]),
            cash_rate=np.array([c.cash_rate for c in configs]),
        )


def style_key(config: StrategyConfig) -> tuple:
    """Settings with the same key share held signals and a signed size; they differ only in NumericSettings."""
    return tuple(getattr(config, name) for name in STYLE_FIELDS) + (config.vol_target is None,)


def signed_size(held: HeldSignals, style: StrategyConfig, selected: np.ndarray) -> np.ndarray:
    """(A, T) direction x size, before the threshold, the vol target level and the cap.

    Shared by every setting of one style. selected (A,) bool: assets left out of the portfolio get 0.
    """
    direction = held.long_short_direction if style.long_short else held.long_only_direction
    size = direction * selected[:, None]
    if style.size_by_confidence:
        size *= held.confidence
    if style.vol_target is not None:
        size *= held.inverse_annual_vol  # x the target per setting; a vol target supersedes inverse_vol
    elif style.inverse_vol:
        size *= held.relative_inverse_vol
    return size


def strategy_positions(
    held: HeldSignals,
    signed: np.ndarray,
    style: StrategyConfig,
    settings: NumericSettings,
    out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Position held over each bar: the target set at the close of the bar before, flat over bar 0. -> (S, A, T)

    signed: signed_size of the style. out, scratch: (S, A, T) buffers to reuse (the sweep passes its own).
    """
    n_assets, n_bars = held.edge.shape
    shape = (len(settings.threshold), n_assets, n_bars)
    positions = np.empty(shape) if out is None else out
    positions[..., 0] = 0.0
    target = positions[..., 1:]  # the decision at the close of bar t sets the position over bar t+1
    sized = (np.empty(shape) if scratch is None else scratch)[..., 1:]
    signed_at_decision = signed[:, :-1]
    if style.vol_target is not None:
        signed_at_decision = np.multiply(signed_at_decision, settings.vol_target[:, None, None], out=sized)
    cap = settings.max_position[:, None, None]
    np.clip(signed_at_decision, -cap, cap, out=sized)
    # Strictly beyond the threshold; a NaN edge (no forecast) compares False: no position.
    np.greater(held.abs_edge[:, :-1], settings.threshold[:, None, None], out=target)
    target *= sized
    return positions


# -------------------------------------------------------------------------------------------------- accounting
def cash_return_per_bar(cash_rate: np.ndarray, periods_per_year: float) -> np.ndarray:
    return (1.0 + cash_rate) ** (1.0 / periods_per_year) - 1.0


def position_changes(positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """|position change| entering each bar, from flat before bar 0. (S, A, T) -> (S, A, T)"""
    changes = np.empty_like(positions) if out is None else out
    changes[..., 0] = positions[..., 0]
    np.subtract(positions[..., 1:], positions[..., :-1], out=changes[..., 1:])
    return np.abs(changes, out=changes)


def sleeve_gross_returns(
    positions: np.ndarray, returns_by_asset: np.ndarray, cash_per_bar: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """position x return + interest on idle cash, per sleeve and bar. (S, A, T), returns (A, T), cash (S,)"""
    gross = np.multiply(positions, returns_by_asset, out=out)
    if np.any(cash_per_bar != 0):
        gross += cash_per_bar[:, None, None] * np.maximum(1.0 - np.abs(positions), 0.0)
    return gross


def compound(net: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Equity after each bar from per-bar returns, starting at 1; a sleeve that loses everything stays at 0."""
    equity = np.add(net, 1.0, out=out)
    np.maximum(equity, 0.0, out=equity)
    return np.cumprod(equity, axis=-1, out=equity)


def portfolio_returns(sleeve_equity: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(portfolio equity (S, T), its per-bar returns (S, T)) from sleeve equity (S, A, T) and weights (A,)."""
    equity = np.einsum("a,sat->st", weights, sleeve_equity)  # not matmul: OpenBLAS would thread it
    returns = np.empty_like(equity)
    returns[:, 0] = equity[:, 0] - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(equity[:, 1:], equity[:, :-1], out=returns[:, 1:])
    returns[:, 1:] -= 1.0
    returns[~np.isfinite(returns)] = 0.0  # a ruined portfolio earns nothing more
    return equity, returns


@dataclass(frozen=True)
class Accounts:
    """Per-bar book-keeping of S settings, as fractions of sleeve equity (portfolio_*: of portfolio equity)."""

    positions: np.ndarray  # (S, A, T)
    changes: np.ndarray  # (S, A, T) |position change| entering bar t
    gross: np.ndarray  # (S, A, T) position x return + cash interest
    costs: np.ndarray  # (S, A, T)
    net: np.ndarray  # (S, A, T) gross - costs
    sleeve_equity: np.ndarray  # (S, A, T) each sleeve's equity per unit of its starting weight
    portfolio_equity: np.ndarray  # (S, T) after each bar; 1 before bar 0
    portfolio_net: np.ndarray  # (S, T)


def account(
    positions: np.ndarray,
    returns_by_asset: np.ndarray,
    cost_rate: np.ndarray,
    cash_per_bar: np.ndarray,
    weights: np.ndarray,
) -> Accounts:
    """Every per-bar series of S settings. positions (S, A, T), returns (A, T) NaN as 0, rates (S,), weights (A,)."""
    changes = position_changes(positions)
    costs = changes * cost_rate[:, None, None]
    gross = sleeve_gross_returns(positions, returns_by_asset, cash_per_bar)
    net = gross - costs
    sleeve_equity = compound(net)
    portfolio_equity, portfolio_net = portfolio_returns(sleeve_equity, weights)
    return Accounts(positions, changes, gross, costs, net, sleeve_equity, portfolio_equity, portfolio_net)


def sleeve_value_shares(accounts: Accounts, weights: np.ndarray) -> np.ndarray:
    """Each sleeve's share of portfolio value before each bar. -> (S, A, T), summing to 1 over assets."""
    shares = np.empty_like(accounts.sleeve_equity)
    shares[..., 0] = 1.0
    shares[..., 1:] = accounts.sleeve_equity[..., :-1]
    shares *= weights[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        shares /= shares.sum(axis=1, keepdims=True)
    shares[~np.isfinite(shares)] = 0.0
    return shares


# ------------------------------------------------------------------------------------------------------ trades
def trade_dtype(ts_dtype: np.dtype) -> np.dtype:
    return np.dtype(
        [
            ("asset", "i2"),  # index into symbols
            ("side", "i1"),  # +1 long, -1 short
            ("entry_ts", ts_dtype),  # first bar held (the position was entered at the close before it)
            ("exit_ts", ts_dtype),  # last bar held
            ("bars_held", "i8"),
            ("size", "f8"),  # |position| at entry, fraction of the sleeve
            ("return", "f8"),  # see TradeRuns.returns
            ("open", "?"),  # still held at the last bar (no exit cost charged yet)
        ]
    )


@dataclass(frozen=True)
class TradeRuns:
    """Trades as runs of same-sign positions, asset-major; the record array is built only when asked for."""

    starts: np.ndarray  # (N,) flat index into the (A, T) positions of each trade's first bar held
    ends: np.ndarray  # (N,) ... of its last bar held
    returns: np.ndarray  # (N,) sleeve return over the trade, entry and exit costs included, cash interest not
    n_bars: int

    def of_asset(self, asset: int) -> np.ndarray:
        """The returns of one asset's trades."""
        first, last = np.searchsorted(self.starts, [asset * self.n_bars, (asset + 1) * self.n_bars])
        return self.returns[first:last]

    def records(self, positions: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Structured array, one row per trade (see trade_dtype). positions (A, T)."""
        trades = np.zeros(len(self.starts), dtype=trade_dtype(ts.dtype))
        asset, start_bar = np.divmod(self.starts, self.n_bars)
        end_bar = self.ends - asset * self.n_bars
        entry_positions = positions.reshape(-1)[self.starts]
        trades["asset"] = asset
        trades["side"] = np.sign(entry_positions)
        trades["entry_ts"] = ts[start_bar]
        trades["exit_ts"] = ts[end_bar]
        trades["bars_held"] = end_bar - start_bar + 1
        trades["size"] = np.abs(entry_positions)
        trades["return"] = self.returns
        trades["open"] = end_bar == self.n_bars - 1
        return trades


def trade_runs(
    positions: np.ndarray, changes: np.ndarray, returns_by_asset: np.ndarray, cost_rate: float
) -> TradeRuns:
    """Each run of same-sign positions is one trade; resizing within a run is part of it.

    positions, changes (|position change| entering each bar) and returns: (A, T).
    """
    n_bars = positions.shape[1]
    side = (positions > 0).view(np.int8) - (positions < 0).view(np.int8)  # int8: a float sign is 8x the memory
    in_trade = side != 0
    side_changed = np.empty_like(in_trade)
    side_changed[:, 0] = in_trade[:, 0]
    np.not_equal(side[:, 1:], side[:, :-1], out=side_changed[:, 1:])
    is_end = np.empty_like(in_trade)
    is_end[:, :-1] = side_changed[:, 1:]
    is_end[:, -1] = True
    starts = np.flatnonzero(side_changed & in_trade)  # into the flattened (A, T) arrays, asset-major
    ends = np.flatnonzero(is_end & in_trade)
    if len(starts) == 0:
        return TradeRuns(starts, ends, np.zeros(0), n_bars)

    # Each bar's share of the costs: the whole position at an entry (a reversal's other leg closes the previous
    # trade), the resize inside a trade, nothing on flat bars (the exit cost is added below).
    flat_positions = positions.reshape(-1)
    bar_growth = changes * in_trade
    bar_growth.reshape(-1)[starts] = np.abs(flat_positions[starts])
    bar_growth *= -cost_rate
    bar_growth += positions * returns_by_asset
    bar_growth += 1.0
    np.maximum(bar_growth, 0.0, out=bar_growth)
    # Flat bars have growth 1, so the product from one start to the next covers exactly one trade.
    growth = np.multiply.reduceat(bar_growth.reshape(-1), starts)
    exit_cost = cost_rate * np.abs(flat_positions[ends])
    exit_cost[ends % n_bars == n_bars - 1] = 0.0  # still open at the last bar
    return TradeRuns(starts, ends, growth * (1.0 - exit_cost) - 1.0, n_bars)


def trades_frame(trades: np.ndarray, symbols: tuple[str, ...]) -> pd.DataFrame:
    """A trade list as a DataFrame: symbol names, UTC timestamps."""
    frame = pd.DataFrame(trades)
    frame.insert(0, "symbol", np.asarray(symbols, dtype=object)[trades["asset"]])
    for column in ("entry_ts", "exit_ts"):
        frame[column] = pd.to_datetime(frame[column]).dt.tz_localize("UTC")
    return frame.drop(columns="asset")


# ------------------------------------------------------------------------------------------------------ result
@dataclass(frozen=True, eq=False)
class BenchmarkResult:
    """Equal-weight buy-and-hold of the selected assets over the same span, same entry cost."""

    positions: np.ndarray  # (T, A)
    net_returns: np.ndarray  # (T,)
    equity: np.ndarray  # (T,)
    drawdown: np.ndarray  # (T,)
    metrics: metrics.PerformanceSummary


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """One setting's backtest. Per-sleeve series are fractions of that sleeve's equity; portfolio_* of the whole."""

    inputs: BacktestInputs = field(repr=False)
    config: StrategyConfig
    positions: np.ndarray  # (T, A) position held over bar t
    gross_returns: np.ndarray  # (T, A) per sleeve
    costs: np.ndarray  # (T, A) per sleeve
    net_returns: np.ndarray  # (T, A) per sleeve
    asset_equity: np.ndarray  # (T, A) each sleeve's equity, starting at 1
    portfolio_gross_returns: np.ndarray  # (T,)
    portfolio_costs: np.ndarray  # (T,)
    portfolio_net_returns: np.ndarray  # (T,)
    equity: np.ndarray  # (T,) portfolio equity after each bar, 1 before the first
    drawdown: np.ndarray  # (T,) <= 0, on compounded equity
    trade_runs: TradeRuns = field(repr=False)
    metrics: metrics.PerformanceSummary  # portfolio, on the panel clock
    asset_metrics: dict[str, metrics.PerformanceSummary]  # each selected asset on its own clock (its open bars)
    benchmark: BenchmarkResult
    annualisation: str

    @property
    def sharpe_per_period(self) -> float | None:
        """What a TrialCounter records for this setting."""
        return metrics.return_moments(self.portfolio_net_returns)[0]

    def deflated_sharpe(self, trials: metrics.TrialCounter | int) -> float | None:
        return metrics.deflated_sharpe_ratio(self.portfolio_net_returns, trials)

    @cached_property
    def trades(self) -> np.ndarray:
        """The trade list as a structured array (see trade_dtype), built on first use."""
        return self.trade_runs.records(self.positions.T, self.inputs.ts)

    def trades_frame(self) -> pd.DataFrame:
        """The trade list as a DataFrame, for the trades table."""
        return trades_frame(self.trades, self.inputs.symbols)


# ---------------------------------------------------------------------------------------------------- running
def selected_weights(inputs: BacktestInputs, config: StrategyConfig) -> np.ndarray:
    """(A,) weights summing to 1, after checking that every selected asset has forecasts."""
    weights = config.normalised_weights(len(inputs.symbols))
    missing = [s for s, w, ok in zip(inputs.symbols, weights, inputs.has_forecast) if w > 0 and not ok]
    if missing:
        horizon = "" if inputs.horizon is None else f" at horizon {inputs.horizon}"
        raise ValueError(
            f"No forecasts for {', '.join(missing)}{horizon}: prob_up is NaN on every bar. Run the model on this "
            "span (Model page), pick another horizon, or leave the asset out of the backtest."
        )
    return weights


def run_backtest(inputs: BacktestInputs, config: StrategyConfig) -> BacktestResult:
    """Positions, returns, costs, equity, trades and every metric for one setting."""
    weights = selected_weights(inputs, config)
    selected = weights > 0
    held = hold_signals(inputs, config.holding_horizon)
    settings = NumericSettings.of([config])
    positions = strategy_positions(held, signed_size(held, config, selected), config, settings)
    panel_year = inputs.portfolio_periods_per_year
    cash = cash_return_per_bar(settings.cash_rate, panel_year)
    accounts = account(positions, inputs.returns_by_asset, settings.cost_rate, cash, weights)
    trades = trade_runs(positions[0], accounts.changes[0], inputs.returns_by_asset, config.cost_rate)

    shares = sleeve_value_shares(accounts, weights)[0]  # (A, T)
    portfolio_net = accounts.portfolio_net[0]
    return BacktestResult(
        inputs=inputs,
        config=config,
        positions=positions[0].T,
        gross_returns=accounts.gross[0].T,
        costs=accounts.costs[0].T,
        net_returns=accounts.net[0].T,
        asset_equity=accounts.sleeve_equity[0].T,
        portfolio_gross_returns=np.einsum("at,at->t", shares, accounts.gross[0]),
        portfolio_costs=np.einsum("at,at->t", shares, accounts.costs[0]),
        portfolio_net_returns=portfolio_net,
        equity=accounts.portfolio_equity[0],
        drawdown=metrics.drawdown_of_equity(accounts.portfolio_equity[0]),
        trade_runs=trades,
        metrics=metrics.summarise(
            portfolio_net, panel_year, positions[0].T, trades.returns, weights, accounts.portfolio_equity[0]
        ),
        asset_metrics={
            symbol: _asset_summary(inputs, a, positions[0, a], accounts.sleeve_equity[0, a], trades)
            for a, symbol in enumerate(inputs.symbols)
            if selected[a]
        },
        benchmark=buy_and_hold(inputs, selected, config.cost_rate),
        annualisation=inputs.describe_annualisation(),
    )


def _asset_summary(
    inputs: BacktestInputs, asset: int, positions: np.ndarray, sleeve_equity: np.ndarray, trades: TradeRuns
) -> metrics.PerformanceSummary:
    """One sleeve on its own clock: its equity sampled at its open bars, annualised with its bars per year."""
    open_bars = inputs.open_bars[asset]
    sampled = sleeve_equity[open_bars]
    own_returns = np.empty_like(sampled)
    if sampled.size:
        own_returns[0] = sampled[0] - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(sampled[1:], sampled[:-1], out=own_returns[1:])
        own_returns[1:] -= 1.0
        own_returns[~np.isfinite(own_returns)] = 0.0  # a ruined sleeve earns nothing more
    return metrics.summarise(
        own_returns, inputs.bars_per_year[asset], positions[open_bars], trades.of_asset(asset), equity=sampled
    )


def buy_and_hold(inputs: BacktestInputs, selected: np.ndarray, cost_rate: float) -> BenchmarkResult:
    """Equal weights of the selected assets, each bought at the first close its market is open, held to the end.

    Kept on the inputs: only the selection and the cost rate change it.
    """
    key = ("buy and hold", selected.tobytes(), cost_rate)
    if key in inputs.reusable:
        return inputs.reusable[key]
    tradable = inputs.tradable_by_asset
    first_open = np.where(tradable.any(axis=1), np.argmax(tradable, axis=1), inputs.n_bars)
    held = (np.arange(inputs.n_bars)[None, :] > first_open[:, None]) & selected[:, None]
    positions = held.astype(np.float64)[None]  # (1, A, T)
    weights = selected / selected.sum()
    accounts = account(positions, inputs.returns_by_asset, np.array([cost_rate]), np.zeros(1), weights)
    # One trade per bought asset, still open at the end: its sleeve's return, entry cost included.
    bought = selected & (first_open < inputs.n_bars - 1)
    trade_returns = accounts.sleeve_equity[0, bought, -1] - 1.0
    net = accounts.portfolio_net[0]
    result = BenchmarkResult(
        positions=positions[0].T,
        net_returns=net,
        equity=accounts.portfolio_equity[0],
        drawdown=metrics.drawdown_of_equity(accounts.portfolio_equity[0]),
        metrics=metrics.summarise(
            net, inputs.portfolio_periods_per_year, positions[0].T, trade_returns, weights, accounts.portfolio_equity[0]
        ),
    )
    inputs.reusable[key] = result
    return result
