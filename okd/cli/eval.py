"""`okd eval` (ROUGE-L over seeds, exposure bias, teacher-forced stats) and `okd analyze` (§IV-A)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from okd.errors import OkdError


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _status(msg: str) -> None:
    print(f"okd: {msg}", file=sys.stderr, flush=True)


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a model (ROUGE-L over sampled seeds; exposure bias with --teacher) or a predictions file",
        description="Sample answers with --model on each --data set (temperature 1, top-p 1, top-k off, "
        "seeds 0..S-1), score ROUGE-L (mean ± std over seeds), write results JSON plus per-seed predictions "
        "<stem>.<dataset>.seed<k>.jsonl beside it. With --teacher, also exposure bias (ExAccErr) and "
        "teacher-forced stats on the references. With --predictions, score existing JSONL predictions "
        "(fields 'prediction' and 'output') without a model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="student/model to evaluate: HF directory, hub id, .gguf, or preset")
    src.add_argument("--predictions", nargs="+", metavar="FILE", help="JSONL file(s) with 'prediction' and 'output'")
    p.add_argument("--teacher", help="teacher (oracle) for exposure bias and teacher-forced stats")
    p.add_argument("--data", action="append", metavar="FILE_OR_PRESET",
                   help="evaluation data (file, directory or preset); repeat for several sets")
    p.add_argument("--split", default="test", help="split for presets/directories (default: test)")
    p.add_argument("--template", default="alpaca", choices=["alpaca", "chat", "plain"], help="prompt template")
    p.add_argument("--seeds", type=_positive, default=5, help="sampled runs, seeds 0..S-1 (default 5)")
    p.add_argument("--greedy", action="store_true", help="one greedy pass instead of sampled seeds")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (default 0 = off)")
    p.add_argument("--max-new-tokens", type=_positive, default=128, help="response length cap (default 128)")
    p.add_argument("--max-prompt-length", type=_positive, default=256, help="prompt tokens kept, from the right (default 256)")
    p.add_argument("--max-length", type=_positive, default=512, help="prompt+reference cap for teacher-forced stats")
    p.add_argument("--limit", type=_positive, help="use the first N examples of each set")
    p.add_argument("--batch-size", type=_positive, default=16, help="generation batch size (default 16)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--exposure-samples", type=_positive, default=4, help="sampled prefixes per prompt and model (default 4)")
    p.add_argument("--exposure-max-len", type=_positive, default=64, help="ExAccErr curve length in tokens (default 64)")
    p.add_argument("--exposure-length", type=_positive, default=32, help="l of the headline ExAccErr(l) (default 32)")
    p.add_argument("--exposure-prompts", type=_positive, help="use only the first N prompts for exposure bias")
    p.add_argument("--threads", type=_positive,
                   help="CPU threads for torch (default: torch's choice); 1 is often much faster on a busy shared CPU")
    p.add_argument("-o", "--output", required=True, metavar="RESULTS.json", help="results file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_eval)

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
    a.add_argument("--steps", type=_positive, default=200, help="training steps per grid run (default 200)")
    a.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for grid runs")
    a.add_argument("--template", default="alpaca", choices=["alpaca", "chat", "plain"])
    a.add_argument("--limit", type=_positive, default=200, help="analysis examples (default 200)")
    a.add_argument("--max-length", type=_positive, default=512)
    a.add_argument("--batch-size", type=_positive, default=8)
    a.add_argument("--thresholds", nargs=2, type=float, metavar=("LO", "HI"),
                   help="fixed UNC cut points instead of tertiles")
    a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    a.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    a.set_defaults(func=_analyze)


def _eval(args) -> int:
    from okd.eval.report import eval_table
    from okd.eval.runner import run_eval, score_predictions

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.predictions:
        if args.teacher or args.data:
            raise OkdError("--predictions scores existing files; drop --teacher/--data or use --model instead")
        results = score_predictions(args.predictions, args.output)
    else:
        if not args.data:
            raise OkdError("okd eval --model needs at least one --data FILE_OR_PRESET")
        results = run_eval(
            args.model, args.data, args.output, teacher_path=args.teacher, split=args.split,
            template=args.template, seeds=args.seeds, greedy=args.greedy, max_new_tokens=args.max_new_tokens,
            max_prompt_length=args.max_prompt_length, max_length=args.max_length, limit=args.limit,
            batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            exposure_samples=args.exposure_samples, exposure_max_len=args.exposure_max_len,
            exposure_length=args.exposure_length, exposure_prompts=args.exposure_prompts, dtype=args.dtype,
            progress=not args.no_progress and sys.stderr.isatty(), log=_status)
    print(eval_table(results))
    if "generation" in results:
        g = results["generation"]
        print(f"\ngeneration: {g['tokens']} tokens in {g['seconds']:.1f} s ({g['tokens_per_s']:.0f} tokens/s); "
              f"wall {results['wall_s']:.1f} s")
    print(f"results: {args.output}")
    return 0


def _analyze(args) -> int:
    from okd.eval.runner import run_analysis, student_label, train_grid

    if args.students:
        pairs = [student_label(d) for d in args.students]
        if args.labels:
            if len(args.labels) != len(pairs):
                raise OkdError(f"--labels has {len(args.labels)} names for {len(pairs)} --students")
            pairs = [(label, path) for label, (_, path) in zip(args.labels, pairs)]
        for _, path in pairs:
            if not path.exists():
                raise OkdError(f"student {str(path)!r} not found")
    else:
        # one short okd.train.train(Config) run per (divergence, τ), under <output>/runs
        pairs = train_grid(args.teacher, args.student, args.data, f"{args.output}/runs",
                           divergences=args.divergences, taus=args.taus, steps=args.steps,
                           template=args.template, overrides=args.set, log=_status)
    run_analysis(args.teacher, pairs, args.eval_data or args.data, args.output, split=args.split,
                 template=args.template, limit=args.limit, max_length=args.max_length,
                 batch_size=args.batch_size, thresholds=tuple(args.thresholds) if args.thresholds else None,
                 dtype=args.dtype, log=_status)
    print((Path(args.output) / "analysis.md").read_text(), end="")
    print(f"\nfigure: {args.output}/analysis.png")
    return 0
