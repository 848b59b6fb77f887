"""Data page: what is cached per symbol and how fresh, price charts, refresh now, import files, fetch real data."""
from __future__ import annotations

import streamlit as st

from engine.figures.prices import price_chart
from storage.cache import read_bars
from storage.config import INTERVAL_SECONDS
from storage.locks import CacheBusyError, RefreshBusyError
from storage.refresh import RefreshRequest, import_uploaded_file, run_refresh
from storage.sources.files import limits_text
from views.frame import (
    clear_cached_reads,
    current_selection,
    load_import_reports,
    load_summary,
    show_refresh_report,
)
from views.url_state import url_widget

selection = current_selection()
st.title("Data")

summary = load_summary(selection.db_path)
known_symbols = sorted(set(summary["symbol"])) if not summary.empty else []
st.subheader("Cache contents")
if summary.empty:
    st.info("The cache holds no bars yet. Import a file or fetch from a source below.")
else:
    table = summary.copy()
    # The demo market is a fixed synthetic span: "stale" would be noise there, so it is labelled for what it is.
    is_demo = table["source"] == "demo"
    table["freshness"] = table["stale"].map({True: "stale", False: "fresh"}).where(~is_demo, "synthetic, fixed span")
    zone = selection.zone
    st.dataframe(
        table[["asset", "symbol", "source", "interval", "rows", "freshness", "first_ts", "last_ts"]],
        hide_index=True, width="stretch",
        column_config={
            "asset": st.column_config.TextColumn("Asset", help="The asset name (BTC-USD, BTCUSDT and BTC/USDT are BTC)."),
            "symbol": st.column_config.TextColumn("Stored as", help="The symbol the bars are stored under."),
            "source": st.column_config.TextColumn("Source"),
            "interval": st.column_config.TextColumn("Interval", width="small"),
            "rows": st.column_config.NumberColumn("Bars", format="localized", width="small"),
            "freshness": st.column_config.TextColumn(
                "Freshness", width="medium",
                help="fresh: the last bar is as recent as the market's calendar allows; stale: older than that; the "
                     "synthetic demo is a fixed span."),
            "first_ts": st.column_config.DatetimeColumn(f"First bar ({zone})", format="YYYY-MM-DD HH:mm",
                                                        timezone=zone, help="Bar open time."),
            "last_ts": st.column_config.DatetimeColumn(f"Last bar ({zone})", format="YYYY-MM-DD HH:mm",
                                                       timezone=zone, help="Bar open time."),
            "last_refresh_at": st.column_config.DatetimeColumn(f"Last refresh ({zone})", format="YYYY-MM-DD HH:mm",
                                                               timezone=zone),
            "last_outcome": st.column_config.TextColumn("Last outcome", width="small"),
            "last_error": st.column_config.TextColumn("Last error", help="Why the last refresh or import failed."),
        },
    )
    with st.expander("Last refresh of each series"):  # apart, so the table above fits a 13-inch screen
        st.dataframe(
            table[["asset", "source", "interval", "last_refresh_at", "last_outcome", "last_error"]], hide_index=True,
            width="stretch",
            column_config={
                "asset": st.column_config.TextColumn("Asset"), "source": st.column_config.TextColumn("Source"),
                "interval": st.column_config.TextColumn("Interval", width="small"),
                "last_refresh_at": st.column_config.DatetimeColumn(f"Last refresh ({zone})",
                                                                   format="YYYY-MM-DD HH:mm", timezone=zone),
                "last_outcome": st.column_config.TextColumn("Outcome", width="small"),
                "last_error": st.column_config.TextColumn("Error", help="Why the last refresh or import failed."),
            },
        )
    # A failed first fetch or import leaves a refresh-log row and no bars: say so, never format a missing time.
    empty = table[table["last_ts"].isna()]
    for row in empty.itertuples():
        why = f" (last attempt: {row.last_outcome}: {row.last_error})" if isinstance(row.last_error, str) else ""
        st.warning(f"{row.symbol} ({row.source}, {row.interval}) has no bars stored{why}. Fetch or import it below.")
    stale = table[table["stale"] & ~is_demo & table["last_ts"].notna()]
    for row in stale.itertuples():
        st.warning(f"{row.symbol} ({row.source}, {row.interval}) is stale: last bar "
                   f"{row.last_ts.tz_convert(selection.zone):%Y-%m-%d %H:%M} {selection.zone}.")

st.subheader("Data quality of imported files")
reports = load_import_reports(selection.db_path)
if reports.empty:
    st.caption("No file imports recorded yet: imported files' reports (rows repaired, partial last bar, missing "
               "sessions against the exchange calendar) appear here.")
else:
    quality = reports.assign(
        missing=[f"{m:,} of {e:,} {u}" for m, e, u in zip(reports["missing"], reports["expected"],
                                                         reports["missing_unit"])])
    st.dataframe(
        quality[["symbol", "source", "interval", "layout", "rows_read", "rows_kept", "rows_repaired",
                 "partial_last_bar", "calendar", "missing", "first_missing", "imported_at"]],
        hide_index=True, width="stretch",
        column_config={
            "rows_repaired": st.column_config.NumberColumn("rows repaired", help="OHLC off by float rounding "
                                                           "(e.g. yfinance auto_adjust): high/low widened"),
            "partial_last_bar": st.column_config.CheckboxColumn("partial last bar dropped"),
            "missing": st.column_config.TextColumn("missing sessions", help="Against the exchange calendar (NYSE) "
                                                   "or every period for 24/7 markets: a warning, not a refusal."),
            "first_missing": st.column_config.TextColumn("first missing"),
            "imported_at": st.column_config.DatetimeColumn(f"imported ({selection.zone})", format="YYYY-MM-DD HH:mm",
                                                           timezone=selection.zone),
        },
    )
    gaps = reports[reports["missing"] > 0]
    for row in gaps.itertuples():
        st.warning(f"{row.symbol} ({row.interval}, {row.source}): {row.missing:,} of {row.expected:,} "
                   f"{row.missing_unit} missing from the imported file (first: {row.first_missing}).")

st.subheader("Prices")
if not selection.symbols:
    st.info("Choose one or more symbols in the sidebar.")
# One asset's candles at a time, as on the Overview: with three candlestick charts the page opened by URL in 3.12 s
# (budget 3 s; chromium, two cores, engine.benchmarks.app_speed), with one in 1.66-1.94 s.
price_assets = [url_widget(st.segmented_control, "Asset", key="data_price_asset", default=selection.symbols[0],
                           options=list(selection.symbols), help="The asset whose cached bars are drawn.")
                or selection.symbols[0]] if selection.symbols else []
for asset in price_assets:
    symbol = selection.stored.get(asset, asset)  # the spelling the cache holds the asset under (BTC as BTC-USD)
    rows = summary[(summary["symbol"] == symbol) & (summary["interval"] == selection.interval)] if not summary.empty else summary
    rows = rows[rows["last_ts"].notna()] if not rows.empty else rows
    if rows.empty:
        st.info(f"No {selection.interval} bars cached for {asset}. Fetch or import them below.")
        continue
    try:
        bars = read_bars(symbol, selection.interval, start=selection.start, end=selection.end, db_path=selection.db_path)
    except CacheBusyError as error:
        st.warning(str(error))
        continue
    source = rows.sort_values("last_ts").iloc[-1]["source"]
    st.plotly_chart(
        price_chart(bars, symbol, selection.interval, synthetic=(source == "demo"), source=source),
        key=f"price-{symbol}", theme=None,
    )

st.subheader("Refresh now")
st.caption("Fetches only what is new since the last stored bar (a few bars of overlap), validates it, and stores it "
           "in one transaction per symbol. The same job runs on a schedule with `python -m storage.refresh`.")
with st.form("refresh"):
    stored_selection = [selection.stored.get(a, a) for a in selection.symbols]
    refresh_symbols = st.multiselect("Symbols", options=known_symbols,
                                     default=[s for s in stored_selection if s in known_symbols],
                                     accept_new_options=True,
                                     help="Type a new symbol (e.g. MSFT, ETH) to fetch it for the first time.")
    refresh_source = st.selectbox("Source", ["demo", "yfinance", "ccxt"],
                                  help="demo regenerates the synthetic market; yfinance and ccxt need the internet.")
    refresh_exchange = st.text_input("Exchange (ccxt)", value="bybit")
    submitted = st.form_submit_button("Refresh now", type="primary")
if submitted:
    progress = st.progress(0.0, text="Starting…")
    try:
        request = RefreshRequest(symbols=tuple(refresh_symbols), interval=selection.interval, source=refresh_source,
                                 exchange=refresh_exchange, db_path=selection.db_path, command="app: refresh now")
        report = run_refresh(request, progress=lambda fraction, message: progress.progress(fraction, text=message))
    except (ValueError, RefreshBusyError, CacheBusyError) as error:
        st.error(f"Nothing was refreshed: {error}")
    else:
        clear_cached_reads()
        show_refresh_report(report)

st.subheader("Import a CSV or Parquet file")
st.caption("Yahoo-style, exchange kline (unix s/ms), the 1-minute Bitcoin history layout, or ts/open/high/low/close/volume. "
           "Naive timestamps are read as UTC. The file is validated before anything is stored. "
           f"Limits: {limits_text()}.")
with st.form("import"):
    upload = st.file_uploader("File", type=["csv", "parquet", "pq", "txt"])
    import_symbol = st.text_input("Symbol", value="", key="import_symbol", help="The symbol to store these bars under, e.g. MSFT.")
    import_interval = st.selectbox("Interval", list(INTERVAL_SECONDS), index=list(INTERVAL_SECONDS).index("1d"),
                                   key="import_interval")
    import_date_order = st.selectbox(
        "Dates like 04/01/2021", ["detect", "day-first", "month-first"], key="import_date_order",
        help="detect: the order the dates show (a field above 12 is the day); a file that cannot tell is refused.",
    )
    do_import = st.form_submit_button("Import")
if do_import:
    if upload is None:
        st.error("Choose a file to import.")
    else:
        try:
            # The upload object itself, not getvalue(): no second copy of the file in the server's memory.
            report = import_uploaded_file(upload.name, upload, import_symbol, import_interval, selection.db_path,
                                          date_format=None if import_date_order == "detect" else import_date_order)
        except (ValueError, OSError, RefreshBusyError, CacheBusyError) as error:
            st.error(f"Nothing was imported. {error}")
        else:
            clear_cached_reads()
            show_refresh_report(report, nothing_stored="Nothing was imported.")
