"""Parameter sweeps: a grid of backtest metrics over two sliders, ready for a heatmap, with every cell a trial.

Speed comes from sharing work, not from a different backtest (a cell equals a single run of its setting):
- settings are grouped by "style" (holding horizon, long/short, sizing switches, weights): each style holds its
  signals and builds its size base once;
- within a style, the settings that form positions (threshold, cap, vol target) run as a broadcast dimension S
  over (S, A, T) buffers, and settings that only differ in costs or cash rate share those positions: costs are
  linear in the position changes, so only the net returns and compounding are redone per cost;
- the buffers are allocated once per sweep: fresh memory costs page faults, and on this machine those dominate.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property

import numpy as np

from engine.backtest import metrics
from engine.backtest.engine import (
    BacktestInputs,
    NumericSettings,
    StrategyConfig,
    cash_return_per_bar,
    compound,
    hold_signals,
    portfolio_returns,
    position_changes,
    selected_weights,
    signed_size,
    strategy_positions,
    style_key,
)

SWEEPABLE = tuple(f.name for f in fields(StrategyConfig) if f.name != "weights")
DEFAULT_METRICS = ("sharpe", "cagr", "max_drawdown")
_BUFFER_ELEMENTS = 2_000_000  # per (S, A, T) buffer (16 MB): S settings at a time


# ---------------------------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class _PositionPaths:
    positions: np.ndarray  # (S, A, T)
    changes: np.ndarray  # (S, A, T) |position change| entering each bar
    weights: np.ndarray  # (A,)
    periods_per_year: float


@dataclass(frozen=True)
class _ReturnPaths:
    equity: np.ndarray  # (S, T) portfolio, after each bar
    returns: np.ndarray  # (S, T) portfolio
    drawdown: np.ndarray  # (S, T)
    periods_per_year: float

    @cached_property
    def per_period_sharpe(self) -> np.ndarray:
        return metrics.per_period_sharpe_rows(self.returns)

    @property
    def max_drawdown(self) -> np.ndarray:
        return np.minimum(self.drawdown.min(axis=-1), 0.0)

    @property
    def cagr(self) -> np.ndarray:
        return metrics.cagr_of_final_equity(self.equity[:, -1], self.equity.shape[-1], self.periods_per_year)


def _calmar(p: _ReturnPaths) -> np.ndarray:
    depth = -p.max_drawdown
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(depth > 0, p.cagr / depth, np.nan)


def _n_trades(p: _PositionPaths) -> np.ndarray:
    """Runs of same-sign positions started, over all assets (as BacktestResult.trades counts them)."""
    side = np.sign(p.positions)
    starts = (side[..., 1:] != side[..., :-1]) & (side[..., 1:] != 0)
    return starts.sum(axis=(1, 2)) + (side[..., 0] != 0).sum(axis=1)


# Metrics of the positions alone (shared by every cost variant), and metrics of the portfolio's returns.
_POSITION_METRICS: dict[str, Callable[[_PositionPaths], np.ndarray]] = {
    "turnover": lambda p: np.einsum("sat,a->s", p.changes, p.weights) / p.changes.shape[-1] * p.periods_per_year,
    "exposure": lambda p: (p.positions[:, p.weights > 0] != 0).any(axis=1).mean(axis=-1),
    "n_trades": _n_trades,
}
_RETURN_METRICS: dict[str, Callable[[_ReturnPaths], np.ndarray]] = {
    "sharpe": lambda p: p.per_period_sharpe * math.sqrt(p.periods_per_year),  # as metrics.sharpe_rows
    "sortino": lambda p: metrics.sortino_rows(p.returns, p.periods_per_year),
    "annualised_volatility": lambda p: metrics.volatility_rows(p.returns, p.periods_per_year),
    "total_return": lambda p: p.equity[:, -1] - 1.0,
    "cagr": lambda p: p.cagr,
    "max_drawdown": lambda p: p.max_drawdown,
    "max_drawdown_duration_bars": lambda p: metrics.underwater_duration_of_drawdown(p.drawdown).astype(float),
    "calmar": _calmar,
}
SWEEP_METRICS = tuple(_RETURN_METRICS) + tuple(_POSITION_METRICS)


# ----------------------------------------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class SweepResult:
    """metrics[name][iy, ix] is the metric of the setting (values_y[iy], values_x[ix]); NaN = undefined."""

    base_config: StrategyConfig
    param_x: str
    values_x: tuple
    param_y: str | None
    values_y: tuple  # (None,) for a one-parameter sweep
    metrics: dict[str, np.ndarray]  # name -> (len(values_y), len(values_x))
    periods_per_year: float

    @property
    def n_settings(self) -> int:
        return len(self.values_x) * len(self.values_y)

    def config_at(self, iy: int, ix: int) -> StrategyConfig:
        return _config(self.base_config, self.param_x, self.values_x[ix], self.param_y, self.values_y[iy])

    def best(self, metric: str = "sharpe", maximise: bool = True) -> tuple[StrategyConfig, float] | None:
        """The best defined cell and its value; None when no cell is defined."""
        grid = self.metrics[metric]
        if np.all(np.isnan(grid)):
            return None
        iy, ix = np.unravel_index(np.nanargmax(grid) if maximise else np.nanargmin(grid), grid.shape)
        return self.config_at(iy, ix), float(grid[iy, ix])


# ------------------------------------------------------------------------------------------------------ sweep
def sweep(
    inputs: BacktestInputs,
    base_config: StrategyConfig,
    param_x: str,
    values_x: Sequence,
    param_y: str | None = None,
    values_y: Sequence | None = None,
    metric_names: Sequence[str] = DEFAULT_METRICS,
    trials: metrics.TrialCounter | None = None,
) -> SweepResult:
    """Every combination of values_x x values_y (one row when param_y is None); each is recorded in `trials`
    (anything with a `record(setting, sharpe_per_period)` method: a TrialCounter, or a trials.TrialLog on disk)."""
    values_x, values_y = _check_grid(param_x, values_x, param_y, values_y)
    unknown = [name for name in metric_names if name not in SWEEP_METRICS]
    if unknown:
        raise ValueError(f"sweep: unknown metric(s) {unknown}; choose from {SWEEP_METRICS}")
    configs = [_config(base_config, param_x, x, param_y, y) for y in values_y for x in values_x]
    weights = selected_weights(inputs, base_config)
    grid = _Grid(configs, metric_names)
    buffers = _Buffers.for_inputs(inputs, len(configs))

    styles: dict[tuple, list[int]] = defaultdict(list)
    for index, config in enumerate(configs):
        styles[style_key(config)].append(index)
    for members in styles.values():
        _sweep_style(inputs, configs, members, weights, buffers, grid)

    if trials is not None:
        for config, sharpe in zip(configs, grid.sharpe_per_period):
            trials.record(config, None if math.isnan(sharpe) else float(sharpe))
    shape = (len(values_y), len(values_x))
    return SweepResult(
        base_config=base_config,
        param_x=param_x,
        values_x=values_x,
        param_y=param_y,
        values_y=values_y,
        metrics={name: values.reshape(shape) for name, values in grid.values.items()},
        periods_per_year=inputs.portfolio_periods_per_year,
    )


class _Grid:
    """The flat results being filled in, one slot per setting."""

    def __init__(self, configs: list[StrategyConfig], metric_names: Sequence[str]) -> None:
        self.metric_names = metric_names
        self.values = {name: np.full(len(configs), np.nan) for name in metric_names}  # name -> (N,)
        self.sharpe_per_period = np.full(len(configs), np.nan)  # what the TrialCounter records


@dataclass(frozen=True)
class _Buffers:
    """(chunk, A, T) arrays reused by every chunk of the sweep."""

    positions: np.ndarray
    changes: np.ndarray
    gross: np.ndarray
    net: np.ndarray

    @classmethod
    def for_inputs(cls, inputs: BacktestInputs, n_settings: int) -> _Buffers:
        n_assets, n_bars = inputs.returns_by_asset.shape
        chunk = max(1, min(n_settings, _BUFFER_ELEMENTS // (n_assets * n_bars)))
        return cls(*(np.empty((chunk, n_assets, n_bars)) for _ in range(4)))

    @property
    def chunk(self) -> int:
        return len(self.positions)


def _sweep_style(inputs, configs, members: list[int], weights, buffers: _Buffers, grid: _Grid) -> None:
    """All settings of one style: positions once per (threshold, cap, vol target), then each cost variant."""
    style = configs[members[0]]
    held = hold_signals(inputs, style.holding_horizon, remember=False)
    signed = signed_size(held, style, weights > 0)
    panel_year = inputs.portfolio_periods_per_year
    variants: dict[tuple, list[int]] = defaultdict(list)  # position-forming settings -> settings sharing them
    for index in members:
        config = configs[index]
        variants[(config.threshold, config.max_position, config.vol_target)].append(index)
    keys = list(variants)
    for start in range(0, len(keys), buffers.chunk):
        chunk_keys = keys[start : start + buffers.chunk]
        size = len(chunk_keys)
        settings = NumericSettings.of([configs[variants[key][0]] for key in chunk_keys])
        positions = strategy_positions(
            held, signed, style, settings, out=buffers.positions[:size], scratch=buffers.gross[:size]
        )
        changes = position_changes(positions, out=buffers.changes[:size])
        paths = _PositionPaths(positions, changes, weights, panel_year)
        for name in grid.metric_names:
            if name in _POSITION_METRICS:
                values = _POSITION_METRICS[name](paths)
                for row, key in enumerate(chunk_keys):
                    grid.values[name][variants[key]] = values[row]
        gross = np.multiply(positions, inputs.returns_by_asset, out=buffers.gross[:size])
        jobs = [(row, index) for row, key in enumerate(chunk_keys) for index in variants[key]]
        for job_start in range(0, len(jobs), buffers.chunk):
            _compound_cost_variants(jobs[job_start : job_start + buffers.chunk], configs, paths, gross, buffers, grid)


def _compound_cost_variants(jobs, configs, paths: _PositionPaths, gross, buffers: _Buffers, grid: _Grid) -> None:
    """Net returns (same arithmetic as backtest.account) -> equity -> return metrics, for (row, setting) jobs."""
    net = buffers.net[: len(jobs)]
    for slot, (row, index) in enumerate(jobs):
        config = configs[index]
        np.copyto(net[slot], gross[row])
        if config.cash_rate != 0:
            cash = cash_return_per_bar(config.cash_rate, paths.periods_per_year)
            net[slot] += cash * np.maximum(1.0 - np.abs(paths.positions[row]), 0.0)
        net[slot] -= paths.changes[row] * config.cost_rate
    equity, returns = portfolio_returns(compound(net, out=net), paths.weights)
    result = _ReturnPaths(equity, returns, metrics.drawdown_of_equity(equity), paths.periods_per_year)
    indices = [index for _, index in jobs]
    for name in grid.metric_names:
        if name in _RETURN_METRICS:
            grid.values[name][indices] = _RETURN_METRICS[name](result)
    grid.sharpe_per_period[indices] = result.per_period_sharpe


# ------------------------------------------------------------------------------------------------- the grid
def _config(base: StrategyConfig, param_x: str, x, param_y: str | None, y) -> StrategyConfig:
    changes = {param_x: x} if param_y is None else {param_x: x, param_y: y}
    try:
        return replace(base, **changes)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sweep: the setting {changes} is not valid: {error}") from error


def _check_grid(param_x, values_x, param_y, values_y) -> tuple[tuple, tuple]:
    for name in (param_x,) + (() if param_y is None else (param_y,)):
        if name not in SWEEPABLE:
            raise ValueError(f"sweep: cannot sweep {name!r}; choose from {SWEEPABLE}")
    if param_x == param_y:
        raise ValueError(f"sweep: param_x and param_y are both {param_x!r}")
    values_x = _plain(values_x)
    values_y = (None,) if param_y is None else _plain(() if values_y is None else values_y)
    if not values_x or not values_y:
        raise ValueError("sweep: give at least one value for each swept parameter")
    return values_x, values_y


def _plain(values: Sequence) -> tuple:
    """numpy scalars -> Python scalars, so settings print and hash like the page's own."""
    return tuple(v.item() if isinstance(v, np.generic) else v for v in values)
