"""Speed of the storage input path, as a table: `python -m tests.storage.bench_sources`.

Not collected by pytest (speed is measured here, never asserted in tests). Each figure is the best of a few
runs on whatever machine runs it.
"""
from __future__ import annotations

import io
import platform
import time

import numpy as np
import pandas as pd

from storage.sources.demo import DemoConfig, _generate
from storage.sources.files import read_bar_file
from storage.validation import validate_bars


def synthetic_bars(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.r_[close[0], close[:-1]]
    return pd.DataFrame({
        "ts": pd.date_range("2000-01-01", periods=n, freq="min", tz="UTC"),
        "open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
        "close": close, "volume": rng.uniform(1, 10, n),
    })


def best_of(repeats: int, call) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def rows() -> list[dict]:
    n = 1_000_000
    frame = synthetic_bars(n)
    as_text = frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    shuffled = pd.concat([frame, frame.iloc[: n // 100]]).sample(frac=1.0, random_state=0)
    csv_bytes = as_text.to_csv(index=False).encode()
    out = [
        {"what": "validate_bars, datetime ts, sorted", "rows": n,
         "seconds": best_of(3, lambda: validate_bars(frame, "b"))},
        {"what": "validate_bars, ISO text ts", "rows": n, "seconds": best_of(3, lambda: validate_bars(as_text, "b"))},
        {"what": "validate_bars, shuffled + 1% duplicates", "rows": len(shuffled),
         "seconds": best_of(3, lambda: validate_bars(shuffled, "b"))},
        {"what": f"read_bar_file, CSV {len(csv_bytes) / 1e6:.0f} MB", "rows": n,
         "seconds": best_of(2, lambda: read_bar_file(io.BytesIO(csv_bytes), origin="bench.csv"))},
    ]
    for interval in ("1d", "1h"):
        out.append({"what": f"demo market generation {interval} (3 symbols, uncached)",
                    "rows": len(_generate(DemoConfig(), interval, "planted", 7).bars["BTC"]),
                    "seconds": best_of(3, lambda: _generate(DemoConfig(), interval, "planted", 7))})
    return out


def main() -> None:
    print(f"# storage input benchmarks; python {platform.python_version()}, {platform.machine()}, "
          f"pandas {pd.__version__}\n")
    print("| what | rows | seconds |\n|---|---|---|")
    for row in rows():
        print(f"| {row['what']} | {row['rows']:,} | {row['seconds']:.3f} |")


if __name__ == "__main__":
    main()
