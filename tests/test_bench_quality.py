"""benchmarks/bench_quality.py: the bookkeeping that turns metrics.jsonl + eval timings into time-to-target.

No training here (the script's --tiny mode is the end-to-end smoke test, about 30 s once the tiny
teacher is cached); these check the arithmetic on hand-made run directories.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"


@pytest.fixture(scope="module")
def bq():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(d: Path, losses: dict[int, float], step_s: float, eval_s: float, *, start_loss=None, timing=True):
    """A run whose steps take step_s and whose evaluations take eval_s (counted in elapsed_s, as the trainer does)."""
    d.mkdir(parents=True, exist_ok=True)
    rows, tim, clock, cpu = [], [], 100.0, 10.0
    if start_loss is not None:
        tim.append({"kind": "eval", "t": clock, "cpu_at": cpu, "wall": eval_s, "cpu": eval_s, "valid_loss": start_loss})
        clock, cpu = clock + eval_s, cpu + eval_s
    tim.append({"kind": "loop_start", "t": clock, "cpu_at": cpu})
    elapsed = 0.0
    for step in range(1, max(losses) + 1):
        elapsed += step_s
        clock, cpu = clock + step_s, cpu + step_s / 2  # half the wall time on CPU (a shared machine)
        row = {"step": step, "loss": 1.0, "elapsed_s": elapsed, "tokens": 100 * step}
        if step in losses:
            row["valid_loss"] = losses[step]
            tim.append({"kind": "eval", "t": clock, "cpu_at": cpu, "wall": eval_s, "cpu": eval_s / 2,
                        "valid_loss": losses[step]})
            elapsed, clock, cpu = elapsed + eval_s, clock + eval_s, cpu + eval_s / 2
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if timing:
        (d / "bench_timing.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tim))


def test_curve_excludes_validation_time(bq, tmp_path):
    write_run(tmp_path, {2: 9.0, 4: 8.0, 6: 7.5}, step_s=3.0, eval_s=10.0, start_loss=12.0)
    c = bq.curve_of(tmp_path)
    assert c["timing"] == "measured"
    pts = c["points"]
    assert [p["step"] for p in pts] == [0, 2, 4, 6]
    assert [p["train_s"] for p in pts] == pytest.approx([0.0, 6.0, 12.0, 18.0])  # elapsed_s minus earlier evals
    assert [p["train_cpu_s"] for p in pts] == pytest.approx([0.0, 3.0, 6.0, 9.0])
    assert [p["train_s_loop_clock"] for p in pts[1:]] == pytest.approx([6.0, 12.0, 18.0])
    assert c["eval_wall_s"] == pytest.approx(40.0)  # 3 evaluations + the initial one


def test_curve_without_timings_estimates_validation_time(bq, tmp_path):
    write_run(tmp_path, {2: 9.0, 4: 8.0, 6: 7.5}, step_s=3.0, eval_s=10.0, timing=False)
    c = bq.curve_of(tmp_path)
    assert c["timing"].startswith("estimated")
    assert [p["train_s"] for p in c["points"]] == pytest.approx([6.0, 12.0, 18.0])


def test_phases_targets_and_summary(bq, tmp_path):
    write_run(tmp_path / "okd", {5: 9.0, 10: 8.0}, step_s=2.0, eval_s=1.0, start_loss=12.0)
    write_run(tmp_path / "sft", {5: 9.5, 10: 9.0}, step_s=1.0, eval_s=1.0, start_loss=12.0)
    write_run(tmp_path / "minillm", {5: 8.5}, step_s=4.0, eval_s=1.0)
    okd = {"name": "okd", **bq.curve_of(tmp_path / "okd"), "stopped_by": "step cap"}
    sft = {"name": "minillm: sft phase", **bq.curve_of(tmp_path / "sft"), "stopped_by": "step cap"}
    mini = {"name": "minillm", **bq.curve_of(tmp_path / "minillm"), "stopped_by": "time cap"}
    joined = bq.join_phases([sft, mini])
    assert [(p["step"], p["train_s"]) for p in joined] == [(0, 0.0), (5, 5.0), (10, 10.0), (15, 30.0)]
    results = {"okd": {"phases": [okd], "curve": bq.join_phases([okd])},
               "minillm": {"phases": [sft, mini], "curve": joined}}
    targets = bq.default_targets(results)
    assert targets == [10.25, 8.5, 8.0]  # halfway from 8.5 up to 12, then each method's best
    summary = bq.summarise(results, targets)
    assert summary["okd"]["targets"]["8.5"]["train_s"] == pytest.approx(20.0)
    assert summary["minillm"]["targets"]["8.5"]["step"] == 15
    assert summary["minillm"]["targets"]["8"] is None
    assert summary["minillm"]["targets"]["10.25"]["phase"] == "minillm: sft phase"
    text = bq.markdown(summary, targets, {"setup": "t", "describe": "d", "batch_size": 4, "max_length": 8, "lr": 1e-3,
                                          "warmup": 0, "precision": "fp32", "seed": 0, "threads": 1,
                                          "valid_limit": 4, "eval_every": 5, "time_cap": 60})
    assert "not reached" in text and "(in sft phase)" in text
