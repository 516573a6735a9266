"""`okd demo`: the whole method on a real model, offline, in minutes.

SmolLM2-135M-Instruct (teacher, from a PyPI wheel) → a depth-pruned copy keeping 8 of its 30 layers
(student), ShareGPT first turns (from a PyPI wheel) as data. sft, fkd and okd train under the same
small budget; the three students, the untrained pruned student and the teacher are then evaluated on
held-out ShareGPT prompts (ROUGE-L, one sampled answer each), and a table plus three sample answers
per model are printed. Every stage is cached under the output directory (and the presets under
OKD_HOME), so a second run only prints.

`okd demo --tiny` does the same with tiny random models built on the fly, in a minute.
"""

from __future__ import annotations

import json
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
    from okd.train.precision import bf16_is_fast

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
                    max_new_tokens=16, online_rank=8)


def train_methods(plan: DemoPlan, out: Path) -> dict[str, dict]:
    from okd.train import train

    summaries = {}
    for name in plan.methods:
        run = out / name
        if not (run / "summary.json").is_file():
            _say(f"training {name}: {plan.steps} steps, batch {plan.batch_size}, max length {plan.max_length}")
            overrides = [
                f"student.path={plan.student}", f"data.train={plan.data}", f"data.valid={plan.data}",
                f"data.template={plan.template}", f"data.max_length={plan.max_length}", "data.valid_limit=64",
                f"method.name={name}", f"train.max_steps={plan.steps}", f"train.batch_size={plan.batch_size}",
                f"train.lr={plan.lr}", f"train.warmup_steps={max(1, plan.steps // 10)}",
                f"data.train_limit={plan.steps * plan.batch_size}", f"train.mixed_precision={plan.mixed_precision}",
                f"online.rank={plan.online_rank}", f"online.lora_alpha={plan.online_rank}",
                f"output_dir={run}",
            ]
            if plan.online_layers:
                overrides.append(f"online.layers={plan.online_layers}")
            if name != "sft":
                overrides.append(f"teacher.path={plan.teacher}")
            # --resume: a demo interrupted mid-run continues instead of refusing the directory
            train(build_config({}, overrides), resume=True)
        summaries[name] = json.loads((run / "summary.json").read_text())
    return summaries


def evaluate_models(plan: DemoPlan, out: Path, models: dict[str, str]) -> dict[str, dict]:
    from okd.eval import run_eval

    results = {}
    for label, path in models.items():
        target = out / "eval" / f"{label}.json"
        if not target.is_file():
            _say(f"evaluating {label} on {plan.eval_limit} held-out prompts")
            run_eval(path, [plan.data], target, split="test", template=plan.template, seeds=1,
                     max_new_tokens=plan.max_new_tokens, limit=plan.eval_limit, batch_size=20,
                     dtype="bfloat16" if plan.mixed_precision == "bf16" else "float32", log=lambda m: None)
        results[label] = json.loads(target.read_text())
    return results


def report(plan: DemoPlan, out: Path, summaries: dict, results: dict) -> str:
    from okd.eval.report import markdown_table

    rows = []
    for label, res in results.items():
        d = next(iter(res["datasets"].values()))
        s = summaries.get(label, {})
        rows.append([label, f"{d['rougeL']['mean']:.2f}",
                     f"{s['wall_clock_s']:.0f}" if s else "-",
                     f"{s['tokens_per_s']:.0f}" if s else "-",
                     f"{s['final_metrics'].get('valid_loss', float('nan')):.3f}" if s else "-",
                     f"{d['generation']['tokens_per_s']:.0f}"])
    table = markdown_table(["model", "ROUGE-L", "train s", "train tokens/s", "valid CE", "gen tokens/s"], rows)
    lines = [f"# okd demo ({'tiny' if 'tiny' in plan.teacher else 'SmolLM2-135M-Instruct → 8-layer student'})",
             "", f"Budget per method: {plan.steps} steps × batch {plan.batch_size}, max length "
             f"{plan.max_length}, {'bf16 autocast' if plan.mixed_precision == 'bf16' else 'fp32'}; eval: {plan.eval_limit} held-out prompts, one sampled answer "
             f"(temperature 1), {plan.max_new_tokens} new tokens.", "", table, "", "## Sample answers", ""]
    for label, res in results.items():
        d = next(iter(res["datasets"].values()))
        pred_file = out / "eval" / d["predictions"][0]
        preds = [json.loads(line) for line in pred_file.read_text().splitlines()[:3]]
        lines.append(f"### {label}")
        for p in preds:
            q = p["instruction"].replace("\n", " ")[:100]
            a = p["prediction"].replace("\n", " ")[:200]
            lines.append(f"- **{q}** → {a}")
        lines.append("")
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def run_demo(out: str | Path = "runs/demo", *, tiny: bool = False, steps: int | None = None,
             eval_limit: int | None = None) -> Path:
    out = Path(out) / ("tiny" if tiny else "smollm2")
    out.mkdir(parents=True, exist_ok=True)
    plan = prepare_tiny(out) if tiny else prepare_real(out)
    if steps:
        plan.steps = steps
    if eval_limit:
        plan.eval_limit = eval_limit
    summaries = train_methods(plan, out)
    models = {"teacher": plan.teacher, "student (untrained)": plan.student}
    models.update({name: str(out / name / "student") for name in plan.methods})
    results = evaluate_models(plan, out, models)
    print()
    print(report(plan, out, summaries, results))
    _say(f"report written to {out / 'report.md'}")
    return out
