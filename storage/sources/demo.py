"""A deterministic synthetic market (BTC, SPY, AAPL) with structure planted on purpose.

SYNTHETIC DATA. The app opens on this market so that it can show the model finding what was planted. The full
description, with every parameter, is in storage/sources/DEMO.md; in short:

- Regimes shared by all assets, from a sticky 3-state Markov chain (calm uptrend, volatile downtrend,
  choppy mean-reverting), each lasting tens of days on average.
- Within a regime: GARCH(1,1) volatility clustering around the regime's volatility, Student-t(5) shocks.
- A latent drift per asset, AR(1) with regime-dependent persistence: a long half-life in the calm uptrend
  (12 days), a short one in the volatile downtrend (2 days) and an alternating sign in the choppy regime.
  Expected: the model's effective lookback is longer in "calm uptrend" than in "volatile downtrend",
  and shortest in "choppy mean-reverting" (truth.memory_order).
- BTC leads the equities by lag_bars L on the BTC clock (1d: L=1, 1h: L=3): SPY's latent return at bar t
  contains beta_lead * BTC's return at bar t-L. AAPL = beta_spy * SPY's latent return + its own noise.
- BTC trades 24/7. The equities trade on weekdays only (no holidays, no DST); for 1h, in the seven bars opening
  14:00..20:00 UTC. While the market is closed the latent return keeps running (including the lagged BTC
  term) and is paid out as the gap into the next session's first bar; its own noise runs at a reduced scale
  while closed (overnight moves are quieter than trading hours).
- variant="null": the negative control. One regime, no lead-lag, no drift memory, the same average volatility
  (SPY's BTC term is replaced by an independent BTC look-alike; AAPL still moves with SPY in the same bar,
  which is not a lead).

Bars are built on the BTC clock (every bar of the span) from cumulative log returns, so open(t) = close(t-1)
on that clock; an equity's first bar after a close opens at the gap price. Generation takes under 0.1 s per
interval and is memoised per (interval, variant, seed): treat the returned frames as read-only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from storage.config import INTERVAL_SECONDS, check_interval, check_symbol
from storage.sources.base import BAR_COLUMNS, SourceError

DEMO_SYMBOLS: tuple[str, ...] = ("BTC", "SPY", "AAPL")
DEMO_INTERVALS: tuple[str, ...] = ("1d", "1h")
VARIANTS: tuple[str, ...] = ("planted", "null")
LEADER = "BTC"
FOLLOWERS: tuple[str, ...] = ("SPY", "AAPL")
REGIME_NAMES: tuple[str, ...] = ("calm uptrend", "volatile downtrend", "choppy mean-reverting")
NULL_REGIME_NAMES: tuple[str, ...] = ("single",)
CHOPPY_RHO = -0.5  # per bar: the choppy regime's drift flips sign and halves every bar


@dataclass(frozen=True)
class SpanConfig:
    """The time span and equity session for one interval."""

    start: str
    end: str  # exclusive
    lag_bars: int  # L: how many bars BTC leads the equities by
    session_open_hours_utc: tuple[int, ...] | None  # bar-open hours when equities trade (None: whole day bars)


SPANS: dict[str, SpanConfig] = {
    "1d": SpanConfig("2019-01-01", "2025-01-01", lag_bars=1, session_open_hours_utc=None),
    # 2022..2024 hourly: 26,304 BTC bars, 7 equity bars per weekday (14:00..20:00 UTC opens; NYSE 9:30-16:00 ET
    # rounded to whole UTC hours, ignoring DST).
    "1h": SpanConfig("2022-01-01", "2025-01-01", lag_bars=3, session_open_hours_utc=tuple(range(14, 21))),
}


@dataclass(frozen=True)
class RegimeSpec:
    """One regime for one asset, in DAILY units; scaled to the bar size by `per_bar`.

    A trending regime has an AR(1) drift with a half-life in days (a time span, so more bars at 1h);
    a choppy regime has a drift whose sign flips from bar to bar (rho = CHOPPY_RHO per bar, whatever the bar).
    """

    mean_return: float  # daily log return
    volatility: float  # daily std of the shock
    drift_half_life_days: float = 0.0  # trending regimes only
    choppy: bool = False


@dataclass(frozen=True)
class RegimeParams:
    """The same regime scaled to one bar: what the generator actually uses."""

    mean_return: float
    volatility: float
    drift_rho: float  # AR(1) coefficient of the latent drift per bar
    drift_std: float  # stationary std of the latent drift per bar
    drift_half_life_bars: float  # |ln 2 / ln |rho||, the memory the model should pick up


@dataclass(frozen=True)
class DemoConfig:
    # Mean spell length of each regime in days; exits go to the other regimes with equal probability.
    regime_duration_days: tuple[float, ...] = (120.0, 30.0, 60.0)
    regimes: dict[str, tuple[RegimeSpec, ...]] = field(
        default_factory=lambda: {
            "BTC": (
                RegimeSpec(0.004, 0.025, drift_half_life_days=12.0),
                RegimeSpec(-0.006, 0.055, drift_half_life_days=2.0),
                RegimeSpec(0.0, 0.035, choppy=True),
            ),
            # SPY's volatility here is its OWN shock; the lagged BTC term comes on top.
            "SPY": (
                RegimeSpec(0.0012, 0.007, drift_half_life_days=12.0),
                RegimeSpec(-0.002, 0.02, drift_half_life_days=2.0),
                RegimeSpec(0.0, 0.011, choppy=True),
            ),
            # AAPL's regime entries describe its idiosyncratic part; beta_spy * SPY comes on top.
            "AAPL": (
                RegimeSpec(0.0003, 0.010, drift_half_life_days=12.0),
                RegimeSpec(-0.0003, 0.018, drift_half_life_days=2.0),
                RegimeSpec(0.0, 0.012, choppy=True),
            ),
        }
    )
    drift_fraction: float = 0.2  # std of the latent drift relative to the regime's shock volatility
    beta_lead: float = 0.12  # SPY latent return per unit of BTC return L bars earlier
    beta_spy: float = 1.2  # AAPL latent return per unit of SPY latent return, same bar
    garch_alpha: float = 0.08
    garch_beta: float = 0.90
    t_degrees_of_freedom: float = 5.0
    closed_noise_scale: float = 0.3  # an equity's own shocks while its market is closed, relative to open
    start_prices: dict[str, dict[str, float]] = field(
        default_factory=lambda: {
            "1d": {"BTC": 3800.0, "SPY": 250.0, "AAPL": 39.0},
            "1h": {"BTC": 46000.0, "SPY": 475.0, "AAPL": 177.0},
        }
    )
    daily_volume: dict[str, float] = field(
        default_factory=lambda: {"BTC": 30_000.0, "SPY": 80_000_000.0, "AAPL": 60_000_000.0}
    )


@dataclass(frozen=True, eq=False)
class PlantedTruth:
    """What was planted, for tests and for the app's "did the model find it" panels."""

    variant: str
    interval: str
    seed: int
    regimes: pd.Series  # int regime index per BTC-clock ts (index: ts, UTC)
    regime_names: tuple[str, ...]
    transition_matrix: np.ndarray  # (regimes, regimes), rows sum to 1
    leader: str
    followers: tuple[str, ...]
    lag_bars: int | None  # None in the null variant: nothing leads
    betas: dict[str, dict[str, float]]  # betas[follower][driver], e.g. {"SPY": {"BTC": 0.12}, "AAPL": {"SPY": 1.2}}
    regime_params: dict[str, dict[str, RegimeParams]]  # [asset][regime name], per bar
    # Regimes sorted by planted drift half-life, longest first: the order the model's effective lookback
    # should follow ("longer in calm uptrend than in volatile downtrend"). Empty in the null variant.
    memory_order: tuple[str, ...]

    @property
    def lead_betas(self) -> dict[str, float]:
        """Each follower's total loading on the leader's lagged return (AAPL's goes through SPY)."""
        spy = self.betas.get("SPY", {}).get(self.leader, 0.0)
        return {"SPY": spy, "AAPL": self.betas.get("AAPL", {}).get("SPY", 0.0) * spy}


@dataclass(frozen=True, eq=False)
class DemoMarket:
    interval: str
    bars: dict[str, pd.DataFrame]  # symbol -> BAR_COLUMNS frame, read-only by convention
    truth: PlantedTruth


class DemoSource:
    """The demo market as a BarSource: `DemoSource(variant="planted", seed=7).fetch("BTC", "1d")`.

    now: the clock that decides which bars are closed (a bar is returned when ts + interval <= now);
    None means the real current time. Inject a fixed time in tests.
    """

    name = "demo"

    def __init__(self, variant: str = "planted", seed: int = 7, now: pd.Timestamp | str | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"demo variant {variant!r} is not known: choose one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.seed = int(seed)
        self.now = None if now is None else _utc(now, "now")

    def fetch(
        self,
        symbol: str,
        interval: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        check_symbol(symbol)
        check_interval(interval)
        if symbol not in DEMO_SYMBOLS:
            raise SourceError(symbol, "not in the demo market", f"the demo has {', '.join(DEMO_SYMBOLS)}")
        if interval not in DEMO_INTERVALS:
            raise SourceError(
                symbol, f"the demo has no {interval} bars", f"choose one of {', '.join(DEMO_INTERVALS)}"
            )
        bars = demo_market(interval, self.variant, self.seed).bars[symbol]
        now = self.now if self.now is not None else pd.Timestamp.now(tz="UTC")
        bar_length = pd.Timedelta(seconds=INTERVAL_SECONDS[interval])
        keep = bars["ts"] + bar_length <= now  # closed bars only
        if start is not None:
            keep &= bars["ts"] >= _utc(start, "start")
        if end is not None:
            keep &= bars["ts"] < _utc(end, "end")
        return bars.loc[keep].reset_index(drop=True)  # a copy: callers cannot edit the cached market


def _utc(value, what: str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError(f"{what} is not a timestamp: {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@lru_cache(maxsize=8)
def demo_market(interval: str = "1d", variant: str = "planted", seed: int = 7) -> DemoMarket:
    """Generate (once per process) the demo market for interval "1d" or "1h"."""
    if interval not in DEMO_INTERVALS:
        raise ValueError(f"the demo has no {interval!r} bars: choose one of {', '.join(DEMO_INTERVALS)}")
    if variant not in VARIANTS:
        raise ValueError(f"demo variant {variant!r} is not known: choose one of {', '.join(VARIANTS)}")
    return _generate(DemoConfig(), interval, variant, int(seed))


# --- generation ---------------------------------------------------------------------------------------------


def _generate(config: DemoConfig, interval: str, variant: str, seed: int) -> DemoMarket:
    span = SPANS[interval]
    bar_days = INTERVAL_SECONDS[interval] / 86400.0
    clock = pd.date_range(span.start, span.end, freq=pd.Timedelta(seconds=INTERVAL_SECONDS[interval]),
                          tz="UTC", inclusive="left", unit="us")
    n = len(clock)
    # One generator, always drawn in the same order, so the null and planted variants share their shocks.
    rng = np.random.default_rng(seed)
    shocks = {s: _student_t_unit(rng, config.t_degrees_of_freedom, n) for s in DEMO_SYMBOLS}
    drift_noise = {s: rng.standard_normal(n) for s in DEMO_SYMBOLS}
    range_noise = {s: np.abs(rng.standard_normal((2, n))) for s in DEMO_SYMBOLS}
    volume_noise = {s: rng.standard_normal(n) for s in DEMO_SYMBOLS}
    regime_uniforms = rng.random(n)
    # A BTC look-alike nobody trades: in the null variant it replaces the lagged BTC term, so SPY keeps the
    # same volatility (including what accumulates while its market is closed) with nothing to lead it.
    phantom_shocks = _student_t_unit(rng, config.t_degrees_of_freedom, n)
    phantom_drift_noise = rng.standard_normal(n)

    params = {
        s: tuple(_per_bar(spec, bar_days, config.drift_fraction) for spec in config.regimes[s]) for s in DEMO_SYMBOLS
    }
    transition = _sticky_transition_matrix(np.asarray(config.regime_duration_days) / bar_days)
    stationary = _stationary_distribution(transition)
    if variant == "planted":
        labels = _markov_chain(transition, stationary, regime_uniforms)
        regime_names, lag = REGIME_NAMES, span.lag_bars
    else:
        params = {s: (_average_regime(regimes, stationary),) for s, regimes in params.items()}
        labels = np.zeros(n, dtype=np.int64)
        regime_names, lag = NULL_REGIME_NAMES, None
        transition = np.ones((1, 1))

    open_market = _equity_session(clock, span)
    latent: dict[str, np.ndarray] = {}
    for symbol in DEMO_SYMBOLS:
        scale = np.ones(n) if symbol == LEADER else np.where(open_market, 1.0, config.closed_noise_scale)
        latent[symbol] = _regime_garch_returns(params[symbol], labels, shocks[symbol], drift_noise[symbol],
                                               config, scale)
    if lag is not None:
        driver = np.zeros(n)
        driver[lag:] = latent[LEADER][:-lag]  # BTC's return L bars earlier
    else:
        driver = _regime_garch_returns(params[LEADER], labels, phantom_shocks, phantom_drift_noise, config, np.ones(n))
    # The driver runs at full size while the equity market is closed: it piles up into the next open.
    latent["SPY"] = latent["SPY"] + config.beta_lead * driver
    latent["AAPL"] = latent["AAPL"] + config.beta_spy * latent["SPY"]

    bars: dict[str, pd.DataFrame] = {}
    for symbol in DEMO_SYMBOLS:
        trading = np.ones(n, dtype=bool) if symbol == LEADER else open_market
        session_factor = 1.0 if symbol == LEADER else _session_volume_factor(span)
        bars[symbol] = _ohlcv(
            clock, latent[symbol], trading, config.start_prices[interval][symbol],
            _typical_volatility(params[symbol], stationary), range_noise[symbol], volume_noise[symbol],
            shocks[symbol], config.daily_volume[symbol] * bar_days * session_factor,
        )

    betas = {"AAPL": {"SPY": config.beta_spy}}
    if lag is not None:
        betas["SPY"] = {LEADER: config.beta_lead}
    truth = PlantedTruth(
        variant=variant,
        interval=interval,
        seed=seed,
        regimes=pd.Series(labels, index=pd.DatetimeIndex(clock, name="ts"), name="regime"),
        regime_names=regime_names,
        transition_matrix=transition,
        leader=LEADER,
        followers=FOLLOWERS,
        lag_bars=lag,
        betas=betas,
        regime_params={s: dict(zip(regime_names, params[s])) for s in DEMO_SYMBOLS},
        memory_order=_memory_order(params[LEADER], regime_names) if variant == "planted" else (),
    )
    return DemoMarket(interval=interval, bars=bars, truth=truth)


def _memory_order(regimes: tuple[RegimeParams, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    order = sorted(range(len(regimes)), key=lambda k: -regimes[k].drift_half_life_bars)
    return tuple(names[k] for k in order)


def _student_t_unit(rng: np.random.Generator, dof: float, n: int) -> np.ndarray:
    """Student-t draws rescaled to unit variance, so a regime's volatility means what it says."""
    return rng.standard_t(dof, n) / math.sqrt(dof / (dof - 2.0))


def _per_bar(spec: RegimeSpec, bar_days: float, drift_fraction: float) -> RegimeParams:
    # Means scale with the bar length, shock volatility with its square root. A trend's half-life is a time
    # span, so in bars it grows as bars shrink; its std scales like a mean, which keeps the trend's share of
    # the variance over a whole day the same for 1d and 1h bars. A choppy drift is bar-to-bar noise with a
    # sign flip, so it scales like the shock.
    if spec.choppy:
        rho = CHOPPY_RHO
        half_life_bars = math.log(2) / -math.log(abs(CHOPPY_RHO))
        drift_std = drift_fraction * spec.volatility * math.sqrt(bar_days)
    else:
        half_life_bars = spec.drift_half_life_days / bar_days
        rho = 0.5 ** (1.0 / half_life_bars)
        drift_std = drift_fraction * spec.volatility * bar_days
    return RegimeParams(
        mean_return=spec.mean_return * bar_days,
        volatility=spec.volatility * math.sqrt(bar_days),
        drift_rho=rho,
        drift_std=drift_std,
        drift_half_life_bars=half_life_bars,
    )


def _average_regime(regimes: tuple[RegimeParams, ...], stationary: np.ndarray) -> RegimeParams:
    """The null variant's single regime: the planted regimes' long-run mean and variance, no drift memory
    (the drift's variance is folded into the shock so the per-bar volatility stays the same)."""
    mean = float(sum(p * r.mean_return for p, r in zip(stationary, regimes)))
    variance = float(sum(p * (r.volatility**2 + r.drift_std**2) for p, r in zip(stationary, regimes)))
    return RegimeParams(mean, math.sqrt(variance), drift_rho=0.0, drift_std=0.0, drift_half_life_bars=0.0)


def _sticky_transition_matrix(durations_bars: np.ndarray) -> np.ndarray:
    k = len(durations_bars)
    stay = 1.0 - 1.0 / durations_bars  # geometric spells with these means
    matrix = np.empty((k, k))
    for i in range(k):
        matrix[i, :] = (1.0 - stay[i]) / (k - 1)
        matrix[i, i] = stay[i]
    return matrix


def _stationary_distribution(transition: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eig(transition.T)
    vector = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    return vector / vector.sum()


def _markov_chain(transition: np.ndarray, stationary: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(transition, axis=1)
    labels = np.empty(len(uniforms), dtype=np.int64)
    state = int(np.searchsorted(np.cumsum(stationary), uniforms[0]))
    labels[0] = state
    for t in range(1, len(uniforms)):
        state = min(int(np.searchsorted(cumulative[state], uniforms[t])), len(stationary) - 1)
        labels[t] = state
    return labels


def _regime_garch_returns(
    regimes: tuple[RegimeParams, ...],
    labels: np.ndarray,
    shocks: np.ndarray,
    drift_noise: np.ndarray,
    config: DemoConfig,
    noise_scale: np.ndarray,
) -> np.ndarray:
    """r_t = mu_k + drift_std_k * u_t + scale_t * sigma_t * z_t, where sigma_t is GARCH(1,1) around regime k's
    volatility and u_t = rho_k u_{t-1} + sqrt(1 - rho_k^2) eta_t has unit variance. Keeping the drift in
    standard units means a regime switch rescales it at once (a choppy drift does not linger in a calm
    trend). Shapes: every array (time,)."""
    mean = np.array([r.mean_return for r in regimes])[labels]
    target_var = np.array([r.volatility**2 for r in regimes])[labels]
    drift_std = np.array([r.drift_std for r in regimes])[labels]
    rho = np.array([r.drift_rho for r in regimes])[labels]
    drift_innovation = np.sqrt(1.0 - rho**2) * drift_noise
    alpha, beta = config.garch_alpha, config.garch_beta
    omega = (target_var * (1.0 - alpha - beta)).tolist()
    # The recursions depend on their own past, so they loop; plain floats keep 26k steps in a few ms.
    z = shocks.tolist()
    rho_list = rho.tolist()
    innovation = drift_innovation.tolist()
    variance = float(target_var[0])
    drift = 0.0
    previous_shock = 0.0
    sigma = [0.0] * len(z)
    drifts = [0.0] * len(z)
    for t in range(len(z)):
        variance = omega[t] + alpha * previous_shock * previous_shock + beta * variance
        s = math.sqrt(variance)
        previous_shock = s * z[t]
        drift = rho_list[t] * drift + innovation[t]
        sigma[t] = s
        drifts[t] = drift
    return mean + drift_std * np.asarray(drifts) + noise_scale * np.asarray(sigma) * shocks


def _equity_session(clock: pd.DatetimeIndex, span: SpanConfig) -> np.ndarray:
    weekday = clock.day_of_week.to_numpy() < 5
    if span.session_open_hours_utc is None:
        return weekday
    return weekday & np.isin(clock.hour.to_numpy(), span.session_open_hours_utc)


def _session_volume_factor(span: SpanConfig) -> float:
    """An equity's daily volume is spread over its session bars only."""
    return 1.0 if span.session_open_hours_utc is None else 24.0 / len(span.session_open_hours_utc)


def _typical_volatility(regimes: tuple[RegimeParams, ...], stationary: np.ndarray) -> float:
    """Long-run per-bar shock volatility: sets how far high/low reach beyond open/close."""
    if len(regimes) == 1:
        return regimes[0].volatility
    return float(math.sqrt(sum(p * r.volatility**2 for p, r in zip(stationary, regimes))))


def _ohlcv(
    clock: pd.DatetimeIndex,
    log_returns: np.ndarray,
    trading: np.ndarray,
    start_price: float,
    typical_vol: float,
    range_noise: np.ndarray,
    volume_noise: np.ndarray,
    shocks: np.ndarray,
    volume_per_bar: float,
) -> pd.DataFrame:
    """Bars from log returns on the full clock; only bars where `trading` holds are kept.

    open(t) = price before bar t (close of the previous clock bar, so a session's first bar opens at the gap);
    high/low stretch beyond open/close by half-normal multiples of the typical bar volatility.
    """
    log_price = math.log(start_price) + np.cumsum(log_returns)
    close = np.exp(log_price)
    open_ = np.exp(np.concatenate([[math.log(start_price)], log_price[:-1]]))
    high = np.maximum(open_, close) * np.exp(0.5 * typical_vol * range_noise[0])
    low = np.minimum(open_, close) * np.exp(-0.5 * typical_vol * range_noise[1])
    # Busier bars trade more: volume grows with the size of the shock.
    volume = volume_per_bar * np.exp(0.25 * volume_noise) * (0.6 + 0.4 * np.abs(shocks))
    frame = pd.DataFrame({"ts": clock, "open": open_, "high": high, "low": low, "close": close, "volume": volume})
    return frame.loc[trading, list(BAR_COLUMNS)].reset_index(drop=True)
