"""The vectorised backtest, its inputs, parameter sweeps and performance metrics."""
