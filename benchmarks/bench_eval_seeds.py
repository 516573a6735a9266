"""Evaluation's S sampled answers per prompt: S seeded `generate` calls against one `generate_seeds` pass.

`okd eval` (and `okd compare`'s evaluation) samples every prompt S times (the paper's protocol: 5). Each
seeded call used to read the prompts again; `okd.generation.generate_seeds` reads each batch's prompt
prefix once and continues every seed from a copy of its KV cache. This measures both ways in one
process, alternating round by round (a shared machine drifts), and checks that they give the same
answers, seed by seed.

    python benchmarks/bench_eval_seeds.py --tiny                       # seconds: a tiny random model
    python benchmarks/bench_eval_seeds.py --model runs/study/runs/fkd_s1/student --prompts 64 --seeds 5 \
        --out benchmarks/results/bench_eval_seeds_smollm2.json

`--compact` times the other choice instead: one pass through transformers' generate (finished rows decode
padding until the batch's longest answer ends) against okd's compacting loop (generate_seeds(compact=True):
rows leave the batch as they end), which `okd eval` uses. Their random draws differ, so it reports the
answers' lengths and finished shares instead of identical answers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(args):
    """(model, tokenizer, prompt ids) for the run."""
    from okd.data import load_examples
    from okd.eval.runner import load_model_and_tokenizer, prepare_prompts

    if args.tiny:
        from okd.models.tiny import byte_tokenizer, tiny_model

        tok = byte_tokenizer()
        model = tiny_model("llama", seed=0)
    else:
        model, tok = load_model_and_tokenizer(args.model, args.dtype)
    examples = load_examples(args.data, split="test", limit=args.prompts)
    return model, tok, prepare_prompts(examples, tok, "chat", args.max_prompt_length)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny random llama and the seed tasks (seconds)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model path, run directory or preset")
    p.add_argument("--data", default="sharegpt", help="eval data (preset, file or directory); test split")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--seeds", type=int, default=5, help="sampled answers per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds of each way (median reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compact", action="store_true", help="time generate against the compacting loop instead")
    p.add_argument("--out", help="write the results JSON here")
    args = p.parse_args(argv)
    if args.tiny:
        from okd.data.presets import seed_tasks_path

        args.data = str(seed_tasks_path())
    torch.set_num_threads(args.threads)

    from okd.generation import generate, generate_seeds

    model, tok, prompts = load(args)
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    seeds = list(range(args.seeds))
    if args.compact:
        return compare_compact(args, model, tok, prompts, kw, seeds)
    times: dict[str, list[float]] = {"separate": [], "one_pass": []}
    same = total = 0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        separate = [generate(model, tok, prompts, seed=s, **kw) for s in seeds]
        times["separate"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        joint = generate_seeds(model, tok, prompts, seeds=seeds, **kw)
        times["one_pass"].append(time.perf_counter() - t0)
        same += sum(a == b for x, y in zip(separate, joint) for a, b in zip(x.sequences, y.sequences))
        total += len(prompts) * len(seeds)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = _result(args, prompts, times, med, speedup=med["separate"] / med["one_pass"],
                  identical_answers=f"{same}/{total}")
    print(f"separate seeded calls {med['separate']:.1f} s, one pass {med['one_pass']:.1f} s "
          f"(median of {args.rounds}): {res['speedup']:.2f}x; identical answers {same}/{total}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if same == total else 1


def _result(args, prompts, times, med, **extra) -> dict:
    """The results JSON of either comparison (the machine and settings, then its own figures); prints its head."""
    from okd.compare.results import hardware
    from okd.precision import cpu_features

    res = {"model": "tiny llama" if args.tiny else args.model, "data": args.data, "prompts": len(prompts),
           "seeds": args.seeds, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
           "threads": args.threads, "dtype": args.dtype, "rounds": args.rounds,
           "machine": f"{hardware()['processor']} {cpu_features()}".strip(), "torch": torch.__version__,
           "seconds": times, "median_s": med, **extra}
    print(f"{res['machine']}, {args.threads} thread(s), {args.dtype}: {len(prompts)} prompts x {args.seeds} seeds, "
          f"{args.max_new_tokens} new tokens, batch {args.batch_size}")
    return res


def compare_compact(args, model, tok, prompts, kw, seeds) -> int:
    from okd.generation import generate_seeds

    times: dict[str, list[float]] = {"generate": [], "compact": []}
    answers: dict[str, dict] = {}
    for _ in range(args.rounds):
        for way in times:
            t0 = time.perf_counter()
            gens = generate_seeds(model, tok, prompts, seeds=seeds, compact=way == "compact", **kw)
            times[way].append(time.perf_counter() - t0)
            lengths = [len(x) for g in gens for x in g.sequences]
            answers[way] = {"mean_tokens": statistics.mean(lengths), "max_tokens": max(lengths),
                            "finished": statistics.mean(f for g in gens for f in g.finished)}
    med = {k: statistics.median(v) for k, v in times.items()}
    res = _result(args, prompts, times, med, speedup=med["generate"] / med["compact"], answers=answers)
    print(f"generate {med['generate']:.1f} s, compact {med['compact']:.1f} s (median of {args.rounds}): "
          f"{res['speedup']:.2f}x; answers {answers}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
