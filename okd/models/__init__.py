"""Layer 2: loading teacher and student, the online module, presets, depth pruning."""
