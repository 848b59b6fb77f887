"""Figure builders of the Regimes, Lead-lag and Lookback views, on small arrays whose answer is known."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from engine.diagnostics import lookback_by_regime
from engine.figures import lead_lag, lookback, regimes
from engine.figures.style import SYNTHETIC_NOTE, TIME_AXIS_TITLE, asset_colour
from storage.sources.demo import demo_market

SYMBOLS = ("BTC", "SPY", "AAPL")
T = 12
TS = pd.date_range("2024-01-01", periods=T, freq="D", tz="UTC", name="ts")
LABELS = np.array([-1, 0, 0, 0, 1, 1, 2, 2, 2, 0, 0, 1])
OPEN = np.array([True] * 5 + [False, False] + [True] * 5)
CLOSES = np.linspace(100.0, 111.0, T)
TEST_SPANS = [(TS[8], TS[11])]


@pytest.fixture(scope="module")
def truth():
    return demo_market("1d").truth  # leader BTC, followers SPY and AAPL, lag 1 bar


def notes(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def boxes(fig) -> list:
    return [s for s in fig.layout.shapes if s.name == lead_lag.PLANTED_MARK_NAME]


# ----- regimes ------------------------------------------------------------------------------------------------


def test_the_scatter_draws_one_trace_per_regime_over_open_labelled_bars_with_date_and_price_on_hover():
    projections = np.stack([np.arange(T, dtype=float), -np.arange(T, dtype=float)], axis=-1)  # (T, 2)
    fig = regimes.regime_scatter(projections, LABELS, OPEN, TS, CLOSES, "BTC", regime_names=("a", "b", "c"),
                                 explained=np.array([0.6, 0.3]), synthetic=True)
    assert [t.name for t in fig.data] == ["a", "b", "c"]
    assert sorted(np.concatenate([t.x for t in fig.data])) == [1, 2, 3, 4, 7, 8, 9, 10, 11]  # open, labelled
    assert "price" in fig.data[0].hovertemplate and fig.data[0].customdata[0][0] == "2024-01-02 00:00"
    assert fig.layout.xaxis.title.text == "PC1 (60% of training variance)"
    assert SYNTHETIC_NOTE.upper() in notes(fig)


def test_the_scatter_coloured_by_date_is_one_trace_with_a_date_colour_bar_and_respects_rows():
    projections = np.zeros((T, 3))
    fig = regimes.regime_scatter(projections, LABELS, OPEN, TS, CLOSES, "SPY", colour_by="date", rows=range(8, 12),
                                 synthetic=False)
    assert len(fig.data) == 1 and len(fig.data[0].x) == 4
    assert fig.data[0].marker.colorbar.title.text == "date (UTC)"
    assert SYNTHETIC_NOTE.upper() not in notes(fig)
    with pytest.raises(ValueError, match="colour_by"):
        regimes.regime_scatter(projections, LABELS, OPEN, TS, CLOSES, "SPY", colour_by="size", synthetic=False)
    with pytest.raises(ValueError, match="labels has 11 rows but the clock has 12"):
        regimes.regime_scatter(projections, LABELS[:-1], OPEN, TS, CLOSES, "SPY", synthetic=False)


def test_runs_of_a_label_skip_unlabelled_rows():
    assert regimes.regime_runs(LABELS) == [(0, 1, 3), (1, 4, 5), (2, 6, 8), (0, 9, 10), (1, 11, 11)]
    assert regimes.regime_runs(np.array([], dtype=int)) == []


def test_the_timeline_puts_the_found_ribbon_under_the_price_and_the_planted_one_under_that():
    planted = np.array([0] * 6 + [1] * 6)
    fig = regimes.regime_timeline(TS, CLOSES, LABELS, "BTC", planted=planted, planted_names=("up", "down"),
                                  out_of_sample=TEST_SPANS, synthetic=True)
    assert fig.layout.yaxis2.title.text == "found" and fig.layout.yaxis3.title.text == "planted"
    assert fig.layout.xaxis3.title.text == TIME_AXIS_TITLE
    found = [t for t in fig.data if t.yaxis == "y2"]
    assert [t.name for t in found] == ["regime 0", "regime 1", "regime 2"]
    regime_0 = found[0]  # two runs: rows 1..3 and 9..10, each drawn to the next bar's start
    assert list(regime_0.x) == [TS[1], TS[4], TS[4], TS[1], TS[1], None, TS[9], TS[11], TS[11], TS[9], TS[9], None]
    assert {t.name for t in fig.data if t.yaxis == "y3"} == {"up", "down"}
    # found and planted regimes are drawn from separate palettes: no planted colour is ever a found one's
    found_colours = {t.fillcolor for t in found}
    planted_colours = {t.fillcolor for t in fig.data if t.yaxis == "y3"}
    assert found_colours and planted_colours and not found_colours & planted_colours
    assert not set(regimes.REGIME_COLOURS) & set(regimes.PLANTED_COLOURS)
    assert any(s.type == "rect" and s.fillcolor for s in fig.layout.shapes)  # the out-of-sample shading
    assert "out of sample" in notes(fig)


def test_the_timeline_without_truth_has_one_ribbon_and_clips_to_rows():
    fig = regimes.regime_timeline(TS, CLOSES, LABELS, "SPY", rows=range(4, 8), synthetic=False)
    assert "yaxis3" not in fig.layout.to_plotly_json() and fig.layout.xaxis2.title.text == TIME_AXIS_TITLE
    assert list(fig.data[0].x) == list(TS[4:8]) and fig.data[0].line.color == asset_colour("SPY")
    assert "out of sample" not in notes(fig)


def test_transitions_and_explained_variance_show_the_numbers_given():
    matrix = np.array([[0.9, 0.1], [np.nan, np.nan]])
    fig = regimes.transition_heatmap(matrix, np.array([[9, 1], [0, 0]]), "BTC", regime_names=("calm", "wild"),
                                     synthetic=False)
    np.testing.assert_array_equal(fig.data[0].z, matrix)
    assert list(fig.data[0].x) == ["calm", "wild"] and fig.data[0].text[1][0] == ""
    with pytest.raises(ValueError, match=r"\(K, K\)"):
        regimes.transition_heatmap(np.ones((2, 3)), np.ones((2, 3)), "BTC", synthetic=False)
    explained = np.array([[0.5, 0.2], [0.7, 0.1], [0.4, 0.4]])
    bars = regimes.explained_variance_chart(explained, SYMBOLS, synthetic=False)
    assert [t.name for t in bars.data] == list(SYMBOLS)
    assert [t.marker.color for t in bars.data] == [asset_colour(s) for s in SYMBOLS]
    np.testing.assert_array_equal(bars.data[1].y, [0.7, 0.1])


def test_the_adjusted_rand_index_ignores_numbering_and_counts_only_open_labelled_bars(truth):
    planted = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0])
    found = np.stack([(planted + 1) % 3, planted, np.roll(planted, 3)])  # renumbered, equal, shifted
    found[1, 0] = -1
    open_bars = np.ones((3, T), dtype=bool)
    open_bars[2, 6:] = False
    table = regimes.adjusted_rand_by_asset(found, planted, open_bars, SYMBOLS)
    assert table["adjusted_rand_index"].iloc[0] == pytest.approx(1.0)
    assert table["adjusted_rand_index"].iloc[1] == pytest.approx(1.0) and table["n_bars"].tolist()[:2] == [12, 11]
    assert table["adjusted_rand_index"].iloc[2] < 0.5 and table["n_bars"].iloc[2] == 6

    on_clock = regimes.planted_on_clock(truth.regimes.index[:3].append(pd.DatetimeIndex(["1990-01-01"], tz="UTC")),
                                        truth.regimes)
    assert on_clock[-1] == -1 and list(on_clock[:3]) == list(truth.regimes.iloc[:3])


# ----- lead-lag -----------------------------------------------------------------------------------------------


def lead_map(max_lag: int = 2) -> np.ndarray:
    weights = np.full((3, 3, max_lag + 1), 0.01)
    weights[np.arange(3), np.arange(3), 0] = 0.8  # self-attention dominates
    weights[1, 0, 1] = weights[2, 0, 1] = 0.15  # SPY and AAPL look at BTC one bar back
    return weights


def test_one_heatmap_per_target_with_the_planted_lead_boxed_on_the_demo(truth):
    fig = lead_lag.lead_lag_heatmaps(lead_map(), SYMBOLS, truth=truth, synthetic=True)
    assert [t.name for t in fig.data] == ["target BTC", "target SPY", "target AAPL"]
    # The 1d demo's lead of one bar shows at key lag 0: BTC's bar t is what SPY's next bar t+1 echoes.
    assert [(b.xref, b.x0 + 0.5, b.y0 + 0.5) for b in boxes(fig)] == [("x2", 0.0, 0.0), ("x3", 0.0, 0.0)]
    # one lag title, under the middle map (three copies ran into each other)
    assert fig.layout.xaxis2.title.text.startswith("lag (clock rows") and fig.layout.yaxis.title.text == "source"
    assert fig.layout.xaxis.title.text is None and fig.layout.xaxis3.title.text is None
    assert SYNTHETIC_NOTE.upper() in notes(fig)


def test_without_truth_nothing_is_marked_and_hiding_self_attention_blanks_the_diagonal():
    fig = lead_lag.lead_lag_heatmaps(lead_map(), SYMBOLS, hide_self=True, synthetic=False)
    assert boxes(fig) == []
    assert np.isnan(fig.data[1].z[1][0]) and fig.data[1].z[0][1] == 0.15
    assert fig.layout.coloraxis.cmax == pytest.approx(0.15)  # the colour range now belongs to cross-asset cells
    with pytest.raises(ValueError, match="targets, sources, lags"):
        lead_lag.lead_lag_heatmaps(np.ones((2, 3, 3)), SYMBOLS, synthetic=False)


def test_the_synthetic_stamp_is_lifted_over_the_target_titles_and_the_map_downloads_as_rows():
    weights = np.random.default_rng(0).dirichlet(np.ones(6), size=(2, 2)).reshape(2, 2, 3, 2).sum(-1)
    fig = lead_lag.lead_lag_heatmaps(weights, ("BTC", "SPY"), span_text="2024", step=pd.Timedelta(hours=1),
                                     null=np.full_like(weights, 1 / 6), synthetic=True)
    stamp = next(a for a in fig.layout.annotations if a.text == SYNTHETIC_NOTE.upper())
    titles = [a for a in fig.layout.annotations if a.text.startswith("target ")]
    assert stamp.yshift >= 20 and all(t.yshift in (None, 0) for t in titles)  # above them, on a line of its own
    assert "<br>" in fig.layout.title.text  # the span goes on a second line instead of running into the stamp
    frame = lead_lag.attention_map_frame(weights, np.full_like(weights, 1 / 6), ("BTC", "SPY"), pd.Timedelta(hours=1))
    assert len(frame) == weights.size
    row = frame[(frame["target"] == "SPY") & (frame["source"] == "BTC") & (frame["lag"] == 2)].iloc[0]
    assert row["weight"] == pytest.approx(weights[1, 0, 2]) and row["excess"] == pytest.approx(weights[1, 0, 2] - 1 / 6)


def test_a_planted_lag_beyond_the_model_lags_is_said_not_boxed(truth):
    far = dataclasses.replace(truth, lag_bars=4)  # key lag 3
    fig = lead_lag.lead_lag_heatmaps(lead_map(max_lag=2), SYMBOLS, truth=far, synthetic=True)
    assert boxes(fig) == []
    assert any("beyond the model's largest lag 2" in text for text in notes(fig))
    assert lead_lag.planted_cells(dataclasses.replace(truth, lag_bars=None), SYMBOLS, 2) == []


def test_attention_over_time_sums_lags_per_source_on_the_target_open_bars():
    rolling = np.broadcast_to(lead_map()[2], (T, 3, 3)).copy()  # AAPL's (time, sources, lags)
    rolling[6:, 0, 1] = 0.5
    target_open = OPEN
    fig = lead_lag.attention_over_time(rolling, TS, SYMBOLS, "AAPL", window=5, target_open=target_open,
                                       marked_time=TS[9], out_of_sample=TEST_SPANS, synthetic=False)
    assert [t.name for t in fig.data] == ["on BTC", "on SPY", "on AAPL"]
    on_btc = fig.data[0]
    assert list(on_btc.x) == list(TS[OPEN])
    np.testing.assert_allclose(on_btc.y, [0.17] * 5 + [0.52] * 5)
    assert fig.layout.xaxis.title.text == TIME_AXIS_TITLE
    assert any(s.line.dash == "dash" for s in fig.layout.shapes)
    with pytest.raises(ValueError, match="target 'ETH'"):
        lead_lag.attention_over_time(rolling, TS, SYMBOLS, "ETH", window=5, synthetic=False)


# ----- lookback -----------------------------------------------------------------------------------------------


LOOKBACK = np.where(OPEN, np.arange(1.0, T + 1), np.nan)


def test_the_lookback_sits_under_the_price_on_one_time_axis_shaded_by_regime():
    fig = lookback.lookback_chart(TS, CLOSES, LOOKBACK, "SPY", open_bars=OPEN, labels=LABELS,
                                  regime_names=("calm", "wild", "chop"), marked_time=TS[3],
                                  out_of_sample=TEST_SPANS, synthetic=True)
    price, line = fig.data[0], fig.data[-1]
    assert price.yaxis == "y" and line.yaxis == "y2" and fig.layout.xaxis2.title.text == TIME_AXIS_TITLE
    assert fig.layout.xaxis2.matches == "x" or fig.layout.xaxis.matches == "x2"  # shared time axis
    assert len(price.x) == len(line.x) == OPEN.sum()  # closed bars are not drawn
    bands = [t for t in fig.data if t.fill == "toself"]
    assert [t.name for t in bands] == ["calm", "wild", "chop"]
    window = lookback.smoothing_window(int(OPEN.sum()))
    _, _, high = lookback.smoothed_lookback(LOOKBACK[OPEN], window)
    assert max(y for y in bands[0].y if y is not None) == pytest.approx(np.nanmax(high) * 1.05)  # over the band
    assert SYNTHETIC_NOTE.upper() in notes(fig) and "out of sample" in notes(fig)
    assert f"rolling median of {window} open bars" in fig.layout.title.text


def test_the_lookback_without_labels_has_no_bands():
    fig = lookback.lookback_chart(TS, CLOSES, LOOKBACK, "BTC", synthetic=False)
    assert [t.fill for t in fig.data] == [None, None, "tonexty", None] and len(fig.data[0].x) == T
    with pytest.raises(ValueError, match="lookback has 3 rows"):
        lookback.lookback_chart(TS, CLOSES, LOOKBACK[:3], "BTC", synthetic=False)


def test_the_lookback_is_smoothed_with_the_raw_band_behind_and_a_long_history_is_thinned_for_display():
    n = 26_000
    ts = pd.date_range("2022-01-01", periods=n, freq="h", tz="UTC")
    rng = np.random.default_rng(0)
    raw = 60 + 5 * rng.standard_normal(n)  # the noisy 55-65 bar band that drew a solid block
    fig = lookback.lookback_chart(ts, 100 + np.cumsum(rng.standard_normal(n)), raw, "BTC", synthetic=False)
    median, band_low, band_high = fig.data[-1], fig.data[-2], fig.data[-3]
    assert len(median.x) <= 2_001 and band_low.fill == "tonexty"
    window = lookback.smoothing_window(n)
    assert window == 65 and "65 open bars" in fig.layout.title.text and "of 26,000 open bars drawn" in fig.layout.title.text
    smooth = np.asarray(median.y, dtype=float)
    assert np.nanstd(smooth) < 5 / 3  # much smoother than the raw values
    assert np.nanmean(np.asarray(band_low.y, dtype=float)) < np.nanmean(smooth) < np.nanmean(np.asarray(band_high.y, dtype=float))
    assert fig.layout.xaxis.rangeselector.buttons  # zoom buttons over the price


def test_the_per_regime_boxes_carry_the_quartiles_of_the_diagnostics_table():
    values = np.stack([LOOKBACK, LOOKBACK * 2])
    table = lookback_by_regime(values, np.stack([OPEN, OPEN]), LABELS, ("BTC", "SPY"), ("calm", "wild", "chop"))
    fig = lookback.lookback_by_regime_chart(table, ("BTC", "SPY"), labels_from="found", synthetic=False)
    assert [t.name for t in fig.data] == ["BTC", "SPY"]
    btc = table[table["symbol"] == "BTC"]
    np.testing.assert_allclose(fig.data[0].median, btc["median"])
    assert fig.data[0].median[0] == 4.0  # calm: open rows 1-3 and 9-10 have look-back 2, 3, 4, 10, 11 and list(fig.data[0].x) == ["calm", "wild", "chop"]
    with pytest.raises(ValueError, match="lacks columns"):
        lookback.lookback_by_regime_chart(table.drop(columns="p25"), ("BTC",), labels_from="found", synthetic=False)


def test_the_hidden_attention_is_bars_over_the_lag_titled_with_the_picked_bar():
    frame = pd.DataFrame({"lag": [0, 1, 2], "weight": [0.5, 0.3, 0.1]}, index=pd.DatetimeIndex(TS[[9, 8, 7]], name="ts"))
    fig = lookback.hidden_attention_chart(frame, "BTC", synthetic=True)
    assert list(fig.data[0].x) == [0, 1, 2] and fig.data[0].customdata[1] == "2024-01-09 00:00"
    assert "2024-01-10 00:00 UTC" in fig.layout.title.text and "UTC" in fig.layout.xaxis.title.text
    with pytest.raises(ValueError, match="non-empty frame"):
        lookback.hidden_attention_chart(frame.iloc[:0], "BTC", synthetic=True)
