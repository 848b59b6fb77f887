"""Overview page: one card per asset with its latest price and move, current regime (and whether regimes hold up
when tested), the latest multi-horizon forecast with the verdict on each of its numbers (P(up), median, volatility:
edge, no edge or worse against the best baseline), and freshness, on one screen. Layout only; numbers come from the
shared model results, the findings (engine.diagnostics.findings) and the cache summary."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from engine.diagnostics.regimes import current_spell
from engine.evaluation.forecast_review import latest_forecast
from engine.figures import forecasts as charts
from engine.figures.prices import price_chart
from storage.config import INTERVAL_SECONDS
from storage.panel import own_bars
from views.export_widgets import chart_with_downloads, report_buttons
from views.frame import current_selection, load_summary
from views.model_results import asset_closes, model_findings, model_view
from views.url_state import url_widget

selection = current_selection()
st.title("Overview")
view = model_view(selection)
summary = load_summary(selection.db_path)
bar = pd.Timedelta(seconds=INTERVAL_SECONDS[selection.interval])
regimes = view.bundle.regimes
findings = model_findings(view, selection, ("forecast_skill", "regimes"))


st.caption(f"Forecasts by checkpoint **{view.run_id}**; the current regime is a cluster of each asset's SSM state "
           f"({regimes.labels.max() + 1} clusters cut on the training span; whether the data supports regimes is "
           f"tested, per asset, on the Regimes page). Horizons are in {selection.interval} bars.")
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
        # the delta stays short (a card is ~280 px wide at 1280 px, and a metric delta is cut, not wrapped); the
        # spell's start goes in the caption under it, which wraps
        st.metric("Current regime", f"regime {regime}" if regime >= 0 else "none",
                  f"for {held} bars" if since is not None else None,
                  delta_color="off", delta_arrow="off",
                  help="The cluster of the asset's SSM state at its last bar (Regimes page).")
        if since is not None:
            st.caption(f"In this regime since {since:%Y-%m-%d %H:%M} UTC.")
        st.caption(f"Regimes tested on the data: {findings.regimes[symbol]['verdict']}.")
        table = latest.table
        mid = [c for c in table.columns if c.startswith("q")][len(view.bundle.inference.quantile_levels) // 2]
        horizons = [int(h) for h in table.index]
        # Four columns, each value with its verdict, in a static table that wraps: seven columns in a scrolling grid
        # did not fit a card at 1440 px (volatility cut).
        st.table(
            pd.DataFrame({
                "bars": horizons,
                "P(up)": [f"{p:.0%} · {findings.skill_word(symbol, h, 'brier')}"
                          for p, h in zip(table["prob_up"], horizons)],
                "median": [f"{m:+.2%} · {findings.skill_word(symbol, h, 'pinball')}"
                           for m, h in zip(table[mid], horizons)],
                "volatility": [f"{v:.2%} · {findings.skill_word(symbol, h, 'qlike')}"
                               for v, h in zip(table["volatility"], horizons)],
            }).style.hide(axis="index"),
        )
        recent = pd.Series(closes, index=view.ts).loc[:latest.made_at].iloc[-60:]
        chart_with_downloads(charts.latest_fan_chart(latest, recent, bar, synthetic=selection.synthetic),
                             key=f"ov_{symbol}", file_stem=f"overview-{symbol}")
        first = horizons[0]
        st.caption(f"Out of sample at {first} bar{'s' if first > 1 else ''}: P(up) "
                   f"{findings.skill_phrase(symbol, first, 'brier')}; median and band "
                   f"{findings.skill_phrase(symbol, first, 'pinball')}; volatility "
                   f"{findings.skill_phrase(symbol, first, 'qlike')}.")
        if rows.empty:
            st.caption("No cache summary for this series.")
        else:
            row = rows.sort_values("last_ts").iloc[-1]
            freshness = ("synthetic, fixed span" if row["source"] == "demo"
                         else ("stale" if row["stale"] else "fresh"))
            st.caption(f"{row['source']} · last bar {row['last_ts']:%Y-%m-%d %H:%M} UTC · {freshness}")

st.subheader("Prices")
price_controls = st.columns([3, 1], vertical_alignment="bottom")
with price_controls[0]:
    price_symbol = url_widget(st.segmented_control, "Asset", key="ov_price_asset", default=selection.symbols[0],
                              options=list(selection.symbols)) or selection.symbols[0]
with price_controls[1]:
    log_scale = url_widget(st.toggle, "Log scale", key="ov_log", default=False,
                           help="A log price axis: equal moves in percent look equal over a long span.")
price_asset = selection.symbols.index(price_symbol)
own_rows, bars = own_bars(view.loaded.panel, view.loaded.symbols.index(price_symbol))
in_span = (own_rows >= view.rows.start) & (own_rows < view.rows.stop)
own_rows, bars = own_rows[in_span], bars[in_span].reset_index(drop=True)
bars.insert(0, "ts", view.ts[own_rows])
chart_with_downloads(price_chart(
    bars, price_symbol, selection.interval, synthetic=selection.synthetic,
    source=selection.sources.get(price_symbol, "cache"), log_scale=log_scale,
    labels=regimes.labels[price_asset][own_rows],
), key="ov_price", file_stem=f"overview-price-{price_symbol}")
st.caption("Candles of the asset's own bars in the chosen dates (UTC), volume under them, shaded by the regime "
           "the model's state was in (its cluster at each candle's last bar; whether regimes hold up is tested on "
           "the Regimes page). Zoom with the buttons or by dragging; long spans are resampled for display, as the "
           "title says.")

if not findings.forecast_skill:
    st.info(f"No verdict on the forecasts' skill: {findings.skill_note}.")
st.caption("Skill: each forecast against the best baseline on the run's walk-forward test bars, one-sided "
           "Diebold-Mariano, Holm-corrected (P(up): Brier score; median and band: pinball loss; volatility: QLIKE). "
           "'edge' = better beyond chance, 'worse' = the baseline is, 'no edge' otherwise; details on the Forecasts "
           "page.")
st.caption("Card tables: bars = forecast horizon; P(up) = probability of an up move over it; median = median forecast "
           "log return; volatility = forecast volatility over the horizon; each with its verdict.")
report_buttons("Overview", selection, notes=[f"checkpoint {view.run_id}"],
               verdicts=findings.skill_lines() + findings.regime_lines(), key="ov_report")
