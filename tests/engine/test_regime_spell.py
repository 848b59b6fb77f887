"""The current regime spell the Overview shows: label at the last open bar, since when, for how many open bars."""
from __future__ import annotations

import numpy as np

from engine.diagnostics.regimes import NO_LABEL, current_spell


def test_the_spell_counts_open_bars_back_to_the_last_change():
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    spell = current_spell(labels, np.ones(7, dtype=bool))
    assert (spell.label, spell.first_row, spell.bars) == (2, 5, 2)


def test_closed_bars_neither_end_nor_lengthen_a_spell():
    # a weekend (closed rows 3-4) inside regime 1 with other labels stored there: the spell runs through it
    labels = np.array([0, 1, 1, 0, 0, 1, 1])
    open_bars = np.array([True, True, True, False, False, True, True])
    spell = current_spell(labels, open_bars)
    assert (spell.label, spell.first_row, spell.bars) == (1, 1, 4)


def test_a_single_regime_holds_from_the_first_open_bar():
    labels = np.array([NO_LABEL, 3, 3, 3])
    open_bars = np.array([False, True, True, True])
    spell = current_spell(labels, open_bars)
    assert (spell.label, spell.first_row, spell.bars) == (3, 1, 3)


def test_an_asset_without_open_bars_has_no_spell():
    spell = current_spell(np.full(4, NO_LABEL), np.zeros(4, dtype=bool))
    assert (spell.label, spell.first_row, spell.bars) == (NO_LABEL, None, 0)
