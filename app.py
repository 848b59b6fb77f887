"""Entry point: `streamlit run app.py`.

Builds the navigation over views/ and the shared frame (sidebar and status line) that every page shows.

The page scripts live in views/, not pages/: a folder named pages/ beside the main script switches Streamlit into
its old auto-discovery mode for the first run of a server and for every AppTest run, and a shared link that opens
a page directly would then run that page without this frame (tests/app/test_layout.py guards it).
"""
from __future__ import annotations

import streamlit as st

from views.frame import render_frame

st.set_page_config(page_title="Cross-asset regime dashboard", page_icon="📈", layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", url_path="overview", default=True),
    st.Page("views/forecasts.py", title="Forecasts", icon=":material/insights:", url_path="forecasts"),
    st.Page("views/backtest.py", title="Backtest", icon=":material/query_stats:", url_path="backtest"),
    st.Page("views/regimes.py", title="Regimes", icon=":material/scatter_plot:", url_path="regimes"),
    st.Page("views/lead_lag.py", title="Lead-lag", icon=":material/grid_on:", url_path="lead-lag"),
    st.Page("views/lookback.py", title="Lookback", icon=":material/history:", url_path="lookback"),
    st.Page("views/data.py", title="Data", icon=":material/database:", url_path="data"),
    st.Page("views/model.py", title="Model", icon=":material/model_training:", url_path="model"),
]

navigation = st.navigation(PAGES)
render_frame()
navigation.run()
