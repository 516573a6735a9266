"""Two speed levers, each measured before and after: torch.compile, and length grouping / packing.

    python benchmarks/bench_levers.py --setup tiny --part compile
    python benchmarks/bench_levers.py --setup smollm2 --part compile --methods fkd --modes eager-fixed compile-static
    python benchmarks/bench_levers.py --setup smollm2 --part batching

compile: okd's fkd / okd training step exactly as benchmarks/bench_step.py runs it (its worker,
setup and batches are imported, not copied: teacher forward, student forward + backward, clip,
AdamW), with the models eager or under `torch.compile` (default mode, applied in place to the
student and the teacher modules, `nn.Module.compile`). Modes:
  eager            dynamic padding (what okd does today; the baseline)
  eager-fixed      every batch right-padded to max_length (the shapes compile-static sees)
  compile-static   torch.compile(dynamic=False) on batches padded to max_length: one graph, no recompiles
  compile-dynamic  torch.compile(dynamic=True) on dynamically padded batches: symbolic shapes
Compile cost = the CPU seconds of the warm-up steps beyond warm-up x the median measured step
(Inductor's cache is a fresh directory per run, so it is a cold compile; compile workers are off,
so the compile runs in-process and is counted as CPU time).

batching: the ShareGPT preset's train split encoded as the trainer encodes it (chat template,
max_length, truncation), cut into epochs as okd.train.trainer.BatchOrder does: padding fraction and
padded tokens per epoch for a random order, length_grouped_order (several mega-batch sizes; 50 is
okd's) and packing (okd.data.pack_rows / collate_packed, position_ids restarting per example).
Then okd's fkd step time on `--batching-steps` batches of each kind (stratified over the epoch's
batch widths so the sample's padding matches the epoch's), as real (non-pad) tokens per CPU second.
A packed step needs the models to receive position_ids and no attention_mask; the worker patches
okd.methods' scored_hidden for that (see the README's Levers section for the library patch), and
checks first that packed hidden states equal unpacked ones.

Every configuration runs in its own subprocess, one at a time, with one thread (time is CPU time:
robust on a shared machine, see benchmarks/README.md).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step as bs  # noqa: E402  (setup_models, fitting_examples, worker_okd, timed_steps, fixed_batches)

ROOT = bs.ROOT
MODES = ("eager", "eager-fixed", "compile-static", "compile-dynamic")
ORDERS = ("random", "grouped", "packed")


def pad_to(batch: dict, width: int, pad_id: int) -> dict:
    """Right-pad a collated batch to `width` columns (fixed shapes for a static compile)."""
    import torch

    extra = width - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    return {k: torch.cat([v, torch.full((v.shape[0], extra), fill[k], dtype=v.dtype)], 1) if k in fill else v
            for k, v in batch.items()}


# ----------------------------------------------------------------------------- workers (subprocess)

def step_args(args, method: str, steps: int, warmup: int) -> argparse.Namespace:
    """The namespace bench_step.worker_okd reads."""
    return argparse.Namespace(method=method, lmbda=0.0, seed=args.seed, max_new_tokens=64, online_layers="all",
                              batch_size=args.batch_size, max_length=args.max_length, steps=steps, warmup=warmup,
                              device="cpu", precision="fp32")


def record_all_steps(res_holder: dict):
    """Wrap bench_step.timed_steps so that the warm-up steps' times are kept too."""
    orig = bs.timed_steps

    def timed(step, batches, warmup):
        r = orig(step, batches, 0)
        res_holder.update(r)
        return {"wall_s": r["wall_s"][warmup:], "cpu_s": r["cpu_s"][warmup:]}

    bs.timed_steps = timed


def worker_compile(args, setup: dict, out: Path) -> dict:
    import torch

    import okd.methods

    fixed = args.mode in ("eager-fixed", "compile-static")
    if fixed:
        orig_batches = bs.fixed_batches

        def padded(a, s, tok):
            return [pad_to(b, a.max_length, tok.pad_token_id) for b in orig_batches(a, s, tok)]

        bs.fixed_batches = padded
    if args.mode.startswith("compile"):
        orig_build = okd.methods.build_method
        kw = {"dynamic": args.mode == "compile-dynamic"}

        def build(cfg, models):
            models.student.compile(**kw)  # in place: optimizers, checkpoints, peft see the same module
            if models.teacher is not None:
                models.teacher.compile(**kw)
            return orig_build(cfg, models)

        okd.methods.build_method = build
    every: dict = {}
    record_all_steps(every)
    res = bs.worker_okd(step_args(args, args.method, args.steps, args.warmup), setup, out)
    res["all_cpu_s"], res["all_wall_s"] = every["cpu_s"], every["wall_s"]
    if args.mode.startswith("compile"):
        from torch._dynamo.utils import counters

        res["graphs"] = int(counters["stats"]["unique_graphs"])
        res["graph_breaks"] = int(sum(counters["graph_break"].values()))
        res["graph_break_reasons"] = sorted({r.splitlines()[0] for r in counters["graph_break"]})
    res["torch"] = torch.__version__
    return res


def packed_scored_hidden():
    """okd.methods' scored_hidden, giving position_ids (and no attention_mask) to a packed batch."""
    from okd.methods import base

    orig = base.scored_hidden

    def scored_hidden(model, batch, scored):
        if "position_ids" not in batch:
            return orig(model, batch, scored)
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None,
                    output_hidden_states=True, logits_to_keep=1, use_cache=False)
        return scored.select(out.hidden_states[-1])

    return scored_hidden


def check_packing(setup: dict, features: list[dict], pad_id: int) -> dict:
    """Scored hidden states of the student on a packed batch vs the same examples padded one per row."""
    import torch

    from okd.data import Collator
    from okd.data.batching import collate_packed, pack_rows
    from okd.methods.base import Scored, scored_hidden
    from okd.models.loading import load_model
    from okd.config import ModelConfig

    model = load_model(ModelConfig(path=setup["student"])).eval()
    feats = features[:40]
    rows = sorted(pack_rows([len(f["input_ids"]) for f in feats], 256, 0), key=len, reverse=True)[:2]
    packed = collate_packed([[feats[i] for i in r] for r in rows], pad_id)
    flat = [feats[i] for r in rows for i in r]
    plain = Collator(pad_id)(flat)
    hook = packed_scored_hidden()
    with torch.no_grad():
        hp = hook(model, packed, Scored.from_labels(packed["labels"]))
        hu = scored_hidden(model, plain, Scored.from_labels(plain["labels"]))
        # the wrong way: a packed row with its plain attention mask (examples see each other)
        hw = scored_hidden(model, packed, Scored.from_labels(packed["labels"]))
    return {"examples": len(flat), "rows": len(rows), "scored": int(hp.shape[0]),
            "max_abs_diff_packed_vs_unpacked": float((hp - hu).abs().max()),
            "max_abs_diff_without_position_ids": float((hw - hu).abs().max()),
            "hidden_abs_mean": float(hu.abs().mean())}


def worker_batching(args, setup: dict, out: Path) -> dict:
    import okd.methods.kd
    import okd.methods.okd
    from okd.data import Collator
    from okd.data.batching import collate_packed

    spec = json.loads(Path(args.batches_file).read_text())
    feats, groups = spec["features"], spec["batches"]
    collate = Collator(spec["pad_id"])
    if args.order == "packed":
        batches = [collate_packed([[feats[i] for i in row] for row in b], spec["pad_id"]) for b in groups]
        hook = packed_scored_hidden()
        okd.methods.kd.scored_hidden = hook
        okd.methods.okd.scored_hidden = hook
    else:
        batches = [collate([feats[i] for i in b]) for b in groups]
    bs.fixed_batches = lambda a, s, tok: batches
    res = bs.worker_okd(step_args(args, "fkd", len(batches) - args.warmup, args.warmup), setup, out)
    res["padded_tokens"] = [int(b["input_ids"].numel()) for b in batches][args.warmup:]
    return res


def run_worker(args) -> None:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    setup = json.loads(args.setup_json)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker == "compile":
        result = worker_compile(args, setup, out / "run")
    elif args.worker == "check-packing":
        spec = json.loads(Path(args.batches_file).read_text())
        result = check_packing(setup, spec["features"], spec["pad_id"])
    else:
        result = worker_batching(args, setup, out / "run")
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "result.json").write_text(json.dumps(result))


# ----------------------------------------------------------------------------- driver

def spawn(args, setup: dict, work: Path, name: str, extra: list[str], env: dict | None = None) -> dict | None:
    out = work / name
    cmd = [sys.executable, __file__, "--setup-json", json.dumps(setup), "--out", str(out),
           f"--threads={args.threads}", f"--seed={args.seed}", f"--batch-size={args.batch_size}",
           f"--max-length={args.max_length}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TORCHINDUCTOR_COMPILE_THREADS="1",  # compile in-process: its CPU time is counted
               TORCHINDUCTOR_CACHE_DIR=str(work / f"{name}-inductor-cache"),  # cold compile
               TOKENIZERS_PARALLELISM="false", **(env or {}))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        print(f"  {name}: timed out after {args.worker_timeout} s", flush=True)
        return {"error": f"timed out after {args.worker_timeout} s (wall)"}
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        tail = "\n".join(err[-25:])
        print(f"  {name}: failed\n{tail}", flush=True)
        return {"error": tail[-3000:]}
    res = json.loads((out / "result.json").read_text())
    res["wall_with_loading_s"] = round(time.perf_counter() - t0, 1)
    return res


def part_compile(args, setup: dict, work: Path) -> dict:
    setup = dict(setup, data=bs.fitting_examples(setup, args.max_length, work))
    rows, raw = [], {}
    for method in args.methods:
        for mode in args.modes:
            name = f"{method}-{mode}"
            res = spawn(args, setup, work, name, ["--worker", "compile", "--method", method, "--mode", mode,
                                                  f"--steps={args.steps}", f"--warmup={args.warmup}"])
            raw[name] = res
            if not res or "error" in res:
                rows.append({"method": method, "mode": mode, "error": (res or {}).get("error", "failed")})
                continue
            med = statistics.median(res["cpu_s"])
            real = sum(res["tokens"]) / len(res["tokens"])
            warm = res["all_cpu_s"][:args.warmup]
            row = {"method": method, "mode": mode, "cpu_s_per_step": round(med, 3),
                   "wall_s_per_step": round(statistics.median(res["wall_s"]), 3), "measured_steps": len(res["cpu_s"]),
                   "warmup_cpu_s": [round(x, 2) for x in warm],
                   "compile_cpu_s": round(sum(warm) - len(warm) * med, 1) if mode.startswith("compile") else None,
                   "real_tokens_per_step": round(real, 1), "real_tokens_per_cpu_s": round(real / med, 1),
                   "peak_mb": round(res["peak_mb"]), "wall_with_loading_s": res["wall_with_loading_s"]}
            for k in ("graphs", "graph_breaks", "graph_break_reasons"):
                if k in res:
                    row[k] = res[k]
            rows.append(row)
            print(f"  {name}: {row['cpu_s_per_step']} CPU s/step (median of {row['measured_steps']}), warm-up "
                  f"{row['warmup_cpu_s']}" + (f", compile ≈ {row['compile_cpu_s']} CPU s" if row['compile_cpu_s']
                                               is not None else "") + f", {row['wall_with_loading_s']} s in all",
                  flush=True)
    ratios = {}
    by = {(r["method"], r["mode"]): r for r in rows if "error" not in r}
    for method in args.methods:
        base = by.get((method, "eager"))
        for mode in ("eager-fixed", "compile-static", "compile-dynamic"):
            r = by.get((method, mode))
            if base and r:
                ratios[f"{method} {mode} / eager (s/step)"] = round(r["cpu_s_per_step"] / base["cpu_s_per_step"], 3)
                ratios[f"{method} {mode} / eager (s per real token)"] = round(
                    base["real_tokens_per_cpu_s"] / r["real_tokens_per_cpu_s"], 3)
        fixed, static = by.get((method, "eager-fixed")), by.get((method, "compile-static"))
        if fixed and static:
            ratios[f"{method} compile-static / eager-fixed (same shapes)"] = round(
                static["cpu_s_per_step"] / fixed["cpu_s_per_step"], 3)
        for mode in ("compile-static", "compile-dynamic"):
            r, ref = by.get((method, mode)), by.get((method, "eager"))
            if r and ref and r["compile_cpu_s"] is not None:
                saved = ref["cpu_s_per_step"] - r["cpu_s_per_step"] * ref["real_tokens_per_step"] / r["real_tokens_per_step"]
                ratios[f"{method} {mode}: steps to repay the compile"] = (
                    round(r["compile_cpu_s"] / saved, 1) if saved > 0 else "never (no per-step saving)")
    print("\n| method | mode | CPU s/step | real tokens/step | real tokens per CPU s | compile CPU s | peak MB | graphs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | {r['mode']} | failed: {r['error'].splitlines()[-1][:120]} | | | | | |")
        else:
            print(f"| {r['method']} | {r['mode']} | {r['cpu_s_per_step']} | {r['real_tokens_per_step']} | "
                  f"{r['real_tokens_per_cpu_s']} | {r['compile_cpu_s'] if r['compile_cpu_s'] is not None else '-'} | "
                  f"{r['peak_mb']} | {r.get('graphs', '-')} |")
    for k, v in ratios.items():
        print(f"{k}: {v}")
    return {"rows": rows, "ratios": ratios, "raw": raw}


def epoch_batches(lengths: list[int], order: str, args, mega: int = 50) -> list[list[int]]:
    """One epoch's batches of feature indices as the trainer cuts them (BatchOrder: ragged tail dropped)."""
    import torch

    from okd.data import length_grouped_order
    from okd.data.batching import pack_rows

    b, n = args.batch_size, len(lengths)
    if order == "packed":
        rows = pack_rows(lengths, args.max_length, args.seed)
        return [rows[k:k + b] for k in range(0, len(rows) - len(rows) % b or len(rows), b)]
    if order == "random":
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed)).tolist()
    else:
        idx = length_grouped_order(lengths, b, args.seed, mega_batches=mega)
    return [idx[k:k + b] for k in range(0, n // b * b, b)]


def padding_stats(lengths: list[int], batches: list, packed: bool) -> dict:
    real = padded = 0
    for bt in batches:
        rows = [sum(lengths[i] for i in row) for row in bt] if packed else [lengths[i] for i in bt]
        real += sum(rows)
        padded += max(rows) * len(rows)
    return {"batches": len(batches), "real_tokens": real, "padded_tokens": padded,
            "pad_tokens": padded - real, "padding_fraction": round(1 - real / padded, 4)}


def stratified(batches: list, width, k: int) -> list:
    """k batches at evenly spaced quantiles of the epoch's batch widths (a sample with the epoch's padding)."""
    ranked = sorted(range(len(batches)), key=lambda i: (width(batches[i]), i))
    return [batches[ranked[min(len(ranked) - 1, int((j + 0.5) * len(ranked) / k))]] for j in range(k)]


def part_batching(args, setup: dict, work: Path) -> dict:
    from transformers import AutoTokenizer

    from okd.data import encode_examples, load_examples

    tok = AutoTokenizer.from_pretrained(setup["student"])
    t0 = time.process_time()
    feats, enc_stats = encode_examples(load_examples(setup["data"], split="train"), tok, setup["template"],
                                       args.max_length)
    lengths = [len(f["input_ids"]) for f in feats]
    print(f"  {len(feats)} training examples encoded in {time.process_time() - t0:.1f} CPU s; "
          f"mean length {statistics.mean(lengths):.1f}, median {statistics.median(lengths)}, "
          f"{sum(x == args.max_length for x in lengths)} at max_length {args.max_length}", flush=True)
    stats = {}
    epochs = {"random": epoch_batches(lengths, "random", args),
              "grouped": epoch_batches(lengths, "grouped", args),
              "packed": epoch_batches(lengths, "packed", args)}
    for name, bt in epochs.items():
        stats[name] = padding_stats(lengths, bt, name == "packed")
    for mega in args.mega_batches:
        if mega != 50:
            stats[f"grouped (mega_batches={mega})"] = padding_stats(lengths, epoch_batches(lengths, "grouped", args, mega),
                                                                    False)
    stats["packed"]["examples_per_epoch"] = sum(len(r) for b in epochs["packed"] for r in b)
    ideal = -(-sum(lengths) // (args.batch_size * args.max_length))
    stats["ideal packing"] = {"batches": ideal, "real_tokens": sum(lengths),
                              "padded_tokens": ideal * args.batch_size * args.max_length,
                              "padding_fraction": round(1 - sum(lengths) / (ideal * args.batch_size * args.max_length), 4)}
    print("\n| order | batches/epoch | real tokens | padded tokens processed | padding fraction | vs random |")
    print("|---|---|---|---|---|---|")
    for name, s in stats.items():
        print(f"| {name} | {s['batches']} | {s['real_tokens']} | {s['padded_tokens']} | {s['padding_fraction']:.1%} | "
              f"{s['padded_tokens'] / stats['random']['padded_tokens']:.3f} |")
    result = {"examples": len(feats), "encode_stats": enc_stats, "length_mean": round(statistics.mean(lengths), 1),
              "length_median": statistics.median(lengths), "epoch": stats, "steps": {}}

    spec_file = work / "batches.json"
    spec = {"features": [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in feats],
            "pad_id": tok.pad_token_id, "batches": []}
    spec_file.write_text(json.dumps(spec))
    if not args.no_packing_check:
        res = spawn(args, setup, work, "check-packing", ["--worker", "check-packing", "--batches-file", str(spec_file)])
        result["packing_check"] = res
        print(f"  packing check: {res}", flush=True)
    if args.batching_steps <= 0:
        return result
    for order in args.orders:
        bt = epochs[order]
        width = (lambda b: max(sum(lengths[i] for i in r) for r in b)) if order == "packed" else \
            (lambda b: max(lengths[i] for i in b))
        sample = stratified(bt, width, args.batching_steps)
        warm = stratified(bt, width, 1)  # the median-width batch, as warm-up
        spec["batches"] = warm + sample
        spec_file.write_text(json.dumps(spec))
        res = spawn(args, setup, work, f"steps-{order}", ["--worker", "batching", "--order", order,
                                                          "--batches-file", str(spec_file), "--warmup=1"])
        if not res or "error" in res:
            result["steps"][order] = {"error": (res or {}).get("error", "failed")}
            continue
        real, padded, cpu = sum(res["tokens"]), sum(res["padded_tokens"]), sum(res["cpu_s"])
        s = padding_stats(lengths, sample, order == "packed")
        row = {"steps": len(res["cpu_s"]), "sample_padding_fraction": s["padding_fraction"],
               "epoch_padding_fraction": stats[order]["padding_fraction"],
               "mean_cpu_s_per_step": round(cpu / len(res["cpu_s"]), 3),
               "cpu_s_per_step": [round(x, 3) for x in res["cpu_s"]],
               "real_tokens": real, "padded_tokens": padded, "real_tokens_per_cpu_s": round(real / cpu, 1),
               "padded_tokens_per_cpu_s": round(padded / cpu, 1), "peak_mb": round(res["peak_mb"]),
               "epoch_cpu_s_estimate": round(stats[order]["batches"] * cpu / len(res["cpu_s"]), 0)}
        result["steps"][order] = row
        print(f"  {order}: {row['mean_cpu_s_per_step']} CPU s/step over {row['steps']} batches, "
              f"{row['real_tokens_per_cpu_s']} real tokens per CPU s (sample padding {s['padding_fraction']:.1%}, "
              f"epoch {stats[order]['padding_fraction']:.1%})", flush=True)
    st = result["steps"]
    if "random" in st and "error" not in st["random"]:
        print("\n| order | sample padding | CPU s/step | real tokens per CPU s | vs random | epoch CPU s (estimate) |")
        print("|---|---|---|---|---|---|")
        for order, r in st.items():
            if "error" in r:
                continue
            print(f"| {order} | {r['sample_padding_fraction']:.1%} | {r['mean_cpu_s_per_step']} | "
                  f"{r['real_tokens_per_cpu_s']} | {r['real_tokens_per_cpu_s'] / st['random']['real_tokens_per_cpu_s']:.2f}× | "
                  f"{r['epoch_cpu_s_estimate']:.0f} |")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--part", choices=["compile", "batching", "all"], default="all")
    p.add_argument("--methods", nargs="+", default=["fkd", "okd"], choices=["fkd", "okd"], help="compile part")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="compile part")
    p.add_argument("--steps", type=int, default=5, help="compile part: measured steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="compile part: warm-up steps (they hold the compile)")
    p.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS, help="batching part")
    p.add_argument("--batching-steps", type=int, default=8, help="batching part: measured batches per order (0: none)")
    p.add_argument("--mega-batches", type=int, nargs="+", default=[1, 10, 50, 200, 100000],
                   help="batching part: mega-batch sizes (in batches) of length_grouped_order to report")
    p.add_argument("--no-packing-check", action="store_true")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker-timeout", type=int, default=1800, help="wall seconds per configuration")
    p.add_argument("--output", help="results JSON (default benchmarks/results/bench_levers_<setup>.json; "
                                    "a part run updates only its own key)")
    # worker mode (internal)
    p.add_argument("--worker", choices=["compile", "batching", "check-packing"], help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--order", help=argparse.SUPPRESS)
    p.add_argument("--batches-file", help=argparse.SUPPRESS)
    p.add_argument("--setup-json", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)

    work = Path(tempfile.mkdtemp(prefix="okd-levers-"))
    setup = bs.setup_models(args.setup, work)
    output = Path(args.output or ROOT / f"benchmarks/results/bench_levers_{args.setup}.json")
    report = json.loads(output.read_text()) if output.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "okd"], cwd=ROOT, capture_output=True, text=True).stdout.split("\n")
    import torch

    meta = {"setup": args.setup, "commit": commit, "dirty": [d[3:] for d in dirty if d.strip()],
            "torch": torch.__version__, "threads": args.threads, "batch_size": args.batch_size,
            "max_length": args.max_length, "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"setup {args.setup}: batch {args.batch_size}, max_length {args.max_length}, {args.threads} thread(s), "
          f"torch {torch.__version__}", flush=True)
    if args.part in ("compile", "all"):
        print("torch.compile:", flush=True)
        report["compile"] = {**meta, "args": {k: getattr(args, k) for k in ("methods", "modes", "steps", "warmup")},
                             **part_compile(args, setup, work)}
    if args.part in ("batching", "all"):
        print("batching:", flush=True)
        report["batching"] = {**meta, "data": setup["data"], **part_batching(args, setup, work)}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
