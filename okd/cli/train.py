"""`okd train -c CONFIG.yaml [key=value ...] [--resume]`."""

from __future__ import annotations

import argparse
import logging
import os

from okd.config import METHODS, load_config

EPILOG = f"""\
Config sections and common keys (any key can be overridden as section.key=value):
  teacher.path / student.path   HF directory, hub id, .gguf file, or preset (okd models list)
  data.train, data.valid        JSONL/JSON file, directory, hub dataset id, or preset (okd data list)
  data.template                 alpaca | chat | plain;    data.max_length
  method.name                   {' | '.join(METHODS)}
  method.divergence             fkl | rkl | jsd | tvd | skl | srkl (default: the method's own; ce for sft, seqkd)
  method.teacher                online | frozen (e.g. method.name=rkd method.teacher=online)
  method.temperature, method.beta, method.lmbda, method.alpha
  online.rank, online.lora_alpha, online.alpha, online.lr, online.layers (top k or a list)
  train.max_steps, train.batch_size, train.grad_accum, train.lr, train.seed,
  train.save_every, train.eval_every, train.mixed_precision, train.trackers
  output_dir

example:
  okd train -c configs/tiny.yaml method.name=fkd train.max_steps=20 output_dir=runs/fkd
"""


def register(sub) -> None:
    p = sub.add_parser("train", help="train a student with one method",
                       description="Train a student with OKD or a baseline; writes student/, "
                       "online_module/, checkpoints/, metrics.jsonl and summary.json to output_dir.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML config file (optional: everything can be given as overrides)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from okd.train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.overrides)
    try:
        out = train(cfg, resume=args.resume, progress=not args.quiet)
    finally:
        _leave_process_group()
    if os.environ.get("RANK", "0") == "0":  # once, not once per process under accelerate launch
        print(f"done: {out}")
    return 0


def _leave_process_group() -> None:
    """A launched process tears its process group down before the interpreter exits: left to exit-time
    destructors, gloo's threads were seen to abort a process after its outputs were written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a failed run's group may be broken already; exit as it was
            pass
