"""The Python API, for notebooks and scripts (DESIGN §6): `from okd import train, evaluate, load_config`.

    from okd import train, evaluate, load_config
    run = train({"teacher": {"path": "smollm2-135m-instruct"}, "student": {"path": "students/smol8"},
                 "data": {"train": "sharegpt", "valid": "sharegpt", "template": "chat"},
                 "method": {"name": "okd"}, "train": {"max_steps": 100}, "output_dir": "runs/nb-okd"})
    results = evaluate(run, "sharegpt", limit=32, seeds=1)    # a run follows its template and prompt length

`train` takes a config dict, a YAML path or a Config, plus dotted overrides (a list of "key=value"
strings or a dict), and returns the run directory. `evaluate` takes okd eval's settings as keyword
arguments (`max_new_tokens=64`, `exposure={"samples": 2}`) and returns the results dict. Every mistake a
user can make is an `okd.OkdError` carrying the command line's one-line message. Library chatter (weight-
loading bars, the DeepSpeed accelerator notice) is off unless `verbose=True`.

`okd.train` is also the name of the training package (okd/train/): the package is callable
(okd.entry.TrainPackage), so `import okd; okd.train(cfg)` works whether or not it was imported before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from okd.entry import libraries_quiet, load_config
from okd.errors import OkdError
from okd.paths import status

__all__ = ["evaluate", "load_config", "train"]


def train(config: Any, overrides: list[str] | dict | None = None, *, resume: bool = False, progress: bool = True,
          verbose: bool = False) -> Path:
    """Train one run (okd train); returns its output directory (student/, metrics.jsonl, summary.json, ...)."""
    import importlib

    package = importlib.import_module("okd.train")  # callable: okd.entry.TrainPackage
    return package(config, overrides, resume=resume, progress=progress, verbose=verbose)


def _eval_settings(settings: dict, model: str, log: Callable[[str], None]):
    """(model path to load, EvalConfig): keyword settings, following a run's template and prompt length."""
    from okd.eval.config import build_eval_config
    from okd.eval.follow import FOLLOWED, follow_run

    path, followed = follow_run(model, {k: settings.get(k) for k in FOLLOWED}, log=log)
    tree = {k: v for k, v in settings.items() if v is not None or k not in FOLLOWED}
    tree.update(followed)
    return path, build_eval_config(tree, name=lambda key: f"evaluate(): setting {key!r}")


def evaluate(model: str | Path, data: str | list[str], output: str | Path | None = None, *,
             teacher: str | None = None, progress: bool = False, verbose: bool = False,
             log: Callable[[str], None] | None = None, **settings) -> dict:
    """okd eval as a function: ROUGE-L over sampled seeds (exposure bias and teacher-forced stats with a
    teacher) of `model` (a run directory, its student/, an HF directory, hub id, .gguf or preset) on `data`
    (one or several files, directories or presets). Writes the results JSON to `output` (default: a new
    temporary directory) with the per-seed predictions beside it; returns the results, `output` included."""
    from okd.eval.runner import run_eval
    from okd.train.preflight import check_output_file

    say = log or status
    data = [str(data)] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]
    if not data:
        raise OkdError("evaluate(): give at least one data set")
    if output is None:
        import tempfile

        output = Path(tempfile.mkdtemp(prefix="okd-eval-")) / "results.json"
    check_output_file(output, "output")
    path, cfg = _eval_settings(settings, str(model), say)
    with libraries_quiet(verbose):
        results = run_eval(path, data, output, cfg, teacher_path=teacher, progress=progress, log=say)
    results["output"] = str(output)
    return results

