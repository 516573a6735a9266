"""`okd demo`: distill SmolLM2-135M-Instruct into a pruned student offline, evaluate, and report."""

from __future__ import annotations

import argparse
import logging

from okd.cli.args import positive_int


def positive_minutes(text: str) -> float:
    """argparse type: minutes > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text}")
    return v


def register(sub) -> None:
    from okd.demo import DEFAULT_MINUTES, TINY_STEPS, DemoPlan
    from okd.demo import __doc__ as doc

    d = DemoPlan("", "", "", "")
    p = sub.add_parser("demo", help="run sft, fkd and okd end to end on the offline default and compare",
                       description=doc.split("\n\n")[1] if doc else None)
    p.add_argument("--tiny", action="store_true",
                   help=f"tiny random models built on the fly, {TINY_STEPS} steps per method (a minute or two)")
    p.add_argument("--minutes", type=positive_minutes, metavar="M",
                   help=f"wall-clock budget of the whole demo, preparation included: the steps per method are "
                   f"chosen from measurements on this machine (default: {DEFAULT_MINUTES:g}; --tiny: fixed steps)")
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help=f"fix the training steps per method instead of a budget (tiny default: {TINY_STEPS})")
    p.add_argument("--eval-limit", type=positive_int, metavar="N",
                   help=f"held-out prompts to evaluate (default: {d.eval_limit}; tiny: 40)")
    p.add_argument("-o", "--output", default="runs/demo", help="where runs, evaluations and report.md go "
                   "(default: runs/demo; the demo writes <output>/smollm2 or <output>/tiny)")
    p.set_defaults(func=run)


def run(args) -> int:
    from okd.demo import run_demo
    from okd.errors import OkdError
    from okd.train.preflight import check_output_dir

    check_output_dir(args.output, "-o")  # before any download
    if args.steps and args.minutes:
        raise OkdError("give either --steps (fixed) or --minutes (a budget), not both")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_demo(args.output, tiny=args.tiny, steps=args.steps, eval_limit=args.eval_limit, minutes=args.minutes)
    return 0
