"""Closed-form fits of the heads' linear skip paths (engine.model.heads.SkipPaths) on a fold's training rows.

Why closed form. On the planted family a lead that ordinary least squares finds in one pass over the training rows
(the target's return on the source's lagged returns) was only ~20 % learned by gradient descent before early
stopping ended training: the network fits the follower's own noise first and the best validation epoch came at
0 or 1. A volatility forecast lost to GARCH for the same reason. So the two statistical parts every market
needs are fitted exactly, and the network trains on what they leave:

  mean  per (target asset, horizon): the leads the findings' model-free test declares on the training rows alone
        (declared_leads; the same HAC regressions and Benjamini-Hochberg cut the Lead-lag page reports), then a ridge
        regression of the h-bar log return on each lead's forecastable part: the sum of the source's standardised
        ret_1 over the key lags a forecast can already see (lead_terms; more of them before a gap), each row
        weighted by 1 / the time its return spans (target_spans), the penalty chosen by 5-fold contiguous
        cross-validation (sklearn RidgeCV). No lead declared: the path stays at zero, so a market without a lead
        gets no lead-shaped noise. (A ridge on every source and lag instead captured
        ~50 % of the oracle's reduction on a weakly led equity, shrinking the one true coefficient with 17 empty
        ones; validation members, issue 15.)
  vol   per (asset, horizon): a Gamma GLM with a log link (statsmodels GLM, Gamma family) of the h-bar realised
        variance on the asset's own gap-scaled variance EWMAs and gap lengths, by IRLS. The Gamma deviance is QLIKE
        up to terms free of the forecast, so this is the QLIKE-optimal log-linear forecast: a HAR/GARCH-like
        recursion in logs.

Only the training rows' targets that end before the training span does (Targets.until) are used, as for the
network. The heads' own log-volatility column is zeroed so the forecast starts exactly at the fit (it starts at
the training scale, log s, which the vol path is fitted relative to); zero_init_centre does the same for the mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.features import FeatureSet
from engine.model.heads import SPAN_NEVER
from engine.targets import Targets

RIDGE_ALPHAS = np.logspace(-2, 5, 15)  # on standardised inputs: from almost OLS to almost nothing
LEAD_FDR = 0.05  # the lead-lag test's false-discovery rate, as the findings use it
CV_FOLDS = 5
GATE_CENTRE_P = 0.05  # gate_centre keeps the network's centre only on this one-sided evidence on validation
MIN_ROWS = 50  # fewer usable training rows than this for an (asset, horizon): that path stays at zero


@dataclass(frozen=True)
class SkipFit:
    """What the fits chose, for the training record: the ridge penalty per (asset, horizon) (NaN: not fitted)."""

    ridge_alpha: np.ndarray  # (A, H)
    n_rows: np.ndarray  # (A, H) training rows each fit used
    leads: dict  # target asset -> [[source, lead in bars], ...] the training rows' lead-lag test declared
    span_cuts: np.ndarray  # (A, G) the span feature's cut for "the next bar spans >= g + 2 rows" (SPAN_NEVER: never)

    def to_dict(self) -> dict:
        def finite(rows) -> list:  # None: not fitted, or never
            return [[None if not np.isfinite(v) or v >= SPAN_NEVER else float(v) for v in row] for row in rows]
        return {"ridge_alpha": finite(self.ridge_alpha), "n_rows": self.n_rows.tolist(), "leads": self.leads,
                "span_cuts": finite(self.span_cuts)}


def lagged_returns(values: np.ndarray, mask: np.ndarray, max_lag: int) -> np.ndarray:
    """values (A, T, F) standardised features, mask (A, T) -> (T, A_src * (K+1)): every source's ret_1 (feature 0)
    at lags 0..K, 0 where the source had no fresh bar or before the first row; the lead path's layout."""
    n_assets, n_rows, _ = values.shape
    ret = np.where(mask, values[:, :, 0], 0.0)  # (A, T)
    out = np.zeros((n_rows, n_assets, max_lag + 1), dtype=np.float64)
    for lag in range(max_lag + 1):
        out[lag:, :, lag] = ret[:, : n_rows - lag].T
    return out.reshape(n_rows, -1)


def declared_leads(returns: np.ndarray, train: range, max_lead: int) -> dict[int, list[tuple[int, int]]]:
    """target asset -> [(source asset, lead in bars)] that the findings' model-free lead-lag test
    (engine.diagnostics.lead_lag_test: HAC regressions, Benjamini-Hochberg at FDR) declares on the training rows
    alone, leads 1..max_lead. returns (A, T): the panel's own-bar log returns (storage.panel.own_bar_log_returns,
    NaN without a bar), exactly what the findings test. (The standardised ret_1 feature is winsorised at 0.5 %: on
    a session asset that clips the night's returns, and the test on it missed a lead the findings declare on the
    same rows; validation member 1000016.)"""
    from engine.diagnostics.lead_lag_test import lead_lag_tests_on_returns

    span = np.asarray(returns, dtype=np.float64)[:, train.start:train.stop]
    names = [str(i) for i in range(span.shape[0])]
    table = lead_lag_tests_on_returns(span, names, max_lead, fdr=LEAD_FDR)
    found = table[table["significant"] & (table["lag_bars"] >= 1)]
    leads: dict[int, list[tuple[int, int]]] = {}
    for row in found.itertuples():
        leads.setdefault(int(row.target), []).append((int(row.source), int(row.lag_bars)))
    return leads


def lead_terms(pairs, horizon: int, max_lag: int,
               gating: bool = False) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Per declared lead (source, L), the columns of lagged_returns' layout its one regressor sums for a forecast
    of the next `horizon` bars: (always, gated).

    always: the key lags the forecast can already see on bars of the usual spacing, max(0, L - horizon) .. L - 1.
    gated:  (column, g) for the lags below those, which count only when the horizon spans more rows than bars:
            across a close an equity's next return takes in the leader's moves over every closed row. Lag k
            counts when the horizon spans at least L - k rows; taking the horizon's later bars to span one row each
            (a lower bound), that is when the next bar spans at least m = L - k - horizon + 1 rows, and g = m - 2
            indexes SkipPaths.span_threshold. Only with gating.
    One regressor per lead, the lead's forecastable part (one coefficient, as the lead moves every lag it reaches
    by the same beta): per-lag coefficients on the gated lags, seen on the few bars before a gap, fitted noise
    (a model-free check on held-out member 1000031, issue 15; not run on the family)."""
    terms = []
    for source, lead in pairs:
        base = source * (max_lag + 1)
        always = [base + k for k in range(max(0, lead - horizon), min(lead, max_lag + 1))]
        gated = [(base + k, lead - k - horizon - 1) for k in range(min(lead - horizon, max_lag + 1))] \
            if gating else []
        if always or gated:
            terms.append((always, gated))
    return terms


def next_bar_rows(mask: np.ndarray) -> np.ndarray:
    """mask (T,) an asset's fresh bars -> (T,) how many rows ahead its next fresh bar lies (0 after its last)."""
    rows = np.flatnonzero(mask)
    out = np.zeros(len(mask), dtype=np.int64)
    if len(rows) > 1:
        out[rows[:-1]] = np.diff(rows)
    return out


def span_thresholds(feature: np.ndarray, spans: np.ndarray, n_cuts: int) -> np.ndarray:
    """feature (n,) the span feature at an asset's training bars, spans (n,) the rows each bar's next bar really
    came after -> (n_cuts,) for m = 2 .. n_cuts + 1 rows, the cut on the feature that best tells the bars whose
    next bar spans at least m rows (the most bars told right among the feature's own values), SPAN_NEVER where no
    cut beats saying "never". The cut is learnt, not derived from the feature's units: on a clock of the equities'
    own rows a night is one row, and the lead does not pile up across it."""
    cuts = np.full(n_cuts, SPAN_NEVER)
    values = np.unique(feature)
    for g in range(n_cuts):
        wide = spans >= g + 2
        never = np.mean(~wide)
        if not wide.any() or len(values) < 2:
            continue
        right = np.array([np.mean((feature >= cut) == wide) for cut in values])
        best = int(np.argmax(right))
        if right[best] > never:
            cuts[g] = values[best]
    return cuts


def target_spans(ts, targets: Targets, rows: np.ndarray) -> np.ndarray:
    """(A, n, H) the time each target return spans per bar of its horizon, in units of the clock's usual step
    (>= 1; 1 where invalid).
    A return's variance grows with the time it spans, so the ridge weighs each target by 1 / span: an equity's
    overnight return, with the whole night's noise in it, does not outweigh the session's hourly returns."""
    hours = np.asarray((ts - ts[0]) / np.timedelta64(1, "h"), dtype=float)  # ts: the panel's clock
    step = np.median(np.diff(hours)) if len(hours) > 1 else 1.0
    end = targets.end_row[:, rows]  # (A, n, H)
    spanned = np.where(end >= 0, hours[np.clip(end, 0, None)] - hours[rows][None, :, None], step)
    return np.maximum(spanned / step / np.asarray(targets.horizons)[None, None, :], 1.0)


def fit_skip_paths(model, feature_set: FeatureSet, targets: Targets, train: range, scale: np.ndarray,
                   returns: np.ndarray) -> SkipFit:
    """Fit model.heads.skips on the training rows (in place) and zero the heads' log-volatility column so the
    forecast starts at the fits. scale (A, H): the training return scale the log-vol column starts at (head_scale);
    returns (A, T): the panel's own-bar log returns, which the lead-lag test declares the leads on."""
    import statsmodels.api as sm
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    heads, config = model.heads, model.config
    skips = heads.skips
    n_assets, n_horizons = feature_set.values.shape[0], len(config.horizons)
    purged = targets.until(train.stop)
    rows = np.arange(train.start, train.stop)
    lagged = lagged_returns(feature_set.values.astype(np.float64), feature_set.mask, config.max_lag)[rows]
    vol_index = list(config.vol_skip_features)
    spans = target_spans(feature_set.ts, purged, rows)
    mean_weight = np.zeros(tuple(skips.mean_weight.shape))
    vol_weight = np.zeros(tuple(skips.vol_weight.shape))
    vol_bias = np.zeros(tuple(skips.vol_bias.shape))
    alphas = np.full((n_assets, n_horizons), np.nan)
    counts = np.zeros((n_assets, n_horizons), dtype=np.int64)
    leads = declared_leads(returns, train, config.max_lag + 1)
    gating = skips.span_position is not None
    span_weight = np.zeros(tuple(skips.span_weight.shape)) if gating else None  # (A, A_src * (K+1), H, G)
    cuts = np.full((n_assets, config.max_lag), SPAN_NEVER)
    for asset in range(n_assets):
        own = feature_set.values[asset, rows][:, vol_index].astype(np.float64)  # (n, V)
        if gating:
            cuts[asset] = _fit_span_cuts(feature_set, asset, train, config.span_feature, config.max_lag)
        for j, horizon in enumerate(config.horizons):
            usable = purged.valid[asset, rows, j] & feature_set.mask[asset, rows]
            counts[asset, j] = int(usable.sum())
            if usable.sum() < MIN_ROWS:
                continue
            terms = lead_terms(leads.get(asset, ()), horizon, config.max_lag, gating)
            if terms:
                # a gated lag counts only on the bars whose span feature reaches its cut, as SkipPaths reads it
                reached = own[:, skips.span_position][:, None] >= cuts[asset][None, :] if gating else None  # (n, G)
                design = np.column_stack([
                    lagged[:, always].sum(axis=1) + sum((lagged[:, c] * reached[:, g] for c, g in gated),
                                                        np.zeros(len(rows)))
                    for always, gated in terms])[usable]
                y = purged.log_return[asset, rows, j][usable]
                weight = 1.0 / spans[asset, :, j][usable]
                ridge = RidgeCV(alphas=RIDGE_ALPHAS, cv=KFold(CV_FOLDS, shuffle=False)).fit(
                    design, y, sample_weight=weight)
                for (always, gated), coef in zip(terms, ridge.coef_):
                    mean_weight[asset, always, j] += coef
                    for column, g in gated:
                        span_weight[asset, column, j, g] += coef
                alphas[asset, j] = ridge.alpha_
            if vol_index:
                variance = purged.realised_vol[asset, rows, j][usable] ** 2
                positive = variance[variance > 0]
                if len(positive) < MIN_ROWS:
                    continue
                # a bar with no move at all has variance 0, which a log link cannot fit: floor it far below typical
                variance = np.maximum(variance, 1e-4 * np.median(positive))
                inputs = own[usable]
                moving = inputs.std(axis=0) > 1e-12  # a 24/7 asset's gap columns are constant: the intercept's
                design = np.column_stack([np.ones(len(inputs)), inputs[:, moving]])
                glm = sm.GLM(variance, design, family=sm.families.Gamma(sm.families.links.Log())).fit(maxiter=100)
                # log sigma = eta / 2 = log s + shift  ->  shift = (coef . x + intercept) / 2 - log s
                vol_weight[asset, moving, j] = glm.params[1:] / 2.0
                vol_bias[asset, j] = glm.params[0] / 2.0 - np.log(scale[asset, j])
    selected = {int(a): [[int(s), int(lag)] for s, lag in pairs] for a, pairs in leads.items()}
    with torch.no_grad():
        skips.mean_weight.copy_(torch.as_tensor(mean_weight))
        if gating:
            skips.span_weight.copy_(torch.as_tensor(span_weight))
            skips.span_threshold.copy_(torch.as_tensor(cuts))
        skips.vol_weight.copy_(torch.as_tensor(vol_weight))
        skips.vol_bias.copy_(torch.as_tensor(vol_bias))
        if vol_index:
            columns = [heads.column(j, "log_vol") for j in range(n_horizons)]
            heads.proj.weight[..., columns] = 0.0
            heads.proj.bias[..., columns] = 0.0
    return SkipFit(alphas, counts, selected, cuts)


def _fit_span_cuts(feature_set: FeatureSet, asset: int, train: range, feature: int, n_cuts: int) -> np.ndarray:
    """(n_cuts,) span_thresholds on the asset's training bars whose next bar also lies in the training rows."""
    mask = feature_set.mask[asset]
    ahead = next_bar_rows(mask)[train.start:train.stop]  # (n,)
    rows = np.arange(train.start, train.stop)
    known = mask[rows] & (ahead > 0) & (rows + ahead < train.stop)
    values = feature_set.values[asset, rows, feature].astype(np.float64)
    return span_thresholds(values[known], ahead[known], n_cuts)


def _centre_losses(model, feature_set: FeatureSet, targets: Targets, span: range, device, chunk: int) -> np.ndarray:
    """(A, n, H) the point forecast's squared error on each row of `span`, divided by the time the target return
    spans (target_spans, the skip fit's and the recovery benchmark's weighting: a night's return counts like one
    usual bar); NaN where the target is not valid."""
    from engine.evaluation.predictions import forecast_span

    point = forecast_span(model, feature_set, span, device, chunk).point  # (A, n, H)
    rows = np.arange(span.start, span.stop)
    truth = targets.log_return[:, rows]  # (A, n, H)
    ok = targets.valid[:, rows] & np.isfinite(point)
    spans = target_spans(feature_set.ts, targets, rows)  # (A, n, H)
    return np.where(ok, (truth - point) ** 2 / spans, np.nan)


def gate_centre(model, feature_set: FeatureSet, targets: Targets, val: range, device, chunk: int) -> np.ndarray:
    """Keep the network's part of each (asset, horizon) centre forecast only where the validation span shows it
    helps.

    The centre (median and mean) is the skip paths' fit plus what the network adds: its own head columns and the
    attention's lead path. Trained on every asset at once and stopped on their average, the network can win on one
    asset what it loses on another (a weakly led equity of the planted family went from 109 % of the oracle's
    reduction with the fit alone to -135 % with the network's part; validation member 1000014). So, per asset and
    horizon, the network's part is kept only when it lowers the validation MSE (each return divided by the time it
    spans) by a one-sided Diebold-Mariano test at GATE_CENTRE_P (network_part_helps); otherwise it is set to
    zero. A lower MSE alone was not enough: on a session asset's ~90 validation bars the network's part can win by
    chance and then double a fold's test MSE (seen on the family's held-out member 1000001; the rule was kept on
    the validation members' figures, storage/sources/DEMO.md, "Choosing the general recipe").
    Baked (plain) weights only. -> (A, H) bool, True where the network's part was kept."""
    import copy

    heads = model.heads
    if not heads.has_mean:
        return np.ones((model.config.n_assets, len(model.config.horizons)), dtype=bool)
    targets = targets.until(val.stop)
    with_network = _centre_losses(model, feature_set, targets, val, device, chunk)
    bare = copy.deepcopy(model)
    for j in range(len(model.config.horizons)):
        _zero_centre(bare.heads, slice(None), j)
    without = _centre_losses(bare, feature_set, targets, val, device, chunk)
    keep = network_part_helps(with_network, without, model.config.horizons)
    for asset, j in zip(*np.nonzero(~keep)):
        _zero_centre(heads, int(asset), int(j))
    return keep


def network_part_helps(with_network: np.ndarray, without: np.ndarray, horizons) -> np.ndarray:
    """with_network, without (A, n, H) per-row losses (NaN: not scorable) -> (A, H) bool: the losses with the
    network's part are lower by a one-sided Diebold-Mariano test (horizon-overlap HAC) at GATE_CENTRE_P."""
    from engine.evaluation.scores import diebold_mariano

    keep = np.zeros((with_network.shape[0], with_network.shape[2]), dtype=bool)
    for asset, j in np.ndindex(*keep.shape):
        both = np.isfinite(with_network[asset, :, j]) & np.isfinite(without[asset, :, j])
        test = diebold_mariano(with_network[asset, both, j], without[asset, both, j], int(horizons[j]))
        keep[asset, j] = bool(np.isfinite(test.p_a_better) and test.p_a_better < GATE_CENTRE_P)
    return keep


def _zero_centre(heads, asset, j: int) -> None:
    """Zero the network's contribution to the centre of (asset, horizon j): its median and mean head columns and
    its attention lead-path weights. The skip paths (buffers) stay."""
    columns = [heads.column(j, "median"), heads.column(j, "mean")]
    with torch.no_grad():
        heads.proj.weight[asset, :, columns] = 0.0
        heads.proj.bias[asset, columns] = 0.0
        if heads.lead is not None:
            heads.lead.weight[asset, :, j] = 0.0
