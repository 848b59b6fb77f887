"""Model page: train or retrain on the current selection in the background, with a progress bar that other pages
do not wait for and a cancel button; resume a cancelled run; the list of checkpoints with their data, scores and
device. Layout only: a run is engine.training.run.run_training, the job runner engine.training.jobs."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.device_probe import device_label_now
from engine.model.checkpoint import (
    new_run_id,
    pin_default,
    pinned_default,
    resolve_runs_dir,
)
from engine.training.jobs import JobRegistry
from storage.panel import cached_panel
from views.frame import clear_cached_reads, current_selection, load_runs

JOB = "train"
SKILL_COLUMN = "1-bar skill vs the best baseline"
selection = current_selection()
st.title("Model")


polling = device_label_now() is None


def device_caption() -> None:
    # engine.device_probe names the device without loading torch into the page (1.5-3 s on first paint)
    label = device_label_now()
    if label and polling:
        st.rerun()  # once, the whole page: it then draws this caption without the one-second timer
    shown = f"**{label}**" if label else "the GPU if torch finds one, else the CPU (checking which…)"
    st.caption(f"Training runs on {shown}. Walk-forward only: each fold trains on the past, stops early on a later "
               "validation span, and forecasts a test span after that; the scores come from those test spans.")


# Until the probe answers, the caption alone reruns every second to name the device.
st.fragment(device_caption, run_every=1.0 if polling else None)()


@st.cache_resource
def job_registry() -> JobRegistry:
    return JobRegistry()  # one per server process: every browser session sees the same training job


def training_work(symbols, interval, db_path, n_folds, max_epochs, seed, run_dir: Path, resume: bool):
    """The background job: engine.training.run.run_training (train, score against the baselines, register)."""

    def work(report, cancel):
        # torch and the baselines load only when a run starts
        from engine.training.progress import EtaEstimator, with_better_eta
        from engine.training.run import run_training
        from engine.training.settings import settings_for_panel


        loaded = cached_panel(symbols, interval, db_path=db_path)
        config = settings_for_panel(loaded.panel, interval, n_folds=n_folds, max_epochs=max_epochs, seed=seed)
        estimator = EtaEstimator(config.patience)  # timed from the epochs, not the set-up (training.progress)
        return run_training(loaded, config, run_dir, run_id=run_dir.name,
                            progress=lambda event: report(with_better_eta(event, estimator)), cancel=cancel.is_set,
                            resume=resume).result

    return work


registry = job_registry()
job = registry.get(JOB)

st.subheader("Train on the current selection")
if not selection.symbols:
    st.info("Choose the symbols to train on in the sidebar.")
else:
    with st.form("train"):
        st.markdown(f"Symbols **{', '.join(selection.symbols)}**, **{selection.interval}** bars, the whole cached "
                    "history (the date range only changes what the other pages draw).")
        left, middle, right = st.columns(3)
        n_folds = left.number_input("Walk-forward folds", 1, 6, 3, key="train_folds")
        max_epochs = middle.number_input("Most epochs per fold", 1, 100, 15, key="train_epochs",
                                         help="Early stopping on the validation span usually ends a fold sooner.")
        seed = right.number_input("Seed", 0, 10_000, 0, key="train_seed", help="The same seed repeats a CPU run.")
        start = st.form_submit_button("Train", type="primary", icon=":material/model_training:",
                                      disabled=bool(job and job.snapshot().running))
    if start:
        run_dir = resolve_runs_dir() / new_run_id()
        try:
            registry.start(JOB, training_work(selection.symbols, selection.interval, selection.db_path, int(n_folds),
                                              int(max_epochs), int(seed), run_dir, resume=False),
                           is_cancellation=lambda result: result.outcome == "cancelled")
        except RuntimeError as error:
            st.warning(str(error))
        st.session_state["train_run_dir"] = str(run_dir)
        st.session_state["train_request"] = (selection.symbols, selection.interval, selection.db_path,
                                             int(n_folds), int(max_epochs), int(seed))
        st.rerun()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return time.strftime("%H:%M:%S" if seconds >= 3600 else "%M:%S", time.gmtime(max(seconds, 0)))


@st.fragment(run_every=1.0)
def training_status() -> None:
    """Polls the job once a second; only this fragment reruns, so the page and the other pages stay responsive."""
    job = registry.get(JOB)
    if job is None:
        st.caption("No training job has run in this server session.")
        return
    snap = job.snapshot()
    event = snap.progress
    if snap.running:
        if event is None:
            st.progress(0.0, text="Loading the panel and computing features…")
        else:
            loss = f"loss {event.train_loss:.4f}" if event.train_loss is not None else ""
            val = f" · val {event.val_loss:.4f}" if event.val_loss is not None else ""
            st.progress(event.fraction, text=(f"fold {event.fold + 1}/{event.n_folds} · epoch {event.epoch + 1}/"
                                              f"{event.n_epochs} · {loss}{val} · {_duration(event.elapsed_s)} elapsed, "
                                              f"ETA {_duration(event.eta_s)}"))
        if st.button("Cancel training", icon=":material/cancel:", key="train_cancel"):
            job.cancel()
        return
    if snap.outcome == "done":
        st.success(f"{snap.result.message}. Scored against the baselines and added to the checkpoints below.")
        if st.session_state.get("_runs_seen") != snap.finished_at:
            st.session_state["_runs_seen"] = snap.finished_at
            st.session_state["_runs_version"] = st.session_state.get("_runs_version", 0) + 1
            clear_cached_reads()
            st.rerun(scope="app")
    elif snap.outcome == "cancelled":
        message = snap.result.message if snap.result is not None else "training was cancelled"
        st.warning(f"Training was cancelled: {message}")
        request = st.session_state.get("train_request")
        if request and st.button("Resume", icon=":material/play_arrow:", key="train_resume"):
            registry.forget(JOB)
            registry.start(JOB, training_work(*request, Path(st.session_state["train_run_dir"]), resume=True),
                           is_cancellation=lambda result: result.outcome == "cancelled")
            st.rerun(scope="fragment")
    else:
        st.error(f"Training failed: {snap.error}. Nothing was saved as a checkpoint.")
        with st.expander("Details"):
            st.code(snap.details or "", language="text")


training_status()

def _pin(run_id: str | None) -> None:
    """Button callback: write the user's default (runs/default_run.json) and let every cached read see it."""
    pin_default(run_id)
    st.session_state["_runs_version"] = st.session_state.get("_runs_version", 0) + 1
    # This session shows the new default at once where it fits (the sidebar checks), as a new session would.
    if run_id is None:
        st.session_state.pop("checkpoint", None)
        if "checkpoint" in st.query_params:
            del st.query_params["checkpoint"]
    else:
        st.session_state["checkpoint"] = run_id
    clear_cached_reads()


def _default_checkpoint_controls(runs: list[dict]) -> None:
    """"Use as default": the rule the user sets for which checkpoint a new session (or a link without one) shows."""
    pinned = pinned_default()
    ids = [run["run_id"] for run in runs]
    demos = {run["run_id"] for run in runs if run.get("demo")}
    st.markdown("**Default checkpoint**: " + (
        f"`{pinned}`, pinned by you." if pinned in ids else
        "none pinned: the shipped demo checkpoint where it fits, else the first run trained on the selection's "
        "universe (a new run never becomes the default on its own)."))
    left, middle, right = st.columns([3, 1, 1], vertical_alignment="bottom")
    current = selection.checkpoint["run_id"] if selection.checkpoint and selection.checkpoint["run_id"] in ids else None
    choice = left.selectbox("Checkpoint to pin", ids, index=ids.index(pinned if pinned in ids else current)
                            if (pinned in ids or current) else 0, key="pin_choice",
                            format_func=lambda run_id: run_id + (" (shipped demo)" if run_id in demos else ""))
    middle.button("Use as default", key="pin_default", type="primary", on_click=_pin, args=(choice,),
                  help="Every new session, and every link that names no checkpoint, shows this one where it fits the "
                       "selection. Stored in default_run.json beside the run registry.")
    right.button("Unpin", key="unpin_default", on_click=_pin, args=(None,), disabled=pinned is None)


st.subheader("Checkpoints")
runs = load_runs(str(st.session_state.get("_runs_version", 0)))
if not runs:
    st.info("No checkpoints yet: train one above.")
else:
    def headlines(run: dict) -> dict[str, dict]:
        """Per asset the stored 1-bar headline (engine.evaluation.run_scores.summary_skill): verdict and words."""
        from engine.evaluation.run_scores import summary_skill

        assets = (run.get("scores") or {}).get("assets", {})
        found = {}
        for symbol, entry in assets.items():
            stated = summary_skill(entry)["headline"] if isinstance(entry, dict) else None
            # the registry line is a file: take only the shape evaluate writes
            if not (isinstance(stated, dict) and stated.get("verdict") in (None, "edge", "worse", "mixed", "none")
                    and isinstance(stated.get("text", ""), str)):
                stated = {"verdict": None, "text": ""}
            found[str(symbol)] = stated
        return found

    def headline(run: dict) -> str:
        found = headlines(run)
        if not found:
            return "not scored"
        if all(h["verdict"] is None for h in found.values()):
            return ("scored before the one-sided tests: re-run engine.evaluate" if any(h["text"] for h in found.values())
                    else "no readable verdict")
        words = {"edge": "edge", "worse": "worse", "mixed": "mixed", "none": "no edge", None: "?"}
        return " · ".join(f"{symbol} {words.get(h['verdict'], '?')}" for symbol, h in found.items())

    table = pd.DataFrame([{
        "run": run["run_id"] + (" (shipped demo)" if run.get("demo") else ""),
        "symbols": ", ".join(run.get("symbols", [])),
        "interval": run.get("interval"),
        "data span (UTC)": " .. ".join(s[:10] for s in run.get("span", [])),
        "trained": pd.Timestamp(run["created_at"]) if run.get("created_at") else pd.NaT,
        "device": run.get("device"),
        SKILL_COLUMN: headline(run),
        "in use": bool(selection.checkpoint and selection.checkpoint["run_id"] == run["run_id"]),
    } for run in runs])
    zone = selection.zone
    table["trained"] = pd.to_datetime(table["trained"], utc=True, errors="coerce")
    table["universe"] = table["symbols"] + " · " + table["interval"].astype(str)  # one column: fits 1280 px
    # The columns a 13-inch screen shows without scrolling; the data span and device are in the expander below.
    st.dataframe(table, hide_index=True, width="stretch",
                 column_order=["run", "universe", "trained", SKILL_COLUMN], column_config={
        "run": st.column_config.TextColumn("Run", help="The run id: the sidebar and links name the checkpoint by it."),
        "symbols": st.column_config.TextColumn("Symbols", help="The assets it was trained on, in its order."),
        "interval": st.column_config.TextColumn("Interval", width="small"),
        "universe": st.column_config.TextColumn("Trained on", help="Its assets, in its order, and its bar interval: "
                                                "it runs only on these."),
        "data span (UTC)": st.column_config.TextColumn("Data span (UTC)", help="First and last bar it was trained "
                                                       "and tested on."),
        "trained": st.column_config.DatetimeColumn(f"Trained ({zone})", format="YYYY-MM-DD HH:mm", timezone=zone),
        "device": st.column_config.TextColumn("Device", width="small"),
        SKILL_COLUMN: st.column_config.TextColumn(
            "1-bar skill (DM test)",
            help="Per asset: 'edge' when the model beats the best baseline on some loss by a one-sided Diebold-Mariano "
                 "test (Holm-corrected) and loses on none; 'worse' the other way; 'mixed' both; 'no edge' neither."),
        "in use": st.column_config.CheckboxColumn("Used", width="small", help="The checkpoint the sidebar shows."),
    })
    st.caption("In use (the sidebar's checkpoint): "
               + (f"**{selection.checkpoint['run_id']}**." if selection.checkpoint else "none for this selection."))
    with st.expander("Data span and device of each run"):
        st.table(table[["run", "data span (UTC)", "device"]].set_index("run"))
    st.caption("1-bar skill, as scored when the run was evaluated: per asset, the model against the best baseline on "
               "each loss (squared error, pinball, Brier, QLIKE), one-sided Diebold-Mariano on the walk-forward test "
               "spans, Holm-corrected. 'edge': better on some loss beyond chance and worse on none; 'worse': the "
               "other way; 'mixed': both; 'no edge': neither. A run scored before these tests says so (python -m "
               "engine.evaluate --run <its folder> scores it again); the Forecasts page tests the selected run at "
               "every horizon.")
    _default_checkpoint_controls(runs)
    chosen = next((run for run in runs if selection.checkpoint and run["run_id"] == selection.checkpoint["run_id"]),
                  None)
    if chosen is not None:
        stated = pd.DataFrame([{"asset": symbol, "1-bar verdict (as scored)": h["text"]}
                               for symbol, h in headlines(chosen).items() if h["text"]])
        if not stated.empty:
            st.caption("The checkpoint in use, in words (text from its manifest):")
            st.table(stated)
