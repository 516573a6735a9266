"""A grid's results without its weights, to spread one grid over several machines or sessions.

`okd compare -c GRID --export DIR` copies what the report reads (each finished run's config, summary,
metrics and provenance; every evaluation JSON, and its per-prompt files with each answer's ROUGE-L and
whether it ended, not its text: a few KB per set and seed, where the answers would make a 20-model grid
tens of MB) into DIR, adding to what DIR holds; `--import DIR` puts
into the grid's output_dir the runs and evaluations it does not have. An imported run has its results
and no weights: it is reported and skipped like a finished one, and trained again only when a run to
train or a model to evaluate needs its weights (a student_from or teacher_from run); its imported
evaluations then count only if the new weights are the ones they scored (okd.compare.state.eval_done).

Every trained run leaves provenance.json: the machine and a fingerprint of the teacher it was trained
against and of the student it produced, so a report over runs from several machines can say which
runs shared a teacher (two tunings of the teacher on different CPUs give different weights).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml

from okd.compare.grid import Plan, Run
from okd.compare.results import hardware
from okd.compare.state import IMPORTED, is_imported, run_status, weights_owner

RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "provenance.json")
KEPT = ("rougeL", "finished")  # of each per-prompt answer record

Log = Callable[[str], None]


def weights_fingerprint(model) -> str | None:
    """The first 16 hex digits of the sha256 over a model's weight files (okd.models.fingerprints, which the
    teacher cache records in full) for a ModelConfig or a model directory; None where they are not here."""
    from okd.config import ModelConfig
    from okd.errors import OkdError
    from okd.models.fingerprints import teacher_identity

    try:
        return teacher_identity(model if isinstance(model, ModelConfig) else ModelConfig(path=str(model))
                                )["weights_sha256"][:16]
    except (OkdError, OSError):
        return None


def write_provenance(run: Run) -> None:
    """runs/<name>/provenance.json: where the run trained and which weights it read and wrote."""
    from okd.precision import cpu_features

    hw = hardware()
    record = {"machine": f"{hw['processor']} {cpu_features()}".strip(), "gpu": hw["gpu"], "torch": hw["torch"],
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "student_sha": weights_fingerprint(run.dir / "student")}
    if run.cfg.method.resolved_teacher != "none":
        record.update(teacher=run.cfg.teacher.path, teacher_sha=weights_fingerprint(run.cfg.teacher))
    (run.dir / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")


def _labels(plan: Plan) -> set[str]:
    refs = set(plan.spec.eval.references) if plan.spec.eval is not None else set()
    return refs | {r.name for r in plan.runs}


def _eval_files(eval_dir: Path, labels: set[str], of: set[str] | None = None) -> list[Path]:
    """The evaluation files of the labels `of` (default: all of them): <label>.json, <label>.exposure.json
    and the per-prompt answers the paired intervals read (<label>.<set>.seed<k>.jsonl). A file belongs to
    the longest label it starts with (runs `a` and `a.b` both may exist)."""
    if not eval_dir.is_dir():
        return []
    files = []
    for p in sorted(eval_dir.iterdir()):
        owner = max((label for label in labels if p.name.startswith(f"{label}.")), key=len, default=None)
        if p.is_file() and owner is not None and owner in (labels if of is None else of):
            files.append(p)
    return files


def _owned_labels(plan: Plan, runs: list[str]) -> set[str]:
    """The evaluation labels scoring these runs' weights (state.weights_owner)."""
    return {label for label in _labels(plan) if weights_owner(plan, label) in runs}


def _compact(p: Path) -> str | None:
    """A per-prompt answers file with only KEPT of each record; None if it does not parse (being written)."""
    try:
        lines = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    return "".join(json.dumps({k: r[k] for k in KEPT if k in r}) + "\n" for r in lines)


def export_results(plan: Plan, dest: Path, log: Log) -> None:
    """Copy the finished runs' results and every evaluation into dest (added to, or replacing, what it holds).
    For a run trained here its archived evaluations are replaced by the local ones, or dropped: they
    described the weights it had before."""
    dest.mkdir(parents=True, exist_ok=True)
    runs, trained_here = [], []
    for r in plan.runs:
        if r.same_as or run_status(r) not in ("complete", "imported"):
            continue
        target = dest / "runs" / r.name
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (r.dir / name).is_file():
                shutil.copyfile(r.dir / name, target / name)
        if not is_imported(r):
            trained_here.append(r.name)
        runs.append(r.name)
    (dest / "eval").mkdir(exist_ok=True)
    for p in _eval_files(dest / "eval", _labels(plan), _owned_labels(plan, trained_here)):
        p.unlink()
    evals, skipped = _eval_files(plan.out / "eval", _labels(plan)), []
    for p in evals:
        if p.suffix == ".jsonl":  # per-prompt answers: the scores the intervals pair, without the texts
            text = _compact(p)
            if text is None:
                skipped.append(p.name)
                continue
            (dest / "eval" / p.name).write_text(text)
        else:
            shutil.copyfile(p, dest / "eval" / p.name)
    if plan.source and Path(plan.source).is_file():
        shutil.copyfile(plan.source, dest / "grid.yaml")
    log(f"export: {len(runs)} runs ({', '.join(runs) or 'none finished'}) and {len(evals) - len(skipped)} "
        f"evaluation files -> {dest}" + (f"; left out {', '.join(skipped)} (unreadable: being written?)" if skipped
                                          else ""))


def import_results(plan: Plan, src: Path, log: Log) -> None:
    """Put into the output_dir the runs of src it does not have (no directory here: nothing local is replaced)
    whose config is this grid's, and the evaluations of those runs and of the reference rows it lacks."""
    from okd.config import LOGGING_KEYS, config_diff
    from okd.errors import OkdError

    if not (src / "runs").is_dir() and not (src / "eval").is_dir():
        raise OkdError(f"--import: {src} holds no exported results (runs/ or eval/); write one with --export")
    runs, skipped, other = [], [], []
    for r in plan.runs:
        origin = src / "runs" / r.name
        if r.same_as or not (origin / "summary.json").is_file():
            continue
        if r.dir.exists():  # trained, training or interrupted here
            skipped.append(r.name)
            continue
        try:
            old = yaml.safe_load((origin / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            old = {}
        if [k for k in config_diff(old, r.cfg.model_dump(mode="json")) if k not in LOGGING_KEYS]:
            other.append(r.name)
            continue
        r.dir.mkdir(parents=True)
        for name in RUN_FILES:
            if (origin / name).is_file():
                shutil.copyfile(origin / name, r.dir / name)
        (r.dir / IMPORTED).write_text(json.dumps({"from": str(src), "at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        runs.append(r.name)
    refs = set(plan.spec.eval.references) - {"teacher"} if plan.spec.eval is not None else set()
    evals = []
    (plan.out / "eval").mkdir(parents=True, exist_ok=True)
    for p in _eval_files(src / "eval", _labels(plan), _owned_labels(plan, runs) | refs):
        if not (plan.out / "eval" / p.name).is_file():
            shutil.copyfile(p, plan.out / "eval" / p.name)
            evals.append(p.name)
    log(f"import: {len(runs)} runs ({', '.join(runs) or 'none'}) and {len(evals)} evaluation files from {src}"
        + (f"; kept the local {', '.join(skipped)}" if skipped else "")
        + (f"; left out {', '.join(other)} (trained with another config than this grid's)" if other else ""))


def forget_import(plan: Plan, run: Run) -> None:
    """An imported run about to be trained again: its results go. Its evaluations stay where they name the
    weights they scored (compare_model_sha): they count again only if the new training gives the same
    weights (okd.compare.state.eval_done; the same seed on the same kind of machine does); the others go."""
    for name in (*RUN_FILES, IMPORTED):
        if name != "config.yaml":
            (run.dir / name).unlink(missing_ok=True)
    for p in _eval_files(plan.out / "eval", _labels(plan), _owned_labels(plan, [run.name])):
        if p.name.endswith(".jsonl"):
            continue  # answers: kept or dropped with their evaluation below
        try:
            named = json.loads(p.read_text()).get("compare_model_sha")
        except (OSError, ValueError):
            named = None
        if not named:
            for q in [p, *p.parent.glob(f"{p.name.removesuffix('.json')}.*.jsonl")]:
                q.unlink(missing_ok=True)
