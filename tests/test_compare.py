"""`okd compare`: grid validation, sweep expansion, an end-to-end tiny grid, and skipping finished work."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import yaml

from okd.cli import main
from okd.compare import plan_grid, run_compare
from okd.errors import OkdError


def _grid(tiny_dirs, tiny_data, out) -> dict:
    return {
        "output_dir": str(out),
        "threads": 1,
        "isolate": False,  # in-process: the tests stay fast (the subprocess path is covered by the slow test)
        "keep_checkpoints": False,
        "base": {
            "teacher": {"path": str(tiny_dirs["teacher"])},
            "student": {"path": str(tiny_dirs["student"])},
            "data": {"train": str(tiny_data), "valid": str(tiny_data), "max_length": 96, "valid_limit": 8},
            "online": {"rank": 4, "lora_alpha": 4},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "eval_every": 1},
        },
        "runs": [
            {"name": "sft", "overrides": {"method.name": "sft"}},
            {"name": "fkd", "overrides": {"method.name": "fkd"}},
            {"name": "okd", "overrides": {"method.name": "okd"}},
        ],
        "eval": {
            "data": [str(tiny_data)], "limit": 3, "seeds": 2, "max_new_tokens": 6, "batch_size": 8,
            "references": ["teacher"],
            "exposure": {"runs": ["sft", "okd"], "prompts": 2, "samples": 1, "max_len": 6, "length": 4},
        },
    }


@pytest.fixture(scope="module")
def finished(tiny_dirs, tiny_data, tmp_path_factory):
    """The 3-run grid, trained, evaluated and reported once for this module."""
    out = tmp_path_factory.mktemp("compare") / "grid"
    tree = _grid(tiny_dirs, tiny_data, out)
    log: list[str] = []
    run_compare(tree, log=log.append)
    return tree, out, log


def test_grid_end_to_end(finished):
    tree, out, log = finished
    for name in ("sft", "fkd", "okd"):
        assert (out / "runs" / name / "summary.json").is_file()
        assert not (out / "runs" / name / "checkpoints").exists()  # keep_checkpoints: false
        assert (out / "eval" / f"{name}.json").is_file()
    assert (out / "eval" / "teacher.json").is_file()
    assert (out / "eval" / "okd.exposure.json").is_file() and not (out / "eval" / "fkd.exposure.json").exists()
    assert (out / "eval" / "okd.exposure.png").is_file() and not list((out / "eval").glob("*.exposure.exposure.*"))
    from okd.cards import has_card

    assert has_card(out / "runs" / "okd" / "student") and has_card(out / "runs" / "okd" / "online_module")
    assert oct((out / "runs" / "okd" / "student" / "model.safetensors").stat().st_mode & 0o044) != "0o0"
    for png in ("valid_curves.png", "exposure.png", "time.png", "rouge.png"):
        assert (out / png).stat().st_size > 1000, png
    report = (out / "report.md").read_text()
    assert "| method | train time (s) | s / step | median s / step | ROUGE-L train | ExAccErr@4 (%) |" in report
    for name in ("teacher (reference)", "| sft |", "| fkd |", "| okd |", "![Training cost](time.png)"):
        assert name in report
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["name"] for r in rows] == ["teacher", "sft", "fkd", "okd"]
    okd = next(r for r in rows if r["name"] == "okd")
    assert float(okd["steps"]) == 2 and float(okd["train_s"]) > 0 and okd["exacc_err_length"] == "4"
    assert float(okd["median_s_per_step"]) > 0
    assert okd["rougeL_train_std"] != ""  # two seeds: a std
    assert next(r for r in rows if r["name"] == "fkd")["exacc_err"] == ""  # not asked for fkd
    res = json.loads((out / "results.json").read_text())
    assert res["hardware"]["cpu_count"] and len(res["rows"]) == 4
    okd_row = next(r for r in res["rows"] if r["name"] == "okd")
    assert [c["step"] for c in okd_row["curve"]] == [1, 2] and all("valid_loss" in c for c in okd_row["curve"])
    assert any("train 3/3 okd: done" in line for line in log)


def test_second_invocation_skips_finished_work(finished, monkeypatch):
    tree, out, _ = finished

    def boom(*a, **k):
        raise AssertionError("should have been skipped")

    import okd.eval
    import okd.train

    monkeypatch.setattr(okd.train, "train", boom)
    monkeypatch.setattr(okd.eval, "run_eval", boom)
    monkeypatch.setattr("okd.compare.execute._train_subprocess", boom)
    log: list[str] = []
    run_compare(copy.deepcopy(tree), log=log.append)
    assert sum("complete, skipped" in line for line in log) == 3
    assert sum("evaluated already, skipped" in line for line in log) == 4
    assert (out / "report.md").is_file()


def test_changed_config_refuses_stale_run(finished):
    tree, _, _ = finished
    tree = copy.deepcopy(tree)
    tree["base"]["train"]["max_steps"] = 5
    with pytest.raises(OkdError, match=r"run 'sft': .* another config .*train.max_steps \(2 -> 5\)"):
        run_compare(tree, dry_run=True)


def test_only_trains_what_a_run_needs_and_evaluates_what_it_names(tiny_dirs, tiny_data, tmp_path, monkeypatch):
    """Two processes given different --only names (the 2-core recipe) never evaluate the same model:
    a run's dependencies are trained if missing but evaluated only when named, reference rows only
    when named."""
    import okd.compare.execute as execute

    evaluated: list[str] = []
    monkeypatch.setattr(execute, "evaluate_model", lambda plan, label, model, **kw: evaluated.append(label) or [])
    tree = _grid(tiny_dirs, tiny_data, tmp_path / "grid")
    tree["runs"] = [{"name": "warm", "overrides": {"method.name": "sft"}},
                    {"name": "fkd", "student_from": "warm", "overrides": {"method.name": "fkd"}}]
    tree["eval"].pop("exposure")
    log: list[str] = []
    run_compare(copy.deepcopy(tree), only=["fkd"], log=log.append)
    assert evaluated == ["fkd"] and (tmp_path / "grid" / "runs" / "warm" / "summary.json").is_file()
    assert any("also training warm if missing" in m for m in log)
    evaluated.clear()
    run_compare(copy.deepcopy(tree), only=["teacher", "warm"], log=log.append)
    assert evaluated == ["teacher", "warm"]
    evaluated.clear()
    run_compare(copy.deepcopy(tree), log=log.append)  # no --only: everything (nothing trained again)
    assert evaluated == ["teacher", "warm", "fkd"]
    with pytest.raises(OkdError, match=r"--only: no run named 'student_init' .*runs: warm, fkd, teacher$"):
        run_compare(copy.deepcopy(tree), only=["student_init"], log=log.append)


def test_sweeps_expand_and_dependencies_order(tiny_dirs, tiny_data, tmp_path):
    tree = _grid(tiny_dirs, tiny_data, tmp_path / "g")
    tree["runs"].insert(0, {"name": "minillm", "student_from": "sft", "overrides": {"method.name": "minillm"}})
    tree["sweeps"] = [
        {"name": "okd_rank", "base_run": "okd", "key": "online.rank", "values": [2, 4, 8]},
        {"name": "okd_layers", "base_run": "okd", "key": "online.layers", "values": [0.25, 1],
         "labels": ["quarter", "top1"]},
    ]
    plan = plan_grid(tree)
    names = [r.name for r in plan.runs]
    assert names[:2] == ["sft", "minillm"]  # right after the run its student comes from
    assert names[-5:] == ["okd_rank_2", "okd_rank_4", "okd_rank_8", "okd_layers_quarter", "okd_layers_top1"]
    r2 = plan.run("okd_rank_2")
    assert r2.cfg.online.rank == 2 and r2.cfg.method.name == "okd" and r2.sweep == "okd_rank" and r2.sweep_value == 2
    assert r2.overrides == {"method.name": "okd", "online.rank": 2}
    assert r2.cfg.output_dir == str(tmp_path / "g" / "runs" / "okd_rank_2")
    assert plan.run("okd_layers_top1").cfg.online.layers == 1
    # values equal to the base run's config reuse it instead of training twice
    assert plan.run("okd_rank_4").same_as == "okd" and plan.run("okd_layers_quarter").same_as == "okd"
    assert plan.run("okd_rank_8").same_as is None
    assert plan.run("minillm").cfg.student.path == str(tmp_path / "g" / "runs" / "sft" / "student")


def test_student_init_is_planned(tiny_dirs, tiny_data, tmp_path):
    tree = _grid(tiny_dirs, tiny_data, tmp_path / "g")
    tree["base"]["student"] = {"init": {"from": str(tiny_dirs["teacher"]), "layers": 2}}
    plan = plan_grid(tree)
    (init,) = plan.inits
    assert init.layers == 2 and init.strategy == "uniform"
    assert all(r.cfg.student.path == str(init.path) for r in plan.runs) and plan.student_init == str(init.path)
    from okd.compare import ensure_student_inits

    ensure_student_inits(plan, log=lambda m: None)
    assert (init.path / "config.json").is_file() and json.loads((init.path / "config.json").read_text())[
        "num_hidden_layers"] == 2


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.update(outptu_dir="x"), "grid key 'outptu_dir': unknown key"),
    (lambda t: t["runs"][0].update(overides={}), "grid key 'runs.0.overides': unknown key"),
    (lambda t: t["eval"].update(seed=3), "grid key 'eval.seed': unknown key"),
    (lambda t: t["eval"]["exposure"].update(lenght=3), "grid key 'eval.exposure.lenght': unknown key"),
    (lambda t: t["runs"][1]["overrides"].update({"method.nme": "x"}),
     "run 'fkd': config key 'method.nme': unknown key"),
    (lambda t: t["base"]["train"].update(lrr=1), "grid base: config key 'train.lrr': unknown key"),
    (lambda t: t["runs"][1]["overrides"].update({"train.lr": "fast"}), "run 'fkd': config key 'train.lr'"),
    (lambda t: t.update(sweeps=[{"name": "s", "base_run": "nope", "key": "online.rank", "values": [1]}]),
     "grid key 'sweeps.0.base_run': no run named 'nope'"),
    (lambda t: t["runs"].append({"name": "fkd"}), "run name 'fkd' is used twice"),
    (lambda t: t["runs"][0].update(student_from="ghost"), "student_from 'ghost' is not a run"),
    (lambda t: t["runs"][0].update(name="a/b"), "run name 'a/b'"),
    (lambda t: t["eval"]["exposure"].update(runs=["ghost"]), "grid key 'eval.exposure.runs': no run named 'ghost'"),
    (lambda t: t["base"]["student"].update(init={"from": "x", "layers": 2}), "set either student.path or student.init"),
])
def test_bad_grid_is_one_line_error(tiny_dirs, tiny_data, tmp_path, mutate, message):
    tree = _grid(tiny_dirs, tiny_data, tmp_path / "g")
    mutate(tree)
    with pytest.raises(OkdError) as info:
        plan_grid(tree)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_dry_run_help_and_errors(tiny_dirs, tiny_data, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(_grid(tiny_dirs, tiny_data, tmp_path / "g")))
    assert main(["compare", "-c", str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "| okd | okd | method.name=okd | - | - | 2 | new | todo, exposure todo |" in out
    assert not (tmp_path / "g").exists()  # a dry run writes nothing
    assert main(["compare", "-c", str(grid), "--only", "nope"]) == 2
    assert "--only: no run named 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nrunz: []\n")
    assert main(["compare", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid key 'runz': unknown key" in err
    assert main(["compare", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["compare", "--help"])
    assert e.value.code == 0
    assert "sweeps:" in capsys.readouterr().out


@pytest.mark.slow
def test_isolated_runs_train_in_their_own_process(tiny_dirs, tiny_data, tmp_path):
    """The default (isolate: true): `okd train` in a subprocess per run; one run, no eval."""
    tree = _grid(tiny_dirs, tiny_data, tmp_path / "g")
    tree.update(isolate=True, runs=tree["runs"][:1])
    del tree["eval"]
    run_compare(tree, log=lambda m: None)
    run = tmp_path / "g" / "runs" / "sft"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert "okd train -c" in (run / "train.log").read_text().replace("-m okd train", "okd train")
    assert "| sft |" in (tmp_path / "g" / "report.md").read_text()
