"""okd compare --export / --import: a grid spread over sessions carries its results, not its weights."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from okd.compare import run_compare
from okd.errors import OkdError
from tests.test_compare_teacher import _grid


def _provenance(out, name) -> dict:
    return json.loads((out / "runs" / name / "provenance.json").read_text())


def test_a_grid_in_two_sessions_carries_results_and_retrains_only_needed_weights(tiny_dirs, tiny_data, tmp_path):
    out, archive = tmp_path / "g", tmp_path / "archive"
    tree = _grid(tiny_dirs, tiny_data, out)
    logs: list[str] = []
    # session 1: the teacher row and one sft seed, exported
    run_compare(copy.deepcopy(tree), only=["teacher", "sft_s1"], log=logs.append, export_to=archive)
    first = {n: _provenance(out, n) for n in ("teacher_ft", "warm", "sft_s1")}
    assert first["sft_s1"]["student_sha"] and "teacher_sha" not in first["sft_s1"]  # sft has no teacher
    assert sorted(p.name for p in (archive / "runs").iterdir()) == ["sft_s1", "teacher_ft", "warm"]
    assert not list(archive.rglob("*.safetensors")) and not list(archive.rglob("student"))
    assert {p.name for p in (archive / "eval").glob("*.json")} == {"teacher.json", "sft_s1.json"}
    answers = sorted((archive / "eval").glob("sft_s1.*.jsonl"))
    assert len(answers) == 2  # the per-prompt answers of 2 seeds: their scores, not their texts
    full = [json.loads(line) for line in (out / "eval" / answers[0].name).read_text().splitlines()]
    kept = [json.loads(line) for line in answers[0].read_text().splitlines()]
    assert kept == [{"rougeL": r["rougeL"], "finished": r["finished"]} for r in full] and "prediction" in full[0]
    teacher_eval = json.loads((archive / "eval" / "teacher.json").read_text())
    assert teacher_eval["compare_model_sha"] == first["teacher_ft"]["student_sha"]

    # session 2, a new machine: nothing but the archive; sft_s2 needs warm's weights, not the teacher's
    shutil.rmtree(out)
    logs.clear()
    run_compare(copy.deepcopy(tree), only=["sft_s2"], log=logs.append, import_from=archive, export_to=archive)
    assert any("import: 3 runs" in m for m in logs)
    assert any("warm: imported without weights, which run sft_s2 needs" in m for m in logs)
    assert not (out / "runs" / "teacher_ft" / "student").exists()  # imported, not needed, not trained
    assert (out / "runs" / "warm" / "student").is_dir()
    # the same seed on the same machine gives the same weights again
    assert _provenance(out, "warm")["student_sha"] == first["warm"]["student_sha"]
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["teacher_ft"]["imported"] and not rows["sft_s2"]["imported"]
    assert rows["sft_s1"]["rougeL"] and rows["teacher"]["rougeL"]  # imported evaluations are reported
    assert res["headroom"][0]["runs_b"] == 2  # teacher − sft over both seeds, one from each session
    assert "## Provenance" in (out / "report.md").read_text()

    # session 3: fkd needs the tuned teacher's weights: it is tuned again; its imported evaluation counts only
    # because the tuning gave the same weights again (same seed, same machine)
    shutil.rmtree(out)
    logs.clear()
    run_compare(copy.deepcopy(tree), only=["fkd_s1"], log=logs.append, import_from=archive)
    assert any("teacher_ft: imported without weights, which run fkd_s1 needs" in m for m in logs)
    tuned = _provenance(out, "teacher_ft")["student_sha"]
    assert _provenance(out, "fkd_s1")["teacher_sha"] == tuned
    assert tuned == first["teacher_ft"]["student_sha"]  # the teacher tuned again is the same (same machine)
    from okd.compare import plan_grid
    from okd.compare.state import eval_done

    plan = plan_grid(copy.deepcopy(tree))
    assert eval_done(plan, "teacher")
    prov = _provenance(out, "teacher_ft")
    (out / "runs" / "teacher_ft" / "provenance.json").write_text(json.dumps(dict(prov, student_sha="f" * 16)))
    assert not eval_done(plan, "teacher")  # a tuning that gave other weights: the teacher row is evaluated again


def test_import_keeps_local_runs_and_their_evaluations_and_refuses_another_config(tiny_dirs, tiny_data, tmp_path):
    import yaml

    from okd.compare import plan_grid
    from okd.compare.state import eval_done

    out, archive = tmp_path / "g", tmp_path / "archive"
    tree = _grid(tiny_dirs, tiny_data, out)
    run_compare(copy.deepcopy(tree), only=["sft_s1"], log=lambda m: None, export_to=archive)
    local = (out / "eval" / "sft_s1.json").read_text()
    changed = json.loads(local)
    changed["datasets"]["train"]["rougeL"]["mean"] = 99.0  # another machine's evaluation of its own sft_s1
    (archive / "eval" / "sft_s1.json").write_text(json.dumps(changed))
    logs: list[str] = []
    run_compare(copy.deepcopy(tree), report_only=True, log=logs.append, import_from=archive)
    assert any("import: 0 runs" in m and "kept the local warm, sft_s1" in m for m in logs), logs
    assert not (out / "runs" / "sft_s1" / "imported.json").exists()
    assert (out / "eval" / "sft_s1.json").read_text() == local
    # an evaluation of other weights than the run's (retrained since, or another machine's) is not current
    plan = plan_grid(copy.deepcopy(tree))
    assert eval_done(plan, "sft_s1")
    stale = json.loads(local)
    stale["compare_model_sha"] = "0" * 16
    (out / "eval" / "sft_s1.json").write_text(json.dumps(stale))
    assert not eval_done(plan, "sft_s1")
    # an archived run trained with another config than this grid's is left out
    cfg = yaml.safe_load((archive / "runs" / "sft_s1" / "config.yaml").read_text())
    cfg["train"]["lr"] = 0.5
    (archive / "runs" / "sft_s1" / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.rmtree(out)
    logs.clear()
    run_compare(copy.deepcopy(tree), report_only=True, log=logs.append, import_from=archive)
    assert any("import: 1 runs (warm)" in m and "left out sft_s1 (trained with another config" in m for m in logs), logs
    assert not (out / "runs" / "sft_s1").exists() and not (out / "eval" / "sft_s1.json").exists()


def test_teacher_copies_that_differ_are_said_in_the_report():
    from okd.compare.report import _provenance_lines

    rows = [{"name": "teacher", "kind": "reference", "model_sha": "aaaa"},
            {"name": "fkd_s1", "kind": "run", "provenance": {"machine": "cpu A", "teacher_sha": "aaaa"}},
            {"name": "fkd_s2", "kind": "run", "imported": True,
             "provenance": {"machine": "cpu B", "teacher_sha": "bbbb"}}]
    text = "\n".join(_provenance_lines(rows))
    assert "different copies of the teacher" in text and "`bbbb`" in text and "cpu B" in text
    assert "Every run trained on cpu A, the distilling ones against teacher weights `aaaa`." in \
        "\n".join(_provenance_lines(rows[:2]))
    # another teacher (not the teacher row's model) is not a copy of it
    other = rows[:2] + [{"name": "x_s1", "kind": "run", "provenance": {"machine": "cpu A", "teacher": "gemma",
                                                                      "teacher_sha": "cccc"}}]
    other[0] = dict(other[0], model="tuned")
    other[1] = dict(other[1], provenance=dict(other[1]["provenance"], teacher="tuned"))
    assert "different copies" not in "\n".join(_provenance_lines(other))


def test_import_of_a_folder_without_results_is_one_line(tiny_dirs, tiny_data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OkdError) as info:
        run_compare(_grid(tiny_dirs, tiny_data, tmp_path / "g"), report_only=True, log=lambda m: None,
                    import_from=tmp_path / "empty")
    assert "holds no exported results" in str(info.value) and "\n" not in str(info.value)
