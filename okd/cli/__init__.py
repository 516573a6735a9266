"""The `okd` command: one argparse parser, each subcommand registered by its own module.

Every module in this package exposes `register(subparsers)`, which adds its subcommand(s) and sets
`func` (a callable taking the parsed args and returning an exit code). User mistakes raise
`OkdError`, printed here as one line without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from okd.cli import analyze, assets, compare, demo, runs, teacher, train
from okd.cli import eval as eval_command
from okd.entry import quiet_libraries
from okd.errors import OkdError

# Subcommand modules, in the order they appear in `okd --help`. Each imports only argparse-level
# things at module level; the work (torch, models) is imported when a command runs.
COMMANDS = [train, teacher, eval_command, analyze, compare, runs, assets, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="okd",
        description="Distill a large causal LM into a small one with Online Knowledge Distillation "
        "and the baselines it compares against.",
    )
    from okd import __version__

    parser.add_argument("--version", action="version", version=f"okd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # (also while the libraries import, before any command runs)
        print("okd: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    quiet_libraries()  # before anything imports transformers or DeepSpeed
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `okd train -c x.yaml --resume train.lr=1e-4`: overrides after an option are still overrides
    if extra and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OkdError as e:
        code = getattr(e, "exit_code", 2)  # 130 for a Ctrl-C that stopped training cleanly
        print(f"okd: {'error: ' if code == 2 else ''}{e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
