"""The hybrid model: config, scans, SSM, attention, heads, losses, checkpoints, inference."""
