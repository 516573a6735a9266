"""Time to quality (grid key time_to_quality): a's training time to b's best validation CE, and equal time."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from okd.compare import plan_grid, run_compare
from okd.compare.stats import time_to_quality, validation_curve
from okd.errors import OkdError
from tests.test_compare_teacher import _grid


def _row(name, points):
    return {"name": name, "curve": [{"step": 10 * (i + 1), "train_s": t, "valid_loss": ce}
                                    for i, (t, ce) in enumerate(points)] + [{"step": 1, "loss": 9.0}]}


def test_speedup_and_equal_time_against_hand_computed_values():
    plan = SimpleNamespace(runs=[])  # no seed groups: names are runs
    rows = [_row("okd", [(10, 3.0), (20, 2.5), (30, 2.2), (40, 2.1)]),
            _row("gkd", [(30, 2.9), (60, 2.6), (90, 2.4), (120, 2.3)]),
            _row("slow", [(50, 2.8), (100, 2.7)])]
    (p,) = time_to_quality(plan, rows, [("okd", "gkd")])
    # gkd's best is 2.3 (at 120 s); okd is first at or below it at 30 s (2.2): 4x
    assert p["target_valid_loss"] == 2.3 and p["b_s"] == 120 and p["a_s"] == 30 and p["speedup"] == 4.0
    # equal time = okd's 40 s: okd 2.1, gkd's last validation within 40 s is 2.9
    assert p["equal_time_s"] == 40 and p["a_at_equal_time"] == 2.1 and p["b_at_equal_time"] == 2.9
    (q,) = time_to_quality(plan, rows, [("slow", "gkd")])
    assert q["a_s"] is None and q["speedup"] is None and q["a_best"] == 2.7


def test_seed_groups_average_their_curves_at_common_steps():
    runs = [SimpleNamespace(name=f"okd_s{s}", seed=s, group="okd", same_as=None) for s in (1, 2)]
    plan = SimpleNamespace(runs=runs, run=lambda n: next(r for r in runs if r.name == n),
                           trained=lambda r: r)
    rows = [_row("okd_s1", [(10, 3.0), (20, 2.0)]), _row("okd_s2", [(30, 4.0), (40, 3.0), (50, 1.0)])]
    assert validation_curve(plan, rows, "okd") == [(20.0, 3.5), (30.0, 2.5)]  # steps 10 and 20 only


def test_time_to_quality_in_a_grid_report(tiny_dirs, tiny_data, tmp_path):
    out = tmp_path / "g"
    tree = _grid(tiny_dirs, tiny_data, out, time_to_quality=[["fkd", "sft"]], seeds=[1])
    run_compare(copy.deepcopy(tree), only=["fkd_s1", "sft_s1"], log=lambda m: None)
    res = json.loads((out / "results.json").read_text())
    (p,) = res["time_to_quality"]
    assert p["a"] == "fkd" and p["b"] == "sft" and p["target_valid_loss"] > 0
    assert "## Time to quality" in (out / "report.md").read_text()
    bad = copy.deepcopy(tree)
    bad["time_to_quality"] = [["fkd", "teacher"]]
    with pytest.raises(OkdError, match="grid key 'time_to_quality': no run named 'teacher'"):
        plan_grid(bad)
