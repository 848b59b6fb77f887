"""Model-free lead-lag tests: does one asset's past return predict another's, beyond chance, after counting the tests?

The convention, in the words the Lead-lag page uses:

    lag k: the source's return k bars before the target's bar predicts it.

For each (target, source != target, lag k = 0..K) the target's own-bar log return at panel row t is regressed on
the source's own-bar log return at row t-k (ordinary least squares with an intercept), over the rows where the
target has a bar at t AND the source had a bar at t-k (storage.panel.own_bar_log_returns is NaN elsewhere, so a
closed market never contributes a carried price as a zero return). Standard errors are Newey-West (HAC, Bartlett
kernel, floor(4 (n/100)^(2/9)) lags unless given): returns are heteroskedastic and their squares cluster. Each test
gives a two-sided p (t distribution), and the Benjamini-Hochberg procedure runs over ALL the tests at once, every
pair and every lag, lag 0 included; its adjusted p is the q column, and a test is significant when q <= fdr.

Lag 0 is same-bar co-movement: the two returns happen over the same bar, so neither can be traded on the other. It
is reported (kind "co-movement") and never called a lead. A lead is a significant test at k >= 1.

"No lead-lag found" is a result like any other: LeadLagFindings.found is False and its summary says how many tests
were run at which false-discovery rate. Under the complete null (independent assets) Benjamini-Hochberg keeps the
chance of declaring ANY lead at or below fdr; tests/engine/lead_lag_markets.py measures that rate and the power on a
planted lead.

A lead of k bars shows in the model's attention at key lag k-1 (engine.diagnostics.lead_lag.key_lag_of_lead): the
map is read at the forecast origin for the next bar. engine.diagnostics.attention_null compares the two.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from storage.panel import Panel, own_bar_log_returns

COLUMNS = ("target", "source", "lag_bars", "kind", "beta", "corr", "t_stat", "p", "q", "n", "hac_lags", "significant")


def newey_west_lags(n: int) -> int:
    """The usual automatic bandwidth, floor(4 (n/100)^(2/9)) (Newey and West 1994), at least 1."""
    return max(1, int(np.floor(4.0 * (n / 100.0) ** (2.0 / 9.0))))


def _one_test(y: np.ndarray, x: np.ndarray, hac_lags: int | None) -> tuple[float, float, float, float, int]:
    """-> beta, corr, t-stat, two-sided p, HAC lags used. NaN when x or y does not vary."""
    import statsmodels.api as sm  # ~1 s to import: only when tests are run

    if np.std(x) == 0 or np.std(y) == 0:
        return np.nan, np.nan, np.nan, np.nan, 0
    lags = newey_west_lags(len(y)) if hac_lags is None else int(hac_lags)
    fit = sm.OLS(y, sm.add_constant(x, has_constant="add")).fit(
        cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": True}, use_t=True
    )
    corr = float(np.corrcoef(x, y)[0, 1])
    return float(fit.params[1]), corr, float(fit.tvalues[1]), float(fit.pvalues[1]), lags


def lead_lag_tests_on_returns(
    returns: np.ndarray,
    symbols: Sequence[str],
    max_lag: int,
    *,
    fdr: float = 0.05,
    min_bars: int = 30,
    hac_lags: int | None = None,
) -> pd.DataFrame:
    """returns (A, T) own-bar log returns, NaN where the asset has no bar -> one row per (target, source, lag).

    Columns: target, source, lag_bars (k: the source's return k bars before the target's bar), kind ("lead" for
    k >= 1, "co-movement" for k = 0), beta (OLS slope), corr (Pearson correlation over the same bars), t_stat (HAC),
    p (two-sided), q (Benjamini-Hochberg over every test run), n (bars counted), hac_lags, significant (q <= fdr).
    A test with fewer than min_bars bars is not run (p, q NaN; not significant) and not counted in the correction.
    """
    returns = np.asarray(returns, dtype=float)
    n_assets, n_rows = returns.shape if returns.ndim == 2 else (None, None)
    if returns.ndim != 2 or len(symbols) != n_assets:
        raise ValueError(f"returns must be (assets, time) for {len(symbols)} symbols, got shape {returns.shape}")
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0 bars, got {max_lag}")
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}")
    finite = np.isfinite(returns)
    records = []
    for target in range(n_assets):
        for source in range(n_assets):
            if source == target:
                continue
            for lag in range(max_lag + 1):
                if lag >= n_rows:
                    continue
                y = returns[target, lag:]
                x = returns[source, : n_rows - lag]
                both = finite[target, lag:] & finite[source, : n_rows - lag]
                n = int(both.sum())
                beta = corr = t_stat = p = np.nan
                lags_used = 0
                if n >= max(min_bars, 3):
                    beta, corr, t_stat, p, lags_used = _one_test(y[both], x[both], hac_lags)
                records.append({
                    "target": symbols[target], "source": symbols[source], "lag_bars": lag,
                    "kind": "lead" if lag >= 1 else "co-movement",
                    "beta": beta, "corr": corr, "t_stat": t_stat, "p": p, "n": n, "hac_lags": lags_used,
                })
    table = pd.DataFrame.from_records(records, columns=[c for c in COLUMNS if c not in ("q", "significant")])
    table["q"] = benjamini_hochberg(table["p"].to_numpy())
    table["significant"] = table["q"].le(fdr) & table["q"].notna()
    return table[list(COLUMNS)]


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q) over the finite entries of p; NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q


def lead_lag_tests(panel: Panel, max_lag: int, **options) -> pd.DataFrame:
    """lead_lag_tests_on_returns on the panel's own-bar log returns (see there for the columns and options)."""
    return lead_lag_tests_on_returns(own_bar_log_returns(panel), panel.symbols, max_lag, **options)


@dataclass(frozen=True)
class LeadLagFindings:
    """Every test and what they say together. `found` False is the first-class result "no lead-lag found"."""

    table: pd.DataFrame  # lead_lag_tests' rows, all of them
    fdr: float
    max_lag: int

    @property
    def n_tests(self) -> int:
        return int(self.table["p"].notna().sum())

    @property
    def leads(self) -> pd.DataFrame:
        """Significant tests at lag >= 1, strongest first (smallest p, then largest |t|)."""
        return self._significant(self.table["lag_bars"] >= 1)

    @property
    def comovement(self) -> pd.DataFrame:
        """Significant same-bar (lag 0) tests: co-movement, not a lead."""
        return self._significant(self.table["lag_bars"] == 0)

    @property
    def found(self) -> bool:
        return not self.leads.empty

    @property
    def top(self) -> pd.Series | None:
        """The strongest lead, None when no lead was found."""
        return None if self.leads.empty else self.leads.iloc[0]

    def _significant(self, where: pd.Series) -> pd.DataFrame:
        rows = self.table[where & self.table["significant"]].copy()
        rows["_abs_t"] = rows["t_stat"].abs()
        rows = rows.sort_values(["p", "_abs_t"], ascending=[True, False], kind="stable")
        return rows.drop(columns="_abs_t").reset_index(drop=True)

    def summary(self) -> str:
        """The findings in words."""
        n_leads = int((self.table["lag_bars"] >= 1).sum())
        counted = (f"{self.n_tests} tests in all (every pair at lags 0..{self.max_lag} bars), false-discovery rate "
                   f"{self.fdr:.0%}")
        lines = []
        if not self.found:
            lines.append(f"No lead-lag found: none of the {n_leads} lead tests (lags 1..{self.max_lag} bars) is "
                         f"significant; {counted}.")
        else:
            lines.append(f"{len(self.leads)} lead(s) found; {counted}. Lag k: the source's return k bars before the "
                         "target's bar predicts it.")
            lines += [f"  {_describe(row)}" for _, row in self.leads.iterrows()]
        if not self.comovement.empty:
            lines.append(f"Same-bar co-movement (lag 0, not a lead) in {len(self.comovement)} pair(s):")
            lines += [f"  {_describe(row)}" for _, row in self.comovement.iterrows()]
        return "\n".join(lines)


def _describe(row: pd.Series) -> str:
    if row["lag_bars"] == 0:
        head = f"{row['target']} moves with {row['source']} on the same bar"
    else:
        head = f"{row['source']} leads {row['target']} by {int(row['lag_bars'])} bar(s)"
    return (f"{head}: beta {row['beta']:.3g}, corr {row['corr']:.3f}, t {row['t_stat']:.2f}, p {row['p']:.2g}, "
            f"q {row['q']:.2g}, n {int(row['n']):,} bars")


def lead_lag_findings(panel: Panel, max_lag: int, *, fdr: float = 0.05, **options) -> LeadLagFindings:
    """Run every test on the panel and return the findings (LeadLagFindings.found False: no lead-lag found)."""
    return LeadLagFindings(lead_lag_tests(panel, max_lag, fdr=fdr, **options), fdr, max_lag)


def findings_on_returns(
    returns: np.ndarray, symbols: Sequence[str], max_lag: int, *, fdr: float = 0.05, **options
) -> LeadLagFindings:
    """lead_lag_findings on an (A, T) array of own-bar returns (NaN where the asset has no bar)."""
    return LeadLagFindings(lead_lag_tests_on_returns(returns, symbols, max_lag, fdr=fdr, **options), fdr, max_lag)
