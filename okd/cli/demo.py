"""`okd demo`: distill SmolLM2-135M-Instruct into a pruned student offline, evaluate, and report."""

from __future__ import annotations

import logging


def register(sub) -> None:
    from okd.demo import __doc__ as doc

    p = sub.add_parser("demo", help="run sft, fkd and okd end to end on the offline default and compare",
                       description=doc.split("\n\n")[1] if doc else None)
    p.add_argument("--tiny", action="store_true", help="tiny random models built on the fly (about a minute)")
    p.add_argument("--steps", type=int, help="training steps per method (default: 40; tiny: 150)")
    p.add_argument("--eval-limit", type=int, help="held-out prompts to evaluate (default: 40)")
    p.add_argument("-o", "--output", default="runs/demo", help="where runs, evaluations and report.md go")
    p.set_defaults(func=run)


def run(args) -> int:
    from okd.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_demo(args.output, tiny=args.tiny, steps=args.steps, eval_limit=args.eval_limit)
    return 0
