"""Lead-lag page: who attends to whom at which lag (one source x lag heatmap per target), how it changes over time
(a trailing window ending at a chosen bar), and the strongest cross-asset pairs; the planted lead boxed on the demo.

Layout only: the attention comes from views.model_results, the maps from engine.diagnostics (bundle methods), the
charts from engine.figures.lead_lag.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from engine.diagnostics.lead_lag import lag_convention, lag_duration
from engine.figures import lead_lag as charts
from views.bar_picker import pick_bar
from views.export_widgets import chart_with_downloads, report_buttons
from views.frame import current_selection
from views.model_results import model_view

WINDOW_CHOICES = (20, 60, 120, 250, 500, 1000, 2000)

selection = current_selection()
st.title("Lead-lag")
view = model_view(selection)
bundle, symbols, synthetic, ts = view.bundle, view.bundle.symbols, selection.synthetic, view.ts
step = view.loaded.panel.clock_step  # one clock row: lags are shown as time with it


@st.cache_data(show_spinner="Computing the rolling lead-lag map…", max_entries=16)
def rolling_map(run_id: str, data_key: str, window: int, target: str, _bundle) -> np.ndarray:
    """(T, A_src, K+1) one target's trailing-window maps; keyed by run, data, window and target (the bundle itself
    is not hashed)."""
    del run_id, data_key
    return _bundle.rolling_lead_lag_of(target, window)


shown = view.rows
controls = st.columns([1, 1, 1])
whole = controls[0].toggle("Whole chosen span", True, key="ll_whole",
                           help="Off: a trailing window that ends at the bar picked below.")
hide_self = controls[1].toggle("Hide self-attention", True, key="ll_hide_self",
                               help="An asset's attention on its own past dominates every map; hiding it gives the "
                                    "colour range to the cross-asset cells.")
top = controls[2].number_input("Strongest pairs listed", 1, 20, 5, key="ll_top")

windows = [w for w in WINDOW_CHOICES if w <= len(ts)] or [len(ts)]
window = st.select_slider("Trailing window (bars)", windows, value=windows[min(2, len(windows) - 1)],
                          key="ll_window", disabled=whole)
end = pick_bar("Window ends at", ts, shown, selection.interval, key="ll_end", disabled=whole)
if whole:
    rows, span_text = shown, f"{ts[shown.start]:%Y-%m-%d} .. {ts[shown.stop - 1]:%Y-%m-%d} UTC"
else:
    rows = range(max(end - window + 1, 0), end + 1)
    span_text = f"{window} bars to {ts[end]:%Y-%m-%d %H:%M} UTC"

kept = bundle.attention_rows
if kept.start > 0:  # a wide universe: per-bar attention is kept only for the latest bars (InferenceConfig)
    st.info(f"With {len(symbols)} assets the per-bar attention is kept for the latest {len(kept):,} bars (from "
            f"{ts[kept.start]:%Y-%m-%d %H:%M} UTC). The whole-span map counts every bar; a window or span that "
            f"starts earlier is drawn from its bars since then.")
weights = bundle.lead_lag_over(rows)  # (A_tgt, A_src, K+1)
if not np.isfinite(weights).any():
    st.info("No target market was open in this window: widen it or move it.")
    st.stop()
st.caption(f"Run `{view.run_id}` · {span_text}. Each target's weights sum to 1 over sources and lags; only bars "
           "where the target's market is open count." + (" The planted lead of the synthetic demo is boxed."
                                                         if view.truth is not None else ""))
chart_with_downloads(charts.lead_lag_heatmaps(weights, symbols, truth=view.truth, hide_self=hide_self,
                                              span_text=span_text, step=step, synthetic=synthetic),
                     key="ll_heatmaps", file_stem="lead-lag-heatmaps")
st.caption("Read a column of panels as: the target (title) looks at each source (rows) this many clock rows "
           "back (columns). Weight at a lag above 0 on another asset is a lead that asset has over the target. "
           + lag_convention(step))

st.subheader("Strongest cross-asset pairs")
strongest = bundle.strongest_pairs(int(top), rows)
strongest.insert(strongest.columns.get_loc("lag") + 1, "lag as time",
                 [lag_duration(lag, step) for lag in strongest["lag"]])
st.dataframe(strongest, hide_index=True, width="content", key="ll_pairs",
             column_config={"weight": st.column_config.NumberColumn(format="%.4f")})

st.subheader("Over time")
target = st.selectbox("Target", symbols, index=len(symbols) - 1, key="ll_target")
over_time_window = window if not whole else windows[min(2, len(windows) - 1)]
rolling = rolling_map(view.run_id, f"{selection.db_path}|{selection.last_bar}", over_time_window, target, bundle)
chart_with_downloads(charts.attention_over_time(
    rolling, ts, symbols, target, window=over_time_window, target_open=bundle.inference.mask[symbols.index(target)],
    rows=shown, marked_time=None if whole else ts[end],
    out_of_sample=view.out_of_sample, synthetic=synthetic,
), key="ll_over_time", file_stem=f"lead-lag-over-time-{target}")
st.caption("The target's share of attention on each source (all lags) over a trailing window at every bar; the "
           "dashed line is the end of the window drawn above. Shaded spans are out of sample.")

report_buttons("Lead-lag", selection, tables={"Strongest lead-lag pairs": strongest}, key="ll_report")
