"""okd compare with a tuned teacher (the paper's protocol): teacher_from, the teacher rows, the headroom."""

from __future__ import annotations

import copy
import json

import pytest

from okd.compare import plan_grid, run_compare
from okd.errors import OkdError


def _grid(tiny_dirs, tiny_data, out, **extra) -> dict:
    teacher = str(tiny_dirs["teacher"])
    return {
        "output_dir": str(out), "threads": 1, "isolate": False, "keep_checkpoints": False,
        "seeds": [1, 2],
        "teacher_from": "teacher_ft",
        "base": {
            "teacher": {"path": teacher},
            "student": {"path": str(tiny_dirs["student"])},
            "data": {"train": str(tiny_data), "valid": str(tiny_data), "max_length": 96, "valid_limit": 8},
            "online": {"rank": 4, "lora_alpha": 4},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "eval_every": 1},
        },
        "runs": [
            {"name": "fkd", "student_from": "warm", "overrides": {"method.name": "fkd"}},
            {"name": "teacher_ft", "seeds": [],
             "overrides": {"student.path": teacher, "method.name": "sft", "train.select_by": "valid_loss"}},
            {"name": "warm", "seeds": [], "overrides": {"method.name": "sft"}},
            {"name": "sft", "student_from": "warm", "overrides": {"method.name": "sft"}},
        ],
        "eval": {"data": [str(tiny_data)], "limit": 4, "seeds": 2, "max_new_tokens": 6, "batch_size": 8,
                 "references": ["teacher", "teacher_base"]},
        **extra,
    }


def test_teacher_from_gives_every_run_with_a_teacher_the_tuned_one(tiny_dirs, tiny_data, tmp_path):
    plan = plan_grid(_grid(tiny_dirs, tiny_data, tmp_path / "g"))
    tuned = str(tmp_path / "g" / "runs" / "teacher_ft" / "student")
    names = [r.name for r in plan.runs]
    assert names.index("teacher_ft") < names.index("fkd_s1") and names.index("warm") < names.index("fkd_s1")
    for r in plan.runs:
        uses = r.cfg.method.name != "sft"
        assert (r.cfg.teacher.path == tuned) == uses, r.name
        assert (r.teacher_from == "teacher_ft") == uses, r.name
    assert plan.teacher == tuned and plan.teacher_base == str(tiny_dirs["teacher"])
    assert plan.run("teacher_ft").cfg.student.path == str(tiny_dirs["teacher"])


def test_only_a_student_run_does_not_train_the_teacher(tiny_dirs, tiny_data, tmp_path):
    """sft runs have no teacher: --only warm sft_s1 must not pull in the teacher tuning (two lanes); the teacher
    row and a distilling run do."""
    from okd.compare.execute import _select

    plan = plan_grid(_grid(tiny_dirs, tiny_data, tmp_path / "g"))
    pick = lambda *names: _select(plan, list(names), dry_run=True, log=lambda m: None)  # noqa: E731
    assert pick("sft_s1").train == ["warm", "sft_s1"]
    assert pick("teacher").train == ["teacher_ft"] and pick("teacher").references == {"teacher"}
    assert pick("fkd_s2").train == ["teacher_ft", "warm", "fkd_s2"]
    # the tuning run named is the teacher row: evaluated once, as "teacher", never under its own name
    from okd.compare.execute import _models_to_evaluate

    assert pick("teacher_ft").references == {"teacher"}
    assert [label for label, _, _ in _models_to_evaluate(plan, pick("teacher_ft"))] == ["teacher"]
    assert "teacher_ft" not in [label for label, _, _ in _models_to_evaluate(plan, _select(plan, None, dry_run=True,
                                                                                          log=lambda m: None))]


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.update(teacher_from="ghost"), "grid key 'teacher_from': 'ghost' is not a run of this grid"),
    (lambda t: t["runs"][1].update(seeds=None), "run 'teacher_ft' is trained once per seed"),
    (lambda t: t["runs"][0].update(teacher_from="nobody"), "teacher_from 'nobody' is not a run of this grid"),
    (lambda t: t["runs"][2].update(teacher_from="fkd"), "teacher_from 'fkd' is trained once per seed (fkd_s1, "
                                                        "fkd_s2); name one of them"),
    (lambda t: t["runs"][2].update(teacher_from="fkd_s1"), "cycle"),
])
def test_bad_teacher_from_is_one_line(tiny_dirs, tiny_data, tmp_path, mutate, message):
    tree = _grid(tiny_dirs, tiny_data, tmp_path / "g")
    mutate(tree)
    with pytest.raises(OkdError) as info:
        plan_grid(tree)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_tuned_teacher_grid_end_to_end_reports_the_headroom_first(tiny_dirs, tiny_data, tmp_path):
    out = tmp_path / "g"
    tree = _grid(tiny_dirs, tiny_data, out, intervals=[["fkd", "sft"], ["teacher", "teacher_base"]])
    run_compare(copy.deepcopy(tree), log=lambda m: None)
    tuned = out / "runs" / "teacher_ft"
    summary = json.loads((tuned / "summary.json").read_text())
    assert summary["selected"]["metric"] == "valid_loss" and summary["selected"]["step"] in (1, 2)
    cfg = (out / "runs" / "fkd_s1" / "config.yaml").read_text()
    assert str(tuned / "student") in cfg
    teacher_eval = json.loads((out / "eval" / "teacher.json").read_text())
    assert teacher_eval["compare_model"] == str(tuned / "student")
    assert json.loads((out / "eval" / "teacher_base.json").read_text())["compare_model"] == str(tiny_dirs["teacher"])
    res = json.loads((out / "results.json").read_text())
    room = res["headroom"]
    assert [r["set"] for r in room] == ["train"] and {"mean_diff", "ci95", "reaches_goal"} <= set(room[0])
    # the headroom equals the interval computed the other way: per-prompt means of the two evaluations
    from okd.compare.stats import paired_bootstrap, prompt_scores

    direct = paired_bootstrap(prompt_scores(out / "eval", ["teacher"], "train"),
                              prompt_scores(out / "eval", ["sft_s1", "sft_s2"], "train"))
    assert room[0]["mean_diff"] == pytest.approx(direct["mean_diff"]) and room[0]["ci95"] == direct["ci95"]
    assert any(p["a"] == "teacher" and p["b"] == "teacher_base" for p in res["intervals"])
    report = (out / "report.md").read_text()
    assert report.index("## Headroom: teacher − SFT student") < report.index("## Methods")
    assert "teacher before tuning (reference)" in report and "the model trained by run `teacher_ft`" in report
    if not room[0]["reaches_goal"]:
        assert "The headroom is below +2 ROUGE-L" in report
