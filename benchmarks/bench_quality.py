"""Time to quality: training time until the student's validation loss reaches a target, okd vs gkd vs minillm.

Every method trains through the real `okd train` command (a subprocess per run, one base config
written as YAML plus `key=value` overrides), on the same student initialisation, data, batch, lr and
precision, with the validation loss (`valid_loss`: the student's CE on `data.valid` responses,
comparable across methods) logged every `--eval-every` steps. A run stops at its step cap
(`train.max_steps`, which also ends its linear lr decay) or at the first evaluation after
`--time-cap` seconds of training, whichever comes first. Then, for each target loss, the table gives
the training time and the steps each method needed to first log a validation loss at or below it
("not reached" otherwise); the resolution is one evaluation interval. The initial student is
validated too (step 0, before the trainer's clock starts), so every curve starts at the same point.

Training time excludes validation. `elapsed_s` in metrics.jsonl is the trainer's clock since the
first step; it includes the time spent in earlier evaluations (the trainer takes `elapsed_s` just
before it evaluates, and its clock keeps running through the evaluation). This script therefore
runs `okd train` under a thin wrapper that times every call of the trainer's `evaluate` (wall and
CPU time) and the start of the loop, and reports

    train wall time at eval k = elapsed_s(k) - sum of the wall time of the evaluations before k
    train CPU time at eval k  = CPU time since the loop started - CPU time of the evaluations before k

(model loading, data encoding, and the final checkpoint and save are outside both). Without the
wrapper's records (e.g. a trainer refactor), the evaluation time is estimated from the step times
in metrics.jsonl and the JSON says so.

Methods (`--methods`, default all three):
- okd: `method.name=okd` at its defaults (online module rank 32 on all layers, α 0.5, module lr 1e-4).
- gkd: `method.name=gkd`, λ = `method.lmbda` = 0.5 (probability of a student-generated batch),
  β = `method.beta` = 0.5 (generalized JSD), `method.max_new_tokens` new tokens per sample.
- minillm: as in the paper and `configs/compare-smollm2.yaml` (`student_from: sft`), it starts from
  an SFT student: first `--sft-steps` steps of `method.name=sft` (a run of its own, whose student/
  becomes minillm's student.path), then `method.name=minillm`. The SFT phase's training time and
  steps are counted toward minillm: its curve is the SFT curve followed by the MiniLLM curve, and the
  table marks targets that were already reached during the SFT phase.

Setups: the real offline one (default): teacher preset `smollm2-135m-instruct`, student = the
teacher with 8 of its 30 layers kept (`okd student init --layers 8`, made once under the work
directory), data preset `sharegpt` (chat template), valid = the first `--valid-limit` ShareGPT valid
examples. `--tiny`: the tiny models and synthetic task of `okd demo --tiny`, for a smoke test in
about a minute.

The code under test is copied once per invocation into the work directory and every run imports
that copy (PYTHONPATH), so that edits to the working tree during a long benchmark cannot make the
methods run different code; the JSON records the commit and the working tree's diff stat.

    python benchmarks/bench_quality.py --tiny                          # smoke test, ~1 minute
    python benchmarks/bench_quality.py --probe 6                       # s/step of each method, to pick caps
    python benchmarks/bench_quality.py --time-cap 780 --max-steps okd=200 gkd=300 minillm=300
    python benchmarks/bench_quality.py --report-only --target 7.6 7.3  # other targets, same runs

Outputs: `<out>/bench_quality_<setup>.json` (curves, per-target results, settings, commands),
`.md` (the table) and `.png` (validation loss against training wall time, one line per method).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("okd", "gkd", "minillm")
COLORS = {"okd": "tab:red", "gkd": "tab:blue", "minillm": "tab:green"}


def say(msg: str) -> None:
    print(f"[bench_quality] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- child: okd train, timed

def child_main(timing_path: str, threads: int, eval_at_start: bool, argv: list[str]) -> int:
    """`okd train ARGV` with the trainer's `evaluate` and loop start timed into `timing_path` (JSONL).

    eval_at_start: also validate the initial student, before the loop's clock starts (the trainer's
    `validate_at_start` hook, which distillm uses for its reference loss): the curve's step-0 point.
    """
    import torch

    torch.set_num_threads(threads)
    import okd
    import okd.train.trainer as trainer

    if eval_at_start:
        from okd.methods.base import Method

        Method.validate_at_start = True  # the base class's on_validation does nothing with the result

    out = open(timing_path, "a")

    def emit(**record) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    emit(kind="start", okd_file=okd.__file__, threads=torch.get_num_threads(), pid=os.getpid())
    evaluate = trainer.evaluate

    def timed_evaluate(*args, **kwargs):
        w0, c0 = time.perf_counter(), time.process_time()
        result = evaluate(*args, **kwargs)
        emit(kind="eval", t=w0, cpu_at=c0, wall=time.perf_counter() - w0, cpu=time.process_time() - c0,
             valid_loss=result.get("valid_loss"))
        return result

    trainer.evaluate = timed_evaluate
    interrupt = getattr(trainer, "GracefulInterrupt", None)
    if interrupt is not None:  # entered right after the loop's clock starts
        enter = interrupt.__enter__

        def timed_enter(self):
            emit(kind="loop_start", t=time.perf_counter(), cpu_at=time.process_time())
            return enter(self)

        interrupt.__enter__ = timed_enter
    from okd.cli import main

    return main(argv)


# ----------------------------------------------------------------------------- reading a run

def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by the kill
    return rows


def curve_of(run_dir: Path) -> dict:
    """The (step, train wall s, train CPU s, valid_loss) points of one `okd train` run."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    timing = read_jsonl(run_dir / "bench_timing.jsonl")
    starts = [t for t in timing if t["kind"] == "loop_start"]
    loop = starts[-1] if starts else None
    evals = [t for t in timing if t["kind"] == "eval" and (loop is None or t["t"] >= loop["t"])]
    before = [t for t in timing if t["kind"] == "eval" and loop is not None and t["t"] < loop["t"]]
    points = [r for r in records if "valid_loss" in r]
    step_times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(records, records[1:])
                  if b["step"] == a["step"] + 1 and "valid_loss" not in a]
    typical = statistics.median(step_times) if step_times else 0.0
    timed = len(evals) >= len(points) and all(
        e["valid_loss"] is not None and math.isclose(e["valid_loss"], p["valid_loss"], rel_tol=1e-9)
        for e, p in zip(evals, points))
    curve, eval_wall, eval_cpu = [], 0.0, 0.0
    if before and before[-1]["valid_loss"] is not None:  # the initial student (--eval-at-start)
        curve.append({"step": 0, "valid_loss": before[-1]["valid_loss"], "elapsed_s": 0.0, "train_s": 0.0,
                      "train_cpu_s": 0.0, "eval_s": before[-1]["wall"]})
    by_step = {r["step"]: r for r in records}
    for i, p in enumerate(points):
        row = {"step": p["step"], "valid_loss": p["valid_loss"], "elapsed_s": p["elapsed_s"]}
        if timed:
            row["train_s"] = p["elapsed_s"] - eval_wall
            if loop is not None:
                row["train_cpu_s"] = evals[i]["cpu_at"] - loop["cpu_at"] - eval_cpu
                row["train_s_loop_clock"] = evals[i]["t"] - loop["t"] - eval_wall  # cross-check
            eval_wall += evals[i]["wall"]
            eval_cpu += evals[i]["cpu"]
            row["eval_s"] = evals[i]["wall"]
        else:  # estimate: the step after an evaluation took (its own time + the evaluation)
            row["train_s"] = p["elapsed_s"] - eval_wall
            nxt = by_step.get(p["step"] + 1)
            if nxt is not None:
                eval_wall += max(0.0, nxt["elapsed_s"] - p["elapsed_s"] - typical)
        curve.append(row)
    last = records[-1] if records else {}
    return {"points": curve, "timing": "measured" if timed else "estimated from step times",
            "steps": last.get("step", 0), "elapsed_s": last.get("elapsed_s", 0.0),
            "eval_wall_s": round(eval_wall + sum(t["wall"] for t in before), 2),
            "eval_cpu_s": round(eval_cpu + sum(t["cpu"] for t in before), 2) if timed else None,
            "median_step_s": round(typical, 3), "generated_tokens": last.get("generated_tokens"),
            "tokens": last.get("tokens", 0)}


# ----------------------------------------------------------------------------- running

def snapshot_code(work: Path) -> tuple[Path, dict]:
    """Copy okd/ into work/code/ (children import it) and describe what was copied."""
    dest = work / "code"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ROOT / "okd", dest / "okd", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for f in sorted((dest / "okd").rglob("*.py")):
        digest.update(str(f.relative_to(dest)).encode())
        digest.update(f.read_bytes())

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return dest, {"commit": git("rev-parse", "HEAD"), "okd_sha256": digest.hexdigest()[:16],
                  "uncommitted": git("diff", "--stat", "HEAD", "--", "okd").splitlines()}


def child_env(args, code: Path | None) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(args.threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.setdefault("HF_HUB_OFFLINE", "1")
    if code is not None:
        env["PYTHONPATH"] = str(code) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def train_phase(name: str, run_dir: Path, config: Path, overrides: list[str], cap_s: float | None, args,
                code: Path | None, eval_at_start: bool = True) -> dict:
    """One `okd train` run; stopped (SIGTERM) at the first evaluation after `cap_s` training seconds."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    argv = ["train", "-c", str(config), *overrides, f"output_dir={run_dir}", "--quiet"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(run_dir / "bench_timing.jsonl"),
           "--threads", str(args.threads), *(["--eval-at-start"] if eval_at_start else []), "--", *argv]
    say(f"{name}: okd {' '.join(argv)}" + (f"  (cap {cap_s:.0f} s of training)" if cap_s else ""))
    t0 = time.time()
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(args, code), cwd=ROOT,
                                start_new_session=True)
        stopped, last_report = None, 0.0
        while proc.poll() is None:
            time.sleep(args.poll)
            if cap_s is None:
                continue
            pts = curve_of(run_dir)["points"]
            if pts and time.time() - last_report > 60:
                last_report = time.time()
                p = pts[-1]
                say(f"  {name}: step {p['step']}, train {p['train_s']:.0f} s, valid_loss {p['valid_loss']:.4f}")
            if pts and pts[-1]["train_s"] >= cap_s:
                stopped = f"time cap: {pts[-1]['train_s']:.0f} s of training at step {pts[-1]['step']}"
                os.killpg(proc.pid, signal.SIGTERM)  # the run's own process group (start_new_session)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
    rc = proc.returncode
    if stopped is None and rc != 0:
        tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{name}: okd train failed (exit {rc}):\n" + "\n".join(tail))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # optimizer states: not needed, ~1 GB
    result = curve_of(run_dir)
    result.update({"name": name, "command": "okd " + " ".join(argv), "stopped_by": stopped or "step cap",
                   "process_wall_s": round(time.time() - t0, 1)})
    (run_dir / "bench_run.json").write_text(json.dumps(result, indent=1))
    p = result["points"][-1] if result["points"] else {}
    say(f"{name}: {result['steps']} steps, {p.get('train_s', 0):.0f} s training "
        f"({result['eval_wall_s']:.0f} s validation excluded), valid_loss {p.get('valid_loss', float('nan')):.4f}, "
        f"stopped by {result['stopped_by']}, process {result['process_wall_s']:.0f} s")
    return result


def join_phases(phases: list[dict]) -> list[dict]:
    """Concatenate phase curves: times and steps of later phases are offset by the earlier phases' totals."""
    joined, off_s, off_cpu, off_step = [], 0.0, 0.0, 0
    for i, ph in enumerate(phases):
        for p in ph["points"]:
            q = dict(p, phase=ph["name"], step=p["step"] + off_step, train_s=p["train_s"] + off_s)
            if "train_cpu_s" in p:
                q["train_cpu_s"] = p["train_cpu_s"] + off_cpu
            if "train_s_loop_clock" in p:
                q["train_s_loop_clock"] = p["train_s_loop_clock"] + off_s
            joined.append(q)
        if ph["points"]:
            last = ph["points"][-1]
            off_s += last["train_s"]
            off_cpu += last.get("train_cpu_s", 0.0)
            off_step += last["step"]
    return joined


# ----------------------------------------------------------------------------- setups

def setup_real(args, work: Path, code: Path | None) -> dict:
    student = Path(args.work or ROOT / "runs" / "bench-quality") / f"student-init-{args.layers}l"
    if not (student / "config.json").is_file():
        cmd = [sys.executable, "-m", "okd", "student", "init", "--from", "smollm2-135m-instruct",
               "--layers", str(args.layers), "-o", str(student), "--force"]
        say("student: " + " ".join(cmd[2:]))
        subprocess.run(cmd, check=True, env=child_env(args, code), cwd=ROOT)
    return {"setup": "smollm2", "teacher": "smollm2-135m-instruct", "student": str(student), "data": "sharegpt",
            "template": "chat", "max_length": args.max_length or 256, "lr": args.lr or 2e-4,
            "describe": f"teacher SmolLM2-135M-Instruct (preset), student = {args.layers} of its 30 layers "
                        f"(uniform), ShareGPT first turns (preset sharegpt), chat template"}


def setup_tiny(args, work: Path, code: Path | None) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from okd.demo import prepare_tiny

    plan = prepare_tiny(work / "tiny-setup")  # tiny teacher fine-tuned on a synthetic task, cached
    return {"setup": "tiny", "teacher": plan.teacher, "student": plan.student, "data": plan.data,
            "template": plan.template, "max_length": args.max_length or plan.max_length, "lr": args.lr or plan.lr,
            "describe": "tiny random llama student, tiny llama teacher fine-tuned on the synthetic task of okd demo --tiny"}


def base_config(setup: dict, args, precision: str) -> dict:
    return {
        "teacher": {"path": setup["teacher"]},
        "student": {"path": setup["student"]},
        "data": {"train": setup["data"], "valid": setup["data"], "template": setup["template"],
                 "max_length": setup["max_length"], "valid_limit": args.valid_limit},
        "method": {"max_new_tokens": args.max_new_tokens, "lmbda": 0.5, "beta": 0.5},
        "train": {"batch_size": args.batch_size, "lr": setup["lr"], "warmup_steps": args.warmup,
                  "eval_every": args.eval_every, "save_every": 0, "log_every": 1, "keep_checkpoints": 1,
                  "mixed_precision": precision, "seed": args.seed},
    }


def parse_caps(items: list[str] | None, default: int) -> dict[str, int]:
    caps = {m: default for m in METHODS}
    for item in items or []:
        if "=" in item:
            k, v = item.split("=", 1)
            if k not in caps:
                raise SystemExit(f"--max-steps {item!r}: unknown method {k!r} (one of {', '.join(METHODS)})")
            caps[k] = int(v)
        else:
            caps = {m: int(item) for m in METHODS}
    return caps


def run_methods(args, setup: dict, work: Path, code: Path | None, precision: str) -> dict:
    import yaml

    config = work / "base.yaml"
    config.write_text(yaml.safe_dump(base_config(setup, args, precision), sort_keys=False))
    caps = parse_caps(args.max_steps, args.probe or args.default_steps)
    cap_s = None if args.probe else args.time_cap
    results = {}
    for m in args.methods:
        phases = []
        if m == "minillm":
            sft_steps = args.probe or args.sft_steps
            ph = train_phase("minillm: sft phase", work / "minillm-sft", config,
                             ["method.name=sft", f"train.max_steps={sft_steps}"], None, args, code)
            phases.append(ph)
            left = None if cap_s is None else max(cap_s - ph["points"][-1]["train_s"], 1.0)
            phases.append(train_phase("minillm", work / "minillm", config,
                                      ["method.name=minillm", f"student.path={work / 'minillm-sft' / 'student'}",
                                       f"train.max_steps={caps[m]}"], left, args, code, eval_at_start=False))
        else:
            phases.append(train_phase(m, work / m, config, [f"method.name={m}", f"train.max_steps={caps[m]}"],
                                      cap_s, args, code))
        results[m] = {"phases": phases, "curve": join_phases(phases)}
    return results


def load_results(args, work: Path) -> dict:
    results = {}
    for m in args.methods:
        names = [("minillm: sft phase", "minillm-sft"), ("minillm", "minillm")] if m == "minillm" else [(m, m)]
        phases = []
        for _name, d in names:
            f = work / d / "bench_run.json"
            if not f.is_file():
                raise SystemExit(f"--report-only: {f} is missing; run the benchmark first")
            phases.append(json.loads(f.read_text()))
        results[m] = {"phases": phases, "curve": join_phases(phases)}
    return results


# ----------------------------------------------------------------------------- report

def default_targets(results: dict) -> list[float]:
    """Each method's best validation loss rounded up to 0.01 (so the target of the method that got least
    far is reached by every method, and the best method's only by itself), plus an easier one halfway
    between the least-far method's best and the typical first validation loss (step 0 when measured)."""
    bests = [min(p["valid_loss"] for p in r["curve"]) for r in results.values() if r["curve"]]
    firsts = [r["curve"][0]["valid_loss"] for r in results.values() if r["curve"]]
    if not bests:
        return []
    targets = {math.ceil(b * 100) / 100 for b in bests}
    hard = max(targets)
    gap = statistics.median(firsts) - hard
    if gap > 0.02:
        targets.add(round(hard + 0.5 * gap, 2))
    return sorted(targets, reverse=True)


def time_to(curve: list[dict], target: float) -> dict | None:
    for p in curve:
        if p["valid_loss"] <= target:
            return p
    return None


def summarise(results: dict, targets: list[float]) -> dict:
    table = {}
    for m, r in results.items():
        c = r["curve"]
        last = c[-1] if c else {}
        best = min(c, key=lambda p: p["valid_loss"]) if c else {}
        first = next((p for p in c if p["step"] > 0), None)
        row = {"steps": last.get("step", 0), "train_s": last.get("train_s"), "train_cpu_s": last.get("train_cpu_s"),
               "eval_s": sum(ph["eval_wall_s"] for ph in r["phases"]),
               "s_per_step": (last["train_s"] / last["step"]) if c and last["step"] else None,
               "initial_valid_loss": c[0]["valid_loss"] if c and c[0]["step"] == 0 else None,
               "first_valid_loss": first["valid_loss"] if first else None,
               "first_eval_step": first["step"] if first else None,
               "best_valid_loss": best.get("valid_loss"), "final_valid_loss": last.get("valid_loss"),
               "stopped_by": r["phases"][-1]["stopped_by"], "timing": sorted({ph["timing"] for ph in r["phases"]}),
               "phases": [{"name": ph["name"], "steps": ph["steps"],
                           "train_s": ph["points"][-1]["train_s"] if ph["points"] else None,
                           "median_step_s": ph["median_step_s"]} for ph in r["phases"]],
               "targets": {}}
        for t in targets:
            p = time_to(c, t)
            row["targets"][f"{t:g}"] = None if p is None else {
                "train_s": round(p["train_s"], 1), "train_cpu_s": round(p["train_cpu_s"], 1) if "train_cpu_s" in p else None,
                "step": p["step"], "valid_loss": p["valid_loss"], "phase": p.get("phase")}
        table[m] = row
    return table


def fmt_s(s) -> str:
    if s is None:
        return "-"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def markdown(summary: dict, targets: list[float], meta: dict) -> str:
    lines = [f"# Time to quality ({meta['setup']})", "",
             f"{meta['describe']}; batch {meta['batch_size']}, max_length {meta['max_length']}, lr {meta['lr']:g} "
             f"(warm-up {meta['warmup']}, linear decay to the step cap), {meta['precision']}, seed {meta['seed']}, "
             f"{meta['threads']} thread(s); validation: CE on {meta['valid_limit']} valid examples every "
             f"{meta['eval_every']} steps; time cap {fmt_s(meta['time_cap'])} of training per method.", "",
             "Time = training wall time (validation excluded) until the first validation at or below the target; "
             "CPU time in brackets; then the step.", ""]
    head = ["method", "steps", "train time [CPU]", "s/step", "valid loss: start → best (final)"] + \
        [f"to ≤ {t:g}" for t in targets]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in summary.items():
        cells = [m + (f" (incl. {r['phases'][0]['steps']} sft steps)" if len(r["phases"]) > 1 else ""),
                 str(r["steps"]), fmt_s(r["train_s"]) + (f" [{fmt_s(r['train_cpu_s'])}]" if r["train_cpu_s"] else ""),
                 f"{r['s_per_step']:.2f}" if r["s_per_step"] else "-",
                 (f"{r['initial_valid_loss']:.3f}" if r["initial_valid_loss"] is not None else
                  f"{r['first_valid_loss']:.3f} (step {r['first_eval_step']})")
                 + f" → {r['best_valid_loss']:.3f} ({r['final_valid_loss']:.3f})"]
        for t in targets:
            hit = r["targets"][f"{t:g}"]
            if hit is None:
                cells.append("not reached")
            else:
                cpu = f" [{fmt_s(hit['train_cpu_s'])} CPU]" if hit["train_cpu_s"] is not None else ""
                sft = " (in sft phase)" if hit.get("phase") == "minillm: sft phase" else ""
                cells.append(f"{fmt_s(hit['train_s'])}{cpu}, step {hit['step']}{sft}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for m, r in summary.items():
        if len(r["phases"]) > 1:
            ph = r["phases"]
            lines.append(f"{m}: sft phase {ph[0]['steps']} steps in {fmt_s(ph[0]['train_s'])}, then {ph[1]['steps']} "
                         f"{m} steps in {fmt_s(ph[1]['train_s'])} (median {ph[1]['median_step_s']:.2f} s/step).")
    return "\n".join(lines) + "\n"


def plot(results: dict, targets: list[float], path: Path, title: str) -> None:
    """Validation loss against training wall time (left) and training CPU time (right, when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {m: r["curve"] for m, r in results.items() if r["curve"]}
    has_cpu = curves and all("train_cpu_s" in p for c in curves.values() for p in c)
    longest = max((p["train_s"] for c in curves.values() for p in c), default=0.0)
    unit, div = ("min", 60.0) if longest >= 120 else ("s", 1.0)
    fig, axes = plt.subplots(1, 2 if has_cpu else 1, figsize=(13 if has_cpu else 8, 5), sharey=True, squeeze=False)
    for ax, key, what in zip(axes[0], ("train_s", "train_cpu_s"), ("wall", "CPU")):
        for m, c in curves.items():
            color = COLORS.get(m)
            xs, ys = [p[key] / div for p in c], [p["valid_loss"] for p in c]
            ax.plot(xs, ys, marker=".", color=color, label=m, clip_on=True)
            sft = [i for i, p in enumerate(c) if p.get("phase") == "minillm: sft phase"]
            if sft:
                k = sft[-1]
                ax.plot(xs[:k + 1], ys[:k + 1], color=color, linewidth=5, alpha=0.3, label=f"{m}: its sft phase")
                ax.annotate("sft → minillm", (xs[k], ys[k]), textcoords="offset points", xytext=(4, 8),
                            fontsize=8, color=color)
        for t in targets:
            ax.axhline(t, color="gray", linestyle=":", linewidth=1)
            ax.annotate(f"{t:g}", (0, t), textcoords="offset points", xytext=(2, 2), fontsize=8, color="gray")
        ax.set_xlabel(f"training {what} time, validation excluded ({unit})")
        ax.grid(alpha=0.3)
        ax.legend(loc="center right")
    # the untrained student's loss squeezes the rest of the curves: cut the axis just above the first evaluations
    firsts = [next(p["valid_loss"] for p in c if p["step"] > 0) for c in curves.values() if any(p["step"] for p in c)]
    highest = max((p["valid_loss"] for c in curves.values() for p in c), default=0.0)
    lowest = min((p["valid_loss"] for c in curves.values() for p in c), default=0.0)
    if firsts and highest > statistics.median(firsts) + 0.5:
        top = statistics.median(firsts) + 0.5
        axes[0][0].set_ylim(lowest - 0.05 * (top - lowest), top)
        axes[0][0].annotate(f"axis cut at {top:.1f} (initial student {curves[next(iter(curves))][0]['valid_loss']:.2f})",
                            (0.99, 0.99), xycoords="axes fraction", ha="right", va="top", fontsize=8, color="gray")
    axes[0][0].set_ylabel("validation loss (student CE on valid responses)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:  # internal: bench_quality.py --child TIMING --threads N [--eval-at-start] -- okd args
        sep = argv.index("--")
        return child_main(argv[1], int(argv[3]), "--eval-at-start" in argv[:sep], argv[sep + 1:])

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models and data (smoke test, about a minute)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--time-cap", type=float,
                   help="training seconds (validation excluded) per method, minillm's sft phase included; "
                        "a run stops at the first validation after it (default 780; tiny 30)")
    p.add_argument("--max-steps", nargs="+", metavar="[METHOD=]N",
                   help="step cap (train.max_steps; also where the linear lr decay ends), one for all or per "
                        "method, e.g. okd=120 gkd=200 minillm=150 (default 100, tiny 40; minillm's excludes its sft "
                        "steps)")
    p.add_argument("--sft-steps", type=int, help="minillm's sft phase (default 40, tiny 20)")
    p.add_argument("--probe", type=int, metavar="N",
                   help="only measure: every method (and minillm's sft phase) trains N steps without a time cap")
    p.add_argument("--target", type=float, nargs="+",
                   help="target validation losses (default: derived from the curves, see default_targets)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--valid-limit", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, help="default 256 (tiny: 128)")
    p.add_argument("--lr", type=float, help="student lr (default 2e-4 as configs/compare-smollm2.yaml; tiny 3e-3)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps (default 3, as compare-smollm2)")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="new tokens per on-policy sample, gkd and minillm (default 32, as compare-smollm2)")
    p.add_argument("--layers", type=int, default=8, help="student layers kept from the teacher's 30 (default 8)")
    p.add_argument("--precision", choices=["auto", "bf16", "no"], default="auto",
                   help="train.mixed_precision; auto: bf16 where the CPU/GPU multiplies bf16 natively, as okd demo")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process (default 1)")
    p.add_argument("--work", help="run directories (default runs/bench-quality[-tiny])")
    p.add_argument("--out", help="results directory (default benchmarks/results; tiny: the work directory)")
    p.add_argument("--no-snapshot", action="store_true", help="run the working tree's okd, not a copy")
    p.add_argument("--report-only", action="store_true", help="redo table and plot from the runs in --work")
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.time_cap is None:
        args.time_cap = 30.0 if args.tiny else 780.0
    if args.sft_steps is None:
        args.sft_steps = 20 if args.tiny else 40
    args.default_steps = 40 if args.tiny else 100

    setup_name = "tiny" if args.tiny else "smollm2"
    work = Path(args.work or ROOT / "runs" / f"bench-quality{'-tiny' if args.tiny else ''}")
    if args.probe:
        work = work / "probe"
    out = Path(args.out) if args.out else (work if args.tiny or args.probe else ROOT / "benchmarks" / "results")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_quality_{setup_name}{'_probe' if args.probe else ''}"

    if args.report_only:
        prior = json.loads(stem.with_suffix(".json").read_text())
        meta, results = prior["settings"], load_results(args, work)
    else:
        t_start = time.time()
        code, provenance = (None, {}) if args.no_snapshot else snapshot_code(work)
        sys.path.insert(0, str(ROOT))
        setup = setup_tiny(args, work, code) if args.tiny else setup_real(args, work, code)
        if args.precision == "auto":
            from okd.precision import bf16_is_fast
            precision = "bf16" if bf16_is_fast() else "no"
        else:
            precision = args.precision
        results = run_methods(args, setup, work, code, precision)
        meta = {"setup": setup_name, "describe": setup["describe"], "teacher": setup["teacher"],
                "student": setup["student"], "data": setup["data"], "batch_size": args.batch_size,
                "max_length": setup["max_length"], "lr": setup["lr"], "warmup": args.warmup,
                "precision": "bf16 autocast" if precision == "bf16" else "fp32", "seed": args.seed,
                "threads": args.threads, "valid_limit": args.valid_limit, "eval_every": args.eval_every,
                "time_cap": None if args.probe else args.time_cap,
                "max_steps": parse_caps(args.max_steps, args.probe or args.default_steps),
                "sft_steps": args.probe or args.sft_steps, "max_new_tokens": args.max_new_tokens,
                "lmbda": 0.5, "beta": 0.5, "code": provenance, "machine": machine(),
                "command": "python benchmarks/bench_quality.py " + " ".join(argv),
                "benchmark_wall_s": round(time.time() - t_start, 1)}
    targets = sorted(args.target, reverse=True) if args.target else default_targets(results)
    summary = summarise(results, targets)
    stem.with_suffix(".json").write_text(json.dumps(
        {"settings": meta, "targets": targets, "summary": summary,
         "curves": {m: r["curve"] for m, r in results.items()},
         "runs": {m: [{k: v for k, v in ph.items() if k != "points"} for ph in r["phases"]] for m, r in results.items()}},
        indent=1))
    text = markdown(summary, targets, meta)
    stem.with_suffix(".md").write_text(text)
    plot(results, targets, stem.with_suffix(".png"),
         f"Time to quality: {meta['setup']}, batch {meta['batch_size']}, {meta['precision']}, {meta['threads']} thread(s)")
    print(text)
    say(f"wrote {stem}.json, .md and .png")
    return 0


def machine() -> str:
    import platform

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.system()}"


if __name__ == "__main__":
    sys.exit(main())
