"""Data page: what is cached per symbol and how fresh, price charts, refresh now, import files, fetch real data."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.figures.prices import price_chart
from pages.frame import clear_cached_reads, current_selection, load_summary
from storage.cache import CacheBusyError, read_bars, upsert_bars
from storage.config import INTERVAL_SECONDS, InvalidNameError, check_interval, check_symbol
from storage.refresh import RefreshRequest, run_refresh
from storage.sources.base import SourceError
from storage.sources.files import read_bar_file
from storage.validation import BarValidationError

MAX_UPLOAD_BYTES = 200 * 1024 * 1024

selection = current_selection()
st.title("Data")

summary = load_summary(selection.db_path)
st.subheader("Cache contents")
if summary.empty:
    st.info("The cache holds no bars yet. Import a file or fetch from a source below.")
else:
    table = summary.copy()
    table["freshness"] = table["stale"].map({True: "stale", False: "fresh"})
    st.dataframe(
        table.drop(columns=["stale"]), hide_index=True, width="stretch",
        column_config={
            "first_ts": st.column_config.DatetimeColumn("first bar (UTC)", format="YYYY-MM-DD HH:mm"),
            "last_ts": st.column_config.DatetimeColumn("last bar (UTC)", format="YYYY-MM-DD HH:mm"),
            "last_refresh": st.column_config.DatetimeColumn("last refresh (UTC)", format="YYYY-MM-DD HH:mm"),
        },
    )
    stale = table[table["stale"]]
    for row in stale.itertuples():
        st.warning(f"{row.symbol} ({row.source}, {row.interval}) is stale: last bar {row.last_ts:%Y-%m-%d %H:%M} UTC.")

st.subheader("Prices")
if not selection.symbols:
    st.info("Choose one or more symbols in the sidebar.")
for symbol in selection.symbols:
    rows = summary[(summary["symbol"] == symbol) & (summary["interval"] == selection.interval)] if not summary.empty else summary
    if rows.empty:
        st.info(f"No {selection.interval} bars cached for {symbol}. Fetch or import them below.")
        continue
    try:
        bars = read_bars(symbol, selection.interval, db_path=selection.db_path)
    except CacheBusyError as error:
        st.warning(str(error))
        continue
    source = rows.sort_values("last_ts").iloc[-1]["source"]
    st.plotly_chart(
        price_chart(bars, symbol, selection.interval, synthetic=(source == "demo"), source=source),
        key=f"price-{symbol}", theme=None,
    )

st.subheader("Refresh now")
with st.form("refresh"):
    refresh_symbols = st.multiselect("Symbols", options=sorted(set(summary["symbol"])) if not summary.empty else [],
                                     default=list(selection.symbols))
    refresh_source = st.selectbox("Source", ["demo", "yfinance", "ccxt"],
                                  help="demo regenerates the synthetic market; yfinance and ccxt need the internet.")
    refresh_exchange = st.text_input("Exchange (ccxt)", value="bybit")
    submitted = st.form_submit_button("Refresh now", type="primary")
if submitted:
    progress = st.progress(0.0, text="Starting…")

    def on_progress(done: int, total: int, message: str) -> None:
        progress.progress(done / max(total, 1), text=message)

    request = RefreshRequest(symbols=tuple(refresh_symbols), interval=selection.interval, source=refresh_source,
                             exchange=refresh_exchange, db_path=selection.db_path)
    report = run_refresh(request, progress=on_progress)
    clear_cached_reads()
    for line in report.lines():
        (st.error if line.startswith("FAILED") else st.success)(line)

st.subheader("Import a CSV or Parquet file")
st.caption("Yahoo-style, exchange kline (unix s/ms), the 1-minute Bitcoin history layout, or ts/open/high/low/close/volume. "
           "Naive timestamps are read as UTC.")
with st.form("import"):
    upload = st.file_uploader("File", type=["csv", "parquet", "pq", "txt"])
    import_symbol = st.text_input("Symbol", value="")
    import_interval = st.selectbox("Interval", list(INTERVAL_SECONDS), index=list(INTERVAL_SECONDS).index("1d"))
    do_import = st.form_submit_button("Import")
if do_import:
    if upload is None:
        st.error("Choose a file to import.")
    else:
        try:
            check_symbol(import_symbol)
            check_interval(import_interval)
            frame = read_bar_file(upload, max_bytes=MAX_UPLOAD_BYTES, origin=upload.name)
            source = "parquet" if upload.name.lower().endswith((".parquet", ".pq")) else "csv"
            written = upsert_bars(frame, symbol=import_symbol, source=source, interval=import_interval,
                                  db_path=selection.db_path)
        except (InvalidNameError, BarValidationError, SourceError, CacheBusyError) as error:
            st.error(f"Nothing was imported. {error}")
        else:
            clear_cached_reads()
            st.success(f"Imported {written:,} bars of {import_symbol} ({import_interval}) from {upload.name}.")
