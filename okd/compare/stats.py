"""Statistics over a grid's training seeds: mean ± std per run group, and paired bootstrap intervals.

A grid with `seeds:` trains each run once per seed (<name>_s<seed>, its group <name>). For each group
and eval set: the mean over training seeds of each seed's ROUGE-L (itself the mean over sampling
seeds), with the std over training seeds. For a pair of groups (a, b) and an eval set: the paired
bootstrap 95% confidence interval of mean ROUGE-L(a) − ROUGE-L(b), pairing by prompt. Each prompt's
score is its ROUGE-L averaged over every training seed and sampling seed of the group; prompts are
resampled with replacement (B = 2000, fixed seed), the interval is the 2.5–97.5 percentiles of the
resampled mean differences (Koehn 2004's paired bootstrap, over prompts).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from okd.compare.grid import Plan
from okd.eval.runner import dataset_name

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def seed_groups(plan: Plan) -> dict[str, list[str]]:
    """{group: [trained run names, one per seed]} for the groups the seeds expanded."""
    groups: dict[str, list[str]] = {}
    for r in plan.runs:
        if r.seed is not None:
            groups.setdefault(r.group, []).append(plan.trained(r).name)
    return groups


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def group_rows(plan: Plan, rows: list[dict]) -> list[dict]:
    """One row per seed group: training seeds, time, valid CE and ROUGE-L per set as mean ± std over seeds."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for group, names in seed_groups(plan).items():
        members = [by_name[n] for n in names if n in by_name]
        if not members:
            continue
        row = {"name": group, "method": members[0]["method"], "seeds": len(members), "runs": [m["name"] for m in members]}
        for key in ("train_s", "valid_loss", "s_per_step"):
            vals = [m[key] for m in members if m.get(key) is not None]
            row[key] = _mean_std(vals) if vals else None
        sets = {s for m in members for s in (m.get("rougeL") or {})}
        row["rougeL"] = {s: _mean_std([m["rougeL"][s]["mean"] for m in members if s in (m.get("rougeL") or {})])
                         for s in sorted(sets)}
        out.append(row)
    return out


def prompt_scores(eval_dir: Path, labels: list[str], dataset: str) -> np.ndarray | None:
    """[prompts] ROUGE-L per prompt, averaged over the labels' (training seeds') sampling seeds; labels not
    evaluated yet are left out (`evaluated_labels` says which count), None when none is."""
    per_file = []
    for label in evaluated_labels(eval_dir, labels):
        try:
            res = json.loads((eval_dir / f"{label}.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        entry = res.get("datasets", {}).get(dataset)
        if not entry:
            return None
        for name in entry.get("predictions", []):
            lines = (eval_dir / name).read_text().splitlines()
            per_file.append([json.loads(line)["rougeL"] for line in lines if line.strip()])
    if not per_file or len({len(p) for p in per_file}) != 1:
        return None  # prompts must line up across files to be paired
    return np.asarray(per_file, dtype=np.float64).mean(axis=0)


def evaluated_labels(eval_dir: Path, labels: list[str]) -> list[str]:
    return [label for label in labels if (eval_dir / f"{label}.json").is_file()]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict:
    """Mean of a − b over prompts and its paired bootstrap 95% interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(samples, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean_diff": float(d.mean()), "ci95": [float(lo), float(hi)], "prompts": int(len(d)),
            "samples": samples}


def eval_labels(plan: Plan, name: str) -> list[str]:
    """The evaluations (eval/<label>.json) behind a name: a seed group's runs, a run, or a reference row."""
    groups = seed_groups(plan)
    if name in groups:
        return groups[name]
    run = next((r for r in plan.runs if r.name == name), None)
    if run is not None:
        return [plan.trained(run).name]
    refs = plan.spec.eval.references if plan.spec.eval is not None else []
    return [name] if name in refs else []


def intervals(plan: Plan, pairs: list[tuple[str, str]] | None = None) -> list[dict]:
    """Paired bootstrap intervals per eval set for okd − every other seed group (or the given pairs: seed
    groups, runs or reference rows)."""
    groups = seed_groups(plan)
    if pairs is None:
        focus = [g for g in groups if g == "okd"] or list(groups)[:1]
        pairs = [(a, b) for a in focus for b in groups if b != a]
    if plan.spec.eval is None:
        return []
    taken: set[str] = set()
    names = [dataset_name(d, taken) for d in plan.spec.eval.data]  # as okd eval names them
    out = []
    for a, b in pairs:
        for name in names:
            sa = prompt_scores(plan.out / "eval", eval_labels(plan, a), name)
            sb = prompt_scores(plan.out / "eval", eval_labels(plan, b), name)
            if sa is None or sb is None or len(sa) != len(sb):
                continue
            runs = {side: len(evaluated_labels(plan.out / "eval", eval_labels(plan, side))) for side in (a, b)}
            out.append({"a": a, "b": b, "set": name, **paired_bootstrap(sa, sb), "runs_a": runs[a], "runs_b": runs[b]})
    return out


HEADROOM_GOAL = 2.0  # ROUGE-L points, with an interval excluding 0 (the paper's anchors: +1.3 to +11.7)


def headroom(plan: Plan) -> list[dict] | None:
    """teacher − SFT student per eval set (paired intervals), when the grid has both the 'teacher' reference
    row and a run or seed group named 'sft'; each entry says whether it reaches HEADROOM_GOAL."""
    ev = plan.spec.eval
    if ev is None or "teacher" not in ev.references or not eval_labels(plan, "sft"):
        return None
    rows = intervals(plan, [("teacher", "sft")])
    for r in rows:
        r["reaches_goal"] = r["mean_diff"] >= HEADROOM_GOAL and r["ci95"][0] > 0
    return rows


def validation_curve(plan: Plan, rows: list[dict], name: str) -> list[tuple[float, float]]:
    """[(training seconds, valid CE)] at the validation steps of a run, or of a seed group averaged over its
    seeds at the steps they all validated (train_s: the loop's time without validation and saves)."""
    by_name = {r["name"]: r for r in rows}
    members = [by_name[n] for n in (seed_groups(plan).get(name) or [name]) if n in by_name]
    seconds = lambda m: m.get("train_s", m.get("elapsed_s"))  # noqa: E731  (runs from before train_s existed)
    per = [{m["step"]: (seconds(m), m["valid_loss"]) for m in r.get("curve") or []
            if "valid_loss" in m and seconds(m) is not None} for r in members]
    steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
    return [(statistics.fmean(p[s][0] for p in per), statistics.fmean(p[s][1] for p in per)) for s in steps]


def _first_at_or_below(curve, target):
    return next((t for t, ce in curve if ce <= target), None)


def _at_time(curve, seconds):
    return next((ce for t, ce in reversed(curve) if t <= seconds), None)


def time_to_quality(plan: Plan, rows: list[dict], pairs) -> list[dict]:
    """For each (a, b): b's best validation CE as the target, the training time each takes to reach it
    (first validation at or below; a may never reach it), b's time over a's, and both CEs at the last
    validation within the shorter run's training time (equal time)."""
    out = []
    for a, b in pairs:
        ca, cb = validation_curve(plan, rows, a), validation_curve(plan, rows, b)
        if not ca or not cb:
            missing = " and ".join(n for n, c in ((a, ca), (b, cb)) if not c)
            out.append({"a": a, "b": b, "reason": f"no validation curve for {missing} (not trained yet, or no "
                                                  "validation step common to its seeds)"})
            continue
        target = min(ce for _, ce in cb)
        ta, tb = _first_at_or_below(ca, target), _first_at_or_below(cb, target)
        equal = min(ca[-1][0], cb[-1][0])
        out.append({"a": a, "b": b, "target_valid_loss": target, "a_s": ta, "b_s": tb,
                    "speedup": tb / ta if ta else None, "a_best": min(ce for _, ce in ca),
                    "equal_time_s": equal, "a_at_equal_time": _at_time(ca, equal), "b_at_equal_time": _at_time(cb, equal)})
    return out
