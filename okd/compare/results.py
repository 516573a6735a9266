"""Reading what a grid produced: one row per reference model and per trained run.

A row joins a run's summary.json and metrics.jsonl (time, throughput, memory, validation curve) with
its evaluations (ROUGE-L per set and averaged, exposure bias) where their settings stamp is current.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

from okd.compare.grid import Plan, Run
from okd.compare.state import eval_done, is_imported
from okd.eval.curves import read_metrics


# what the report keeps of each metrics.jsonl record (the module dynamics of online-teacher runs included)
CURVE_KEYS = ("step", "valid_loss", "valid_rougeL", "loss", "elapsed_s", "train_s", "valid_kl_base_teacher",
              "valid_kl_online_teacher", "valid_ce_base_teacher", "valid_ce_online_teacher", "online_update_norm")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def hardware() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def rouge_avg_over_sets(datasets: dict) -> dict | None:
    """Mean over the eval sets of the mean ROUGE-L; its std over seeds from the per-seed averages."""
    if not datasets:
        return None
    means = [d["rougeL"]["mean"] for d in datasets.values()]
    per_seed = [d["rougeL"].get("per_seed") or [] for d in datasets.values()]
    n = min(len(p) for p in per_seed)
    seed_avgs = [statistics.fmean(p[k] for p in per_seed) for k in range(n)]
    return {"mean": statistics.fmean(means), "std": statistics.stdev(seed_avgs) if n > 1 else None,
            "per_seed": seed_avgs}


def _eval_part(plan: Plan, label: str) -> dict:
    """The row's evaluation columns from eval/<label>.json and eval/<label>.exposure.json (when current)."""
    ev, eval_dir = plan.spec.eval, plan.out / "eval"
    part: dict = {}
    if ev is None:
        return part
    res = _read_json(eval_dir / f"{label}.json")
    if res and eval_done(plan, label):  # these settings, these weights
        part["rougeL"] = {n: d["rougeL"] for n, d in res["datasets"].items()}
        part["rougeL_avg"] = rouge_avg_over_sets(res["datasets"])
        part["gen_tokens_per_s"] = (res.get("generation") or {}).get("tokens_per_s")
        part["model_sha"] = res.get("compare_model_sha")
    xres = _read_json(eval_dir / f"{label}.exposure.json")
    if ev.exposure is not None and xres and eval_done(plan, label, exposure=True):
        d = next(iter(xres["datasets"].values()))
        ex, tf = d.get("exposure_bias") or {}, (d.get("teacher_forced") or {}).get("overall") or {}
        part["exposure"] = {"at_l": ex.get("at_l"), "length": ex.get("length"), "curve": ex.get("curve"),
                            "prompts": d.get("examples"), "samples": ex.get("samples"),
                            "top1_agreement": tf.get("top1_agreement"), "kl": tf.get("kl")}
    return part


def _valid_loss(summary: dict, metrics: list[dict]) -> float | None:
    """The valid CE of the weights the run kept: the last step's, or the selected validation's (train.select_by)."""
    sel = summary.get("selected")
    if sel:
        return next((m["valid_loss"] for m in metrics if m.get("step") == sel["step"] and "valid_loss" in m), None)
    return (summary.get("final_metrics") or {}).get("valid_loss")


def _run_row(plan: Plan, r: Run, summary: dict) -> dict:
    t = plan.trained(r)
    metrics = read_metrics(t.dir)
    steps = summary.get("steps") or 0
    elapsed = [m["elapsed_s"] for m in metrics if "elapsed_s" in m]
    deltas = [b - a for a, b in zip(elapsed, elapsed[1:])]  # step 2 onwards: no warm-up step
    # train_s excludes in-loop validation and checkpoint saves (runs from before it existed: wall clock)
    train_s = summary.get("train_s", summary.get("wall_clock_s"))
    row = {"name": r.name, "kind": "sweep" if r.sweep else "run", "sweep": r.sweep, "sweep_key": None,
           "sweep_value": r.sweep_value, "same_as": r.same_as, "method": r.cfg.method.name,
           "divergence": r.cfg.method.resolved_divergence, "teacher_mode": r.cfg.method.resolved_teacher,
           "overrides": r.overrides, "student_from": r.student_from, "teacher_from": r.teacher_from,
           "model": str(t.dir / "student"),
           "steps": steps, "train_s": train_s, "wall_clock_s": summary.get("wall_clock_s"),
           "s_per_step": summary.get("train_s", summary["wall_clock_s"]) / steps if steps else None,
           # robust to load spikes on a shared machine (and to validation/checkpoint steps)
           "median_s_per_step": statistics.median(deltas) if deltas else None,
           "tokens_per_s": summary.get("tokens_per_s"), "generated_tokens": summary.get("generated_tokens"),
           "peak_memory_mb": summary.get("peak_memory_mb"), "device": summary.get("device"),
           "valid_loss": _valid_loss(summary, metrics), "selected": summary.get("selected"),
           "curve": [{k: m[k] for k in CURVE_KEYS if k in m} for m in metrics],
           # where it trained, against which teacher weights (okd.compare.archive); imported: results only
           "provenance": _read_json(t.dir / "provenance.json"), "imported": is_imported(t)}
    if r.sweep:
        row["sweep_key"] = next(s for s in plan.spec.sweeps if s.name == r.sweep).key
    row.update(_eval_part(plan, t.name))
    return row


def collect_results(plan: Plan) -> list[dict]:
    """One row per reference model and per run (runs not trained yet are left out)."""
    rows: list[dict] = []
    if plan.spec.eval is not None:
        paths = {"teacher": plan.teacher, "teacher_base": plan.teacher_base, "student_init": plan.student_init}
        for ref in plan.spec.eval.references:
            rows.append({"name": ref, "kind": "reference", "method": "-", "model": paths[ref], **_eval_part(plan, ref)})
    for r in plan.runs:
        summary = _read_json(plan.trained(r).dir / "summary.json")
        if summary is not None:
            rows.append(_run_row(plan, r, summary))
    return rows
