"""Training settings for a panel the user picked: folds sized to its length, starting from the demo's settings, and
the span to train on when the assets' histories start at different dates.

The demo's TrainConfig (engine.training.demo_config) fixes its fold sizes in bars for the demo's span. A user's
panel can be a few hundred daily bars or a year of minutes, so the app sizes the walk-forward split from the
panel's length instead: each test span a share of the rows, validation a smaller share, the first training span
the rest (never shorter than the training window).

The common span. A cache can hold SPY from 1993 and BTC from 2014: on the full history the first folds' training
rows hold no BTC bar, and a scaler cannot be fitted for an asset it never sees. Training then uses the common
span instead, the rows from the latest first bar on (the features of every asset warm up over its first bars
there, and those rows are masked), and says which span and why (`training_span`). A history on which every
fold's training rows hold warmed-up bars of every asset is trained on in full, as before.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.features import compute_raw_features
from engine.targets import compute_targets
from engine.training.config import TrainConfig
from engine.training.loop import make_folds
from engine.training.presets import general_config
from storage.panel import LoadedPanel, Panel

TEST_SHARE = 0.10  # of all rows, per fold
VAL_SHARE = 0.05
MIN_TRAIN_SHARE = 0.35


@dataclass(frozen=True)
class TrainingSpan:
    """The rows of a panel to train on, and why they are not all of them (None when they are)."""

    rows: range
    reason: str | None = None

    @property
    def is_full(self) -> bool:
        return self.reason is None


def settings_for_panel(panel: Panel, interval: str, *, n_folds: int = 3, max_epochs: int | None = None,
                       seed: int = 0, recipe: Callable[[str], TrainConfig] = general_config) -> TrainConfig:
    """A TrainConfig whose folds fit the panel (its common span when the full history cannot be trained on, see
    training_span); raises ValueError saying how many bars are missing when none can. recipe: interval -> the
    settings to size (default the general recipe; benchmarks pass others to compare)."""
    config = _sized(panel, interval, n_folds, max_epochs, seed, recipe)
    span = training_span(panel, config)
    if span.is_full:
        return config
    return _sized(panel_rows(panel, span.rows), interval, n_folds, max_epochs, seed, recipe, why=span.reason)


def _sized(panel: Panel, interval: str, n_folds: int, max_epochs: int | None, seed: int,
           recipe: Callable[[str], TrainConfig], why: str | None = None) -> TrainConfig:
    base = recipe(interval if interval in ("1d", "1h") else "1h")
    n_rows = len(panel.ts)
    # The purge must cover the longest target in union rows (an equity's 20 bars can span a weekend), as training
    # itself computes it when purge is None.
    purge = max(compute_targets(panel, base.model.horizons).max_reach(), max(base.model.horizons))
    test_size = max(int(TEST_SHARE * n_rows), 20)
    val_size = max(int(VAL_SHARE * n_rows), 20)
    min_train = n_rows - n_folds * test_size - val_size - 2 * purge
    window = min(base.window, max(min_train // 4, 16))
    if min_train < max(MIN_TRAIN_SHARE * n_rows, window, 4 * window):
        needed = int((n_folds * test_size + val_size + 2 * purge) / (1 - MIN_TRAIN_SHARE)) + 1
        raise ValueError(
            f"{n_rows} bars are too few for {n_folds} walk-forward folds: need about {needed}; choose fewer folds, a "
            "longer date range, or a finer interval" + (f" ({why})" if why else "")
        )
    return dataclasses.replace(
        base, n_folds=n_folds, min_train=min_train, val_size=val_size, test_size=test_size, purge=None,
        window=window, stride=max(window // 4, 1), max_epochs=max_epochs or base.max_epochs, seed=seed,
    )


def training_span(panel: Panel, config: TrainConfig) -> TrainingSpan:
    """All rows, unless the full history cannot be trained on: when some asset has no warmed-up bar in a fold's
    training rows, with the folds settings_for_panel sizes for the full history or with `config`'s own, it is the
    common span, the rows from the latest first bar of any asset on, with the reason in words. The first test
    keeps the choice the same whether `config` was sized for the full history or for the common span."""
    n_rows = len(panel.ts)
    full = TrainingSpan(range(0, n_rows))
    observed = np.asarray(panel.observed)
    if n_rows == 0 or not observed.any(axis=0).all():
        return full  # an asset without bars: training refuses it with its own message
    firsts = observed.argmax(axis=0)  # (A,) each asset's first row with a bar
    late = int(np.argmax(firsts))
    start = int(firsts[late])
    if start == 0:
        return full
    targets = compute_targets(panel, config.model.horizons)
    usable = compute_raw_features(panel, config.features).mask  # (A, T) own bar with warmed-up features
    unseen = None
    for folds in (_settings_folds(panel, targets, config), _folds_or_none(n_rows, targets, config)):
        unseen = next(((fold, asset) for fold in folds or () for asset in range(len(panel.symbols))
                       if not usable[asset, fold.train.start:fold.train.stop].any()), None)
        if unseen is not None:
            break
    if unseen is None:
        return full
    earliest = int(np.argmin(firsts))
    fold, asset = unseen
    ts = panel.ts
    reason = (
        f"trained on the common span {ts[start]:%Y-%m-%d %H:%M} .. {ts[-1]:%Y-%m-%d %H:%M} UTC, where every asset "
        f"has bars: {panel.symbols[late]}'s history starts there ({panel.symbols[earliest]}'s on "
        f"{ts[firsts[earliest]]:%Y-%m-%d}), and on the full history fold {fold.index + 1}'s training rows "
        f"({ts[fold.train.start]:%Y-%m-%d} .. {ts[fold.train.stop - 1]:%Y-%m-%d}) hold no warmed-up "
        f"{panel.symbols[asset]} bar to fit its scaler on; every asset's features warm up over its first bars there"
    )
    return TrainingSpan(range(start, n_rows), reason)


def _folds_or_none(n_rows: int, targets, config: TrainConfig):
    try:
        return make_folds(n_rows, targets, config)
    except ValueError:
        return None  # folds that do not fit: training says so


def _settings_folds(panel: Panel, targets, config: TrainConfig):
    """The folds settings_for_panel would size for this panel with config's number of folds (None if none fit)."""
    n_rows = len(panel.ts)
    purge = max(targets.max_reach(), max(config.model.horizons))
    test_size, val_size = max(int(TEST_SHARE * n_rows), 20), max(int(VAL_SHARE * n_rows), 20)
    min_train = n_rows - config.n_folds * test_size - val_size - 2 * purge
    if min_train < 1:
        return None
    sized = dataclasses.replace(config, min_train=min_train, val_size=val_size, test_size=test_size, purge=None)
    return _folds_or_none(n_rows, targets, sized)


def panel_rows(panel: Panel, rows: range) -> Panel:
    """The panel's rows `rows` (a contiguous range), everything else as it is."""
    span = slice(rows.start, rows.stop)
    return dataclasses.replace(panel, ts=panel.ts[span], fields={k: np.asarray(v)[span] for k, v in panel.fields.items()},
                               observed=np.asarray(panel.observed)[span])


def on_training_span(loaded: LoadedPanel, config: TrainConfig) -> tuple[LoadedPanel, str | None]:
    """The LoadedPanel to train on with `config` (its common span when needed, training_span) and why, or
    (loaded, None) for the full history. The label says the span."""
    span = training_span(loaded.panel, config)
    if span.is_full:
        return loaded, None
    panel = panel_rows(loaded.panel, span.rows)
    label = f"{loaded.label}, from {panel.ts[0]:%Y-%m-%d %H:%M} UTC (common span)"
    return dataclasses.replace(loaded, panel=panel, label=label), span.reason
