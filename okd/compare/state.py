"""The on-disk state of a grid's run: finished, imported from an archive (results without weights),
interrupted (checkpoints), or new."""

from __future__ import annotations

import re

from okd.compare.grid import Run

IMPORTED = "imported.json"  # in a run directory: its results came from an archive (okd.compare.archive)


def is_imported(run: Run) -> bool:
    return (run.dir / IMPORTED).is_file() and not (run.dir / "student").is_dir()


def run_status(run: Run) -> str:
    """'complete', 'imported' (results without weights), 'partial (step N)' or 'new'."""
    d = run.dir
    if (d / "summary.json").is_file() and (d / "student").is_dir():
        return "complete"
    if (d / "summary.json").is_file() and is_imported(run):
        return "imported"
    ckpts = sorted((d / "checkpoints").glob("step-*")) if (d / "checkpoints").is_dir() else []
    if ckpts:
        m = re.search(r"(\d+)$", ckpts[-1].name)
        return f"partial (step {int(m.group(1)) if m else '?'})"
    return "new"
