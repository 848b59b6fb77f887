"""Issue 15's real-data check: the model's volatility forecast against GARCH-t and HAR on REAL daily prices.

The files are real: the S&P 500 and the NASDAQ Composite, 1999-2018, in Yahoo's download layout
(tests/fixtures/files/real_daily, from the `arch` package's data module). They go in as a user's download would:
`python -m storage.refresh --source csv` into a fresh DuckDB cache, read back as a panel, trained with the recipe a
user gets (settings_for_panel; `--recipe demo` for the recipe before issue 15) and scored against every baseline on
the same walk-forward test spans (engine.training.run.run_training).

Printed: per asset and horizon (1 and 5 bars), QLIKE of the model, GARCH-t, GARCH(1,1) and HAR, with the one-sided
Diebold-Mariano p-value of "the model's QLIKE is lower" against each (HAC, as the score tables compute it; not
corrected here: the table is a measurement, the product's verdicts are Holm-corrected), and the direction Brier
score beside 0.25 (a coin).

Run: python -m engine.benchmarks.real_daily [--recipe general|demo] [--folds 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FILES = {"GSPC": "GSPC_yahoo_daily.csv", "IXIC": "IXIC_yahoo_daily.csv"}
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "files" / "real_daily"
PEERS = ("garch_t", "garch11", "har")


def import_files(db_path: Path) -> None:
    """The README's import command for each file, in process."""
    from storage.refresh import main as refresh

    for symbol, name in FILES.items():
        code = refresh(["--source", "csv", "--path", str(FIXTURES / name), "--symbol", symbol, "--interval", "1d",
                        "--db", str(db_path)])
        if code != 0:
            raise SystemExit(f"importing {name} failed (exit {code})")


def qlike_table(scores: pd.DataFrame, summary_by_h: dict[int, dict]) -> pd.DataFrame:
    rows = []
    for (asset, horizon), group in scores[scores["metric"] == "qlike"].groupby(["asset", "horizon"]):
        values = dict(zip(group["model"], group["value"]))
        row = {"asset": asset, "horizon": int(horizon), "model": values.get("model", np.nan)}
        vs = summary_by_h.get(int(horizon), {}).get("assets", {}).get(asset, {})
        for peer in PEERS:
            row[peer] = values.get(peer, np.nan)
            row[f"p(model<{peer})"] = vs.get(f"vs_{peer}", {}).get("dm_p_better_qlike", np.nan)
        brier = scores[(scores["asset"] == asset) & (scores["horizon"] == horizon) & (scores["metric"] == "brier")
                       & (scores["model"] == "model")]["value"]
        row["brier"] = float(brier.iloc[0]) if len(brier) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    import torch

    from engine.evaluation.run_scores import score_summary
    from engine.training.presets import demo_config, general_config
    from engine.training.run import run_training
    from engine.training.settings import settings_for_panel
    from storage.panel import cached_panel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=("general", "demo"), default="general")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bars.duckdb"
        import_files(db)
        loaded = cached_panel(list(FILES), "1d", db_path=db)
        recipe = {"general": general_config, "demo": demo_config}[args.recipe]
        config = dataclasses.replace(settings_for_panel(loaded.panel, "1d", n_folds=args.folds, recipe=recipe),
                                     device=args.device)
        run = run_training(loaded, config, Path(tmp) / "run", evaluate=True, register=False)
        if not run.finished:
            raise SystemExit(run.result.message)
        scores = run.scores
        summary = {h: score_summary(scores, horizon=h) for h in (1, 5)}
        table = qlike_table(scores[scores["horizon"].isin([1, 5])], summary)
        folds = run.result.folds
        ts = loaded.panel.ts
        test = ", ".join(f"{ts[f.test[0]]:%Y-%m-%d}..{ts[f.test[1] - 1]:%Y-%m-%d}" for f in folds)
        test = f"(test spans {test})" if test else ""
    print(f"Real daily data (S&P 500, NASDAQ Composite; tests/fixtures/files/real_daily), {len(loaded.panel.ts)} rows "
          f"{loaded.panel.ts[0]:%Y-%m-%d}..{loaded.panel.ts[-1]:%Y-%m-%d}; {args.recipe} recipe, {args.folds} "
          f"walk-forward folds {test}; torch {torch.__version__} on {args.device}; {time.perf_counter() - started:.0f} s")
    print("QLIKE (lower is better); p = one-sided Diebold-Mariano p of 'model lower', uncorrected; brier: direction, "
          "0.25 = coin")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
