"""Frozen-teacher cache (issue 16): disk size, step time, loss/gradient error and validation CE per top-k.

For each k it builds a teacher cache (okd.models.teacher_cache) on the same features the trainer would use
and measures, in one process and one run:
  - bytes per scored token on disk (shards; the manifest and digests are negligible);
  - fkd step time (loss + backward + AdamW step; CPU time with --threads threads, median over steps,
    configurations alternating round by round) from the cache vs the live frozen teacher;
  - relative error of the loss and of the student's full gradient against the live (exact) fkd loss,
    on --error-batches fixed batches;
  - validation CE (student CE on data.valid responses, as the trainer's `valid_loss`) after
    --train-steps steps from the same initial student on the same batches, live vs each k.
It then names the smallest k that meets the goals (<= 300 bytes/token, validation CE within 1% of live).

    python benchmarks/bench_cache.py --tiny                  # seconds: tiny random models, V = 260
    python benchmarks/bench_cache.py                         # SmolLM2-135M teacher -> 8-layer student
    python benchmarks/bench_cache.py --ks 32 64 128 --train-steps 100 --out results/bench_cache_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BYTES_GOAL, CE_GOAL, SPEED_GOAL = 300, 0.01, 2.0


def setup(args, work: Path) -> list[str]:
    """Config overrides for the models and data of the benchmark."""
    from okd.data.presets import seed_tasks_path

    seed_tasks = seed_tasks_path()  # shipped in the package
    if args.tiny:
        from okd.models.tiny import save_tiny

        t, s = work / "teacher", work / "student"
        save_tiny(t, "llama", layers=4, hidden=128, seed=1)
        save_tiny(s, "llama", layers=2, hidden=64, seed=2)
        sharpen_teacher(t, seed_tasks, steps=args.teacher_steps)
        return [f"teacher.path={t}", f"student.path={s}", f"data.train={seed_tasks}", f"data.valid={seed_tasks}",
                "data.template=chat", "data.max_length=192", "data.train_limit=96", "data.valid_limit=32"]
    from okd.data.presets import resolve_data_preset
    from okd.models.presets import resolve_model_preset
    from okd.models.prune import init_student
    from okd.paths import okd_home

    teacher = resolve_model_preset("smollm2-135m-instruct")
    student = okd_home() / "bench" / "smollm2-8of30"
    if not (student / "config.json").exists():
        init_student(str(teacher), 8, "uniform", student)
    data = resolve_data_preset("sharegpt", "train")
    return [f"teacher.path={teacher}", f"student.path={student}", f"data.train={data}",
            f"data.valid={seed_tasks}", "data.template=chat", "data.max_length=256",
            f"data.train_limit={args.train_limit}", "data.valid_limit=64"]


def sharpen_teacher(path: Path, data: Path, steps: int, batch_size: int = 8) -> None:
    """A few SFT steps on the data, so that the tiny teacher's distribution is peaked like a trained
    model's (a random one is nearly uniform, which no top-k captures); saved back in place."""
    from okd.data import Collator, encode_examples, load_examples
    from okd.losses import token_ce
    from okd.models.tiny import byte_tokenizer
    from transformers import AutoModelForCausalLM

    tok = byte_tokenizer()
    feats, _ = encode_examples(load_examples(str(data)), tok, "chat", 192)
    model = AutoModelForCausalLM.from_pretrained(path).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    collate, rng = Collator(tok.pad_token_id), random.Random(0)
    for _ in range(steps):
        b = collate(rng.sample(feats, batch_size))
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        mask = b["labels"][:, 1:] != -100
        loss = token_ce(logits[:, :-1], b["labels"][:, 1:]).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_pretrained(path)


def load(overrides):
    from okd.train.setup import load_split
    from okd.config import build_config
    from okd.models.loading import load_model, load_tokenizer

    cfg = build_config({}, overrides + ["method.name=fkd"])
    tok = load_tokenizer(cfg.student)
    teacher = load_model(cfg.teacher).requires_grad_(False)
    train = load_split(cfg, cfg.data.train, "train", tok, cfg.data.train_limit, False)[1]
    valid = load_split(cfg, cfg.data.valid, "valid", tok, cfg.data.valid_limit, False)[1]
    for i, f in enumerate(train):
        f["example_index"] = i
    return cfg, tok, teacher, train, valid


def batches(train, batch_size, n, seed=0):
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    order = (order * (n * batch_size // len(order) + 1))[:n * batch_size]
    return [[train[i] for i in order[j:j + batch_size]] for j in range(0, len(order), batch_size)]


def method_for(cfg, tok, teacher, student, cache):
    from okd.methods.base import Models
    from okd.methods.cached import CachedTeacherKD
    from okd.methods.kd import FrozenTeacherKD

    if cache is None:
        return FrozenTeacherKD(cfg=cfg, models=Models(student, teacher, tok, len(tok)))
    models = Models(student, None, tok, len(tok))
    models.teacher_cache = cache
    return CachedTeacherKD(cfg=cfg, models=models)


def scored(batch):
    return max(int((batch["labels"][:, 1:] != -100).sum()), 1)


def errors(cfg, tok, teacher, student, cache, fixed):
    """Relative loss and gradient errors of the cached fkd loss against the live one, summed over batches."""
    def loss_grad(method):
        student.zero_grad(set_to_none=True)
        total = 0.0
        for b in fixed:
            loss = method.losses(b, scored(b))["student"]
            loss.backward()
            total += float(loss.detach())
        # float64: over ~10^8 entries fp32 sums drift enough to print a cosine above 1
        g = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]).double()
        return total, g

    l0, g0 = loss_grad(method_for(cfg, tok, teacher, student, None))
    l1, g1 = loss_grad(method_for(cfg, tok, teacher, student, cache))
    student.zero_grad(set_to_none=True)
    return {"loss_rel_error": abs(l1 - l0) / abs(l0), "grad_rel_error": float((g1 - g0).norm() / g0.norm()),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(g1, g0, dim=0))}


def step_fn(method, student, opt):
    def step(b):
        loss = method.losses(b, scored(b))["student"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


@torch.no_grad()
def valid_ce(student, valid, collate, vocab, batch_size=8):
    from okd.losses import token_ce

    student.eval()
    total = count = 0
    for i in range(0, len(valid), batch_size):
        b = collate(valid[i:i + batch_size])
        logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        total += float(token_ce(logits[:, :-1, :vocab], b["labels"][:, 1:]).sum())
        count += int((b["labels"][:, 1:] != -100).sum())
    student.train()
    return total / count


def build(cfg, tok, teacher, train, valid, k, out):
    from okd.models.teacher_cache import build_cache, describe_config, open_cache

    t0 = time.process_time()
    m = build_cache(out, teacher=teacher, tokenizer=tok, splits={"train": train, "valid": valid},
                    depends_on=describe_config(cfg, tok), vocab_size=len(tok), top_k=k, progress=False, device="cpu")
    cpu = time.process_time() - t0
    train_rec = m["splits"]["train"]
    size = sum(s["bytes"] for s in train_rec["shards"])
    return open_cache(out), {"bytes_per_token": round(size / train_rec["tokens"], 1), "build_cpu_s": round(cpu, 2)}


def step_flops(step, batch) -> int:
    """Matmul FLOPs of one training step (torch.utils.flop_counter: forward, backward and all)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()


def timing(configs, steps, warmup, rounds):
    """Median CPU seconds per step of each config; configs alternate within every round."""
    times = {name: [] for name in configs}
    for r in range(rounds):
        for name, (step, data) in configs.items():
            for i in range(warmup + steps):
                t0 = time.process_time()
                step(data[(r * (warmup + steps) + i) % len(data)])
                if i >= warmup:
                    times[name].append(time.process_time() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def run(args):
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        return measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, work: Path) -> dict:
    from okd.data import Collator
    from okd.models.loading import load_model

    cfg, tok, teacher, train, valid = load(setup(args, work))
    V, collate = len(tok), Collator(tok.pad_token_id)
    ks = sorted({V if k in ("V", "all") else int(k) for k in args.ks})
    skipped = [k for k in ks if k > V]
    ks = [k for k in ks if k <= V]
    print(f"V={V}, {len(train)} train / {len(valid)} valid examples; k={ks}" + (f" (skipped > V: {skipped})" if skipped else ""))
    data = [collate(b) for b in batches(train, args.batch_size, args.train_steps, seed=args.seed)]
    fresh = lambda: load_model(cfg.student).train()  # noqa: E731 - the same initial student every time
    results = {"V": V, "ks_skipped": skipped, "setup": "tiny" if args.tiny else "smollm2", "rows": []}
    caches = {}
    tokens = sum(int((torch.tensor(f["labels"][1:]) != -100).sum()) for f in train + valid)
    for k in ks:
        print(f"k={k}: building the cache (~{tokens * (4 * k + 4) / 2**20:.0f} MiB) ...", flush=True)
        cache, row = build(cfg, tok, teacher, train, valid, k, work / f"cache-{k}")
        caches[k] = cache
        row.update({"k": k}, **errors(cfg, tok, teacher, fresh(), cache, data[:args.error_batches]))
        results["rows"].append(row)
    # step time: live vs every k, same run, alternating
    configs = {}
    for name, cache in [("live", None)] + [(f"k={k}", c) for k, c in caches.items()]:
        s = fresh()
        opt = torch.optim.AdamW(s.parameters(), lr=args.lr)
        configs[name] = (step_fn(method_for(cfg, tok, teacher, s, cache), s, opt), data)
    times = timing(configs, args.time_steps, 1, args.rounds)
    results["live_step_cpu_s"] = round(times["live"], 4)
    # what the cache can save at most: the teacher's share of a live step's FLOPs (the student's forward,
    # backward and its full-vocabulary head remain); the speed-up cannot exceed live/cached FLOPs
    flops = {name: step_flops(step, data[0]) for name, (step, data) in configs.items()}
    results["live_step_gflop"] = round(flops["live"] / 1e9, 2)
    for name, f in flops.items():
        if name != "live":
            row = next(r for r in results["rows"] if f"k={r['k']}" == name)
            row.update(step_gflop=round(f / 1e9, 2), flop_ceiling=round(flops["live"] / f, 2))
    # validation CE after a fixed number of steps
    for name, cache in [("live", None)] + [(f"k={k}", c) for k, c in caches.items()]:
        s = fresh()
        opt = torch.optim.AdamW(s.parameters(), lr=args.lr)
        step = step_fn(method_for(cfg, tok, teacher, s, cache), s, opt)
        torch.manual_seed(args.seed)
        for b in data:
            step(b)
        ce = valid_ce(s, valid, collate, V)
        if name == "live":
            results["live_valid_ce"] = round(ce, 5)
        else:
            row = next(r for r in results["rows"] if f"k={r['k']}" == name)
            row.update(step_cpu_s=round(times[name], 4), speedup=round(times["live"] / times[name], 2),
                       valid_ce=round(ce, 5), valid_ce_rel=round(ce / results["live_valid_ce"] - 1, 5))
    good = [r["k"] for r in results["rows"] if r["bytes_per_token"] <= BYTES_GOAL and abs(r["valid_ce_rel"]) <= CE_GOAL]
    results["recommended_k"] = min(good) if good else None
    return results


def report(results):
    print(f"live fkd: {results['live_step_cpu_s']:.4f} CPU s/step, valid CE {results['live_valid_ce']:.4f}")
    print("| k | bytes/token | step CPU s | speed-up vs live | FLOP ceiling | loss rel err | grad rel err | grad cos | "
          "valid CE | vs live |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['k']} | {r['bytes_per_token']} | {r['step_cpu_s']:.4f} | {r['speedup']:.2f}x | "
              f"{r['flop_ceiling']:.2f}x | "
              f"{r['loss_rel_error']:.2e} | {r['grad_rel_error']:.2e} | {r['grad_cosine']:.5f} | "
              f"{r['valid_ce']:.4f} | {100 * r['valid_ce_rel']:+.2f}% |")
    print(f"goals: <= {BYTES_GOAL} bytes/token, valid CE within {100 * CE_GOAL:.0f}% of live, >= {SPEED_GOAL}x faster; "
          f"smallest k meeting the first two: {results['recommended_k']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random models (seconds)")
    p.add_argument("--ks", nargs="+", default=["8", "32", "64", "128", "512", "V"],
                   help="top-k values ('V': the full vocabulary); 64 is okd's default")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=None, help="steps before the validation CE (default 40 tiny, 100)")
    p.add_argument("--time-steps", type=int, default=None, help="timed steps per config per round (default 3)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--error-batches", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=200,
                   help="training examples (real setup; k = V stores ~200 KB per token at V = 49,152)")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 tiny, 1e-4")
    p.add_argument("--teacher-steps", type=int, default=40, help="SFT steps that train the tiny teacher first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    args.train_steps = args.train_steps or (30 if args.tiny else 100)
    args.time_steps = args.time_steps or 3
    args.lr = args.lr or (1e-3 if args.tiny else 1e-4)
    results = run(args)
    report(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
