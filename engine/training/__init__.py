"""Walk-forward training: config, presets, the loop, objective, head scaling, resume, distributed."""
