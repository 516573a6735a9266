"""`okd demo`: the whole method on a real model, offline, in minutes.

SmolLM2-135M-Instruct (teacher, from a PyPI wheel) → a depth-pruned copy keeping 8 of its 30 layers
(student), ShareGPT first turns (from a PyPI wheel) as data. sft, fkd and okd train under the same
small budget; the three students, the untrained pruned student and the teacher are then evaluated on
held-out ShareGPT prompts (ROUGE-L, one sampled answer each), and a table plus three sample answers
per model are printed. Every stage is cached under the output directory (and the presets under
OKD_HOME), so a second run only prints.

The training, evaluation and skipping are okd compare's: the demo writes a built-in grid
(`<output>/grid.yaml`: runs/<method>/, eval/<model>.json, the references `teacher` and
`student_init`) and runs it in-process, with its own report (the table and the sample answers) in
place of compare's; `okd compare -c <output>/grid.yaml` then gives compare's full report and plots.

`okd demo --tiny` does the same with tiny random models built on the fly, in a minute.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from okd.config import build_config


@dataclass
class DemoPlan:
    teacher: str
    student: str
    data: str
    template: str
    methods: tuple = ("sft", "fkd", "okd")
    steps: int = 40
    batch_size: int = 4
    max_length: int = 256
    mixed_precision: str = "no"  # bf16 where the CPU multiplies bf16 natively (3-4x faster)
    lr: float = 1e-4
    eval_limit: int = 40
    max_new_tokens: int = 64
    online_rank: int = 32
    online_layers: int | None = None
    title: str = "SmolLM2-135M-Instruct → 8-layer student"


def _say(msg: str) -> None:
    print(f"[okd demo] {msg}", flush=True)


def prepare_real(out: Path) -> DemoPlan:
    from okd.data.presets import resolve_data_preset
    from okd.models.presets import resolve_model_preset
    from okd.models.prune import init_student

    _say("teacher: SmolLM2-135M-Instruct (preset smollm2-135m-instruct)")
    teacher = resolve_model_preset("smollm2-135m-instruct")
    student = out / "student-init"
    if not (student / "config.json").is_file():
        _say("student: keeping 8 of the teacher's 30 layers (uniform)")
        _, nt, ns = init_student(str(teacher), 8, "uniform", student)
        _say(f"teacher {nt / 1e6:.1f}M parameters, student {ns / 1e6:.1f}M")
    for split in ("train", "valid", "test"):
        resolve_data_preset("sharegpt", split)
    from okd.precision import bf16_is_fast

    bf16 = bf16_is_fast()
    return DemoPlan(teacher=str(teacher), student=str(student), data="sharegpt", template="chat",
                    mixed_precision="bf16" if bf16 else "no")


def prepare_tiny(out: Path) -> DemoPlan:
    from okd.models.tiny import save_tiny
    from okd.train import train

    init, student = out / "tiny-teacher-init", out / "student-init"
    if not (init / "config.json").is_file():
        save_tiny(init, "llama", layers=4, hidden=128, seed=1)
    if not (student / "config.json").is_file():
        save_tiny(student, "llama", layers=2, hidden=64, seed=2)
    data = out / "tiny-data"
    if not data.is_dir():
        # a synthetic split dataset: short, learnable (the answer repeats words of the instruction)
        data.mkdir(parents=True)
        words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "rain", "star"]
        for split, (lo, hi) in {"train": (0, 400), "valid": (400, 440), "test": (440, 480)}.items():
            rows = [{"instruction": f"Repeat: {words[i % 10]} {words[(i * 7) % 10]}",
                     "input": "", "output": f"{words[i % 10]} {words[(i * 7) % 10]}"} for i in range(lo, hi)]
            (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a random teacher has nothing to teach: fine-tune it on the task first (cached like the rest)
    teacher_run = out / "teacher-sft"
    if not (teacher_run / "summary.json").is_file():
        _say("training the tiny teacher (sft, 150 steps)")
        train(build_config({}, [f"student.path={init}", f"data.train={data}", "method.name=sft",
                                "data.max_length=128", "train.max_steps=150", "train.batch_size=16",
                                "train.lr=3e-3", "train.warmup_steps=10", f"output_dir={teacher_run}"]),
              resume=True)
    return DemoPlan(teacher=str(teacher_run / "student"), student=str(student), data=str(data),
                    template="alpaca", steps=150, batch_size=16, max_length=128, lr=3e-3, eval_limit=40,
                    max_new_tokens=16, online_rank=8, title="tiny")


def demo_grid(plan: DemoPlan, out: Path) -> dict:
    """The demo as an `okd compare` grid: one base config, a run per method, the two reference rows."""
    online = {"rank": plan.online_rank, "lora_alpha": plan.online_rank}
    if plan.online_layers:
        online["layers"] = plan.online_layers
    return {
        "output_dir": str(out),
        "isolate": False,  # one process: the models are small and the start-up would dominate
        "title": f"okd demo ({plan.title})",
        "base": {
            "teacher": {"path": plan.teacher},
            "student": {"path": plan.student},
            "data": {"train": plan.data, "valid": plan.data, "template": plan.template,
                     "max_length": plan.max_length, "valid_limit": 64, "train_limit": plan.steps * plan.batch_size},
            "online": online,
            "train": {"max_steps": plan.steps, "batch_size": plan.batch_size, "lr": plan.lr,
                      "warmup_steps": max(1, plan.steps // 10), "mixed_precision": plan.mixed_precision},
        },
        "runs": [{"name": name, "overrides": {"method.name": name}} for name in plan.methods],
        "eval": {"data": [plan.data], "split": "test", "template": plan.template, "seeds": 1,
                 "max_new_tokens": plan.max_new_tokens, "limit": plan.eval_limit, "batch_size": 20,
                 "dtype": "bfloat16" if plan.mixed_precision == "bf16" else "float32",
                 "references": ["teacher", "student_init"]},
    }


LABELS = {"student_init": "student (untrained)"}  # the demo's name for compare's reference row


def _samples(out: Path, label: str, n: int = 3) -> list[str]:
    """The first n prompts and sampled answers of a model's evaluation, as markdown list items."""
    res = json.loads((out / "eval" / f"{label}.json").read_text())
    d = next(iter(res["datasets"].values()))
    lines = (out / "eval" / d["predictions"][0]).read_text().splitlines()[:n]
    items = []
    for p in map(json.loads, lines):
        q = p["instruction"].replace("\n", " ")[:100]
        a = p["prediction"].replace("\n", " ")[:200]
        items.append(f"- **{q}** → {a}")
    return items


def _table_row(r: dict) -> list[str]:
    """model, ROUGE-L, train s (wall clock), train tokens/s, valid CE, gen tokens/s ("-": not trained)."""
    def num(v, fmt: str) -> str:
        return fmt.format(float("nan") if v is None else v)

    rouge = next(iter((r.get("rougeL") or {}).values()), None)
    train = ["-", "-", "-"] if r["kind"] == "reference" else \
        [num(r["wall_clock_s"], "{:.0f}"), num(r["tokens_per_s"], "{:.0f}"), num(r["valid_loss"], "{:.3f}")]
    return [LABELS.get(r["name"], r["name"]), num(rouge and rouge["mean"], "{:.2f}"), *train,
            num(r.get("gen_tokens_per_s"), "{:.0f}")]


def demo_report(plan: DemoPlan, grid_plan) -> str:
    """report.md of the demo: one table row per model (from okd compare's results) and sample answers."""
    from okd.compare import collect_results
    from okd.eval.report import markdown_table

    rows = collect_results(grid_plan)
    lines = [f"# okd demo ({plan.title})", "",
             f"Budget per method: {plan.steps} steps × batch {plan.batch_size}, max length {plan.max_length}, "
             f"{'bf16 autocast' if plan.mixed_precision == 'bf16' else 'fp32'}; eval: {plan.eval_limit} held-out "
             f"prompts, one sampled answer (temperature 1), {plan.max_new_tokens} new tokens.", "",
             markdown_table(["model", "ROUGE-L", "train s", "train tokens/s", "valid CE", "gen tokens/s"],
                            [_table_row(r) for r in rows]),
             "", "## Sample answers", ""]
    for r in rows:
        lines += [f"### {LABELS.get(r['name'], r['name'])}", *_samples(grid_plan.out, r["name"]), ""]
    text = "\n".join(lines)
    (grid_plan.out / "report.md").write_text(text)
    return text


def run_demo(out: str | Path = "runs/demo", *, tiny: bool = False, steps: int | None = None,
             eval_limit: int | None = None) -> Path:
    """Prepare the models and data, then train, evaluate and report the demo grid through okd compare."""
    import yaml

    from okd.compare import run_compare

    out = Path(out) / ("tiny" if tiny else "smollm2")
    out.mkdir(parents=True, exist_ok=True)
    plan = prepare_tiny(out) if tiny else prepare_real(out)
    if steps:
        plan.steps = steps
    if eval_limit:
        plan.eval_limit = eval_limit
    grid = out / "grid.yaml"  # `okd compare -c <out>/grid.yaml` gives compare's full report of the same runs
    grid.write_text(yaml.safe_dump(demo_grid(plan, out), sort_keys=False, allow_unicode=True))
    run_compare(grid, progress=sys.stderr.isatty(), log=_say, report=lambda p: demo_report(plan, p))
    print()
    print((out / "report.md").read_text())
    _say(f"report written to {out / 'report.md'}")
    return out
