"""views.url_state: a widget bound to the URL writes its value there, default included, and a link restores it;
a value that does not fit (not an option, out of range, unparsable) falls back to the default."""
from __future__ import annotations

import datetime as dt

from streamlit.testing.v1 import AppTest

from views.url_state import from_url, to_url


def _page():
    import datetime as dt

    import streamlit as st

    from views.url_state import url_widget

    url_widget(st.slider, "Threshold", key="thr", default=0.02, min_value=0.0, max_value=0.1, step=0.005)
    url_widget(st.selectbox, "Asset", key="asset", default="BTC", options=["BTC", "SPY", "AAPL"])
    url_widget(st.multiselect, "Symbols", key="syms", default=["BTC", "SPY"], options=["BTC", "SPY", "AAPL"])
    url_widget(st.slider, "Bar", key="bar", default=dt.datetime(2024, 1, 2, 10, 0),
               min_value=dt.datetime(2024, 1, 1), max_value=dt.datetime(2024, 1, 31), step=dt.timedelta(hours=1))


def _values(at) -> dict:
    return {key: at.query_params[key] for key in ("thr", "asset", "syms", "bar")}


def _run(**query) -> AppTest:
    at = AppTest.from_function(_page)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def test_defaults_are_written_to_the_url():
    at = _run()
    assert not at.exception
    found = {key: list(value) if isinstance(value, (list, tuple)) else [value] for key, value in _values(at).items()}
    assert found == {"thr": ["0.02"], "asset": ["BTC"], "syms": ["BTC", "SPY"], "bar": ["2024-01-02T10:00"]}


def test_a_link_restores_every_value_and_a_change_reaches_the_url():
    at = _run(thr="0.05", asset="AAPL", syms=["AAPL"], bar="2024-01-20T07:00")
    assert at.slider(key="thr").value == 0.05 and at.selectbox(key="asset").value == "AAPL"
    assert at.multiselect(key="syms").value == ["AAPL"]
    assert at.slider(key="bar").value == dt.datetime(2024, 1, 20, 7, 0)
    at.selectbox(key="asset").set_value("SPY").run()
    assert at.query_params["asset"] in ("SPY", ["SPY"])


def test_values_that_do_not_fit_fall_back_to_the_default():
    at = _run(thr="0.9", asset="DOGE", syms=["BTC", "NOPE"], bar="yesterday")
    assert not at.exception
    assert at.slider(key="thr").value == 0.02 and at.selectbox(key="asset").value == "BTC"
    assert at.multiselect(key="syms").value == ["BTC", "SPY"]
    assert at.slider(key="bar").value == dt.datetime(2024, 1, 2, 10, 0)


def test_round_trip_of_the_value_types():
    for value in (0.025, 3, True, "1h", dt.date(2024, 5, 1), dt.datetime(2024, 5, 1, 13, 30), (dt.date(2024, 1, 1),
                  dt.date(2024, 2, 1)), ["BTC", "SPY"]):
        assert from_url(to_url(value), value) == value, value
