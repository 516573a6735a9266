"""okd compare --lanes N: the grid's runs N at a time in their own processes, in dependency order."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from okd.compare import run_compare
from okd.errors import OkdError
from tests.test_compare_teacher import _grid


def _write(tree, path):
    path.write_text(yaml.safe_dump(tree))
    return path


def test_two_lanes_train_and_evaluate_the_grid_in_dependency_order(tiny_dirs, tiny_data, tmp_path):
    out = tmp_path / "g"
    tree = _grid(tiny_dirs, tiny_data, out, teacher_cache={"top_k": 8})
    logs: list[str] = []
    run_compare(_write(tree, tmp_path / "grid.yaml"), lanes=2, log=logs.append)
    for name in ("teacher_ft", "warm", "sft_s1", "sft_s2", "fkd_s1", "fkd_s2"):
        assert (out / "runs" / name / "student").is_dir(), name
        assert (out / "lanes" / f"{name}.log").is_file(), name
    for label in ("sft_s1", "sft_s2", "fkd_s1", "fkd_s2", "teacher", "teacher_base"):
        assert json.loads((out / "eval" / f"{label}.json").read_text())["compare_settings"], label
    assert not (out / "eval" / "teacher_ft.json").exists()  # the tuned teacher is the teacher row
    # fkd_s1 and fkd_s2 share one cache: it was built once (one build in the two runs' logs)
    built = [n for n in ("fkd_s1", "fkd_s2") if "teacher cache: top-8" in (out / "lanes" / f"{n}.log").read_text()]
    assert len(built) == 1, built
    started = [m.split()[1] for m in logs if m.startswith("lanes: ") and m.endswith("]") and " started " in m]
    assert started.index("warm") < started.index("sft_s1") and started.index("teacher_ft") < started.index("fkd_s1")
    assert started.index("teacher_ft") < started.index("teacher")
    assert (out / "report.md").is_file() and "## Headroom" in (out / "report.md").read_text()
    # a second call has nothing left to do
    logs.clear()
    run_compare(_write(tree, tmp_path / "grid.yaml"), lanes=2, log=logs.append)
    assert any("lanes: 0 jobs" in m for m in logs), logs


def test_a_failed_run_stops_the_runs_that_need_it(tiny_dirs, tiny_data, tmp_path):
    out = tmp_path / "g"
    tree = _grid(tiny_dirs, tiny_data, out)
    tree["runs"][2]["overrides"]["data.train"] = str(tmp_path / "missing.jsonl")  # warm cannot train
    logs: list[str] = []
    with pytest.raises(OkdError) as info:
        run_compare(_write(copy.deepcopy(tree), tmp_path / "grid.yaml"), lanes=2, log=logs.append)
    message = str(info.value)
    assert "\n" not in message and "warm" in message and "sft_s1" in message and "fkd_s1" in message
    assert any(m.startswith("lanes: warm FAILED") for m in logs)
    assert any(m.startswith("lanes: sft_s1 not started: warm failed") for m in logs)
    assert (out / "runs" / "teacher_ft" / "student").is_dir()  # what did not need warm ran
