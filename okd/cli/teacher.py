"""`okd teacher cache -c CONFIG.yaml -o DIR [--top-k K] [key=value ...]`: run a frozen teacher once."""

from __future__ import annotations

import argparse
import logging

from okd.cli.args import check_device, torch_device
from okd.errors import OkdError

EPILOG = """\
Writes DIR/manifest.json and shards holding, for every scored token of data.train (and data.valid),
the teacher's top-k token ids, their log-probabilities (τ = 1) and the log of the remaining mass.
Tokenisation is the trainer's (the student's tokenizer, data.template, data.max_length, data.train_limit).
An interrupted build resumes: rerun the same command. Train from it with `teacher.cache: DIR` (fkd, rkd,
jsd, tvd, gkd with method.lmbda=0, distillm on ground truth).

example:
  okd teacher cache -c configs/tiny.yaml -o caches/tiny-top64 --top-k 64
  okd train -c configs/tiny.yaml method.name=fkd teacher.cache=caches/tiny-top64
"""


def register(sub) -> None:
    from okd.models.teacher_cache import DEFAULT_TOP_K, SHARD_EXAMPLES

    p = sub.add_parser("teacher", help="frozen-teacher utilities (cache its predictions once)",
                       description="Frozen-teacher utilities.")
    actions = p.add_subparsers(dest="teacher_action", metavar="ACTION")
    c = actions.add_parser("cache", help="store the teacher's top-k predictions on the training data",
                           description="Run the config's teacher once over data.train (and data.valid) and store "
                           "its top-k next-token distribution for every scored token.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("-c", "--config", help="the run's YAML config (teacher, student tokenizer, data)")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    c.add_argument("-o", "--output", required=True, metavar="DIR", help="cache directory (new, or a build to resume)")
    c.add_argument("--top-k", default=str(DEFAULT_TOP_K), metavar="K",
                   help=f"tokens kept per position, 1..V or 'all' (default {DEFAULT_TOP_K})")
    c.add_argument("--temperature", type=float, action="append", default=[], metavar="TAU",
                   help="also store the tail mass at this τ (exact tempered loss); method.temperature is added")
    c.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="storage of the log-probabilities (float32 for exact comparisons)")
    c.add_argument("--batch-size", type=int, default=8, help="teacher batch size (default 8)")
    c.add_argument("--shard-examples", type=int, default=SHARD_EXAMPLES, help="examples per shard")
    c.add_argument("--device", default=None, type=torch_device, help="cuda, cpu, ... (default: cuda if available)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def parse_top_k(text: str) -> int | str:
    if str(text).lower() in ("all", "v", "full"):
        return "all"
    try:
        k = int(text)
    except ValueError:
        raise OkdError(f"--top-k must be a positive number of tokens or 'all', got {text!r}") from None
    if k < 1:
        raise OkdError(f"--top-k must be a positive number of tokens, got {k}")
    return k


def run(args) -> int:
    from okd.config import load_config
    from okd.train.cache import build_teacher_cache
    from okd.train.preflight import check_output_dir

    check_output_dir(args.output, "-o")  # before the config, the data or the teacher is read
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    top_k = parse_top_k(args.top_k)
    if args.batch_size < 1 or args.shard_examples < 1:
        raise OkdError("--batch-size and --shard-examples must be >= 1")
    if any(not t > 0 for t in args.temperature):
        raise OkdError(f"--temperature must be > 0, got {min(args.temperature)}")
    check_device(args.device)
    cfg = load_config(args.config, args.overrides)
    manifest = build_teacher_cache(cfg, args.output, top_k=top_k, temperatures=args.temperature, dtype=args.dtype,
                                   batch_size=args.batch_size, shard_examples=args.shard_examples,
                                   device=args.device, progress=not args.quiet)
    counts = ", ".join(f"{s}: {r['examples']} examples, {r['tokens']} tokens" for s, r in manifest["splits"].items())
    print(f"done: {args.output} (k={manifest['top_k']}, {counts}, {manifest['bytes_per_token']} bytes/token)")
    return 0
