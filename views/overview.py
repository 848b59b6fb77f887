"""Overview page: one card per asset with its latest price and move, current regime, the latest multi-horizon
forecast and freshness, on one screen. Layout only; numbers come from the shared model results and the cache summary."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from engine.diagnostics.regimes import current_spell
from engine.evaluation.forecast_review import latest_forecast
from engine.figures import forecasts as charts
from storage.config import INTERVAL_SECONDS
from views.export_widgets import chart_with_downloads, report_buttons
from views.frame import current_selection, load_summary
from views.model_results import asset_closes, model_view

selection = current_selection()
st.title("Overview")
view = model_view(selection)
summary = load_summary(selection.db_path)
bar = pd.Timedelta(seconds=INTERVAL_SECONDS[selection.interval])
regimes = view.bundle.regimes


st.caption(f"Forecasts by checkpoint **{view.run_id}**; regimes are clusters of each asset's SSM state "
           f"({regimes.labels.max() + 1} found on the training span). Horizons are in {selection.interval} bars.")
cards = st.columns(len(selection.symbols))
for column, symbol in zip(cards, selection.symbols):
    asset = selection.symbols.index(symbol)
    closes = asset_closes(view, symbol)
    latest = latest_forecast(view.bundle.inference, closes, symbol)
    open_rows = np.flatnonzero(view.bundle.inference.mask[asset])
    previous = float(closes[open_rows[-2]]) if len(open_rows) > 1 else float("nan")
    spell = current_spell(regimes.labels[asset], view.bundle.inference.mask[asset])
    regime, held = spell.label, spell.bars
    since = view.ts[spell.first_row] if spell.first_row is not None else None
    stored = selection.stored.get(symbol, symbol)  # the spelling the cache holds the asset under
    rows = summary[(summary["symbol"] == stored) & (summary["interval"] == selection.interval)]
    with column.container(border=True):
        st.markdown(f"#### {symbol}")
        st.metric("Last close", f"{latest.last_close:,.2f}", f"{latest.last_close / previous - 1:+.2%} vs previous bar",
                  help=f"Close of the bar opening {latest.made_at:%Y-%m-%d %H:%M} UTC.")
        st.metric("Current regime", f"regime {regime}" if regime >= 0 else "none",
                  f"for {held} bars (since {since:%Y-%m-%d %H:%M} UTC)" if since is not None else None,
                  delta_color="off", help="The cluster of the asset's SSM state at its last bar (Regimes page).")
        table = latest.table
        mid = [c for c in table.columns if c.startswith("q")][len(view.bundle.inference.quantile_levels) // 2]
        st.dataframe(
            pd.DataFrame({"horizon (bars)": table.index, "P(up)": table["prob_up"].map("{:.0%}".format),
                          "median return": table[mid].map("{:+.2%}".format),
                          "volatility": table["volatility"].map("{:.2%}".format)}),
            hide_index=True, width="stretch",
        )
        recent = pd.Series(closes, index=view.ts).loc[:latest.made_at].iloc[-60:]
        chart_with_downloads(charts.latest_fan_chart(latest, recent, bar, synthetic=selection.synthetic),
                             key=f"ov_{symbol}", file_stem=f"overview-{symbol}")
        if rows.empty:
            st.caption("No cache summary for this series.")
        else:
            row = rows.sort_values("last_ts").iloc[-1]
            freshness = ("synthetic, fixed span" if row["source"] == "demo"
                         else ("stale" if row["stale"] else "fresh"))
            st.caption(f"{row['source']} · last bar {row['last_ts']:%Y-%m-%d %H:%M} UTC · {freshness}")

report_buttons("Overview", selection, notes=[f"checkpoint {view.run_id}"], key="ov_report")
