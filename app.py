"""Entry point: `streamlit run app.py`.

Builds the navigation over pages/ and the shared frame (sidebar and status line) that every page shows.
"""
from __future__ import annotations

import streamlit as st

from pages.frame import render_frame

st.set_page_config(page_title="Cross-asset regime dashboard", page_icon=":material/monitoring:", layout="wide")

PAGES = [
    st.Page("pages/data.py", title="Data", icon=":material/database:", url_path="data", default=True),
]

navigation = st.navigation(PAGES)
render_frame()
navigation.run()
