"""The heads' linear skip paths (issue 15): fitted in closed form on a fold's training rows, exact in step mode,
stored with the checkpoint. The planted family gives markets with a known lead and its paired null."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.features import build_feature_set
from engine.model.hybrid import HybridModel
from engine.targets import compute_targets
from engine.training.config import model_config_for
from engine.training.head_scale import scale_heads_for_training, target_scale
from engine.training.presets import general_config
from engine.training.skip_fit import declared_leads, fit_skip_paths, lead_columns
from storage.sources.planted_family import family_member

SEED = 1000016  # a validation member: C0 leads C1 by 4 rows and E0 by 3


def fitted(kind: str):
    loaded = family_member(SEED, kind, "1h", 4000, n_assets=3)
    config = general_config("1h")
    train = range(2800)
    features = build_feature_set(loaded.panel, train, config.features)
    targets = compute_targets(loaded.panel, config.model.horizons)
    torch.manual_seed(0)
    model = HybridModel(model_config_for(config, features))
    scale = target_scale(targets, features, train)
    fit = fit_skip_paths(model, features, targets, train, scale)
    return loaded, model, fit, features, targets, scale, train


@pytest.fixture(scope="module")
def lead_fit():
    return fitted("lead")


def test_the_mean_path_reads_the_planted_lead_and_nothing_else(lead_fit):
    loaded, model, fit, *_ = lead_fit
    truth = loaded.truth
    K = model.config.max_lag
    weight = model.heads.skips.mean_weight.numpy()  # (A_tgt, A_src * (K+1), H)
    declared = {(int(t), s, lag) for t, pairs in fit.leads.items() for s, lag in pairs}
    # the 24/7 follower's lead is strong enough to be declared on 2,800 training rows; the session follower's
    # (E0: ~800 bars there) need not be, and then its path must stay at zero
    for lead in truth.leads:
        target, source = truth.assets.index(lead.target), truth.assets.index(lead.source)
        if (target, source, lead.lag_bars) not in declared:
            assert truth.always_open[target] is False
            assert np.abs(weight[target]).max() == 0.0
            continue
        column = source * (K + 1) + lead.lag_bars - 1  # key lag L - 1 from the forecast origin
        assert np.sign(weight[target, column, 0]) == np.sign(lead.beta)
        others = np.delete(weight[target, :, 0], column)
        assert np.abs(others).max() < 0.25 * abs(weight[target, column, 0])
    leader = truth.assets.index(truth.leads[0].source)
    assert np.abs(weight[leader]).max() == 0.0, "nothing leads the leader: its path stays at zero"


def test_the_paired_null_market_gets_no_mean_path():
    _, model, fit, *_ = fitted("null")
    assert np.abs(model.heads.skips.mean_weight.numpy()).max() == 0.0
    assert fit.leads == {}


def test_lead_columns_are_the_key_lags_a_forecast_can_see():
    # a lead of 3 bars: the 1-bar forecast reads key lag 2; the 5-bar forecast key lags 0..2
    assert lead_columns([(1, 3)], 1, max_lag=5, n_assets=3) == [6 + 2]
    assert lead_columns([(1, 3)], 5, max_lag=5, n_assets=3) == [6, 7, 8]
    assert lead_columns([(0, 7)], 1, max_lag=5, n_assets=3) == [], "beyond the window: not read"


def test_the_volatility_path_beats_a_constant_on_the_training_rows(lead_fit):
    loaded, model, _fit, features, targets, scale, train = lead_fit
    scale_heads_for_training(model, scale, zero_centre=True)
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(features.values)[None]
        out = model(x, torch.from_numpy(features.mask)[None])
    log_vol = out.log_vol[0, :, :, 0].numpy()  # (A, T) 1-bar
    purged = targets.until(train.stop)
    for asset in range(3):
        rows = np.arange(train.start, train.stop)
        ok = purged.valid[asset, rows, 0] & features.mask[asset, rows]
        variance = purged.realised_vol[asset, rows, 0][ok] ** 2
        fitted_qlike = np.mean(variance * np.exp(-2 * log_vol[asset, rows][ok]) + 2 * log_vol[asset, rows][ok])
        constant = np.log(np.sqrt(variance.mean()))
        constant_qlike = np.mean(variance * np.exp(-2 * constant) + 2 * constant)
        assert fitted_qlike < constant_qlike - 0.02, loaded.truth.assets[asset]


@pytest.mark.parametrize("batch", [1, 2])
def test_step_mode_with_skip_paths_matches_the_full_sequence(lead_fit, batch):
    _, model, _, features, *_ = lead_fit
    model.eval()
    rows = slice(1000, 1060)
    x = torch.from_numpy(features.values[:, rows])[None].repeat(batch, 1, 1, 1)  # (B, A, T, F)
    mask = torch.from_numpy(features.mask[:, rows])[None].repeat(batch, 1, 1)
    with torch.no_grad():
        full = model(x, mask)
        state = model.init_state(batch)
        for t in range(x.shape[2]):
            out, state = model.step(x[:, :, t], mask[:, :, t], state)
            torch.testing.assert_close(out.log_vol[:, :, 0], full.log_vol[:, :, t], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.mean[:, :, 0], full.mean[:, :, t], rtol=1e-4, atol=1e-6)


def test_the_fitted_paths_travel_with_the_checkpoint(lead_fit, tmp_path):

    _, model, *_ = lead_fit
    state = model.state_dict()
    assert {"heads.skips.mean_weight", "heads.skips.vol_weight", "heads.skips.vol_bias"} <= set(state)
    assert not any(name.startswith("heads.skips") for name, _ in model.named_parameters()), "fitted, not trained"


def test_the_declared_leads_use_the_training_rows_only(lead_fit):
    _loaded, _model, fit, features, *_ = lead_fit
    early = declared_leads(features, range(2800), 6)
    assert early == {int(k): [tuple(p) for p in v] for k, v in fit.leads.items()}
