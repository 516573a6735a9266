"""`okd demo`: the budget from measurements (okd/demo_budget.py), its arguments refused before any download,
and the tiny demo end to end under a budget: report, learning curves, greedy samples, file names."""

from __future__ import annotations

import json

import pytest

import okd.data.presets as presets
import okd.demo as demo
from okd.cli import main
from okd.demo_budget import (MARGIN_S, MAX_STEPS, MIN_STEPS, VALIDATIONS, Budget, Probe, choose_steps, describe,
                             eval_every, load_budget, probe_from_run)


def test_choose_steps_fills_the_budget_with_equal_steps():
    probes = {"sft": Probe(step_s=1.0, fixed_s=10.0, valid_s=2.0), "okd": Probe(step_s=3.0, fixed_s=20.0, valid_s=4.0)}
    extra = VALIDATIONS - 1  # validations besides the one a probe measured
    fixed = (10 + extra * 2) + (20 + extra * 4) + 2 * 30 + MARGIN_S  # runs, 2 student evaluations, the margin
    steps, rest, note = choose_steps(probes, remaining_s=fixed + 4 * 50 + 3, eval_s=30.0)  # 4 s per step of both
    assert (steps, rest, note) == (50, fixed + 4 * 50, "")
    assert probes["okd"].run_s(50) == 20 + 150 + extra * 4


def test_choose_steps_clamps_and_says_so():
    slow = {"okd": Probe(step_s=100.0, fixed_s=60.0, valid_s=10.0)}
    fixed = slow["okd"].run_s(0) + 60.0 + MARGIN_S
    steps, rest, note = choose_steps(slow, remaining_s=fixed + 50, eval_s=60.0)  # half a step fits
    assert steps == MIN_STEPS and "fits only 0 step(s)" in note and rest > fixed + 50
    fast = {"sft": Probe(step_s=0.001, fixed_s=0.0, valid_s=0.0)}
    steps, _, note = choose_steps(fast, remaining_s=600.0, eval_s=0.0)
    assert steps == MAX_STEPS and note.startswith(f"capped at {MAX_STEPS}")


def test_probe_from_run_reads_step_times(tmp_path):
    recs = [{"step": i, "elapsed_s": t} for i, t in ((1, 5.0), (2, 7.0), (3, 9.5))]  # first step: warm-up
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "summary.json").write_text(json.dumps({"wall_clock_s": 12.0, "train_s": 9.5}))
    p = probe_from_run(tmp_path, total_s=20.0)
    assert p.step_s == pytest.approx(2.25) and p.valid_s == pytest.approx(2.5)
    assert p.fixed_s == pytest.approx(20.0 - 3 * 2.25)


def test_budget_round_trips_and_is_reused_for_the_same_minutes_only(tmp_path):
    b = Budget(minutes=12, steps=30, eval_every=eval_every(30), probes={"okd": Probe(1.0, 2.0, 3.0)}, eval_s=4.0,
               spent_s=100.0, estimate_s=700.0)
    path = tmp_path / "budget.json"
    path.write_text(json.dumps(b.to_json()))
    assert load_budget(path, 12) == b and load_budget(path, 10) is None and load_budget(tmp_path / "x", 12) is None
    assert b.eval_every == -(-30 // VALIDATIONS) and "**30 steps per method**" in describe(b) and "okd 1.00" in describe(b)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "-1"], "must be >= 1, got -1"), (["--steps", "0"], "must be >= 1, got 0"),
    (["--eval-limit", "0"], "must be >= 1, got 0"), (["--minutes", "0"], "positive number of minutes"),
    (["--minutes", "nan"], "positive number of minutes"),
])
def test_bad_numbers_stop_before_any_download(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(demo, "prepare_real", lambda *a, **k: pytest.fail("started the download"))
    with pytest.raises(SystemExit) as e:
        main(["demo", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_output_is_checked_and_steps_exclude_minutes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "prepare_real", lambda *a, **k: pytest.fail("started the download"))
    (tmp_path / "f").write_text("")
    assert main(["demo", "-o", str(tmp_path / "f")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["demo", "--steps", "5", "--minutes", "3", "-o", str(tmp_path / "d")]) == 2
    assert "not both" in capsys.readouterr().err


def test_demo_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for needle in ("15 of its 30 layers", "--minutes M", "default: 12", f"tiny default: {demo.TINY_STEPS}",
                   "default: 24"):
        assert needle in " ".join(out.split()), needle


def test_tiny_demo_under_a_budget(tmp_path, monkeypatch, capsys):
    """Budget measured (probes), runs sized, report with the budget, table, curves and greedy samples."""
    monkeypatch.setattr(demo, "TINY_TEACHER_STEPS", 60)
    out = demo.run_demo(tmp_path, tiny=True, minutes=0.5, eval_limit=6)
    budget = json.loads((out / "budget.json").read_text())
    assert set(budget["probes"]) == {"sft", "fkd", "okd"} and budget["steps"] >= 8
    assert json.loads((out / "runs" / "okd" / "summary.json").read_text())["steps"] == budget["steps"]
    report = (out / "report.md").read_text()
    for needle in ("Budget: `--minutes 0.5`", "| student (untrained) |", "| okd |", "![Learning curves]",
                   "Decoding: greedy", "### student (untrained)", "Machine: "):
        assert needle in report, needle
    assert (out / "learning_curves.png").stat().st_size > 5000
    names = sorted(p.name for p in (out / "eval").iterdir())
    assert "student_init.json" in names and not any(" " in n or "(" in n for n in names), names
    assert not (out / "probes").exists() and not (out / "runs" / "okd" / "checkpoints").exists()
    assert "report written to" in capsys.readouterr().out


def test_short_pairs_keep_short_prompts_and_answers(tmp_path):
    rows = [{"instruction": "Hi?", "input": "", "output": "Hello."},
            {"instruction": "x" * (demo.SHORT_PROMPT_CHARS + 1), "input": "", "output": "ok"},
            {"instruction": "Explain.", "input": "", "output": "y" * (demo.SHORT_ANSWER_CHARS + 1)},
            {"instruction": "Name one.", "input": "", "output": "One."}]
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert presets.short_pairs(src, tmp_path / "short.jsonl", max_prompt=demo.SHORT_PROMPT_CHARS,
                               max_answer=demo.SHORT_ANSWER_CHARS) == 2
    kept = [json.loads(line)["instruction"] for line in (tmp_path / "short.jsonl").read_text().splitlines()]
    assert kept == ["Hi?", "Name one."] and presets.short_pairs(src, tmp_path / "one.jsonl", limit=1) == 1


def test_bf16_detection_can_be_overridden_and_the_machine_line_says_so(monkeypatch):
    from okd.precision import cpu_features
    from okd.precision import cpu_has_bf16

    monkeypatch.setenv("OKD_CPU_BF16", "0")
    assert cpu_has_bf16() is False
    monkeypatch.setenv("OKD_CPU_BF16", "1")
    assert cpu_has_bf16() is True
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert cpu_features().endswith("(limited by ATEN_CPU_CAPABILITY=avx2 OKD_CPU_BF16=1)")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.delenv("OKD_CPU_BF16")
    assert "limited by" not in cpu_features()
