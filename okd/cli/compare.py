"""`okd compare -c GRID.yaml [--dry-run] [--only NAME ...]`: many methods, one budget, one report."""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """\
grid file (YAML):
  output_dir: runs/compare        runs/<name>/, eval/<name>.json, report.md, results.csv/.json, *.png
  threads: 2                      optional: torch threads (training and evaluation)
  isolate: true                   train each run in its own process (per-run peak memory; default)
  keep_checkpoints: false         delete each finished run's checkpoints/ (keeps student/ and logs)
  title: ...                      optional report title
  base:                           an `okd train` config tree shared by every run (no output_dir), plus
    student: {init: {from: TEACHER, layers: K, strategy: uniform}}   a depth-pruned student made once
  runs:                           list of {name, overrides: {dotted.key: value}, student_from: RUN}
    - {name: sft, overrides: {method.name: sft}}
    - {name: minillm, student_from: sft, overrides: {method.name: minillm}}
  sweeps:                         one run per value on top of base_run's overrides: <name>_<value>
    - {name: okd_rank, base_run: okd, key: online.rank, values: [16, 64]}
  intervals: [[okd, fkd]]         paired bootstrap intervals of ROUGE-L a − b (runs, seed groups, references)
  time_to_quality: [[okd, gkd]]   a's training time to b's best validation CE (b's time over a's), and both
                                  CEs at equal time
  eval:
    data: [sharegpt, seed-tasks]  eval sets (files, directories or presets)
    split: test; seeds: 3; max_new_tokens: 64; limit: 32; template: chat; batch_size: 16; greedy: false
    (and any other okd eval setting: temperature, top_p, top_k, max_prompt_length, max_length, dtype)
    references: [teacher, student_init]      also evaluate these untrained reference models
    exposure: {runs: [sft, okd], prompts: 8, samples: 2, max_len: 64, length: 32, data: ..., teacher: ...}

Complete runs (summary.json) and evaluations (same settings) are skipped; interrupted runs resume
from their last checkpoint. A run whose config equals an earlier run's reuses it. A grid too long for
one machine or session: --export DIR at the end of each part, --import DIR at the start of the next
(results travel, weights do not; runs whose weights are needed, e.g. a tuned teacher, train again).
--lanes N trains N runs at once in their own processes (threads: 1 and N = the cores), each run when
the runs it needs are done; its logs in <output_dir>/lanes/.

example:
  okd compare -c configs/compare-tiny.yaml --dry-run
  okd compare -c configs/compare-tiny.yaml
"""


def register(sub) -> None:
    p = sub.add_parser("compare", help="train and evaluate a grid of methods on one budget; tables and plots",
                       description="Train a list of methods (and option sweeps) on the same teacher, student "
                       "initialisation, data and budget, evaluate each (ROUGE-L over seeds, exposure bias), and "
                       "write report.md, results.csv, results.json and PNG plots into the grid's output_dir.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, metavar="GRID.yaml", help="grid file")
    p.add_argument("--dry-run", action="store_true", help="validate the grid and show what would run; run nothing")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="train and evaluate only these runs and reference rows (teacher, student_init); the runs they need are trained too, not evaluated; the report covers all")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from what exists; train nothing")
    p.add_argument("--progress", action="store_true", help="show the training/eval progress bars")
    p.add_argument("--lanes", type=int, metavar="N",
                   help="train N runs at once, each in its own process (a run starts when the runs it needs are done; "
                        "with threads: 1, N = the number of cores)")
    p.add_argument("--no-eval", action="store_true", help="train only; evaluate in a later call")
    p.add_argument("--no-report", action="store_true", help="leave the report (and --export) for a later call")
    p.add_argument("--import", dest="import_from", metavar="DIR",
                   help="first take from DIR (written by --export) the runs and evaluations this grid lacks: their "
                        "results without weights (a run whose weights are needed is trained again)")
    p.add_argument("--export", dest="export_to", metavar="DIR",
                   help="at the end copy the results (configs, summaries, metrics, evaluations; no weights) into DIR, "
                        "to carry the grid to another machine or session")
    p.set_defaults(func=run)


def run(args) -> int:
    from okd.compare import run_compare
    from okd.errors import OkdError

    if args.lanes is not None and args.lanes < 1:
        raise OkdError(f"--lanes {args.lanes}: give at least 1 (the number of runs trained at once)")

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    plan = run_compare(args.config, only=args.only, dry_run=args.dry_run, report_only=args.report_only,
                       progress=args.progress and sys.stderr.isatty(), import_from=args.import_from,
                       export_to=args.export_to, lanes=args.lanes, evaluate=not args.no_eval,
                       write=not args.no_report)
    if not args.dry_run and not args.no_report:
        print((plan.out / "report.md").read_text(), end="")
    return 0
