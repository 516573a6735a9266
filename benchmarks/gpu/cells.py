"""The measurements of benchmarks/gpu/bench.py, one function per kind of cell.

- `okd_cell`: okd's own training step, as `okd train` runs it (okd.train.setup.setup, then per step
  okd.train.trainer.train_step, the finiteness check, the optimizer and schedule steps), timed with the
  device synchronised around each step; tokens, scored tokens and generated tokens per step; dense
  matmul FLOPs per step (bench_step's count; gkd adds the sampler's forward) for the MFU.
- `count_cell`: ops and syncs of one such step (benchmarks/count_ops.py), eager (train.compile=off).
- `trl_cell`: TRL's GKDTrainer step (bench_step.worker_trl) on the same data and shape.
- `sampler_cell`: sampling tokens/s, okd.generation.generate against Hugging Face `generate` with its
  defaults (dynamic cache, no compile), and MiniLLM's two-model sampler before/after (per-token EOS
  check + dynamic cache vs. every-8-tokens check + static cache, compiled decode on CUDA).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

import bench_step  # noqa: E402  (benchmarks/ on the path)
from count_ops import count_step  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def okd_run(models: dict, data: str, method: str, shape: tuple[int, int], out: Path, overrides=()):
    """okd.train.setup's Run for `method` at batch x max_length `shape` (random models, the data given)."""
    from okd.config import build_config
    from okd.train.setup import setup

    batch, length = shape
    cfg = build_config({}, [f"student.path={models['student']}", f"teacher.path={models['teacher']}",
                            f"data.train={data}", f"data.template={models['template']}", f"method.name={method}",
                            f"data.max_length={length}", f"train.batch_size={batch}", "train.max_steps=1000",
                            "method.lmbda=0.5", "method.beta=0.0", "method.max_new_tokens=64",
                            f"output_dir={out}", *overrides])
    return setup(cfg, resume=False, progress=False)


def full_step(run) -> tuple[int, int]:
    """One optimizer step as the trainer's loop takes it (no logging, validation or checkpoint)."""
    from okd.train import trainer

    totals, grad_norms, tokens, generated = trainer.train_step(run)
    trainer.non_finite(run, totals, grad_norms)
    for key in ("online", "student"):
        if key in run.optimizers:
            run.strategy.step(key)
            run.schedulers[key].step()
    run.state.step += 1
    return tokens, generated


def record_prepared(run) -> list:
    """Keeps each prepared micro-batch's labels, read after the step (no device read inside the timing)."""
    seen: list = []
    prepare = run.method.prepare

    def recording(batch, step):
        out = prepare(batch, step)
        seen.append(out["labels"])
        return out

    run.method.prepare = recording
    return seen


def warm_sampler(run, n: int = 2) -> None:
    """On-policy methods: sample for the first `n` batches once, so the sampler's compilation is not timed."""
    method = run.method
    if not hasattr(method, "student_batch"):
        return
    for i in range(n):
        batch = run.micro_batch(i)
        if hasattr(run, "to_device"):
            batch = run.to_device(batch)
        method.student_batch(batch)
    method.metrics.pop("generated_tokens", None)


def step_flops(method: str, pt: dict, ps: dict, tokens: float, scored: float, generated: float) -> float:
    if method in ("sft", "fkd", "okd"):
        return bench_step.step_flops(method, pt, ps, tokens, scored)
    flops = bench_step.step_flops("fkd", pt, ps, tokens, scored)  # gkd: fkd's step on the prepared batch
    if generated:  # + the sampler's forward: every token of the batch through the layers, the head per new token
        flops += 2 * (ps["layers"] * tokens + ps["head"] * generated)
    return flops


def okd_cell(models, data, method, shape, *, device, warmup, steps, out, peak_flops, overrides=()) -> dict:
    """Median step time, tokens/s, MFU and peak memory of `method` at `shape` (module doc)."""
    free(device)
    t0 = time.perf_counter()
    run = okd_run(models, data, method, shape, out, overrides)
    setup_s = time.perf_counter() - t0
    labels = record_prepared(run)
    warm_sampler(run)
    for _ in range(warmup):
        full_step(run)
    times, tokens, generated, scored = [], [], [], []
    for _ in range(steps):
        labels.clear()
        sync(device)
        s0 = time.perf_counter()
        n_tokens, n_generated = full_step(run)
        sync(device)
        times.append(time.perf_counter() - s0)
        tokens.append(n_tokens), generated.append(n_generated)
        scored.append(sum(int((lab[:, 1:] != -100).sum()) for lab in labels))
    pt, ps = bench_step.param_counts(models["teacher"]), bench_step.param_counts(models["student"])
    flops = [step_flops(method, pt, ps, t, s, g) for t, s, g in zip(tokens, scored, generated)]
    med = statistics.median(times)
    row = {"method": method, "shape": f"{shape[0]}x{shape[1]}", "steps": steps, "s_per_step": round(med, 4),
           "mean_s": round(statistics.mean(times), 4), "tokens_per_step": statistics.median(tokens),
           "tokens_per_s": round(sum(tokens) / sum(times), 1),
           "generated_per_step": statistics.mean(generated),
           "tflops_per_s": round(sum(flops) / sum(times) / 1e12, 3),
           "mfu": round(sum(flops) / sum(times) / peak_flops, 4), "setup_s": round(setup_s, 1),
           "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None}
    del run
    free(device)
    return row


def count_cell(models, data, method, shape, *, out, overrides=()) -> dict:
    """Ops and syncs of one eager step (after one warm-up step and, on-policy, a warm sampler): the
    models uncompiled (train.compile=off) and the sampler's decode step too (generate's compile=False;
    disabling dynamo instead would mark the code as never to compile, for the cells after this one)."""
    import okd.generation as generation

    on_policy = ["method.lmbda=1.0"] if method == "gkd" else []  # count a sampling step, not the coin's pick
    run = okd_run(models, data, method, shape, out, ["train.compile='off'", *on_policy, *overrides])
    config = generation.generation_config
    generation.generation_config = lambda **kw: config(**{**kw, "compile": False})
    try:
        warm_sampler(run, 1)
        full_step(run)
        counts = count_step(lambda: full_step(run))
    finally:
        generation.generation_config = config
    counts["by_op"] = dict(list(counts["by_op"].items())[:15])  # the most frequent only
    counts.update(method="gkd (λ=1: a sampling step)" if on_policy else method, shape=f"{shape[0]}x{shape[1]}")
    run = None  # noqa: F841 - free the models before the next cell
    return counts


def trl_cell(models, data, lmbda, shape, *, device, warmup, steps, out, max_new_tokens=64) -> dict:
    """TRL's GKDTrainer.training_step + clip + AdamW (bench_step.worker_trl) at `shape`."""
    from argparse import Namespace

    free(device)
    args = Namespace(seed=0, batch_size=shape[0], max_length=shape[1], lmbda=lmbda, max_new_tokens=max_new_tokens,
                     device=device, precision="bf16" if device == "cuda" else "fp32", warmup=warmup, steps=steps)
    res = bench_step.worker_trl(args, {**models, "data": data}, out)
    med = statistics.median(res["wall_s"])
    row = {"method": f"trl gkd λ={lmbda}", "shape": f"{shape[0]}x{shape[1]}", "steps": steps,
           "s_per_step": round(med, 4), "mean_s": round(statistics.mean(res["wall_s"]), 4),
           "tokens_per_step": statistics.median(res["tokens"]),
           "tokens_per_s": round(sum(res["tokens"]) / sum(res["wall_s"]), 1),
           "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None}
    free(device)
    return row


def _prompts(tok, data: str, n: int, length: int) -> list[list[int]]:
    """The prompts of the first `n` examples, left-cut to `length` tokens."""
    from okd.data import load_examples
    from okd.data.tokenize import prompt_ids

    return [prompt_ids(e, tok, "chat", length) for e in load_examples(data, limit=n)]


def _timed(fn, device: str, repeats: int) -> tuple[float, float, int]:
    """(first call s, median of the later calls s, tokens per call) for fn() -> generated tokens."""
    times, tokens = [], 0
    for _ in range(1 + repeats):
        sync(device)
        t0 = time.perf_counter()
        tokens = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:]), tokens


def sampler_cell(models, data, *, device, batch, prompt_len, new_tokens, repeats=2) -> list[dict]:
    """Tokens/s of the samplers (module doc); first call (compilation included) and steady state."""
    import contextlib

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from okd.generation import eos_ids, generate, left_pad
    from okd.methods.minillm import mixed_sample

    free(device)
    tok = AutoTokenizer.from_pretrained(models["student"])
    student = AutoModelForCausalLM.from_pretrained(models["student"]).to(device).eval()
    teacher = AutoModelForCausalLM.from_pretrained(models["teacher"]).to(device).eval()
    prompts = _prompts(tok, data, batch, prompt_len)
    pad = tok.pad_token_id
    eos = eos_ids(student, tok)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def hf_default():
        enc = left_pad(prompts, pad, device)
        out = student.generate(**enc, max_new_tokens=new_tokens, do_sample=True, top_k=0, pad_token_id=pad)
        return (out.shape[1] - enc["input_ids"].shape[1]) * len(prompts)

    def okd(**kwargs):
        return lambda: generate(student, tok, prompts, max_new_tokens=new_tokens, batch_size=batch, **kwargs).num_tokens

    def minillm(**kwargs):
        return lambda: sum(map(len, mixed_sample(student, teacher, prompts, alpha=0.2, max_new_tokens=new_tokens,
                                                 eos_ids=eos, pad_id=pad, vocab_size=len(tok), **kwargs)[0]))

    cases = [("hf generate, defaults (dynamic cache)", hf_default),
             ("okd generate (auto: static cache + compiled decode on CUDA)", okd()),
             ("okd generate, static cache, no compile", okd(static_cache=True, compile=False)),
             ("minillm sampler, before (dynamic cache, EOS read every token)",
              minillm(static_cache=False, check_every=1)),
             ("minillm sampler (auto: static + compiled on CUDA, EOS every 8)", minillm())]
    rows = []
    with torch.no_grad(), amp:
        for name, fn in cases:
            torch.manual_seed(0)
            first, steady, tokens = _timed(fn, device, repeats)
            rows.append({"sampler": name, "batch": batch, "prompt_tokens": max(map(len, prompts)),
                         "new_tokens": new_tokens, "tokens": tokens, "first_call_s": round(first, 3),
                         "s": round(steady, 4), "tokens_per_s": round(tokens / steady, 1)})
    student = teacher = None  # noqa: F841 - free the models before the next cell
    free(device)
    return rows
