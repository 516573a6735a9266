"""`okd compare` with `teacher_cache:`: one cache per (teacher, data) for the grid's frozen-teacher runs,
built once before the first run that needs it, reused by the others, exact at k = V (fp32)."""

from __future__ import annotations

import json

import pytest

from okd.compare import plan_grid, run_compare
from okd.errors import OkdError


def _grid(tiny_dirs, tiny_data, out, cache=None) -> dict:
    tree = {
        "output_dir": str(out), "threads": 1, "isolate": False, "keep_checkpoints": False,
        "base": {
            "teacher": {"path": str(tiny_dirs["teacher"])}, "student": {"path": str(tiny_dirs["student"])},
            "data": {"train": str(tiny_data), "valid": str(tiny_data), "max_length": 96, "valid_limit": 8,
                     "train_limit": 24},
            "online": {"rank": 4, "lora_alpha": 4},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "eval_every": 3},
        },
        "runs": [
            {"name": "warm", "overrides": {"method.name": "sft"}},
            {"name": "fkd", "student_from": "warm", "overrides": {"method.name": "fkd"}},
            {"name": "jsd_t2", "student_from": "warm", "overrides": {"method.name": "jsd", "method.temperature": 2.0}},
            {"name": "okd", "student_from": "warm", "overrides": {"method.name": "okd"}},
            {"name": "fkd_short", "overrides": {"method.name": "fkd", "data.max_length": 64}},
        ],
    }
    if cache is not None:
        tree["teacher_cache"] = cache
    return tree


def test_frozen_teacher_runs_share_one_cache_per_teacher_and_data(tiny_dirs, tiny_data, tmp_path):
    plan = plan_grid(_grid(tiny_dirs, tiny_data, tmp_path / "g", cache={"top_k": 8}))
    by = {r.name: r for r in plan.runs}
    assert by["warm"].cfg.teacher.cache is None and by["okd"].cfg.teacher.cache is None  # sft, okd: live / none
    assert by["fkd"].cfg.teacher.cache == by["jsd_t2"].cfg.teacher.cache  # same teacher and data: one cache
    assert by["fkd_short"].cfg.teacher.cache not in (None, by["fkd"].cfg.teacher.cache)  # other max_length
    shared = plan.cache_of(by["fkd"])
    assert shared.runs == ["fkd", "jsd_t2"] and shared.temperatures == {1.0, 2.0} and shared.top_k == 8
    assert plan.cache_of(by["okd"]) is None
    from okd.compare import describe_plan

    dry = describe_plan(plan)
    assert f"Teacher cache `{shared.path}` (top-8, float16; to build before its first run), shared by fkd, jsd_t2" in dry
    assert plan_grid(_grid(tiny_dirs, tiny_data, tmp_path / "h", cache=True)).caches[0].top_k == 64
    assert plan_grid(_grid(tiny_dirs, tiny_data, tmp_path / "i")).caches == []  # off unless asked
    with pytest.raises(OkdError, match="teacher_cache.top_k"):
        plan_grid(_grid(tiny_dirs, tiny_data, tmp_path / "j", cache={"top_k": 0}))


def test_grid_builds_the_cache_once_and_matches_the_live_teacher(tiny_dirs, tiny_data, tmp_path, monkeypatch):
    import okd.train.cache as cache_mod

    builds = []
    real = cache_mod.build_teacher_cache
    monkeypatch.setattr(cache_mod, "build_teacher_cache", lambda cfg, out, **kw: builds.append(out) or real(cfg, out, **kw))
    runs = ["warm", "fkd", "jsd_t2"]
    cached, live = tmp_path / "cached", tmp_path / "live"
    grid = _grid(tiny_dirs, tiny_data, cached, cache={"top_k": "all", "dtype": "float32"})
    logs = []
    run_compare(grid, only=runs, log=logs.append)
    assert len(builds) == 1 and any("teacher cache: top-all" in m for m in logs)
    assert f"cache: {builds[0]}" in (cached / "runs" / "jsd_t2" / "config.yaml").read_text()
    manifest = json.loads((builds[0] / "manifest.json").read_text())
    assert manifest["tail_temperatures"] == [1.0, 2.0] and "build_s" in manifest
    report = (cached / "report.md").read_text()
    assert f"Teacher cache `{builds[0]}`" in report and "shared by fkd, jsd_t2" in report
    run_compare(grid, only=runs, log=logs.append)  # a second call: nothing rebuilt
    assert len(builds) == 1
    run_compare(_grid(tiny_dirs, tiny_data, live), only=runs, log=lambda m: None)
    for name in ("fkd", "jsd_t2"):  # k = V in fp32: the same training as with the live teacher
        a = json.loads((cached / "runs" / name / "summary.json").read_text())["final_metrics"]
        b = json.loads((live / "runs" / name / "summary.json").read_text())["final_metrics"]
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-4, abs=1e-5)
