"""`okd compare` over training seeds (the OKD study): `seeds:` expansion, mean ± std per group, the
paired bootstrap interval (checked against an independent computation), module dynamics in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from okd.compare import plan_grid, run_compare
from okd.compare.stats import paired_bootstrap
from okd.errors import OkdError


def _grid(tiny_dirs, tiny_data, out) -> dict:
    return {
        "output_dir": str(out), "threads": 1, "isolate": False, "keep_checkpoints": False, "seeds": [1, 2],
        "base": {
            "teacher": {"path": str(tiny_dirs["teacher"])}, "student": {"path": str(tiny_dirs["student"])},
            "data": {"train": str(tiny_data), "valid": str(tiny_data), "max_length": 96, "valid_limit": 8},
            "online": {"rank": 4, "lora_alpha": 4},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "eval_every": 1},
        },
        "runs": [
            {"name": "warm", "seeds": [], "overrides": {"method.name": "sft"}},
            {"name": "fkd", "student_from": "warm", "overrides": {"method.name": "fkd"}},
            {"name": "okd", "student_from": "warm", "overrides": {"method.name": "okd"}},
            {"name": "okd_t2", "seeds": [1], "student_from": "warm",
             "overrides": {"method.name": "okd", "method.temperature": 2.0}},
        ],
        "eval": {"data": [str(tiny_data)], "limit": 4, "seeds": 2, "max_new_tokens": 4, "batch_size": 8},
    }


def test_seeds_expand_every_run_with_its_seed(tiny_dirs, tiny_data, tmp_path):
    plan = plan_grid(_grid(tiny_dirs, tiny_data, tmp_path / "g"))
    names = [r.name for r in plan.runs]
    assert names == ["warm", "fkd_s1", "fkd_s2", "okd_s1", "okd_s2", "okd_t2_s1"]
    by = {r.name: r for r in plan.runs}
    assert by["fkd_s2"].cfg.train.seed == 2 and by["fkd_s2"].group == "fkd" and by["fkd_s2"].seed == 2
    assert by["warm"].seed is None and by["okd_t2_s1"].cfg.method.temperature == 2.0
    assert by["okd_s1"].cfg.student.path.endswith("runs/warm/student")  # an unexpanded source: shared


def test_a_seeded_source_pairs_by_seed_or_is_refused(tiny_dirs, tiny_data, tmp_path):
    tree = _grid(tiny_dirs, tiny_data, tmp_path / "g")
    tree["runs"][0].pop("seeds")  # warm now expands too: fkd_s2 starts from warm_s2
    plan = plan_grid(tree)
    assert {r.name: r.student_from for r in plan.runs}["fkd_s2"] == "warm_s2"
    tree["runs"][0]["seeds"] = [1]
    with pytest.raises(OkdError, match=r"run 'fkd' \(seed 2\): student_from 'warm' has no run with seed 2"):
        plan_grid(tree)


def test_paired_bootstrap_against_an_independent_computation():
    rng = np.random.default_rng(3)
    a, b = rng.normal(30, 8, size=200), rng.normal(28, 8, size=200)
    got = paired_bootstrap(a, b, samples=4000, seed=1)
    # the same statistic by a plain loop over resamples, another generator
    gen = np.random.default_rng(99)
    d = a - b
    means = sorted(float(np.mean(d[gen.integers(0, 200, 200)])) for _ in range(4000))
    assert got["mean_diff"] == pytest.approx(float(d.mean()))
    assert got["ci95"][0] == pytest.approx(means[100], abs=0.25) and got["ci95"][1] == pytest.approx(means[3899], abs=0.25)
    # and the normal approximation: mean ± 1.96 · sd / sqrt(n)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert got["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=0.3)
    same = paired_bootstrap(a, a)
    assert same["mean_diff"] == 0 and same["ci95"] == [0, 0]


@pytest.mark.slow
def test_seeded_grid_reports_groups_intervals_and_dynamics(tiny_dirs, tiny_data, tmp_path):
    out = tmp_path / "g"
    grid = _grid(tiny_dirs, tiny_data, out)
    run_compare(grid, log=lambda m: None)
    res = json.loads((out / "results.json").read_text())
    groups = {g["name"]: g for g in res["seed_groups"]}
    assert set(groups) == {"fkd", "okd", "okd_t2"} and groups["okd"]["seeds"] == 2
    per_seed = [r["rougeL"][next(iter(r["rougeL"]))]["mean"] for r in res["rows"] if r["name"] in ("okd_s1", "okd_s2")]
    set_name = next(iter(groups["okd"]["rougeL"]))
    assert groups["okd"]["rougeL"][set_name]["mean"] == pytest.approx(np.mean(per_seed))
    pairs = {(p["a"], p["b"]) for p in res["intervals"]}
    assert pairs == {("okd", "fkd"), ("okd", "okd_t2")}
    assert all(p["ci95"][0] <= p["mean_diff"] <= p["ci95"][1] and p["prompts"] == 4 for p in res["intervals"])
    okd_curve = next(r for r in res["rows"] if r["name"] == "okd_s1")["curve"]
    assert all(k in okd_curve[-1] for k in ("valid_kl_base_teacher", "valid_kl_online_teacher",
                                           "valid_ce_base_teacher", "valid_ce_online_teacher", "online_update_norm"))
    report = (out / "report.md").read_text()
    assert "## Over training seeds" in report and "okd − fkd" in report and (out / "dynamics.png").is_file()
    # the grid names the pairs instead (a variant against the frozen teacher at the same temperature)
    run_compare({**grid, "intervals": [["okd_t2", "fkd"]]}, report_only=True, log=lambda m: None)
    res = json.loads((out / "results.json").read_text())
    assert {(p["a"], p["b"]) for p in res["intervals"]} == {("okd_t2", "fkd")} and len(res["intervals"]) == 1
    with pytest.raises(OkdError, match="grid key 'intervals': no run named 'fkd_t3'"):
        plan_grid({**grid, "intervals": [["okd", "fkd_t3"]]})
