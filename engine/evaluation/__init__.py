"""Scoring forecasts: baselines, scores, stored predictions, a run's score table, forecast review."""
