"""The per-regime table on a clock small enough to count by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engine.diagnostics.regimes import NO_LABEL, regime_table


def test_shares_returns_and_spells_of_a_hand_counted_series():
    ts = pd.date_range("2024-01-01", periods=8, freq="h", tz="UTC")
    labels = np.array([NO_LABEL, 0, 0, 1, 1, 1, 0, 0])
    open_bars = np.array([True, True, True, True, False, True, True, True])  # bar 4: market closed (skipped)
    closes = np.array([100.0, 100.0, 110.0, 99.0, 99.0, 108.9, 98.01, 98.01])
    table = regime_table(labels, open_bars, closes, ts, periods_per_year=8760, regime_names=("calm", "wild"))
    calm, wild = table.iloc[0], table.iloc[1]
    # open, labelled bars: 1, 2, 3, 5, 6, 7 with labels 0 0 1 1 0 0
    assert (calm["regime_name"], calm["n_bars"], wild["n_bars"]) == ("calm", 4, 2)
    assert calm["share_of_time"] == pytest.approx(4 / 6)
    # next-open-bar returns: after bar1 +10%, bar2 -10%, bar3 +10%, bar5 -10%, bar6 0%, bar7 none
    assert calm["mean_return"] == pytest.approx((0.10 - 0.10 + 0.0) / 3)
    assert wild["mean_return"] == pytest.approx(0.0)
    assert wild["volatility"] == pytest.approx(math.sqrt(2 * 0.1**2))  # ddof=1 of (+0.1, -0.1)
    assert calm["annual_return"] == pytest.approx(calm["mean_return"] * 8760)
    assert wild["annual_volatility"] == pytest.approx(wild["volatility"] * math.sqrt(8760))
    # spells: calm (bars 1-2), wild (bars 3, 5), calm (bars 6-7): two calm spells of 2 bars, one wild of 2
    assert (calm["n_spells"], wild["n_spells"]) == (2, 1)
    assert calm["mean_spell_bars"] == 2 and wild["median_spell_bars"] == 2
    # wall-clock: wild from 03:00 to 06:00 = 3 h (the closed bar counts as time); calm 01:00-03:00 = 2 h and
    # 06:00 to one bar past 07:00 = 2 h
    assert wild["mean_spell_hours"] == pytest.approx(3.0)
    assert calm["median_spell_hours"] == pytest.approx(2.0)


def test_a_regime_never_visited_has_no_figures_not_zeros():
    ts = pd.date_range("2024-01-01", periods=4, freq="D", tz="UTC")
    table = regime_table(np.array([0, 0, 2, 2]), np.ones(4, bool), np.array([1.0, 2.0, 3.0, 4.0]), ts, 365)
    missing = table.iloc[1]
    assert missing["n_bars"] == 0 and missing["n_spells"] == 0
    assert np.isnan(missing["mean_return"]) and np.isnan(missing["mean_spell_hours"])
    assert list(table["regime_name"]) == ["regime 0", "regime 1", "regime 2"]
    with pytest.raises(ValueError, match="one value per bar"):
        regime_table(np.array([0, 0]), np.ones(4, bool), np.ones(4), ts, 365)


def test_the_display_names_columns_and_says_durations_in_hours_or_days():
    from engine.figures.regimes import (
        REGIME_TABLE_HELP,
        regime_table_display,
        spell_time_text,
    )

    ts = pd.date_range("2024-01-01", periods=8, freq="h", tz="UTC")
    table = regime_table(np.array([0, 0, 0, 1, 1, 0, 0, 0]), np.ones(8, bool), np.linspace(1, 2, 8), ts, 8760)
    shown = regime_table_display(table)
    assert set(shown.columns) == set(REGIME_TABLE_HELP)
    assert list(shown["mean spell (time)"]) == ["3.0 h", "2.0 h"]
    assert spell_time_text(72.0) == "3.0 d" and spell_time_text(float("nan")) == ""
