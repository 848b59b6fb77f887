"""CSV download buttons for the tables a page shows: one row of buttons, the file built only when clicked."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV with a header row, no index, full precision (the screen rounds, the file does not)."""
    return frame.to_csv(index=False).encode("utf-8")


def csv_buttons(tables: dict[str, pd.DataFrame | Callable[[], pd.DataFrame]], key: str, file_stem: str) -> None:
    """A 'name (CSV)' download button per table; a callable is built only when its button is clicked."""
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        for name, table in tables.items():
            slug = "-".join(name.lower().replace("/", " ").split())
            st.download_button(
                f"{name} (CSV)", data=lambda table=table: csv_bytes(table() if callable(table) else table),
                file_name=f"{file_stem}-{slug}.csv", mime="text/csv", key=f"csv-{key}-{slug}", on_click="ignore",
                width="content",
            )
