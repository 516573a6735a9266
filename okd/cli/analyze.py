"""`okd analyze`: the paper's §IV-A study (KL, logit std, top-1 agreement by token difficulty)."""

from __future__ import annotations

from pathlib import Path

from okd.cli.args import positive_int, status
from okd.errors import OkdError


def register(sub) -> None:
    a = sub.add_parser(
        "analyze", help="the paper's §IV-A study: KL, logit std, top-1 agreement by token difficulty",
        description="Compare students trained with fkl, rkl and jsd at several temperatures against their "
        "teacher, teacher-forced on reference answers: KL(p||q), student logit std and top-1 agreement, overall "
        "and by difficulty bucket (UNC = 1 - p_teacher(gold token), tertiles unless --thresholds). Writes "
        "analysis.json, analysis.md and analysis.png into -o DIR. Pass trained students with --students, or "
        "--student INIT to train the grid first (short runs through okd train).")
    a.add_argument("--teacher", required=True, help="teacher model")
    a.add_argument("--data", required=True, metavar="FILE_OR_PRESET", help="data: training set for the grid and analysis references")
    a.add_argument("--eval-data", metavar="FILE_OR_PRESET", help="references for the analysis (default: --data)")
    a.add_argument("--split", default="test", help="split of the analysis data (default: test)")
    grp = a.add_mutually_exclusive_group(required=True)
    grp.add_argument("--students", nargs="+", metavar="DIR",
                     help="trained students: run directories (labelled from their config.yaml) or model directories")
    grp.add_argument("--student", metavar="INIT", help="student initialisation to train the grid from")
    a.add_argument("--labels", nargs="+", help="labels for --students, in order")
    a.add_argument("--divergences", nargs="+", default=["fkl", "rkl", "jsd"], choices=["fkl", "rkl", "jsd"])
    a.add_argument("--taus", nargs="+", type=float, default=[1.0, 2.0, 4.0], help="training temperatures (default 1 2 4)")
    a.add_argument("--steps", type=positive_int, default=200, help="training steps per grid run (default 200)")
    a.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for grid runs")
    a.add_argument("--template", default="alpaca", choices=["alpaca", "chat", "plain"])
    a.add_argument("--limit", type=positive_int, default=200, help="analysis examples (default 200)")
    a.add_argument("--max-length", type=positive_int, default=512)
    a.add_argument("--batch-size", type=positive_int, default=8)
    a.add_argument("--thresholds", nargs=2, type=float, metavar=("LO", "HI"),
                   help="fixed UNC cut points instead of tertiles")
    a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    a.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    a.set_defaults(func=_analyze)


def _students(args) -> list[tuple[str, Path]]:
    """(label, model directory) of --students, or of the grid trained from --student."""
    from okd.analyze import student_label, train_grid

    if not args.students:
        # one short okd.train.train(Config) run per (divergence, τ), under <output>/runs
        return train_grid(args.teacher, args.student, args.data, f"{args.output}/runs",
                          divergences=args.divergences, taus=args.taus, steps=args.steps,
                          template=args.template, overrides=args.set, log=status)
    pairs = [student_label(d) for d in args.students]
    if args.labels:
        if len(args.labels) != len(pairs):
            raise OkdError(f"--labels has {len(args.labels)} names for {len(pairs)} --students")
        pairs = [(label, path) for label, (_, path) in zip(args.labels, pairs)]
    for _, path in pairs:
        if not path.exists():
            raise OkdError(f"student {str(path)!r} not found")
    return pairs


def _analyze(args) -> int:
    from okd.analyze import run_analysis
    from okd.train.preflight import check_output_dir

    check_output_dir(args.output, "-o")  # before any training or model loading
    if args.thresholds and not 0 <= args.thresholds[0] <= args.thresholds[1] <= 1:
        lo, hi = args.thresholds
        raise OkdError(f"--thresholds {lo:g} {hi:g}: give LO HI with 0 <= LO <= HI <= 1 (the UNC values that split "
                       "tokens into easy < LO <= medium < HI <= hard)")

    run_analysis(args.teacher, _students(args), args.eval_data or args.data, args.output, split=args.split,
                 template=args.template, limit=args.limit, max_length=args.max_length,
                 batch_size=args.batch_size, thresholds=tuple(args.thresholds) if args.thresholds else None,
                 dtype=args.dtype, log=status)
    print((Path(args.output) / "analysis.md").read_text(), end="")
    print(f"\nfigure: {args.output}/analysis.png")
    return 0
