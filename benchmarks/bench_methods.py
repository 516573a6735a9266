"""Per-step cost of every training method on one fixed setup, as a markdown table.

Each method trains `--warmup + --steps` steps through `okd.train.train` (the real loop: sampling,
losses, optimizer), logging every step; the time of a step is the difference of consecutive
`elapsed_s` in metrics.jsonl, and the table gives the median over the steps after the warm-up,
with the generated tokens per step (mean over the same steps). Rows:

- every method at its defaults, except gkd (λ = `--lmbda`, its default 0.5) and distillm, whose
  student-data probability starts at `--distillm-prob` (its default 0.0 would make it skew KL on
  the ground truth until the validation loss worsens, i.e. fkd's cost);
- `seqkd` with a cold cache (the teacher answers every new prompt: the first epoch's cost) and
  `seqkd (cached)`, a second run on the same cache (every later epoch's cost: CE only).

Models: random llama models with the byte-level tokenizer of okd.models.tiny (vocabulary 260), so
nothing is downloaded: `--size small` (default) is a 8-layer, 256-wide teacher and a 4-layer,
128-wide student; `--size tiny` the 4x64 / 2x32 pair of the tests. Or give `--teacher/--student`.
Data: instructions like the seed tasks (`--data`, default the seed tasks shipped in the package,
okd/data/seed_tasks.jsonl, else a synthetic set), alpaca template.

    python benchmarks/bench_methods.py                       # all methods, small models
    python benchmarks/bench_methods.py --methods fkd gkd minillm --steps 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ["sft", "fkd", "rkd", "jsd", "tvd", "okd", "seqkd", "seqkd (cached)", "imitkd", "gkd", "distillm",
           "minillm"]
SIZES = {"tiny": ((4, 64), (2, 32)), "small": ((8, 256), (4, 128))}


def synthetic_data(path: Path, n: int = 64) -> Path:
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]
    rows = [{"instruction": f"Write a sentence about {words[i % 10]} and {words[(3 * i + 1) % 10]}.",
             "input": "", "output": " ".join(words[(i + k) % 10] for k in range(8 + i % 9)) + "."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(name: str, args, root: Path, teacher: str, student: str, data: str) -> dict:
    from okd.config import build_config
    from okd.train import train

    method = "seqkd" if name.startswith("seqkd") else name
    out = root / name.replace(" ", "_").strip("()")
    overrides = [f"student.path={student}", f"data.train={data}", f"data.max_length={args.max_length}",
                 f"train.batch_size={args.batch_size}", f"train.max_steps={args.warmup + args.steps}",
                 "train.log_every=1", "train.lr=1e-4", "data.group_by_length=false", f"method.name={method}",
                 f"method.max_new_tokens={args.max_new_tokens}", f"output_dir={out}",
                 f"method.seqkd_cache={root / 'seqkd_cache.jsonl'}", f"method.lmbda={args.lmbda}",
                 f"method.replay_init_prob={args.distillm_prob}", "online.rank=8"]
    if method != "sft":
        overrides.append(f"teacher.path={teacher}")
    train(build_config({}, overrides), progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = [0.0] + [r["elapsed_s"] for r in records]
    gen = [0] + [r.get("generated_tokens", 0) for r in records]
    per_step = [elapsed[i + 1] - elapsed[i] for i in range(len(records))][args.warmup:]
    gen_per_step = [gen[i + 1] - gen[i] for i in range(len(records))][args.warmup:]
    tokens = [records[i]["tokens"] - (records[i - 1]["tokens"] if i else 0) for i in range(len(records))]
    return {"method": name, "s_per_step": statistics.median(per_step),
            "gen_tokens_per_step": statistics.fmean(gen_per_step),
            "tokens_per_step": statistics.fmean(tokens[args.warmup:]),
            "loss": records[-1]["loss"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=METHODS, metavar="NAME",
                   help="rows to run (default: all); 'seqkd (cached)' needs seqkd before it")
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="random model pair (default small)")
    p.add_argument("--teacher", help="teacher model (path/preset) instead of a random one")
    p.add_argument("--student", help="student model (path/preset) instead of a random one")
    p.add_argument("--data", help="training data (default: the packaged seed tasks, else synthetic)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--lmbda", type=float, default=0.5, help="gkd's student-data probability")
    p.add_argument("--distillm-prob", type=float, default=0.5, help="distillm's initial student-data probability")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    import logging
    import os

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher, student = args.teacher, args.student
        if not (teacher and student):
            from okd.models.tiny import save_tiny

            (tl, th), (sl, sh) = SIZES[args.size]
            teacher = teacher or str(save_tiny(root / "teacher", "llama", layers=tl, hidden=th, seed=1))
            student = student or str(save_tiny(root / "student", "llama", layers=sl, hidden=sh, seed=2))
        from okd.data.presets import seed_tasks_path

        tasks = seed_tasks_path()
        data = args.data or (str(tasks) if tasks.is_file() else str(synthetic_data(root / "data.jsonl")))
        rows = []
        for name in args.methods:
            t0 = time.perf_counter()
            rows.append(run(name, args, root, teacher, student, data))
            print(f"  {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    models = f"{args.teacher} / {args.student}" if args.teacher and args.student else \
        "random llama {}x{} teacher / {}x{} student, vocab 260".format(*SIZES[args.size][0], *SIZES[args.size][1])
    print(f"\n{models}; batch {args.batch_size}, max_length {args.max_length}, max_new_tokens "
          f"{args.max_new_tokens}; {device}; median of {args.steps} steps after {args.warmup} warm-up\n")
    fkd = next((r["s_per_step"] for r in rows if r["method"] == "fkd"), None)
    print("| method | s/step | × fkd | generated tokens/step | tokens/step | loss (last) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        rel = f"{r['s_per_step'] / fkd:.2f}" if fkd else "–"
        print(f"| {r['method']} | {r['s_per_step']:.3f} | {rel} | {r['gen_tokens_per_step']:.0f} | "
              f"{r['tokens_per_step']:.0f} | {r['loss']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
