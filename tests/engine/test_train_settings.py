"""Training settings sized to the user's panel: folds that fit, and a clear refusal when the data is too short."""
from __future__ import annotations

import pytest

from engine.targets import compute_targets
from engine.training.loop import make_folds
from engine.training.settings import settings_for_panel
from storage.panel import demo_panel


@pytest.mark.parametrize("n_folds", [1, 3, 5])
def test_folds_fit_the_panel_and_keep_the_purge(n_folds):
    panel = demo_panel("1d").panel
    config = settings_for_panel(panel, "1d", n_folds=n_folds)
    targets = compute_targets(panel, config.model.horizons)
    folds = make_folds(len(panel.ts), targets, config)
    assert len(folds) == n_folds
    assert folds[-1].test.stop <= len(panel.ts)
    assert all(f.val.start - f.train.stop >= targets.max_reach() for f in folds)
    assert config.window <= config.min_train


def test_too_short_a_panel_is_refused_with_what_is_missing():
    import dataclasses

    loaded = demo_panel("1d")
    short = dataclasses.replace(loaded.panel, ts=loaded.panel.ts[:150],
                                fields={k: v[:150] for k, v in loaded.panel.fields.items()},
                                observed=loaded.panel.observed[:150])
    with pytest.raises(ValueError, match="too few for 3 walk-forward folds"):
        settings_for_panel(short, "1d", n_folds=3)
