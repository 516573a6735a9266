"""The evaluation library: ROUGE-L, exposure bias (ExAccErr), teacher-forced analyses, reports.

It sits below okd.train (the trainer calls quick_rouge) and never imports okd.train or the
orchestration above it (okd.compare, okd.analyze, okd.demo, okd.cli). Generation itself lives in
okd.generation (training's on-policy methods use it too).

The names below load on first use, so `okd.eval.config` (the `okd eval` flags) is importable
without torch: `okd --help` stays quick.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalConfig": "okd.eval.config", "ExposureConfig": "okd.eval.config", "build_eval_config": "okd.eval.config",
    "exacc_err": "okd.eval.exposure", "exacc_err_curve": "okd.eval.exposure", "exposure_bias": "okd.eval.exposure",
    "rouge_l": "okd.eval.rouge", "rouge_l_per_example": "okd.eval.rouge",
    "quick_rouge": "okd.eval.runner", "run_eval": "okd.eval.runner", "score_predictions": "okd.eval.runner",
    "teacher_forced_stats": "okd.eval.teacher_forced",
    "follow_run": "okd.eval.follow", "fit_prompts": "okd.eval.follow", "plot_runs": "okd.eval.curves",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'okd.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups (and monkeypatching) see a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
