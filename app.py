"""Entry point: `streamlit run app.py`.

Builds the navigation over views/ and the shared frame (sidebar and status line) that every page shows.

Icons are plain emoji: a `:material/...` page icon becomes the tab's favicon, which the browser fetches from a
font CDN (nothing may be fetched from outside). The root URL redirects to /overview, so every page, the first
included, has a path of its own that a link can name.

The page scripts live in views/, not pages/: a folder named pages/ beside the main script switches Streamlit into
its old auto-discovery mode for the first run of a server and for every AppTest run, and a shared link that opens
a page directly would then run that page without this frame (tests/app/test_layout.py guards it).
"""
from __future__ import annotations

import streamlit as st

from views.frame import finish_status_line, render_frame

st.set_page_config(page_title="Cross-asset regime dashboard", page_icon="📈", layout="wide")

OVERVIEW = st.Page("views/overview.py", title="Overview", icon="📊", url_path="overview")
PAGES = [
    OVERVIEW,
    st.Page("views/forecasts.py", title="Forecasts", icon="🔮", url_path="forecasts"),
    st.Page("views/backtest.py", title="Backtest", icon="💹", url_path="backtest"),
    st.Page("views/regimes.py", title="Regimes", icon="🧭", url_path="regimes"),
    st.Page("views/lead_lag.py", title="Lead-lag", icon="🔗", url_path="lead-lag"),
    st.Page("views/lookback.py", title="Lookback", icon="🕰️", url_path="lookback"),
    st.Page("views/data.py", title="Data", icon="🗄️", url_path="data"),
    st.Page("views/model.py", title="Model", icon="🧠", url_path="model"),
]


def _home() -> None:
    """The root URL opens the Overview at its own path, with the link's settings (every page has a path)."""
    st.switch_page(OVERVIEW, query_params={key: st.query_params.get_all(key) for key in st.query_params})


HOME = st.Page(_home, title="Home", url_path="home", default=True, visibility="hidden")

navigation = st.navigation([HOME, *PAGES])
if navigation is HOME:
    _home()  # before the frame: nothing is drawn twice
render_frame()
try:
    navigation.run()
finally:  # also after st.stop(): the status line then names the device the page's model ran on
    finish_status_line()
