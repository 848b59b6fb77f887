"""Named training recipes: the general one (every run, the shipped demo checkpoint included), the recipe tuned on
the demo market alone (kept for comparison: `--recipe demo`), and a quick one for tests and trials.

Experiment knobs live here, not in the config dataclasses (which say what a run is, not what worked once).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from engine.features import FEATURE_NAMES, GAP_FEATURE_NAMES, VARIANCE_HALF_LIVES
from engine.model.losses import LossWeights
from engine.training.config import TrainConfig, default_model_config

# ----- entry points for the CLI, the app and tests ------------------------------------------------------------------


def demo_config(interval: str = "1h") -> TrainConfig:
    """The settings tuned on the SYNTHETIC demo market alone (storage/sources/DEMO.md); the demo checkpoint was
    trained with them until the general recipe (below) replaced them. Kept as `--recipe demo` for comparison and as
    the base the general recipe extends.

    Why these: one SSM layer, then the lead-lag attention straight into the heads (about 40k weights); a deeper
    stack fits the training span within an epoch or two and stops before the lead is learned. The volatility
    loss is down-weighted (0.25) and the return quantiles up-weighted (2): QLIKE otherwise dominates the validation
    loss, which then stops training while the return heads are still improving. 1h rather than 1d: ten times the
    bars, so three folds of 3,000 test hours give ~1,900 out-of-sample bars per equity, and the 1d demo's 1,200
    training days were too few for the attention to single out the leader at all (measured, see the report).

    1h point forecasts: through the residual stream alone the model's 1-bar MSE never beat the zero forecast for
    SPY/AAPL (26 configurations), though a least-squares fit on BTC's lagged returns does. So the lead path
    (ModelConfig.lead_path) reads every source's bar return (lead_features=1) through the first attention layer's
    weights into the location of the fan and the mean, its weights trained 10x faster (lead_gain) and the centre
    columns read from the stream 10x slower (centre_gain: at full rate they fit the follower's own noise first);
    the stop watches the mean head's 1-bar squared error. Window grids move every epoch (random_window_offsets,
    stride 32). Chosen on the validation spans among 22 variants (DEMO.md gives the test numbers).
    """
    model = dataclasses.replace(default_model_config(), d_model=32, n_heads=4, max_lag=4, dropout=0.0,
                                layer_pattern=("ssm", "attn"))
    loss_weights = LossWeights(quantile=2.0, direction=1.0, volatility=0.25)
    if interval == "1h":
        # The lead path reads the sources' bar returns through the attention's weights, and the mean head (the
        # point forecast) is stopped on its own 1-bar squared error; see the paragraph above.
        model_1h = dataclasses.replace(model, dropout=0.1, point_head=True, lead_path=True, lead_features=1)
        return TrainConfig(model=model_1h, loss_weights=loss_weights, n_folds=3, min_train=8000, val_size=2000,
                           test_size=3000, window=128, stride=32, batch_size=8, max_epochs=15, patience=5, lr=5e-3, weight_decay=0.1,
                           random_window_offsets=True, zero_init_centre=True, lead_gain=10.0, centre_gain=0.1,
                           early_stop_weights=LossWeights(quantile=0.0, direction=0.0, volatility=0.0, point=1.0),
                           early_stop_horizons=(1,))
    if interval == "1d":
        return TrainConfig(model=dataclasses.replace(model, d_model=16, n_heads=2, max_lag=2, dropout=0.3),
                           loss_weights=loss_weights,
                           n_folds=3, min_train=800, val_size=180, test_size=240, window=128, stride=16,
                           batch_size=8, max_epochs=20, patience=5, lr=1e-3, weight_decay=0.1)
    raise ValueError(f"the demo has 1d and 1h bars, not {interval!r}")


def general_config(interval: str = "1h") -> TrainConfig:
    """The recipe a user's data gets (engine.training.settings sizes its folds), chosen on the VALIDATION members
    of the planted family (storage.sources.planted_family.family_split), never on the demo or held-out members;
    `python -m engine.benchmarks.recovery` reports it on held-out members (issue 15; the variants tried and their
    validation figures are in storage/sources/DEMO.md, "Choosing the general recipe").

    What it adds to the demo's recipe, and why:
      - gap features (engine.features.GAP_FEATURE_NAMES): returns scaled by the time they took, the gap's length,
        and log variance EWMAs at half-lives 2..128 bars of the gap-scaled returns. An equity's first bar after a
        close carries the overnight move; unscaled, it dominated the volatility inputs, the regimes and the fits.
      - linear skip paths to the heads, fitted in closed form per fold (engine.training.skip_fit): a ridge lead-lag
        regression for the mean and a log-link QLIKE fit for the volatility; the network learns the residual.
        Across a close an equity's next return takes in the leader's moves over every closed row, so the mean
        skip's earlier lags count on the bars the calendar says come before a gap (ModelConfig.span_feature).
      - the starting point competes in early stopping (validate_start), so a fold never ends worse on its
        validation span than the statistical fits it starts from; and per asset and horizon the network's part of
        the centre forecast is kept only where it lowers the validation MSE, by a one-sided test (gate_centre);
      - ret_1 standardised but not winsorised (FeatureConfig.unclipped; bounded at 50 stds, against bad ticks):
        the lead skip path and the lead-lag attention read it as a linear regressor, and clipping a heavy-tailed
        leader's largest moves cut the lead's forecastable part;
      - attention lags 0..5 (leads of 1..6 bars), the range the findings' lead-lag test scans at least.
    """
    base = demo_config(interval if interval in ("1h", "1d") else "1h")
    names = FEATURE_NAMES + GAP_FEATURE_NAMES
    vol_inputs = tuple(names.index(name) for name in ("gap_log", "next_gap_log", *VARIANCE_HALF_LIVES))
    model = dataclasses.replace(base.model, n_features=len(names), max_lag=5, point_head=True, lead_path=True,
                                lead_features=1, skip_paths=True, vol_skip_features=vol_inputs,
                                span_feature=names.index("next_gap_log"))
    features = dataclasses.replace(base.features, names=names, unclipped=("ret_1",))
    return dataclasses.replace(base, model=model, features=features,
                               validate_start=True, zero_init_centre=True, gate_centre=True)


def quick_config(interval: str = "1h", **overrides: Any) -> TrainConfig:
    """The demo settings cut short, for tests and negative controls (e.g. the null variant): fewer epochs, sparser
    windows. Pass overrides for anything else."""
    short = dict(max_epochs=5, patience=2, stride=64)
    return dataclasses.replace(demo_config(interval), **{**short, **overrides})
