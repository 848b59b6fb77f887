"""Training settings for a panel the user picked: folds sized to its length, starting from the demo's settings.

The demo's TrainConfig (engine.training.demo_config) fixes its fold sizes in bars for the demo's span. A user's
panel can be a few hundred daily bars or a year of minutes, so the app sizes the walk-forward split from the
panel's length instead: each test span a share of the rows, validation a smaller share, the first training span
the rest (never shorter than the training window).
"""
from __future__ import annotations

import dataclasses

from engine.targets import compute_targets
from engine.training.config import TrainConfig
from engine.training.presets import demo_config
from storage.panel import Panel

TEST_SHARE = 0.10  # of all rows, per fold
VAL_SHARE = 0.05
MIN_TRAIN_SHARE = 0.35


def settings_for_panel(panel: Panel, interval: str, *, n_folds: int = 3, max_epochs: int | None = None,
                       seed: int = 0) -> TrainConfig:
    """A TrainConfig whose folds fit the panel; raises ValueError saying how many bars are missing when none can."""
    base = demo_config(interval if interval in ("1d", "1h") else "1h")
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
            "longer date range, or a finer interval"
        )
    return dataclasses.replace(
        base, n_folds=n_folds, min_train=min_train, val_size=val_size, test_size=test_size, purge=None,
        window=window, stride=max(window // 4, 1), max_epochs=max_epochs or base.max_epochs, seed=seed,
    )
