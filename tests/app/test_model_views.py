"""The Regimes, Lead-lag and Lookback pages, run through the real app on the seeded demo cache.

A real checkpoint drives them: the quick demo settings cut to one fold and one epoch on the cached 1d demo bars
(about two seconds on one thread), registered in the test's runs directory, so the pages run the whole path
(checkpoint checks, features with its scaler, inference, diagnostics) rather than a stand-in.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime

import numpy as np
import pytest
import streamlit as st

from engine.model.checkpoint import published_files, read_manifest, register_run
from engine.runtime import configure_cpu_threads
from storage.panel import cached_panel
from storage.sources.demo import DEMO_SYMBOLS
from tests.app.conftest import figure_specs, open_page

PAGES = ("views/regimes.py", "views/lead_lag.py", "views/lookback.py")
INTERVAL = "1d"


@pytest.fixture(scope="session")
def tiny_run(seeded_cache_template, tmp_path_factory):
    from engine.training.loop import train_panel
    from engine.training.presets import quick_config

    configure_cpu_threads(1)
    loaded = cached_panel(DEMO_SYMBOLS, INTERVAL, db_path=seeded_cache_template)
    run_dir = tmp_path_factory.mktemp("views_run") / "run"
    result = train_panel(loaded, quick_config(INTERVAL, max_epochs=1, n_folds=1), run_dir=run_dir,
                         run_id="views-test-1d")
    assert result.outcome == "finished", result.message
    return run_dir


@pytest.fixture
def with_run(seeded_db, tiny_run, diagnostics_dir, tmp_path, monkeypatch):
    runs = tmp_path / "registered_runs"
    monkeypatch.setenv("REGIME_RUNS", str(runs))
    monkeypatch.setenv("REGIME_DIAGNOSTICS", str(diagnostics_dir))
    register_run(runs, read_manifest(tiny_run), tiny_run)
    st.cache_data.clear()  # the frame caches the run list for 30 s: an earlier test's empty list would hide this run
    return tiny_run


def open_model_page(page: str, **query):
    at = open_page(page, interval=INTERVAL, **query)
    assert not at.exception, at.exception
    return at


def titles(at) -> list[str]:
    return [spec["layout"]["title"]["text"] for spec in figure_specs(at)]


def spec_titled(at, prefix: str) -> dict:
    return next(spec for spec in figure_specs(at) if spec["layout"]["title"]["text"].startswith(prefix))


def decoded(value) -> np.ndarray:
    """An array of a figure spec: plotly packs numeric arrays as {"dtype", "bdata" (base64), "shape"}."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return array.reshape([int(n) for n in str(shape).split(",")]) if shape else array
    return np.asarray(value, dtype=float)


def trace_arrays(at, prefix: str, field: str) -> list[np.ndarray]:
    return [decoded(trace[field]) for trace in spec_titled(at, prefix)["data"]]


def all_text(at) -> str:
    return " ".join(e.value for e in list(at.caption) + list(at.info) + list(at.markdown) + list(at.warning))


# ----- no checkpoint -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_without_a_fitting_checkpoint_the_page_says_so_and_draws_only_prices(seeded_db, page):
    at = open_page(page, interval=INTERVAL, symbols=["BTC", "SPY"])  # no run is trained on these two alone
    assert not at.exception, at.exception
    assert any("No checkpoint fits BTC, SPY at 1d" in w.value for w in at.warning)
    # no dead end (tests/app/test_no_dead_ends.py): the selection's prices, nothing of a model
    assert sorted(spec["layout"]["title"]["text"].split(" ")[0] for spec in figure_specs(at)) == ["BTC", "SPY"]


# ----- with a checkpoint ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_chart_is_labelled_synthetic_and_has_download_buttons(with_run, page):
    at = open_model_page(page)
    specs = figure_specs(at)
    assert specs, "the page drew no chart"
    for spec in specs:
        notes = [a.get("text", "") for a in spec["layout"].get("annotations", [])]
        assert "SYNTHETIC DEMO DATA" in notes, spec["layout"]["title"]["text"]
    html_buttons = [b for b in at.get("download_button") if b.label == "HTML"]
    assert len(html_buttons) == len(specs)
    assert "views-test-1d" in all_text(at)


def test_regimes_slider_refits_and_the_planted_regimes_sit_beside_the_found(with_run):
    at = open_model_page("views/regimes.py")
    assert {"Number of regimes", "Asset", "Colour points by"} <= {w.label for w in
                                                                   list(at.slider) + list(at.selectbox) + list(at.radio)}
    timeline = spec_titled(at, "BTC: price and regimes (found vs planted)")
    assert timeline["layout"]["yaxis2"]["title"]["text"] == "found"
    assert timeline["layout"]["yaxis3"]["title"]["text"] == "planted"
    planted_bands = {t["name"] for t in timeline["data"] if t.get("yaxis") == "y3" and t.get("fill") == "toself"}
    assert planted_bands == {"calm uptrend", "volatile downtrend", "choppy mean-reverting"}
    ari = next(frame.value for frame in at.dataframe if "adjusted_rand_index" in frame.value.columns)
    assert list(ari["symbol"]) == list(DEMO_SYMBOLS) and ari["n_bars"].gt(0).all()

    assert trace_arrays(at, "BTC: regime transitions", "z")[0].shape == (3, 3)
    at.slider(key="rg_k").set_value(5).run()
    assert not at.exception, at.exception
    assert trace_arrays(at, "BTC: regime transitions", "z")[0].shape == (5, 5)
    assert not ari.equals(next(f.value for f in at.dataframe if "adjusted_rand_index" in f.value.columns))


def test_regimes_shows_a_per_regime_table_and_csv_downloads_of_its_tables(with_run):
    at = open_model_page("views/regimes.py")
    table = next(t.value for t in at.table if "share of time" in t.value.columns)
    assert {"annual return", "annual volatility", "mean spell (bars)", "median spell (time)"} <= set(table.columns)
    assert table["share of time"].sum() == pytest.approx(1.0)
    labels = [b.label for b in at.get("download_button")]
    assert "Regime tests (CSV)" in labels and "Per-regime table BTC (CSV)" in labels


def test_lead_lag_offers_csv_downloads_of_its_score_tables(with_run):
    at = open_model_page("views/lead_lag.py")
    assert any(b.label.endswith("(CSV)") for b in at.get("download_button"))


def test_regimes_colour_toggle_and_asset_change_the_scatter(with_run):
    at = open_model_page("views/regimes.py")
    by_regime = spec_titled(at, "BTC: regime embeddings")
    assert len(by_regime["data"]) == 3 and "price" in by_regime["data"][0]["hovertemplate"]
    at.radio(key="rg_colour").set_value("date").run()
    by_date = spec_titled(at, "BTC: regime embeddings")
    assert len(by_date["data"]) == 1 and by_date["data"][0]["marker"]["colorbar"]["title"]["text"] == "date (UTC)"
    at.selectbox(key="rg_asset").set_value("SPY").run()
    assert not at.exception, at.exception
    assert any(t.startswith("SPY: regime embeddings") for t in titles(at))


def test_lead_lag_marks_the_planted_lead_and_the_window_changes_the_map(with_run):
    at = open_model_page("views/lead_lag.py")
    heatmaps = spec_titled(at, "Cross-asset attention")
    boxes = [s for s in heatmaps["layout"].get("shapes", []) if s.get("name") == "planted lead"]
    assert len(boxes) == 2  # SPY and AAPL follow BTC by one bar on the 1d demo: key lag 0 for next-bar forecasts
    assert {b["x0"] + 0.5 for b in boxes} == {0.0}
    pairs = at.dataframe[0].value
    assert list(pairs.columns) == ["target", "source", "lag", "lag as time", "weight"] and len(pairs) == 5
    assert list(heatmaps["layout"]["xaxis"]["ticktext"][:2]) == ["lag 0 (0d)", "lag 1 (1d)"]  # lags as time
    captions = [c.value for c in at.caption]
    assert sum("Lags count rows of the panel's clock: one row is one 1d period" in c for c in captions) == 1
    assert any(c.startswith("Model `views-test-1d`. Trained on 2019-01-01 .. ") for c in captions)  # its spans

    whole_map = np.stack(trace_arrays(at, "Cross-asset attention", "z"))
    at.toggle(key="ll_whole").set_value(False).run()
    at.slider(key="ll_end").set_value(datetime(2019, 6, 1)).run()  # a window near the start
    assert not at.exception, at.exception
    window_map = np.stack(trace_arrays(at, "Cross-asset attention", "z"))
    assert window_map.shape == whole_map.shape and not np.allclose(window_map, whole_map, equal_nan=True)
    over_time = spec_titled(at, "Attention of AAPL on each source over time")
    assert over_time["layout"]["xaxis"]["title"]["text"] == "time (UTC)"
    assert any(s.get("line", {}).get("dash") == "dash" for s in over_time["layout"]["shapes"])  # the window's end


def test_lookback_shows_price_and_lookback_per_asset_and_the_bar_picker_moves_the_hidden_attention(with_run):
    at = open_model_page("views/lookback.py")
    assert [t.split("<br>")[0] for t in titles(at) if "effective look-back" in t] == [
        f"{s}: price and effective look-back" for s in DEMO_SYMBOLS]
    assert all("rolling median of" in t for t in titles(at) if "effective look-back" in t)  # smoothing stated
    by_regime = spec_titled(at, "Effective look-back per regime")
    assert [trace["name"] for trace in by_regime["data"]] == list(DEMO_SYMBOLS)

    before_title = spec_titled(at, "BTC: which past bars")["layout"]["title"]["text"]
    before = trace_arrays(at, "BTC: which past bars", "y")[0]
    at.slider(key="lb_bar").set_value(datetime(2021, 6, 1)).run()
    assert not at.exception, at.exception
    after_title = spec_titled(at, "BTC: which past bars")["layout"]["title"]["text"]
    assert "2021-06-01 00:00 UTC" in after_title and "2021" not in before_title
    after = trace_arrays(at, "BTC: which past bars", "y")[0]
    assert after.shape == before.shape and not np.allclose(after, before)


def test_lookback_shading_switches_to_the_planted_regimes(with_run):
    at = open_model_page("views/lookback.py")
    at.radio(key="lb_regimes").set_value("planted (synthetic demo)").run()
    assert not at.exception, at.exception
    btc = spec_titled(at, "BTC: price and effective look-back")
    bands = {trace["name"] for trace in btc["data"] if trace.get("fill") == "toself"}
    assert bands == {"calm uptrend", "volatile downtrend", "choppy mean-reverting"}
    assert "Planted memory, longest first" in all_text(at)
    assert json.dumps(spec_titled(at, "Effective look-back per regime")).count("calm uptrend") > 0
    # the memory claim: per asset, the probe's verdict on what the data rewards, beside the look-back's own test
    text = all_text(at)
    assert all(f"- {s}: the data rewards" in text for s in DEMO_SYMBOLS), text
    at.toggle(key="lb_half_mass").set_value(True).run()
    assert not at.exception, at.exception
    used = [t for t in spec_titled(at, "BTC: price and effective look-back")["data"]
            if t["name"].startswith("memory used: half-mass lag")]
    lags = decoded(used[0]["y"]) if len(used) == 1 else np.zeros(0)
    assert len(lags) > 0 and (lags >= 0).all()  # own bars back to half the weight


# ----- the shipped demo checkpoint ------------------------------------------------------------------------------


def test_the_shipped_demo_checkpoint_drives_all_three_pages_with_the_planted_lead_marked(seeded_db, diagnostics_dir,
                                                                                         monkeypatch):
    from engine.model.checkpoint import DEMO_CHECKPOINT_DIR

    if not published_files(DEMO_CHECKPOINT_DIR)[0].exists():
        pytest.skip(f"no demo checkpoint shipped in {DEMO_CHECKPOINT_DIR}")
    demo = read_manifest(DEMO_CHECKPOINT_DIR)
    monkeypatch.setenv("REGIME_DIAGNOSTICS", str(diagnostics_dir))
    st.cache_data.clear()
    lag = {"1d": 1, "1h": 3}[demo.fingerprint.interval] - 1  # the planted lead (DEMO.md) at key lag L-1
    for page in PAGES:
        at = open_page(page)  # the defaults: the frame follows the shipped checkpoint's interval
        assert not at.exception, at.exception
        assert demo.run_id in all_text(at), page
        assert figure_specs(at), page
        if page == "views/lead_lag.py":
            marks = [s for s in spec_titled(at, "Cross-asset attention")["layout"]["shapes"]
                     if s.get("name") == "planted lead"]
            assert {m["x0"] + 0.5 for m in marks} == {float(lag)} and len(marks) == 2


def test_overview_draws_candles_with_volume_and_regime_shading_and_the_log_toggle_reaches_the_chart(with_run):
    at = open_model_page("views/overview.py")
    price = spec_titled(at, "BTC · 1d · source")
    types = [trace["type"] for trace in price["data"]]
    assert "candlestick" in types and "bar" in types
    assert any(trace.get("fill") == "toself" for trace in price["data"])  # the regimes behind the candles
    assert price["layout"]["yaxis"]["type"] == "linear"
    at.toggle(key="ov_log").set_value(True).run()
    assert not at.exception, at.exception
    assert spec_titled(at, "BTC · 1d · source")["layout"]["yaxis"]["type"] == "log"
    at.segmented_control(key="ov_price_asset").set_value("SPY").run()
    assert spec_titled(at, "SPY · 1d · source")
    cards = [table.value for table in at.table if "volatility" in table.value.columns]
    assert cards and all(list(c.columns) == ["bars", "P(up)", "median", "volatility"] for c in cards)
