"""Price charts: candles with volume, zoom buttons, log scale, regime shading; long spans resampled and said so."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.figures.prices import MAX_CANDLES, display_bars, price_chart
from engine.figures.regimes import regime_colour
from engine.figures.style import SYNTHETIC_NOTE, TIME_AXIS_TITLE


def hourly_bars(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2022-01-01", periods=n, freq="h", tz="UTC")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    return pd.DataFrame({"ts": ts, "open": open_, "high": np.maximum(open_, close) * 1.002,
                         "low": np.minimum(open_, close) * 0.998, "close": close, "volume": rng.uniform(1, 10, n)})


def test_a_short_span_draws_every_bar_as_a_candle_with_its_volume_under_it():
    bars = hourly_bars(300)
    fig = price_chart(bars, "BTC", "1h", synthetic=True, source="demo")
    candles = next(t for t in fig.data if t.type == "candlestick")
    volume = [t for t in fig.data if t.type == "bar"]
    assert len(candles.x) == 300 and sum(len(t.x) for t in volume) == 300
    assert all(t.yaxis == "y2" for t in volume) and fig.layout.yaxis2.domain[1] < fig.layout.yaxis.domain[0]
    assert fig.layout.xaxis.title.text == TIME_AXIS_TITLE and len(fig.layout.xaxis.rangeselector.buttons) == 4
    assert fig.layout.yaxis.type == "linear" and "resampled" not in fig.layout.title.text
    assert any(a.text == SYNTHETIC_NOTE.upper() for a in fig.layout.annotations)


def test_20k_bars_are_resampled_to_coarser_candles_that_keep_the_true_high_low_and_last_close():
    bars = hourly_bars(20_000)
    drawn, rule, _ = display_bars(bars)
    assert rule == "12h" and len(drawn) <= MAX_CANDLES
    assert drawn["high"].max() == pytest.approx(bars["high"].max()) and drawn["low"].min() == pytest.approx(bars["low"].min())
    assert drawn["close"].iloc[-1] == bars["close"].iloc[-1] and drawn["open"].iloc[0] == bars["open"].iloc[0]
    assert drawn["volume"].sum() == pytest.approx(bars["volume"].sum())
    fig = price_chart(bars, "BTC", "1h", synthetic=False, source="csv", log_scale=True)
    assert "20,000 1h bars resampled to" in fig.layout.title.text and "12h candles" in fig.layout.title.text
    assert fig.layout.yaxis.type == "log"


def test_regimes_shade_the_price_panel_by_the_label_of_each_candles_last_bar():
    bars = hourly_bars(4_000)
    labels = np.repeat([0, 1], 2_000)
    drawn, _, drawn_labels = display_bars(bars, labels=labels)
    assert len(drawn_labels) == len(drawn) and set(drawn_labels) == {0, 1}
    fig = price_chart(bars, "BTC", "1h", synthetic=False, source="csv", labels=labels, regime_names=("calm", "wild"))
    shading = [t for t in fig.data if t.type == "scatter" and t.fill == "toself"]
    assert [t.name for t in shading] == ["calm", "wild"]
    assert fig.data[0].fill == "toself" and fig.data[len(shading)].type == "candlestick"  # under the candles
    red, green, blue = (int(regime_colour(1)[i: i + 2], 16) for i in (1, 3, 5))
    assert shading[1].fillcolor.startswith(f"rgba({red}, {green}, {blue}")
