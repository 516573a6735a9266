"""The on-disk state of a grid: a run finished, imported from an archive (results without weights),
interrupted (checkpoints) or new; an evaluation current or not."""

from __future__ import annotations

import json
import re
from pathlib import Path

from okd.compare.grid import Plan, Run
from okd.compare.settings import eval_settings

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


def eval_current(path: Path, settings: dict, weights: str | None = None) -> bool:
    """An evaluation JSON stamped with these settings exists (and, given the fingerprint of the weights it
    should describe, was made of them: a run trained again, or another machine's, is evaluated again)."""
    if not path.is_file():
        return False
    try:
        res = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return res.get("compare_settings") == settings and (weights is None or res.get("compare_model_sha") in (None, weights))


def weights_owner(plan: Plan, label: str) -> str:
    """The run whose weights an evaluation label scores: the run itself, the tuning run for the teacher row."""
    return plan.spec.teacher_from if label == "teacher" and plan.spec.teacher_from else label


def eval_done(plan: Plan, label: str, exposure: bool = False) -> bool:
    """eval/<label>(.exposure).json is current: these settings, and the weights that label's run recorded
    (provenance.json of weights_owner)."""
    try:
        weights = json.loads((plan.out / "runs" / weights_owner(plan, label) / "provenance.json").read_text()
                             ).get("student_sha")
    except (OSError, ValueError):
        weights = None
    name = f"{label}.exposure.json" if exposure else f"{label}.json"
    return eval_current(plan.out / "eval" / name, eval_settings(plan, exposure), weights)
