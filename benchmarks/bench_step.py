"""Step time, tokens/s and peak memory of okd's methods against TRL's GKDTrainer, side by side.

Every configuration runs in its own subprocess (so peak memory is its own), the configurations
alternate within each round, and the figure per configuration is the median step time over all
measured steps of all rounds (warm-up steps dropped). Ratios are taken between medians measured in
the same invocation. Also: achieved FLOP/s of the fkd and okd steps against the machine's dense
matmul FLOP/s measured in the same run.

    python benchmarks/bench_step.py                       # SmolLM2-135M teacher -> 8-layer student
    python benchmarks/bench_step.py --setup tiny --rounds 2 --steps 4
    python benchmarks/bench_step.py --configs okd:fkd okd:okd --no-trl
    # GPU, bf16 autocast, SmolLM2-shaped models with random weights (no hub/preset needed there):
    python benchmarks/bench_step.py --device cuda --precision bf16 --setup smollm2-random \
        --shape-dir DIR_WITH_SMOLLM2_CONFIG_AND_TOKENIZER --data SHAREGPT_TRAIN.jsonl

TRL is needed only for its rows: `pip install trl` (the Makefile's `bench` target does it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (implementation, method, lmbda)
CONFIGS = {
    "okd:sft": ("okd", "sft", 0.0),
    "okd:fkd": ("okd", "fkd", 0.0),
    "okd:okd": ("okd", "okd", 0.0),
    "okd:gkd": ("okd", "gkd", 0.5),
    "trl:gkd-l0": ("trl", "gkd", 0.0),
    "trl:gkd-l0.5": ("trl", "gkd", 0.5),
    # the teacher's weights stored in bf16 (teacher.dtype=bfloat16): no per-step cast under bf16 autocast
    "okd:fkd-bf16-teacher": ("okd", "fkd", 0.0),
    "okd:okd-bf16-teacher": ("okd", "okd", 0.0),
    "okd:jsd": ("okd", "jsd", 0.0),  # JSD(beta 0.5) to the frozen teacher (closed-form gradients since 2026-12-01)
}
# run only when named: the committed default tables compare the rest
NOT_DEFAULT = {"okd:fkd-bf16-teacher", "okd:okd-bf16-teacher", "okd:jsd"}
DEFAULT_CONFIGS = [c for c in CONFIGS if c not in NOT_DEFAULT]


def fitting_examples(setup: dict, max_length: int, work: Path, limit: int = 400) -> str:
    """The first `limit` examples whose prompt + response fit in max_length, as JSONL.

    Both implementations then see identical, untruncated sequences (TRL's ChatML collator refuses
    an example whose completion alone fills the window).
    """
    from transformers import AutoTokenizer

    from okd.data import format_prompt, load_examples

    tok = AutoTokenizer.from_pretrained(setup["student"])
    keep = []
    for e in load_examples(setup["data"]):
        prompt = format_prompt(e, setup["template"], tok)
        n = len(tok(prompt, add_special_tokens=False).input_ids) + len(tok(e.response, add_special_tokens=False).input_ids) + 2
        if n <= max_length:
            keep.append({"instruction": e.instruction, "input": e.input, "output": e.response})
        if len(keep) == limit:
            break
    path = work / f"data-{max_length}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return str(path)


def random_models(shape_dir: str, work: Path, student_layers: int = 8) -> tuple[str, str]:
    """A teacher with shape_dir's config and a student with its first `student_layers` layers' shape,
    both randomly initialised (step time and FLOPs depend on shapes only), saved with shape_dir's
    tokenizer. For machines without the SmolLM2 preset (e.g. a GPU box with no network)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shape_dir)
    paths = []
    for name, layers in (("random-teacher", None), ("random-student", student_layers)):
        path = work / name
        cfg = AutoConfig.from_pretrained(shape_dir)
        if layers:
            cfg.num_hidden_layers = layers
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]


def setup_models(kind: str, work: Path, shape_dir: str | None = None, data: str | None = None) -> dict:
    """Teacher, student and data for the benchmark (cached)."""
    if kind == "smollm2-random":
        if not shape_dir or not data:
            raise SystemExit("--setup smollm2-random needs --shape-dir (config.json + tokenizer) and --data (JSONL)")
        teacher, student = random_models(shape_dir, work)
        return {"teacher": teacher, "student": student, "data": data, "template": "chat"}
    if kind == "tiny":
        from okd.data.presets import seed_tasks_path
        from okd.models.tiny import save_tiny

        t, s = work / "tiny-teacher", work / "tiny-student"
        if not (t / "config.json").exists():
            save_tiny(t, "llama", layers=8, hidden=256, seed=1)
            save_tiny(s, "llama", layers=4, hidden=128, seed=2)
        return {"teacher": str(t), "student": str(s), "data": str(seed_tasks_path()),
                "template": "chat"}
    from okd.data.presets import resolve_data_preset
    from okd.models.presets import resolve_model_preset
    from okd.models.prune import init_student
    from okd.paths import okd_home

    teacher = resolve_model_preset("smollm2-135m-instruct")
    student = okd_home() / "bench" / "smollm2-8of30"
    if not (student / "config.json").exists():
        init_student(str(teacher), 8, "uniform", student)
    return {"teacher": str(teacher), "student": str(student), "data": str(resolve_data_preset("sharegpt", "train")),
            "template": "chat"}


def param_counts(path: str) -> dict:
    """Matmul parameters of a causal LM: the layers (non-embedding) and the output matrix."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    h, inter, n = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o, k, v, gate/up/down (llama)
    return {"layers": n * per_layer, "head": c.vocab_size * h}


def step_flops(kind: str, teacher: dict, student: dict, tokens: float, scored: float) -> float:
    """Dense matmul FLOPs of one step, from parameters and tokens (attention scores ignored).

    forward = 2·params·tokens (the output matrix only on scored tokens: the losses project only
    those); a backward costs 2× forward for trainable weights (input and weight gradients) and 1×
    where only input gradients flow (the frozen teacher under its online module).
    """
    fwd_s = 2 * (student["layers"] * tokens + student["head"] * scored)
    fwd_t = 2 * (teacher["layers"] * tokens + teacher["head"] * scored)
    if kind == "sft":
        return 3 * fwd_s
    if kind == "fkd":
        return fwd_t + 3 * fwd_s
    if kind == "okd":
        return 2 * fwd_t + 3 * fwd_s
    raise ValueError(kind)


def matmul_flops(threads: int, seconds: float = 3.0, device: str = "cpu", precision: str = "fp32") -> float:
    import torch

    if device == "cuda":  # dense bf16 on the GPU: 8192^3 products, timed with events after warm-up
        a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for _ in range(5):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            a @ b
        end.record()
        torch.cuda.synchronize()
        return 2 * 8192**3 * 20 / (start.elapsed_time(end) / 1e3)
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.process_time()  # CPU time, like the steps: robust to a shared machine
    while time.process_time() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.process_time() - t0)  # per CPU-second, like the step figures


# ----------------------------------------------------------------------------- workers (subprocess)

def fixed_batches(args, setup: dict, tok) -> list[dict]:
    """The same (warmup + steps) batches for every configuration, from okd's own encoder."""
    from okd.data import Collator, encode_examples, load_examples

    n = args.batch_size * (args.steps + args.warmup)
    feats, _ = encode_examples(load_examples(setup["data"], limit=n), tok, setup["template"], args.max_length)
    collate = Collator(tok.pad_token_id)
    device = getattr(args, "device", "cpu")
    return [{k: v.to(device) for k, v in collate(feats[i:i + args.batch_size]).items()}
            for i in range(0, n, args.batch_size)]


def autocast(args):
    """bf16 mixed precision as okd's trainer runs it (Accelerate's autocast), or nothing."""
    import contextlib

    import torch

    if getattr(args, "precision", "fp32") == "bf16":
        return torch.autocast(getattr(args, "device", "cpu"), dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_steps(step, batches, warmup: int) -> dict:
    """Wall and CPU seconds per step. With one thread, CPU time is what the step costs even when
    other processes share the machine; wall time is what a user waits on an idle one. On a GPU the
    device is synchronised around each step and wall time is the figure."""
    import torch

    sync = torch.cuda.synchronize if batches and batches[0]["input_ids"].is_cuda else (lambda: None)
    wall, cpu = [], []
    for b in batches:
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        step(b)
        sync()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": wall[warmup:], "cpu_s": cpu[warmup:]}


def worker_okd(args, setup: dict, out: Path) -> dict:
    """okd's step exactly as the trainer runs it: prepare -> losses -> backward -> clip -> step."""
    import torch

    from okd.config import build_config
    from okd.methods import Models, build_method
    from okd.models.loading import load_model, load_tokenizer
    from okd.models.online import add_online_module

    cfg = build_config({}, [f"student.path={setup['student']}", f"teacher.path={setup['teacher']}",
                            f"data.template={setup['template']}", f"method.name={args.method}",
                            f"method.lmbda={args.lmbda}", "method.beta=0.0", f"train.seed={args.seed}",
                            f"method.max_new_tokens={args.max_new_tokens}", f"output_dir={out}"]
                      + [f"online.layers={'null' if args.online_layers == 'all' else args.online_layers}"]
                      + ([f"teacher.dtype={args.teacher_dtype}"] if getattr(args, "teacher_dtype", None) else []))
    torch.manual_seed(args.seed)
    device = getattr(args, "device", "cpu")
    tok, student = load_tokenizer(cfg.student), load_model(cfg.student).to(device)
    teacher = None
    if args.method != "sft":
        teacher = load_model(cfg.teacher).to(device)
        teacher = add_online_module(teacher, cfg.online) if args.method == "okd" else teacher.requires_grad_(False)
        teacher.eval()
    student.train()
    method = build_method(cfg, Models(student=student, teacher=teacher, tokenizer=tok, vocab_size=len(tok)))
    opts = [(student, torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5))]
    if args.method == "okd":
        opts.insert(0, (teacher, torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=1e-5)))
    generated = []

    def step(batch):
        with autocast(args):
            batch = method.prepare(batch, 0)
            norm = float((batch["labels"][:, 1:] != -100).sum())
            loss = sum(method.losses(batch, norm).values())
        loss.backward()
        generated.append(method.metrics.pop("generated_tokens", 0))
        for model, opt in opts:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    batches = fixed_batches(args, setup, tok)
    res = timed_steps(step, batches, args.warmup)
    res["tokens"] = [int(b["attention_mask"].sum()) for b in batches][args.warmup:]
    res["scored"] = [int((b["labels"][:, 1:] != -100).sum()) for b in batches][args.warmup:]
    res["generated_tokens"] = generated[args.warmup:]
    if getattr(args, "profile", False):  # one more step under the profiler: where the time goes
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=acts) as prof:
            step(batches[-1])
        sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        (out.parent / "profile.txt").write_text(
            f"{len(prof.events())} profiler events in one step\n"
            + prof.key_averages().table(sort_by=sort, row_limit=25)
            + "\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return res


def worker_trl(args, setup: dict, out: Path) -> dict:
    """TRL's GKDTrainer.training_step (its forward, loss, backward, on-policy sampling) on the same
    batches, followed by the same clip and AdamW step."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from okd.data import collate_prompts

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(setup["student"])
    cfg = GKDConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, learning_rate=1e-5,
                    lmbda=args.lmbda, beta=0.0, temperature=1.0, max_new_tokens=args.max_new_tokens,
                    max_length=args.max_length, use_cpu=args.device == "cpu", bf16=args.precision == "bf16",
                    report_to="none", save_strategy="no",
                    seed=args.seed, disable_tqdm=True)
    dummy = Dataset.from_list([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}])
    trainer = GKDTrainer(model=AutoModelForCausalLM.from_pretrained(setup["student"]).to(args.device),
                         teacher_model=AutoModelForCausalLM.from_pretrained(setup["teacher"]).to(args.device),
                         args=cfg, train_dataset=dummy, processing_class=tok)
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # normally set by Trainer.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def to_trl(batch):
        # TRL's collator also hands over the left-padded prompts, for on-policy sampling
        prompts = [row[:int((lab == -100).logical_and(m == 1).sum())].tolist()
                   for row, lab, m in zip(batch["input_ids"], batch["labels"], batch["attention_mask"])]
        p = collate_prompts(prompts, tok.pad_token_id)
        return {**batch, "prompts": p["input_ids"].to(args.device),
                "prompt_attention_mask": p["attention_mask"].to(args.device)}

    def step(batch):
        with autocast(args):  # the same bf16 autocast as okd's rows (training_step outside train())
            trainer.training_step(model, to_trl(batch))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    batches = fixed_batches(args, setup, tok)
    res = timed_steps(step, batches, args.warmup)
    res["tokens"] = [int(b["attention_mask"].sum()) for b in batches][args.warmup:]
    res["generated_tokens"] = None
    return res


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    setup = json.loads(args.setup_json)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import resource

    result = (worker_trl if args.impl == "trl" else worker_okd)(args, setup, out / "run")
    # the matmul reference, measured in this process right after its steps (same load, same thread count)
    result["matmul_flops"] = matmul_flops(args.threads, seconds=2.0, device=args.device, precision=args.precision)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device == "cuda":  # device memory is the figure that matters there
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    (out / "result.json").write_text(json.dumps(result))


# ----------------------------------------------------------------------------- driver

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", choices=["smollm2", "tiny", "smollm2-random"], default="smollm2",
                   help="smollm2: the preset and an 8-layer pruned student; smollm2-random: the same shapes, "
                        "random weights (needs --shape-dir, --data); tiny: small random llamas")
    p.add_argument("--shape-dir", help="smollm2-random: a directory with SmolLM2's config.json and tokenizer")
    p.add_argument("--data", help="smollm2-random: a JSONL dataset (e.g. the sharegpt preset's train.jsonl)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast around forward and loss, fp32 weights (okd's mixed_precision=bf16)")
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    p.add_argument("--no-trl", action="store_true", help="skip TRL's rows")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over the configurations")
    p.add_argument("--steps", type=int, default=5, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: robust to a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--online-layers", default="all",
                   help="okd: online module on 'all' teacher layers (default, as the committed figures), the top k, "
                        "or the top share f in (0, 1) (okd's default 0.25)")
    p.add_argument("--output", default="benchmarks/results/bench_step.json")
    p.add_argument("--baseline-code", metavar="DIR",
                   help="also run every okd config against the okd package in DIR (e.g. a git worktree of an older "
                        "commit), as <config>@before, alternating with the current code in the same rounds")
    p.add_argument("--profile", action="store_true",
                   help="okd rows: profile one extra step (torch.profiler); tables copied next to --output")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--lmbda", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--teacher-dtype", default=None, help=argparse.SUPPRESS)
    p.add_argument("--setup-json", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)

    configs = [c for c in args.configs if not (args.no_trl and c.startswith("trl:"))]
    if args.baseline_code:  # before/after pairs, side by side in every round
        configs = [x for c in configs for x in ([c, f"{c}@before"] if c.startswith("okd:") else [c])]
    work = Path(tempfile.mkdtemp(prefix="okd-bench-"))
    setup = setup_models(args.setup, work, args.shape_dir, args.data)
    setup["data"] = fitting_examples(setup, args.max_length, work)
    gpu = args.device == "cuda"
    peak = matmul_flops(args.threads, device=args.device, precision=args.precision)
    print(f"setup {args.setup}: batch {args.batch_size}, max_length {args.max_length}, {args.device} {args.precision}, "
          f"threads {args.threads}; dense {args.precision} matmul {peak / 1e9:.1f} GFLOP/s "
          f"{'(GPU, 8192^3)' if gpu else 'per CPU-second'}", flush=True)
    key = "wall_s" if gpu else "cpu_s"  # the figure the medians and ratios use
    results: dict[str, dict] = {c: {"wall_s": [], "cpu_s": [], "tokens": [], "scored": [], "generated": [], "peak_mb": []}
                                for c in configs}
    peaks = [peak]  # the reference again in every worker: the machine's load drifts during a run
    for r in range(args.rounds):
        for name in configs:
            base_name = name.removesuffix("@before")
            impl, method, lmbda = CONFIGS[base_name]
            extra = ["--teacher-dtype", "bfloat16"] if base_name.endswith("-bf16-teacher") else []
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TRL_EXPERIMENTAL_SILENCE="1")
            if name.endswith("@before"):
                env["PYTHONPATH"] = str(Path(args.baseline_code).resolve())
            out = work / f"{name.replace(':', '-')}-{r}"
            cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--method", method, "--lmbda", str(lmbda), *extra,
                   "--setup-json", json.dumps(setup), "--out", str(out)] + [
                   f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k in ("steps", "warmup", "batch_size", "max_length", "max_new_tokens", "threads", "seed",
                            "online_layers", "device", "precision") and v is not None] + (
                   ["--profile"] if args.profile else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"  {name}: failed\n{proc.stderr[-2000:]}", flush=True)
                continue
            res = json.loads((out / "result.json").read_text())
            if (out / "profile.txt").exists():
                dest = Path(args.output).with_name(f"{Path(args.output).stem}-profile-{name.replace(':', '-')}.txt")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text((out / "profile.txt").read_text())
            for k in ("wall_s", "cpu_s", "tokens", "scored"):
                results[name][k] += res.get(k, [])
            results[name]["generated"] += res["generated_tokens"] or []
            results[name]["peak_mb"].append(res["peak_mb"])
            peaks.append(res["matmul_flops"])
            print(f"  round {r + 1} {name}: median {statistics.median(res['cpu_s']):.3f} CPU s/step, "
                  f"{statistics.median(res['wall_s']):.4f} wall s/step ({time.perf_counter() - t0:.0f} s with loading)",
                  flush=True)

    peak = statistics.median(peaks)
    pt, ps = param_counts(setup["teacher"]), param_counts(setup["student"])
    rows, med = [], {}
    for name in configs:
        r = results[name]
        if not r[key]:
            continue
        med[name] = statistics.median(r[key])
        tok = statistics.median(r["tokens"])
        # on-policy steps differ (sample or not): report the mean too
        row = {"config": name, "cpu_s_per_step": round(statistics.median(r["cpu_s"]), 3),
               "mean_cpu_s": round(statistics.mean(r["cpu_s"]), 3),
               "wall_s_per_step": round(statistics.median(r["wall_s"]), 4), "steps": len(r[key]),
               "tokens_per_step": tok, "tokens_per_s": round(tok / med[name], 1),
               "generated_per_step": statistics.median(r["generated"]) if r["generated"] else None,
               "peak_mb": round(max(r["peak_mb"]), 0)}
        impl, method, _ = CONFIGS[name.removesuffix("@before")]
        if impl == "okd" and method in ("sft", "fkd", "okd") and args.online_layers == "all":
            flops = step_flops(method, pt, ps, tok, statistics.median(r["scored"]))
            row["achieved_gflops"] = round(flops / med[name] / 1e9, 1)
            row["fraction_of_matmul_peak"] = round(flops / med[name] / peak, 3)
        rows.append(row)
    ratios = {}
    for a, b in [("okd:fkd-bf16-teacher", "okd:fkd"), ("okd:okd-bf16-teacher", "okd:okd"),
                 ("okd:okd-bf16-teacher", "okd:fkd-bf16-teacher"), ("okd:okd", "okd:fkd"), ("okd:fkd", "trl:gkd-l0"), ("okd:gkd", "okd:okd"),
                 ("trl:gkd-l0.5", "okd:okd"), ("okd:fkd", "okd:sft"), ("okd:gkd", "trl:gkd-l0.5")]:
        if a in med and b in med:
            ratios[f"{a} / {b}"] = round(med[a] / med[b], 3)
    for name in med:  # the current code against the baseline code, config by config
        if name.endswith("@before") and name.removesuffix("@before") in med:
            ratios[f"{name.removesuffix('@before')} / {name}"] = round(med[name.removesuffix("@before")] / med[name], 3)
    import platform

    import torch

    machine = torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
    report = {"setup": args.setup, "args": {k: v for k, v in vars(args).items() if k not in ("setup_json",)},
              "machine": machine, "torch": torch.__version__, "timed_by": key,
              "matmul_gflops": round(peak / 1e9, 1), "matmul_gflops_per_worker": [round(x / 1e9, 1) for x in peaks],
              "rows": rows, "ratios": ratios}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(f"\nmedians and ratios of {key}; tokens/s = tokens per {'wall' if gpu else 'CPU'} second; matmul reference "
          f"{peak / 1e9:.1f} GFLOP/s (median of the driver's and every worker's measurement)")
    print("| config | CPU s/step | mean CPU s/step | wall s/step | steps | tokens/step | tokens/s | generated/step "
          "| peak MB | GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['cpu_s_per_step']} | {r['mean_cpu_s']} | {r['wall_s_per_step']} | {r['steps']} | "
              f"{r['tokens_per_step']} | {r['tokens_per_s']} | {r['generated_per_step'] if r['generated_per_step'] is not None else '-'} | "
              f"{r['peak_mb']:.0f} | {r.get('achieved_gflops', '-')} | {r.get('fraction_of_matmul_peak', '-')} |")
    print()
    for k, v in ratios.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
