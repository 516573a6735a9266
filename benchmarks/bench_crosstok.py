"""The cost of a cross-tokenizer step on a real pair, against same-tokenizer fkd at the same shapes.

Each row trains `--warmup + --steps` steps through `okd.train.train` (the real loop) in its own process,
so its peak resident memory is its own; a step's time is the difference of consecutive `elapsed_s` in
metrics.jsonl, median over the steps after the warm-up. Rows (student: `--student`, a depth-pruned
SmolLM2; data: `--data`, the student's chat template, the teacher's own where it has one, else alpaca):

- `fkd` (same tokenizer): SmolLM2-135M-Instruct teacher, the reference;
- `fkd hybrid` / `fkd uld` / `fkd span`: the Gemma 3 270M teacher (262,144 tokens; `okd models fetch
  gemma3-270m`), method.cross_tokenizer = each loss;
- `okd hybrid`: okd's online module in the Gemma teacher, across tokenizers.

    python benchmarks/bench_crosstok.py --student runs/protocol/students/smol8 \\
        --out benchmarks/results/bench_crosstok.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS = {  # name: (teacher, method, cross_tokenizer)
    "fkd": ("smollm2-135m-instruct", "fkd", "off"),
    "fkd hybrid": ("gemma3-270m", "fkd", "hybrid"),
    "fkd uld": ("gemma3-270m", "fkd", "uld"),
    "fkd span": ("gemma3-270m", "fkd", "span"),
    "okd hybrid": ("gemma3-270m", "okd", "hybrid"),
}


def one(args, name: str, out: Path) -> dict:
    """Train one row in a child process; its step times, peak memory and the alignment's counts."""
    teacher, method, cross = ROWS[name]
    overrides = [f"teacher.path={teacher}", f"student.path={args.student}", f"method.name={method}",
                 f"method.cross_tokenizer={cross}", f"data.train={args.data}", "data.template=chat",
                 f"data.max_length={args.max_length}", f"train.batch_size={args.batch_size}",
                 f"train.max_steps={args.warmup + args.steps}", "train.eval_every=0", "train.save_every=0",
                 f"train.mixed_precision={args.mixed_precision}", f"output_dir={out}"]
    code = ("import sys, resource, torch; torch.set_num_threads(%d); from okd.config import build_config; "
            "from okd.train import train; out = train(build_config({}, sys.argv[1:]), progress=False); "
            "(out / 'peak_kib').write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))" % args.threads)
    subprocess.run([sys.executable, "-c", code, *overrides], check=True, cwd=ROOT)
    peak = int((out / "peak_kib").read_text())  # this process's own peak resident memory, KiB
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])][args.warmup - 1:]
    data = json.loads((out / "summary.json").read_text())["data"]
    return {"teacher": teacher, "method": method, "cross_tokenizer": cross, "step_s": statistics.median(times),
            "step_times": times, "peak_rss_gib": peak / 2**20,
            "alignment": {k: data.get(k) for k in ("aligned_groups", "one_to_one_groups", "teacher_unaligned",
                                                  "student_unaligned", "response_tokens")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", required=True, help="student model (a depth-pruned SmolLM2 directory)")
    p.add_argument("--data", default="sharegpt-short")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mixed-precision", default="no", help="train.mixed_precision of every row")
    p.add_argument("--out", help="write the results JSON here")
    args = p.parse_args(argv)
    from okd.compare.results import hardware
    from okd.precision import cpu_features

    machine = f"{hardware()['processor']} {cpu_features()}".strip()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            results[name] = one(args, name, Path(tmp) / name.replace(" ", "_"))
            print(f"{name}: {results[name]['step_s']:.2f} s/step, peak {results[name]['peak_rss_gib']:.2f} GiB",
                  flush=True)
    base = results.get("fkd", {}).get("step_s")
    print(f"\n{machine}, {args.threads} thread(s), batch {args.batch_size} x {args.max_length} tokens, "
          f"mixed precision {args.mixed_precision}\n")
    print("| row | teacher | s/step | × fkd | peak RSS (GiB) |\n|---|---|---|---|---|")
    for name, r in results.items():
        ratio = f"{r['step_s'] / base:.2f}" if base else "-"
        print(f"| {name} | {r['teacher']} | {r['step_s']:.2f} | {ratio} | {r['peak_rss_gib']:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": machine, "settings": vars(args), "rows": results},
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
