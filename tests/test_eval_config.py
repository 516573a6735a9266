"""EvalConfig: one set of evaluation settings for `okd eval`, compare's `eval:` section and the demo."""

from __future__ import annotations

import argparse

import pytest

from okd.errors import OkdError
from okd.eval.config import EvalConfig, build_eval_config


def test_defaults_are_okd_evals():
    s = EvalConfig()
    assert (s.seeds, s.max_new_tokens, s.template, s.temperature, s.top_p, s.top_k) == (5, 128, "alpaca", 1.0, 1.0, 0)
    assert (s.exposure.samples, s.exposure.max_len, s.exposure.length, s.exposure.prompts) == (4, 64, 32, None)
    assert s.results_settings()["seeds"] == 5 and EvalConfig(greedy=True).results_settings()["seeds"] is None


@pytest.mark.parametrize("tree, message", [
    ({"seeds": 0}, "eval setting 'seeds': must be >= 1"),
    ({"temperature": 0}, "eval setting 'temperature': must be > 0 for sampling"),
    ({"top_p": 1.5}, "eval setting 'top_p': must be in (0, 1]"),
    ({"top_k": -1}, "eval setting 'top_k': must be >= 0"),
    ({"exposure": {"max_len": 8, "length": 9}}, "eval setting 'exposure.length': must be between 1 and max_len (8)"),
    ({"seed": 3}, "eval setting 'seed': unknown key"),
    ({"template": "chatml"}, "eval setting 'template'"),
])
def test_bad_setting_is_one_line_error_naming_the_key(tree, message):
    with pytest.raises(OkdError) as info:
        build_eval_config(tree)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_greedy_allows_any_temperature():
    assert build_eval_config({"greedy": True, "temperature": 0}).greedy


def test_eval_flags_build_the_config_and_name_the_flag():
    from okd.cli.eval import register, settings_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", "m", "--data", "d", "-o", "r.json", "--top-p", "0.9",
                              "--exposure-max-len", "16", "--exposure-length", "8", "--greedy"])
    s = settings_from_args(args)
    assert s == EvalConfig(top_p=0.9, greedy=True, exposure={"max_len": 16, "length": 8})
    defaults = parser.parse_args(["eval", "--model", "m", "-o", "r.json"])
    assert settings_from_args(defaults) == EvalConfig()  # the flags' defaults are EvalConfig's
    bad = parser.parse_args(["eval", "--model", "m", "-o", "r.json", "--temperature", "0"])
    with pytest.raises(OkdError, match="^--temperature: must be > 0"):
        settings_from_args(bad)


def test_compare_eval_section_is_an_eval_config_with_grid_defaults(tiny_dirs, tiny_data, tmp_path):
    from okd.compare import eval_config, plan_grid

    tree = {"output_dir": str(tmp_path / "g"),
            "base": {"teacher": {"path": str(tiny_dirs["teacher"])}, "student": {"path": str(tiny_dirs["student"])},
                     "data": {"train": str(tiny_data), "template": "plain"}},
            "runs": [{"name": "sft", "overrides": {"method.name": "sft"}}],
            "eval": {"data": [str(tiny_data)], "dtype": "bfloat16", "exposure": {"runs": ["sft"]}}}
    plan = plan_grid(tree)
    main, exposure = eval_config(plan, False), eval_config(plan, True)
    assert isinstance(main, EvalConfig) and (main.seeds, main.max_new_tokens, main.template) == (3, 64, "plain")
    assert main.dtype == exposure.dtype == "bfloat16"
    assert exposure.greedy and exposure.limit == 8 and exposure.exposure.samples == 2
    tree["eval"]["top_k"] = -1
    with pytest.raises(OkdError, match=r"grid key 'eval.top_k': must be >= 0"):
        plan_grid(tree)


def test_demo_is_a_grid(tmp_path):
    from okd.compare import plan_grid
    from okd.demo import DemoPlan, demo_grid

    demo = DemoPlan(teacher=str(tmp_path / "t"), student=str(tmp_path / "s"), data="sharegpt", template="chat",
                    mixed_precision="bf16", online_layers=4)
    plan = plan_grid(demo_grid(demo, tmp_path / "out"))
    assert [r.name for r in plan.runs] == ["sft", "fkd", "okd"] and plan.spec.eval.references == ["teacher",
                                                                                                   "student_init"]
    okd = plan.run("okd").cfg
    assert (okd.train.max_steps, okd.train.mixed_precision, okd.online.layers, okd.data.train_limit) == (40, "bf16", 4,
                                                                                                        160)
    assert (okd.data.max_length, okd.data.max_prompt_length, okd.data.template) == (128, 128, "chat")
    assert plan.spec.eval.dtype == "bfloat16" and plan.spec.eval.seeds == 1 and plan.spec.eval.limit == 24
    assert plan.spec.eval.max_prompt_length == 128 and not plan.spec.keep_checkpoints
    assert plan.student_init == demo.student and plan.teacher == demo.teacher
