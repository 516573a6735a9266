"""`okd demo`: the whole method on a real model, offline, sized to a time budget on this machine.

SmolLM2-135M-Instruct (teacher, from a PyPI wheel) → a depth-pruned copy keeping 15 of its 30 layers
(student), ShareGPT first turns with short answers (from a PyPI wheel) as data, sequences of at most 128
tokens. sft, fkd and okd
train the same number of steps, chosen so that the whole demo ends within `--minutes` (default 12) of its
start on this machine: after the presets are ready and the teacher and the untrained student are
evaluated, a 3-step probe of each method measures its cost (okd/demo_budget.py). The students, the
untrained student and the teacher are evaluated on held-out prompts (ROUGE-L of one sampled answer,
temperature 1, as in the paper) and the report prints a table, the learning curves and greedy sample
answers of every model. Every stage is cached under the output directory (the presets under OKD_HOME),
so a second run with the same budget only prints.

The training, evaluation and skipping are okd compare's: the demo writes a built-in grid
(`<output>/grid.yaml`: runs/<method>/, eval/<model>.json, the references `teacher` and `student_init`)
and runs it in-process, with its own report in place of compare's; `okd compare -c <output>/grid.yaml`
then gives compare's full report and plots.

`okd demo --tiny` does the same with tiny random models built on the fly (the tiny teacher is fine-tuned
first), 300 steps per method, in a minute or two; `--steps N` fixes the steps instead of a budget.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from okd.config import build_config

DEFAULT_MINUTES = 12.0
TINY_STEPS = 300
TINY_TEACHER_STEPS = 300


@dataclass
class DemoPlan:
    teacher: str
    student: str
    data: str
    template: str
    methods: tuple = ("sft", "fkd", "okd")
    steps: int = 40
    batch_size: int = 4
    max_length: int = 128  # half of 256: half the cost of a step, and the pruned student's answers are short
    mixed_precision: str = "no"  # bf16 where the CPU multiplies bf16 natively (3-4x faster)
    lr: float = 2e-4
    eval_limit: int = 24
    max_new_tokens: int = 48
    max_prompt_length: int = 128
    valid_limit: int = 16
    eval_every: int = 0  # 0: validate at the end only
    online_rank: int = 32
    online_layers: int | None = None
    sample_tokens: int = 64  # greedy sample answers shown in the report
    title: str = "SmolLM2-135M-Instruct → 15-layer student"


def _say(msg: str) -> None:
    print(f"[okd demo] {msg}", flush=True)


def prepare_real(out: Path, layers: int = 15) -> DemoPlan:
    from okd.data.presets import resolve_data_preset, short_pairs
    from okd.models.presets import resolve_model_preset
    from okd.models.prune import init_student
    from okd.paths import atomic_dir
    from okd.precision import bf16_is_fast

    _say("teacher: SmolLM2-135M-Instruct (preset smollm2-135m-instruct)")
    teacher = resolve_model_preset("smollm2-135m-instruct")
    student = out / f"student-init-{layers}l"
    if not (student / "config.json").is_file():
        _say(f"student: keeping {layers} of the teacher's 30 layers (uniform)")
        with atomic_dir(student) as tmp:
            _, nt, ns = init_student(str(teacher), layers, "uniform", tmp, overwrite=True)
        _say(f"teacher {nt / 1e6:.1f}M parameters, student {ns / 1e6:.1f}M")
    data = out / "sharegpt-short"
    if not (data / "test.jsonl").is_file():
        with atomic_dir(data) as tmp:
            kept = {split: short_pairs(resolve_data_preset("sharegpt", split), tmp / f"{split}.jsonl", limit=4000,
                                         max_prompt=SHORT_PROMPT_CHARS, max_answer=SHORT_ANSWER_CHARS)
                    for split in ("train", "valid", "test")}
        _say("data: ShareGPT first turns with short answers (" + ", ".join(f"{k} {v}" for k, v in kept.items()) + ")")
    return DemoPlan(teacher=str(teacher), student=str(student), data=str(data), template="chat",
                    mixed_precision="bf16" if bf16_is_fast() else "no",
                    title=f"SmolLM2-135M-Instruct → {layers}-layer student")


# narrower than the sharegpt-short preset: ~75 and ~100 tokens, so most pairs fit 128 tokens whole and a pruned
# student learns to answer briefly, and to stop, within the demo's few steps
SHORT_PROMPT_CHARS, SHORT_ANSWER_CHARS = 300, 400


def _tiny_data(data: Path) -> None:
    """A synthetic split dataset: short, learnable (the answer repeats the two words before '=>')."""
    data.mkdir(parents=True)
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "rain", "star"]
    for split, (lo, hi) in {"train": (0, 400), "valid": (400, 440), "test": (440, 480)}.items():
        rows = [{"instruction": f"Repeat: {words[i % 10]} {words[(i * 7) % 10]} =>",
                 "input": "", "output": f" {words[i % 10]} {words[(i * 7) % 10]}"} for i in range(lo, hi)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def prepare_tiny(out: Path) -> DemoPlan:
    from okd.models.tiny import save_tiny
    from okd.paths import fix_permissions
    from okd.train import train

    init, student = out / "tiny-teacher-init", out / "student-init"
    if not (init / "config.json").is_file():
        fix_permissions(save_tiny(init, "llama", layers=4, hidden=128, seed=1))
    if not (student / "config.json").is_file():
        fix_permissions(save_tiny(student, "llama", layers=2, hidden=64, seed=2))
    data = out / "tiny-data"
    if not data.is_dir():
        _tiny_data(data)
    # a random teacher has nothing to teach: fine-tune it on the task first (cached like the rest)
    teacher_run = out / "teacher-sft"
    if not (teacher_run / "summary.json").is_file():
        _say(f"training the tiny teacher (sft, {TINY_TEACHER_STEPS} steps)")
        train(build_config({}, [f"student.path={init}", f"data.train={data}", "method.name=sft",
                                "data.template=plain", "data.max_length=64", f"train.max_steps={TINY_TEACHER_STEPS}",
                                "train.batch_size=16", "train.lr=3e-3", "train.warmup_steps=10",
                                f"output_dir={teacher_run}"]), resume=True, progress=False)
    return DemoPlan(teacher=str(teacher_run / "student"), student=str(student), data=str(data),
                    template="plain", steps=TINY_STEPS, batch_size=16, max_length=64, lr=3e-3, eval_limit=40,
                    max_new_tokens=12, max_prompt_length=48, online_rank=8, sample_tokens=12, title="tiny")


def demo_grid(plan: DemoPlan, out: Path) -> dict:
    """The demo as an `okd compare` grid: one base config, a run per method, the two reference rows."""
    online = {"rank": plan.online_rank, "lora_alpha": plan.online_rank}
    if plan.online_layers:
        online["layers"] = plan.online_layers
    return {
        "output_dir": str(out),
        "isolate": False,  # one process: the models are small and the start-up would dominate
        "keep_checkpoints": False,  # optimizer states: GBs the demo never resumes from once a run is done
        "title": f"okd demo ({plan.title})",
        "base": {
            "teacher": {"path": plan.teacher},
            "student": {"path": plan.student},
            "data": {"train": plan.data, "valid": plan.data, "template": plan.template,
                     "max_length": plan.max_length, "max_prompt_length": plan.max_prompt_length,
                     "valid_limit": plan.valid_limit, "train_limit": plan.steps * plan.batch_size},
            "online": online,
            "train": {"max_steps": plan.steps, "batch_size": plan.batch_size, "lr": plan.lr,
                      "warmup_steps": max(1, plan.steps // 10), "mixed_precision": plan.mixed_precision,
                      "eval_every": plan.eval_every, "save_every_minutes": 0},
        },
        "runs": [{"name": name, "overrides": {"method.name": name}} for name in plan.methods],
        "eval": {"data": [plan.data], "split": "test", "template": plan.template, "seeds": 1,
                 "max_new_tokens": plan.max_new_tokens, "max_prompt_length": plan.max_prompt_length,
                 "limit": plan.eval_limit, "batch_size": plan.eval_limit,
                 "dtype": "bfloat16" if plan.mixed_precision == "bf16" else "float32",
                 "references": ["teacher", "student_init"]},
    }


def _write_grid(plan: DemoPlan, out: Path):
    """grid.yaml (for `okd compare -c`) and its plan."""
    import yaml

    from okd.compare import plan_grid

    grid = out / "grid.yaml"
    grid.write_text(yaml.safe_dump(demo_grid(plan, out), sort_keys=False, allow_unicode=True))
    return grid, plan_grid(demo_grid(plan, out))


def _samples(plan: DemoPlan, grid_plan, label: str, model: str) -> dict:
    from okd.demo_report import sample_examples, write_samples

    examples = sample_examples(plan.data, "test", plan.eval_limit)
    return write_samples(grid_plan.out / "samples" / f"{label}.json", model, examples, template=plan.template,
                         max_new_tokens=plan.sample_tokens, max_prompt_length=plan.max_prompt_length,
                         dtype="bfloat16" if plan.mixed_precision == "bf16" else "float32")


def _evaluate_references(plan: DemoPlan, grid_plan) -> float:
    """Evaluate the teacher and the untrained student first; returns the untrained student's evaluation time
    (samples included), the measure of one trained student's."""
    from okd.compare import evaluate_model

    seconds = 0.0
    for label, model in (("teacher", grid_plan.teacher), ("student_init", grid_plan.student_init)):
        done = evaluate_model(grid_plan, label, model, exposure=False, log=_say)
        if done:
            _say(f"eval {label}: {'; '.join(done)}")
        samples = _samples(plan, grid_plan, label, model)
        if label == "student_init":
            res = json.loads((grid_plan.out / "eval" / "student_init.json").read_text())
            seconds = float(res.get("wall_s", 0.0)) + float(samples.get("seconds", 0.0))
    return seconds


def _clear_stale(grid_plan) -> None:
    """Runs (and their evaluations) trained with another budget are the demo's own: retrain them."""
    from okd.compare import check_run_config
    from okd.errors import OkdError

    for r in grid_plan.runs:
        try:
            check_run_config(r)
        except OkdError:
            _say(f"{r.name}: trained with another budget; training it again")
            shutil.rmtree(r.dir, ignore_errors=True)
            for stale in (grid_plan.out / "eval").glob(f"{r.name}.*"):
                stale.unlink()
            (grid_plan.out / "samples" / f"{r.name}.json").unlink(missing_ok=True)


def _plan_budget(plan: DemoPlan, out: Path, minutes: float, t0: float):
    """Measure (or reuse) and set plan.steps / plan.eval_every for the budget; returns the Budget."""
    from okd.demo_budget import Budget, choose_steps, eval_every, load_budget, probe_method

    path = out / "budget.json"
    budget = load_budget(path, minutes)
    if budget is not None:
        _say(f"budget: reusing {budget.steps} steps per method chosen for --minutes {minutes:g} ({path})")
    else:
        _, grid_plan = _write_grid(plan, out)
        eval_s = _evaluate_references(plan, grid_plan)
        probes = {r.name: probe_method(r.cfg.model_dump(mode="json"), out / "probes" / r.name, _say)
                  for r in grid_plan.runs}
        shutil.rmtree(out / "probes", ignore_errors=True)
        spent = time.perf_counter() - t0
        steps, rest, note = choose_steps(probes, remaining_s=minutes * 60 - spent, eval_s=eval_s)
        budget = Budget(minutes=minutes, steps=steps, eval_every=eval_every(steps), probes=probes, eval_s=eval_s,
                        spent_s=spent, estimate_s=spent + rest, note=note)
        path.write_text(json.dumps(budget.to_json(), indent=1) + "\n")
        _say(f"budget: {steps} steps per method fit --minutes {minutes:g} (predicted total "
             f"{budget.estimate_s / 60:.1f} min){'; ' + note if note else ''}")
    plan.steps, plan.eval_every = budget.steps, budget.eval_every
    return budget


def demo_report(plan: DemoPlan, grid_plan, budget=None, started: float | None = None) -> str:
    """report.md of the demo: the table (okd compare's results), the learning curves and sample answers."""
    from okd.compare import collect_results, hardware
    from okd.demo_budget import describe
    from okd.demo_report import LABELS, SAMPLE_DECODING, machine_line, sample_lines, table_row
    from okd.eval.curves import plot_runs
    from okd.eval.report import markdown_table

    rows = collect_results(grid_plan)
    trained = [r for r in rows if r["kind"] != "reference"]
    curves = plot_runs([grid_plan.out / "runs" / r["name"] for r in trained], grid_plan.out / "learning_curves.png",
                       labels=[r["name"] for r in trained], title=f"okd demo ({plan.title})") if trained else None
    precision = "bf16 autocast" if plan.mixed_precision == "bf16" else "fp32"
    lines = [f"# okd demo ({plan.title})", "", machine_line(hardware(), precision), "",
             f"Per method: {plan.steps} steps × batch {plan.batch_size}, max length {plan.max_length}, lr {plan.lr:g}. "
             f"Evaluation: {plan.eval_limit} held-out prompts, one sampled answer each (temperature 1, top-p 1: "
             f"the paper's protocol), at most {plan.max_new_tokens} new tokens.", ""]
    if budget is not None:
        lines += [describe(budget), ""]
    lines += [markdown_table(["model", "ROUGE-L", "train s", "train tokens/s", "valid CE", "gen tokens/s"],
                             [table_row(r) for r in rows]), ""]
    if curves is not None:
        lines += [f"![Learning curves]({curves.name})", ""]
    lines += ["## Sample answers", "", f"Decoding: {SAMPLE_DECODING} (for reading; the table's ROUGE-L is over "
              f"sampled answers), at most {plan.sample_tokens} new tokens; '…': cut at that length.", ""]
    for r in rows:
        model = r.get("model") or str(grid_plan.out / "runs" / r["name"] / "student")
        lines += [f"### {LABELS.get(r['name'], r['name'])}", *sample_lines(_samples(plan, grid_plan, r["name"], model)),
                  ""]
    if started is not None:
        lines += [f"This invocation of the demo took {(time.perf_counter() - started) / 60:.1f} min (stages cached by "
                  "an earlier one are skipped).", ""]
    text = "\n".join(lines)
    (grid_plan.out / "report.md").write_text(text)
    return text


def run_demo(out: str | Path = "runs/demo", *, tiny: bool = False, steps: int | None = None,
             eval_limit: int | None = None, minutes: float | None = None) -> Path:
    """Prepare the models and data, size the budget, then train, evaluate and report the demo grid through
    okd compare. `steps` fixes the steps per method; otherwise `minutes` (default 12; the tiny demo uses
    300 steps unless given minutes) sets them from measurements on this machine."""
    from okd.compare import run_compare

    t0 = time.perf_counter()
    out = Path(out) / ("tiny" if tiny else "smollm2")
    out.mkdir(parents=True, exist_ok=True)
    plan = prepare_tiny(out) if tiny else prepare_real(out)
    if eval_limit:
        plan.eval_limit = eval_limit
    budget = None
    if steps:
        plan.steps = steps
    elif minutes is not None or not tiny:
        budget = _plan_budget(plan, out, minutes or DEFAULT_MINUTES, t0)
    if not plan.eval_every:
        from okd.demo_budget import eval_every

        plan.eval_every = eval_every(plan.steps)
    grid, grid_plan = _write_grid(plan, out)  # `okd compare -c <out>/grid.yaml`: compare's report of the same runs
    _clear_stale(grid_plan)
    run_compare(grid, progress=sys.stderr.isatty(), log=_say, report=lambda p: demo_report(plan, p, budget, t0))
    print()
    print((out / "report.md").read_text())
    _say(f"report written to {out / 'report.md'} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return out
