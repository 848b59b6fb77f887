"""The planted-market family (SYNTHETIC): many seeded markets with known truth, to test and choose the recipe on.

The demo (storage/sources/demo.py) is one planted market; the product's claims and recipe are chosen on this
family and reported on members never used to choose them (`family_split`). Each member is a small market of 2..4
assets whose structure is drawn from its seed, and comes as a `LoadedPanel` (aligned by `storage.panel.align_as_of`,
like `demo_panel`) whose `truth` is a `FamilyTruth` saying what was planted, row by row.

    from storage.sources.planted_family import family_member, family_split
    member = family_member(12)                     # kind drawn from the seed
    member = family_member(12, kind="null")        # same assets, volatilities and shocks, nothing planted
    member.truth.leads, member.truth.regimes, member.truth.oracle_mean
    family_split(50)                               # {"validation": [...50 seeds], "held_out": [...50 seeds]}

Kinds (drawn from the seed with `FamilySpec.kind_weights`, or chosen):

    null           independent random walks: one regime, no lead; heavy tails and volatility clustering   20 %
    lead           a leader and 1..2 followers at lags 1..6 rows; one regime                               25 %
    regimes        1..3 volatility regimes (sticky Markov chain shared by the assets); no lead             20 %
    memory         2..3 regimes whose volatility memory differs (long vs short EMA half-life); no lead     15 %
    lead+regimes   both                                                                                    15 %
    lead+memory    both                                                                                     5 %

Every draw is made whatever the kind, from streams of their own, so `family_member(s, "null")` and
`family_member(s, "lead")` share their assets, volatilities and shocks: a paired negative control.

Parameter ranges (FamilySpec; uniform unless said otherwise):

- Clock: `n_bars` rows of the interval from `start` (a Monday, 00:00 UTC); 1h default 8,760 rows (a year),
  1d default 3,000 rows. Only "1h" and "1d".
- Assets: 2..4 (uniform). The first is always a 24/7 asset, so the panel's clock has a row for every bar of the
  span and leads are counted on those rows; each further asset is a session asset with probability 0.5. Names:
  C0, C1, ... (24/7, trade every row), E0, E1, ... (sessions: weekdays only; at 1h the seven bars opening
  14:00..20:00 UTC, like the demo; at 1d every weekday; no holidays, no DST).
- Own returns (every asset, every kind), with zero mean in every regime:
      r_t = s_t * sigma_k(t) * sqrt(h_t) * z_t
  z Student-t, df 4..8 per asset, scaled to unit variance; sigma_k the regime's per-bar volatility (long-run
  daily volatility 1 %..4 % per asset, times sqrt(bar length in days)); s_t = 1 while the asset trades and the
  closed-noise scale 0.2..0.5 while a session asset's market is closed (what piles up into its next open);
  h_t the volatility clustering, a GARCH(1,1) written as an EMA of past standardised squared shocks:
      h_t = (1 - w) + w * M_t,   M_t = d * M_(t-1) + (1 - d) * h_(t-1) * z_(t-1)^2,   d = 0.5 ** (1 / H)
  with memory half-life H (in the asset's own open bars; M does not move while its market is closed) and weight
  w (E[h] = 1, so sigma_k is the regime's root-mean-square volatility). Non-memory kinds: one H in 4..24 bars and
  w in 0.5..0.8 per asset, the same in every regime. Memory kinds: per asset and regime, H in 48..192 ("long
  memory"), 8..24 ("medium", with 3 regimes) or 1..3 bars ("short"), w in 0.7..0.9.
- Regimes (regimes, lead+regimes): 1, 2 or 3 (probabilities 0.2, 0.4, 0.4), ordered calm -> volatile; each
  step up multiplies the volatility by 1.5..2.5 (per asset). Memory kinds: 2 or 3 (equal odds), volatility ratio
  1.0..1.3 per step (the regimes differ in memory, hardly in level). Sticky chain: mean spell 5..40 days per
  regime, exits to the other regimes with equal odds. Volatilities are scaled so that the long-run (stationary)
  mix has the asset's daily volatility, the same as the one regime of a null or lead member of the same seed.
- Leads (lead kinds): a leader drawn among all assets (24/7 or session), 1..2 followers among the others, lags
  1..6 rows each (1..2 when both are 1h session assets: a longer lag would reach mostly across the close, where
  the lead only shows inside the gap bar), strength b in 0.15..0.35 with a random sign;
  beta = b * sigma_target / sigma_source (long-run per-bar own volatilities), so where the source traded `lag`
  rows earlier the lead explains b^2 / (1 + b^2) = 2 %..11 % of the target's in-session bar variance. Why: the
  OLS estimate of b has a standard error of about 1 / sqrt(n) on n usable bars, more where the target's gap bars
  add noise. At the default sizes (a year of hourly rows: ~1,800 session bars; 3,000 daily rows: ~2,100
  weekdays) the weakest lead should stand at t >= 4, above a Benjamini-Hochberg cut over the ~100 (pair, lag)
  tests of a lead-lag scan. Measured over seeds 0..79 (106 leads per interval), OLS of the target on the source's
  return at the planted lag gave |t| >= 4.6 at 1h and >= 4.0 at 1d (medians 14.5 and 11.6). The strongest
  stays near the demo's (correlation ~0.29 at 1h). Real lead-lags between liquid markets are weaker than the
  weakest here: the family asks "does the recipe find a lead that is there", not "is this realistic".
- What a lead is, on the panel's rows (`CLOSED_RULE`): target's latent return at row t gets beta * R_src(t - lag),
  R_src the source's own-bar log return on the panel at that row (close to its previous own close, so a session
  source's first bar after a close carries its gap) and 0 where the source has no bar. The latent return runs at
  every row; a session target's return at its first bar after a close is the sum of its latent returns over the
  closed rows and that bar, so it contains beta * R_src(s - lag) for every row s from the first closed row through
  the open bar. Everything in it was known at the previous row, so the oracle can use it.
- Prices and volumes: start price log-uniform 20..50,000, daily volume log-uniform 1e4..1e8; bars from the
  cumulative latent return on every row (open = previous row's close, so a session's first bar opens at the
  gap); high/low and volume as in the demo (storage.sources.demo._ohlcv).

Truth (`FamilyTruth`, frozen, `to_dict()` is JSON): the kind, the assets and which trade 24/7, the planted leads
(target, source, lag_bars, beta) and their strengths, the indirect leads two followers of one leader show, the
regime label per (asset, row), the per-regime volatility and memory half-life per asset, the memory order, and
the oracle's conditional mean of every asset's 1-bar own return at every row (NaN where it has no return): the
generating process's own E[r_t | everything up to row t-1]. All means are zero, so that is the lead term alone:
exactly 0 on members without a lead. A benchmark scores "share of the oracle's MSE reduction captured" as
(MSE(zero) - MSE(model)) / (MSE(zero) - MSE(oracle)).

A 3-asset 1h member of 8,760 rows takes 0.05-0.1 s (the volatility recursion loops in plain floats).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from storage.config import INTERVAL_SECONDS
from storage.panel import PANEL_FIELDS, LoadedPanel, Panel, align_as_of, check_panel
from storage.sources.demo import (
    _ohlcv,
    _stationary_distribution,
    _sticky_transition_matrix,
    _student_t_unit,
)

KINDS: tuple[str, ...] = ("null", "lead", "regimes", "memory", "lead+regimes", "lead+memory")
FAMILY_INTERVALS: tuple[str, ...] = ("1h", "1d")
DEFAULT_N_BARS: dict[str, int] = {"1h": 8760, "1d": 3000}
SESSION_OPEN_HOURS_UTC: tuple[int, ...] = tuple(range(14, 21))  # 1h session bars open 14:00..20:00 UTC
CLOSED_RULE = (
    "target's latent return at panel row t contains beta * R_src(t - lag), R_src = the source's own-bar log return "
    "at that row (close over its previous own close, gaps included) and 0 where the source has no bar; the latent "
    "return runs at every row, so a session target's return at its first bar after a close contains "
    "beta * R_src(s - lag) for every row s from the first closed row through that bar"
)
_VOLATILITY_NAMES = {1: ("single",), 2: ("calm", "volatile"), 3: ("calm", "normal", "volatile")}
_MEMORY_NAMES = {2: ("long memory", "short memory"), 3: ("long memory", "medium memory", "short memory")}


class PlantedLead(NamedTuple):
    """The source's return `lag_bars` rows before the target's bar predicts it with loading `beta`."""

    target: str
    source: str
    lag_bars: int
    beta: float


@dataclass(frozen=True)
class FamilySpec:
    """The ranges every member is drawn from (see the module docstring). (low, high) pairs are inclusive."""

    kind_weights: tuple[tuple[str, float], ...] = (
        ("null", 0.20), ("lead", 0.25), ("regimes", 0.20), ("memory", 0.15), ("lead+regimes", 0.15),
        ("lead+memory", 0.05),
    )
    start: str = "2023-01-02"  # a Monday
    n_assets: tuple[int, int] = (2, 4)
    session_probability: float = 0.5  # for every asset after the first (which trades 24/7)
    daily_volatility: tuple[float, float] = (0.01, 0.04)
    t_dof: tuple[float, float] = (4.0, 8.0)
    closed_noise_scale: tuple[float, float] = (0.2, 0.5)
    memory_half_life: tuple[float, float] = (4.0, 24.0)  # bars; non-memory kinds, every regime
    memory_weight: tuple[float, float] = (0.5, 0.8)
    regime_counts: tuple[tuple[int, float], ...] = ((1, 0.2), (2, 0.4), (3, 0.4))
    regime_vol_step: tuple[float, float] = (1.5, 2.5)  # volatility ratio from one regime to the next
    mean_spell_days: tuple[float, float] = (5.0, 40.0)
    memory_regime_counts: tuple[tuple[int, float], ...] = ((2, 0.5), (3, 0.5))
    long_memory_half_life: tuple[float, float] = (48.0, 192.0)
    medium_memory_half_life: tuple[float, float] = (8.0, 24.0)
    short_memory_half_life: tuple[float, float] = (1.0, 3.0)
    memory_kind_weight: tuple[float, float] = (0.7, 0.9)
    memory_vol_step: tuple[float, float] = (1.0, 1.3)
    n_followers: tuple[int, int] = (1, 2)
    lag_bars: tuple[int, int] = (1, 6)
    lead_strength: tuple[float, float] = (0.15, 0.35)  # |beta| * sigma_source / sigma_target
    start_price: tuple[float, float] = (20.0, 50_000.0)  # log-uniform
    daily_volume: tuple[float, float] = (1e4, 1e8)  # log-uniform


@dataclass(frozen=True)
class MemberSpec:
    """Everything drawn for one member: generating it is deterministic given this. Per-asset tuples follow
    `assets`; (asset, regime) tuples of tuples follow `assets` then `regime_names`. Volatilities are per bar."""

    seed: int
    kind: str
    interval: str
    n_bars: int
    start: str
    assets: tuple[str, ...]
    always_open: tuple[bool, ...]
    leads: tuple[PlantedLead, ...]
    lead_strengths: tuple[float, ...]  # per lead: beta * sigma_source / sigma_target
    regime_names: tuple[str, ...]
    mean_spell_bars: tuple[float, ...]  # per regime (inf with one regime)
    volatility: tuple[tuple[float, ...], ...]  # (asset, regime): sigma_k, per bar
    memory_half_life: tuple[tuple[float, ...], ...]  # (asset, regime): H, own open bars
    memory_weight: tuple[tuple[float, ...], ...]  # (asset, regime): w
    t_dof: tuple[float, ...]
    closed_noise_scale: tuple[float, ...]  # 1.0 for 24/7 assets (never closed)
    start_price: tuple[float, ...]
    daily_volume: tuple[float, ...]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["leads"] = [lead._asdict() for lead in self.leads]
        out["mean_spell_bars"] = [None if math.isinf(x) else x for x in self.mean_spell_bars]
        return out


@dataclass(frozen=True, eq=False)
class FamilyTruth:
    """What was planted in one member. Rows are the panel's rows; arrays are read-only by convention."""

    seed: int
    kind: str
    interval: str
    ts: pd.DatetimeIndex  # (T,) the panel's clock
    assets: tuple[str, ...]
    always_open: tuple[bool, ...]  # per asset: trades every row (24/7)
    leads: tuple[PlantedLead, ...]  # planted; lag counted on the panel's rows
    lead_strengths: tuple[float, ...]  # per lead: beta * sigma_source / sigma_target (long-run, per bar)
    # Not planted but implied: two followers of one leader at lags L1 > L2 make the second lead the first by
    # L1 - L2 rows (beta from long-run in-session variances, approximate). A pairwise test finds these too.
    implied_leads: tuple[PlantedLead, ...]
    closed_rule: str  # what a follower's return contains across a closed period (CLOSED_RULE)
    regime_names: tuple[str, ...]  # ("single",) when nothing switches
    regimes: np.ndarray  # (A, T) int regime index per asset and row (the chain runs on closed rows too)
    transition_matrix: np.ndarray  # (K, K), rows sum to 1
    regime_volatility: np.ndarray  # (A, K) per-bar volatility of the asset's own shock while trading
    memory_half_life: np.ndarray  # (A, K) half-life of the volatility EMA, in the asset's own open bars
    memory_weight: np.ndarray  # (A, K) the EMA's share of the conditional variance
    memory_order: tuple[str, ...]  # memory kinds: regimes by memory half-life, longest first; () otherwise
    t_dof: tuple[float, ...]
    closed_noise_scale: tuple[float, ...]
    oracle_mean: np.ndarray  # (A, T) E[own-bar log return at row t | all up to row t-1]; NaN where no return

    @property
    def has_lead(self) -> bool:
        return bool(self.leads)

    def regime_series(self, asset: str | int = 0) -> pd.Series:
        """One asset's regime labels indexed by the panel's ts (the demo truth's `regimes` shape)."""
        index = asset if isinstance(asset, int) else self.assets.index(asset)
        return pd.Series(self.regimes[index], index=self.ts, name="regime")

    def to_dict(self) -> dict:
        """Plain JSON types: NaN becomes None, timestamps ISO strings (json.dumps(..., allow_nan=False) works)."""
        return {
            "seed": self.seed, "kind": self.kind, "interval": self.interval,
            "ts": [stamp.isoformat() for stamp in self.ts],
            "assets": list(self.assets), "always_open": list(self.always_open),
            "leads": [lead._asdict() for lead in self.leads], "lead_strengths": list(self.lead_strengths),
            "implied_leads": [lead._asdict() for lead in self.implied_leads],
            "closed_rule": self.closed_rule,
            "regime_names": list(self.regime_names),
            "regimes": np.asarray(self.regimes).tolist(),
            "transition_matrix": np.asarray(self.transition_matrix).tolist(),
            "regime_volatility": np.asarray(self.regime_volatility).tolist(),
            "memory_half_life": np.asarray(self.memory_half_life).tolist(),
            "memory_weight": np.asarray(self.memory_weight).tolist(),
            "memory_order": list(self.memory_order),
            "t_dof": list(self.t_dof), "closed_noise_scale": list(self.closed_noise_scale),
            "oracle_mean": [[None if not math.isfinite(x) else x for x in row]
                            for row in np.asarray(self.oracle_mean).tolist()],
        }


# --- the family -----------------------------------------------------------------------------------------------


def family_split(n_members: int, seed: int = 0) -> dict[str, list[int]]:
    """Disjoint member seeds: "validation" (choose settings on these) and "held_out" (report on these), n_members
    each. Seeds interleave from a base set by `seed`, so a longer split extends a shorter one and the two lists
    never share a member, whatever n_members."""
    if n_members < 1 or seed < 0:
        raise ValueError(f"family_split needs n_members >= 1 and seed >= 0, got {n_members} and {seed}")
    base = 1_000_000 * (int(seed) + 1)
    return {"validation": [base + 2 * i for i in range(n_members)],
            "held_out": [base + 2 * i + 1 for i in range(n_members)]}


def member_kind(seed: int, family: FamilySpec = FamilySpec()) -> str:
    """The kind the seed draws (its own stream: choosing a kind changes no other draw)."""
    names = [name for name, _ in family.kind_weights]
    weights = np.array([weight for _, weight in family.kind_weights], dtype=float)
    return str(names[int(_rng(seed, 0).choice(len(names), p=weights / weights.sum()))])


def family_member(
    seed: int,
    kind: str | None = None,
    interval: str = "1h",
    n_bars: int | None = None,
    *,
    n_assets: int | None = None,
    family: FamilySpec = FamilySpec(),
) -> LoadedPanel:
    """One member (SYNTHETIC) as a LoadedPanel with its FamilyTruth; deterministic per arguments."""
    return member_panel(draw_member_spec(seed, kind, interval, n_bars, n_assets=n_assets, family=family))


def draw_member_spec(
    seed: int,
    kind: str | None = None,
    interval: str = "1h",
    n_bars: int | None = None,
    *,
    n_assets: int | None = None,
    family: FamilySpec = FamilySpec(),
) -> MemberSpec:
    """Draw a member's structure from its seed. Every draw is made whatever the kind, in one order, so members of
    one seed differ only in what their kind plants."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"a member's seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    kind = member_kind(seed, family) if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"member kind {kind!r} is not known: choose one of {', '.join(KINDS)}")
    if interval not in FAMILY_INTERVALS:
        raise ValueError(f"the planted family has no {interval!r} bars: choose one of {', '.join(FAMILY_INTERVALS)}")
    bars_per_day = 86400 / INTERVAL_SECONDS[interval]
    n_bars = DEFAULT_N_BARS[interval] if n_bars is None else int(n_bars)
    if n_bars < 14 * bars_per_day:
        raise ValueError(f"a member needs at least two weeks of bars ({int(14 * bars_per_day)} at {interval})")
    bar_days = 1.0 / bars_per_day
    rng = _rng(seed, 1)

    # Assets: the first trades 24/7 (it carries the panel's clock), the others 24/7 or in sessions.
    drawn_assets = int(rng.integers(family.n_assets[0], family.n_assets[1] + 1))
    count = drawn_assets if n_assets is None else int(n_assets)
    if not 2 <= count <= 10:
        raise ValueError(f"n_assets must be 2..10, got {n_assets}")
    session = [False] + [bool(rng.random() < family.session_probability) for _ in range(max(count, 4) - 1)]
    session = session[:count]
    n_open, n_session = session.count(False), session.count(True)
    names_24_7, names_session = [f"C{i}" for i in range(n_open)], [f"E{i}" for i in range(n_session)]
    assets = tuple(names_24_7 + names_session)
    always_open = tuple([True] * n_open + [False] * n_session)
    a = len(assets)
    per_asset = max(a, 4)  # draw for 4 assets at least, so n_assets picks a prefix of the same draws

    daily_vol = rng.uniform(*family.daily_volatility, per_asset)[:a]
    t_dof = rng.uniform(*family.t_dof, per_asset)[:a]
    closed_scale = rng.uniform(*family.closed_noise_scale, per_asset)[:a]
    base_half_life = rng.uniform(*family.memory_half_life, per_asset)[:a]
    base_weight = rng.uniform(*family.memory_weight, per_asset)[:a]
    start_price = np.exp(rng.uniform(*np.log(family.start_price), per_asset))[:a]
    daily_volume = np.exp(rng.uniform(*np.log(family.daily_volume), per_asset))[:a]

    # Volatility regimes (regimes kinds) and memory regimes (memory kinds), both always drawn.
    counts, odds = zip(*family.regime_counts)
    n_vol_regimes = int(rng.choice(counts, p=np.asarray(odds) / sum(odds)))
    vol_steps = rng.uniform(*family.regime_vol_step, (per_asset, 2))[:a]
    spell_days = rng.uniform(*family.mean_spell_days, 3)
    counts, odds = zip(*family.memory_regime_counts)
    n_memory_regimes = int(rng.choice(counts, p=np.asarray(odds) / sum(odds)))
    memory_levels = np.stack([rng.uniform(*family.long_memory_half_life, per_asset),
                              rng.uniform(*family.medium_memory_half_life, per_asset),
                              rng.uniform(*family.short_memory_half_life, per_asset)], axis=1)[:a]
    memory_weights = rng.uniform(*family.memory_kind_weight, (per_asset, 3))[:a]
    memory_steps = rng.uniform(*family.memory_vol_step, (per_asset, 2))[:a]

    # Leads (lead kinds), always drawn.
    leader = int(rng.integers(0, a))
    others = [i for i in rng.permutation(a).tolist() if i != leader]
    n_followers = min(int(rng.integers(family.n_followers[0], family.n_followers[1] + 1)), len(others))
    lags = rng.integers(family.lag_bars[0], family.lag_bars[1] + 1, 2)
    strengths = rng.uniform(*family.lead_strength, 2) * np.where(rng.random(2) < 0.5, -1.0, 1.0)

    parts = kind.split("+")
    if "memory" in parts:
        k = n_memory_regimes
        regime_names = _MEMORY_NAMES[k]
        levels = [0, 1, 2] if k == 3 else [0, 2]  # long, (medium,) short
        half_life = memory_levels[:, levels]
        weight = memory_weights[:, levels]
        multipliers = np.cumprod(np.hstack([np.ones((a, 1)), memory_steps[:, : k - 1]]), axis=1)
    else:
        k = n_vol_regimes if "regimes" in parts else 1
        regime_names = _VOLATILITY_NAMES[k]
        half_life = np.repeat(base_half_life[:, None], k, axis=1)
        weight = np.repeat(base_weight[:, None], k, axis=1)
        multipliers = np.cumprod(np.hstack([np.ones((a, 1)), vol_steps[:, : k - 1]]), axis=1)
    mean_spell_bars = tuple(float(d * bars_per_day) for d in spell_days[:k]) if k > 1 else (math.inf,)
    stationary = _stationary(mean_spell_bars)
    # The stationary mix of the regimes has the asset's long-run volatility, whatever the kind.
    long_run = daily_vol * math.sqrt(bar_days)
    volatility = long_run[:, None] * multipliers / np.sqrt(multipliers**2 @ stationary)[:, None]

    leads: list[PlantedLead] = []
    lead_strengths: list[float] = []
    if "lead" in parts:
        for j, target in enumerate(others[:n_followers]):
            beta = float(strengths[j] * long_run[target] / long_run[leader])
            lag = int(lags[j])
            if interval == "1h" and not always_open[target] and not always_open[leader]:
                lag = 1 + (lag - 1) % 2  # 1..2: a longer one would mostly reach across the close, into the gap
            leads.append(PlantedLead(assets[target], assets[leader], lag, beta))
            lead_strengths.append(float(strengths[j]))

    return MemberSpec(
        seed=seed, kind=kind, interval=interval, n_bars=n_bars, start=family.start, assets=assets,
        always_open=always_open, leads=tuple(leads), lead_strengths=tuple(lead_strengths), regime_names=regime_names,
        mean_spell_bars=mean_spell_bars, volatility=_rows(volatility), memory_half_life=_rows(half_life),
        memory_weight=_rows(weight), t_dof=tuple(map(float, t_dof)),
        closed_noise_scale=tuple(1.0 if open_ else float(s) for open_, s in zip(always_open, closed_scale)),
        start_price=tuple(map(float, start_price)), daily_volume=tuple(map(float, daily_volume)),
    )


def member_panel(spec: MemberSpec) -> LoadedPanel:
    """Generate the member a spec describes and align it like demo_panel does."""
    n, a, interval = spec.n_bars, len(spec.assets), spec.interval
    step = pd.Timedelta(seconds=INTERVAL_SECONDS[interval])
    clock = pd.date_range(pd.Timestamp(spec.start, tz="UTC"), periods=n, freq=step, unit="us")
    trading = np.stack([np.ones(n, dtype=bool) if open_ else _session(clock, interval)
                        for open_ in spec.always_open])  # (A, T)
    if not trading[0].all():
        raise ValueError("a member's first asset must trade 24/7: it carries the panel's clock")

    # Shocks from a stream of their own, drawn for every asset in one order whatever the kind.
    rng = _rng(spec.seed, 2)
    shocks = [_student_t_unit(rng, dof, n) for dof in spec.t_dof]
    range_noise = [np.abs(rng.standard_normal((2, n))) for _ in range(a)]
    volume_noise = [rng.standard_normal(n) for _ in range(a)]
    regime_uniforms = rng.random(n)

    k = len(spec.regime_names)
    if k > 1:
        transition = _sticky_transition_matrix(np.asarray(spec.mean_spell_bars))
        labels = _markov_chain(transition, _stationary_distribution(transition), regime_uniforms)
    else:
        transition, labels = np.ones((1, 1)), np.zeros(n, dtype=np.int64)

    volatility = np.asarray(spec.volatility)
    latent = np.empty((a, n))
    for i in range(a):
        scale = np.where(trading[i], 1.0, spec.closed_noise_scale[i])
        latent[i] = scale * volatility[i, labels] * _clustered_scale(
            shocks[i], labels, trading[i], np.asarray(spec.memory_half_life[i]), np.asarray(spec.memory_weight[i]))
        latent[i] *= shocks[i]

    # Leads: sources are never targets, so their returns are final before any target uses them.
    index = {name: i for i, name in enumerate(spec.assets)}
    lead_term = np.zeros((a, n))
    for lead in spec.leads:
        source_returns = np.nan_to_num(_own_bar_sums(latent[index[lead.source]], trading[index[lead.source]]))
        lead_term[index[lead.target], lead.lag_bars:] += lead.beta * source_returns[: n - lead.lag_bars]
    latent += lead_term
    oracle = np.stack([_own_bar_sums(lead_term[i], trading[i]) for i in range(a)])  # (A, T)

    frames = []
    for i in range(a):
        volume_per_bar = spec.daily_volume[i] / (trading[i].mean() * 86400 / step.total_seconds())
        frames.append(_ohlcv(clock, latent[i], trading[i], spec.start_price[i], float(volatility[i].mean()),
                             range_noise[i], volume_noise[i], shocks[i], volume_per_bar))
    panel = _aligned_panel(frames, spec.assets, interval)
    if len(panel.ts) != n or not np.array_equal(panel.observed, trading.T):
        raise RuntimeError("storage.panel.align_as_of no longer puts one generator bar on one panel row: "
                           "the family's truth is indexed by rows and needs revisiting")

    kind_label = f"family:{spec.kind}:{spec.seed}"
    truth = FamilyTruth(
        seed=spec.seed, kind=spec.kind, interval=interval, ts=panel.ts, assets=spec.assets,
        always_open=spec.always_open, leads=spec.leads, lead_strengths=spec.lead_strengths,
        implied_leads=_implied_leads(spec), closed_rule=CLOSED_RULE, regime_names=spec.regime_names,
        regimes=np.repeat(labels[None, :], a, axis=0), transition_matrix=transition,
        regime_volatility=volatility, memory_half_life=np.asarray(spec.memory_half_life),
        memory_weight=np.asarray(spec.memory_weight), memory_order=_memory_order(spec), t_dof=spec.t_dof,
        closed_noise_scale=spec.closed_noise_scale, oracle_mean=oracle,
    )
    return LoadedPanel(panel, interval, tuple(kind_label for _ in spec.assets),
                       f"planted family member {spec.seed} ({spec.kind}) (SYNTHETIC)", synthetic=True, truth=truth)


# --- generation -----------------------------------------------------------------------------------------------


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _rows(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in np.asarray(matrix))


def _stationary(mean_spell_bars: tuple[float, ...]) -> np.ndarray:
    if len(mean_spell_bars) == 1:
        return np.ones(1)
    return _stationary_distribution(_sticky_transition_matrix(np.asarray(mean_spell_bars)))


def _session(clock: pd.DatetimeIndex, interval: str) -> np.ndarray:
    """Weekdays; at 1h only the bars opening 14:00..20:00 UTC (no holidays, no DST), as in the demo."""
    weekday = clock.day_of_week.to_numpy() < 5
    if interval == "1d":
        return weekday
    return weekday & np.isin(clock.hour.to_numpy(), SESSION_OPEN_HOURS_UTC)


def _markov_chain(transition: np.ndarray, stationary: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """(T,) states: the first from the stationary law, then row by row the first state whose cumulative transition
    probability reaches the uniform (the demo's rule, in plain floats: 10x faster for a few states)."""
    cumulative = np.cumsum(transition, axis=1).tolist()
    last = len(stationary) - 1
    u = uniforms.tolist()
    state = min(int(np.searchsorted(np.cumsum(stationary), u[0])), last)
    out = [state] * len(u)
    for t in range(1, len(u)):
        row, state = cumulative[state], 0
        while state < last and row[state] < u[t]:
            state += 1
        out[t] = state
    return np.asarray(out, dtype=np.int64)


def _clustered_scale(
    shocks: np.ndarray, labels: np.ndarray, trading: np.ndarray, half_life: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """(T,) sqrt(h_t): h_t = (1 - w) + w * M_t, M an EMA (half-life H own bars) of h * z^2 over the asset's open
    bars; w and H are the regime's (half_life, weight: (K,)). E[h] = 1. The recursion feeds on itself, so it
    loops, in plain floats (a few ms for 10k rows)."""
    decay = (0.5 ** (1.0 / half_life))[labels].tolist()
    w = weight[labels].tolist()
    z = shocks.tolist()
    is_open = trading.tolist()
    memory = 1.0
    out = [0.0] * len(z)
    for t in range(len(z)):
        h = 1.0 - w[t] + w[t] * memory
        out[t] = math.sqrt(h)
        if is_open[t]:  # a closed market's shocks do not move its volatility memory
            memory = decay[t] * memory + (1.0 - decay[t]) * h * z[t] * z[t]
    return np.asarray(out)


def _own_bar_sums(values: np.ndarray, trading: np.ndarray) -> np.ndarray:
    """(T,) the sum of values over the rows since the previous open row (exclusive) through this one, at open rows;
    NaN at closed rows and at the first open row (which has no previous close), like own_bar_log_returns."""
    out = np.full(len(values), np.nan)
    rows = np.flatnonzero(trading)
    cumulative = np.cumsum(values)
    out[rows[1:]] = np.diff(cumulative[rows])
    return out


def _implied_leads(spec: MemberSpec) -> tuple[PlantedLead, ...]:
    out = []
    sigma = {name: float(np.sqrt(np.mean(np.square(v)))) for name, v in zip(spec.assets, spec.volatility)}
    for first in spec.leads:
        for second in spec.leads:
            if first.source == second.source and first.lag_bars > second.lag_bars:
                source_var = sigma[first.source] ** 2
                second_var = sigma[second.target] ** 2 + second.beta**2 * source_var
                beta = first.beta * second.beta * source_var / second_var
                out.append(PlantedLead(first.target, second.target, first.lag_bars - second.lag_bars, beta))
    return tuple(out)


def _memory_order(spec: MemberSpec) -> tuple[str, ...]:
    if "memory" not in spec.kind.split("+"):
        return ()
    mean_half_life = np.mean(np.asarray(spec.memory_half_life), axis=0)
    return tuple(spec.regime_names[k] for k in np.argsort(-mean_half_life, kind="stable"))


def _aligned_panel(frames: list[pd.DataFrame], symbols: tuple[str, ...], interval: str) -> Panel:
    """Bars -> Panel through storage.panel.align_as_of, as demo_panel does."""
    asset = np.concatenate([np.full(len(f), i, dtype=np.int64) for i, f in enumerate(frames)])
    ts_us = np.concatenate([pd.DatetimeIndex(f["ts"]).as_unit("us").asi8 for f in frames])
    values = {name: np.concatenate([f[name].to_numpy(dtype=np.float64) for f in frames]) for name in PANEL_FIELDS}
    clock, fields, observed = align_as_of(asset, ts_us, values, len(symbols), None,
                                          interval_us=INTERVAL_SECONDS[interval] * 1_000_000)
    ts = pd.DatetimeIndex(clock.view("datetime64[us]"), name="ts").tz_localize("UTC")
    panel = Panel(ts=ts, symbols=symbols, fields=fields, observed=observed,
                  sources=tuple("family" for _ in symbols), interval=interval)
    check_panel(panel)
    return panel

