"""The GPU benchmark behind benchmarks/gpu/run.sh (issue 14: is the GPU step still bound by the host?).

Sections, in this order, each written to the results as soon as it is measured:
  env      versions, device, commit
  matmul   dense matmul FLOP/s in this run (bf16 8192^3 on CUDA), the MFU reference
  ops      aten ops and host-device syncs of one eager step per method (benchmarks/count_ops.py)
  steps    okd's training step (okd.train's setup and train_step): s/step, tokens/s, MFU, peak memory,
           per method (sft, fkd, okd, gkd λ=0.5) and shape (4x256, 16x512, 32x1024)
  trl      TRL's GKDTrainer at the same shapes (skipped where trl is not installed)
  sampler  sampling tokens/s: okd's generate vs Hugging Face generate's defaults; MiniLLM's sampler
A time budget (`--budget`, seconds) guards the whole: a cell whose estimated cost (from the same
method at the previous shape, scaled by tokens) does not fit in what is left is skipped, and the skip is
recorded with its reason. The sampler runs after the first shape. Results: bench.json + bench.md in
`--results-dir`.

    python benchmarks/gpu/bench.py --device cuda                 # what run.sh runs on the GPU
    python benchmarks/gpu/bench.py --device cpu --tiny --results-dir /tmp/r   # the CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import assets  # noqa: E402
import report as md  # noqa: E402

SECTIONS = ("env", "matmul", "ops", "steps", "trl", "sampler")
METHODS = ("sft", "fkd", "okd", "gkd")
PROFILES = {  # shapes, warm-up and timed steps, sampler batch/prompt/new tokens/repeats, the smallest cell's cost
    "gpu": dict(shapes="4x256,16x512,32x1024", warmup=3, steps=8, sampler=(16, 128, 128, 2), min_cell_s=15,
                sampler_s=150),
    "tiny": dict(shapes="2x32,4x64,4x128", warmup=1, steps=2, sampler=(4, 16, 8, 1), min_cell_s=0.5, sampler_s=3),
}


class Budget:
    """Seconds left of `total`; what cells cost, to estimate the next shape's."""

    def __init__(self, total: float):
        self.start, self.total, self.cost = time.perf_counter(), total, {}

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.start)

    def estimate(self, key: str, tokens: int) -> float | None:
        """The same cell at the last smaller shape, scaled by batch x length (None: not measured yet)."""
        if key not in self.cost:
            return None
        seconds, before = self.cost[key]
        return 1.1 * seconds * tokens / before


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        b, length = part.lower().split("x")
        out.append((int(b), int(length)))
    return out


def env_info(args) -> dict:
    import torch
    import transformers

    info = {"device": args.device, "tiny": args.tiny, "budget_s": args.budget, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import trl

        info["trl"] = trl.__version__
    except Exception as e:  # noqa: BLE001 - any import failure means: no TRL rows
        info["trl"] = f"not available ({type(e).__name__})"
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    else:
        info["cpu"] = platform.processor() or platform.machine()
    try:
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


class Report:
    """The results so far; `save()` rewrites bench.json and bench.md (after every cell)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict = {s: [] for s in SECTIONS}
        self.data.update(env={}, matmul={}, skipped=[], errors=[])

    def save(self) -> None:
        (self.dir / "bench.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.dir / "bench.md").write_text(md.markdown(self.data))

    def skip(self, section: str, what: str, reason: str) -> None:
        self.data["skipped"].append({"section": section, "what": what, "reason": reason})
        print(f"  skipped {section} {what}: {reason}", flush=True)
        self.save()

    def guarded(self, section: str, what: str, fn):
        """fn() -> row(s) appended to `section`; an exception is recorded and the run goes on."""
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - one failing cell must not lose the others
            self.data["errors"].append({"section": section, "what": what, "error": f"{type(e).__name__}: {e}",
                                        "traceback": traceback.format_exc()[-3000:]})
            print(f"  {section} {what}: FAILED {type(e).__name__}: {e}", flush=True)
            self.save()
            return None, time.perf_counter() - t0
        rows = out if isinstance(out, list) else [out]
        self.data[section].extend(rows)
        print(f"  {section} {what}: {json.dumps(rows)[:400]} ({time.perf_counter() - t0:.1f} s)", flush=True)
        self.save()
        return out, time.perf_counter() - t0


def prepare(args, work: Path, shapes, profile) -> tuple[dict, dict, str]:
    """Models, a data file per max_length, and one for the sampler."""
    from transformers import AutoTokenizer

    models = assets.models("tiny" if args.tiny else "smollm2", work, args.shape_dir)
    tok = AutoTokenizer.from_pretrained(models["student"])
    n_rows = max(b for b, _ in shapes) * (profile["warmup"] + profile["steps"] + 6)
    data = {length: assets.data(tok, length, n_rows, work / f"data-{length}.jsonl")
            for length in sorted({length for _, length in shapes})}
    batch, prompt_len, _, _ = profile["sampler"]
    sampler_data = assets.data(tok, 4 * prompt_len, batch, work / "data-sampler.jsonl", seed=1)
    return models, data, sampler_data


def step_cells(rep: Report, budget: Budget, args, ctx, shape, index: int) -> None:
    """Every method's step at `shape`, then TRL's, each if its estimate fits the budget."""
    import cells

    models, data, profile, peak = ctx["models"], ctx["data"], ctx["profile"], ctx["peak"]
    label, n = f"{shape[0]}x{shape[1]}", shape[0] * shape[1]
    jobs = [(m, lambda m=m: cells.okd_cell(models, data[shape[1]], m, shape, device=args.device,
                                           warmup=profile["warmup"], steps=profile["steps"],
                                           out=ctx["work"] / f"run-{m}-{label}", peak_flops=peak, overrides=args.set))
            for m in args.methods]
    for lmbda in args.trl_lambdas:
        jobs.append((f"trl λ={lmbda}", lambda lmbda=lmbda: cells.trl_cell(
            models, data[shape[1]], lmbda, shape, device=args.device, warmup=profile["warmup"], steps=profile["steps"],
            out=ctx["work"] / f"trl-{lmbda}-{label}")))
    for name, fn in jobs:
        section = "trl" if name.startswith("trl") else "steps"
        if section in args.skip or (section == "trl" and ctx["no_trl"]):
            rep.skip(section, f"{name} {label}", f"--skip {section}" if section in args.skip else ctx["no_trl"])
            continue
        estimate = budget.estimate(name, n)
        need = estimate if estimate is not None else profile["min_cell_s"]
        if need > budget.left():
            rep.skip(section, f"{name} {label}", f"time budget: needs ~{need:.1f} s, {budget.left():.1f} s left")
            continue
        row, seconds = rep.guarded(section, f"{name} {label}", fn)
        if row is not None:
            budget.cost[name] = (seconds, n)


def compile_limits() -> None:
    """One process runs many models and shapes (a training run has one of each): raise dynamo's
    recompilation limits, so that late cells are not silently left uncompiled."""
    import torch._dynamo

    for name, value in (("recompile_limit", 64), ("cache_size_limit", 64), ("accumulated_recompile_limit", 1024),
                        ("accumulated_cache_size_limit", 1024)):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, value)


def run(args) -> Report:
    import torch

    import cells

    compile_limits()

    profile = PROFILES["tiny" if args.tiny else "gpu"]
    shapes = parse_shapes(args.shapes or profile["shapes"])
    budget = Budget(args.budget)
    rep = Report(Path(args.results_dir))
    rep.data["env"] = env_info(args)
    rep.save()
    work = Path(args.work or tempfile.mkdtemp(prefix="okd-gpu-bench-"))
    models, data, sampler_data = prepare(args, work, shapes, profile)
    torch.set_num_threads(args.threads)
    seconds = 3.0 if args.device == "cuda" else (0.3 if args.tiny else 2.0)
    peak = cells.bench_step.matmul_flops(args.threads, seconds=seconds, device=args.device,
                                         precision="bf16" if args.device == "cuda" else "fp32")
    rep.data["matmul"] = {"tflops_per_s": round(peak / 1e12, 2), "dtype": "bf16" if args.device == "cuda" else "fp32",
                          "size": 8192 if args.device == "cuda" else 2048,
                          "note": "GPU: CUDA-event timed; CPU: per CPU-second of one thread"}
    rep.save()
    print(f"matmul {peak / 1e12:.2f} TFLOP/s; {budget.left():.0f} s of budget left", flush=True)
    for m in args.methods:  # ops and syncs at the smallest shape, eager
        what = f"{m} {shapes[0][0]}x{shapes[0][1]}"
        if "ops" in args.skip:
            rep.skip("ops", what, "--skip ops")
            continue
        if budget.left() < profile["min_cell_s"]:
            rep.skip("ops", what, f"time budget: {budget.left():.0f} s left")
            continue
        rep.guarded("ops", what, lambda m=m: cells.count_cell(models, data[shapes[0][1]], m, shapes[0],
                                                             out=work / f"count-{m}", overrides=args.set))
    no_trl = None if "not available" not in rep.data["env"]["trl"] else "trl not installed (carry its wheel in .whl/)"
    ctx = dict(models=models, data=data, profile=profile, peak=peak, work=work, no_trl=no_trl)
    for i, shape in enumerate(shapes):
        step_cells(rep, budget, args, ctx, shape, i)
        if i == 0:
            batch, prompt_len, new_tokens, repeats = profile["sampler"]
            if "sampler" in args.skip:
                rep.skip("sampler", "all", "--skip sampler")
            elif budget.left() < profile["sampler_s"]:
                rep.skip("sampler", "all", f"time budget: needs ~{profile['sampler_s']} s, {budget.left():.0f} s left")
            else:
                rep.guarded("sampler", f"batch {batch}", lambda: cells.sampler_cell(
                    models, sampler_data, device=args.device, batch=batch, prompt_len=prompt_len,
                    new_tokens=new_tokens, repeats=repeats))
    rep.data["env"]["elapsed_s"] = round(time.perf_counter() - budget.start, 1)
    rep.save()
    return rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny random models and shapes (the CPU smoke run)")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds for all sections (cells that would not fit are skipped)")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results" / "gpu_latest"))
    p.add_argument("--shapes", help="comma-separated BxL, e.g. 4x256,16x512 (default: the profile's)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--trl-lambdas", nargs="*", type=float, default=[0.5], help="TRL GKDTrainer rows (λ values)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="okd config overrides for every okd cell")
    p.add_argument("--skip", nargs="*", default=[], choices=["ops", "steps", "trl", "sampler"],
                   help="sections not to run (recorded as skipped)")
    p.add_argument("--shape-dir", help="a directory with SmolLM2's config.json + tokenizer (default: generated)")
    p.add_argument("--work", help="scratch directory (default: a new temporary one)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device here (use --device cpu --tiny for the smoke run)", file=sys.stderr)
            return 2
    rep = run(args)
    print(f"\nresults: {rep.dir / 'bench.json'}, {rep.dir / 'bench.md'}")
    print((rep.dir / "bench.md").read_text())
    return 1 if rep.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
