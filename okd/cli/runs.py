"""`okd plot RUN... -o FILE.png` and `okd push RUN --repo ORG/NAME`: what is done with finished runs."""

from __future__ import annotations

import argparse

from okd.errors import OkdError

PLOT_EPILOG = """\
Panels (each where some run logged it): training loss, validation CE, and for online-teacher runs (OKD)
the module dynamics: KL(base teacher ‖ student) and KL(online teacher ‖ student), the teacher's CE on
the references (base and online), and the norm of the LoRA update.

example:
  okd plot runs/demo/smollm2/runs/sft runs/demo/smollm2/runs/okd -o curves.png
"""

PUSH_EPILOG = """\
Pushes, in one commit: the student (repository root, with its model card README.md), online_module/
(OKD runs), and okd/config.yaml, okd/summary.json, okd/metrics.jsonl. Checkpoints stay local, and so do
machine-local paths (the cards are written for the repository; config.yaml and summary.json keep the
last part of each local path). The token is huggingface_hub's (`hf auth login` or $HF_TOKEN) unless
--token is given.

example:
  okd push runs/okd-smollm2 --repo my-org/smollm2-okd-8l --private
"""


def register(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("plot", help="learning curves of one or more runs (PNG)", formatter_class=fmt,
                       description="Draw the curves of runs from their metrics.jsonl: training loss and "
                       "validation CE against training time (or step), and OKD's module dynamics.",
                       epilog=PLOT_EPILOG)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (okd train's output_dir) or their student/")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="the figure to write")
    p.add_argument("--x", choices=["time", "step"], default="time",
                   help="x axis: training time without validation (default) or optimizer step")
    p.add_argument("--labels", nargs="+", help="legend labels, one per run (default: the directory names)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=_plot)

    q = sub.add_parser("push", help="push a run's student (with its model card) to the Hugging Face hub",
                       formatter_class=fmt, description="Upload a finished run to a hub model repository, "
                       "creating it if needed.", epilog=PUSH_EPILOG)
    q.add_argument("run", metavar="RUN", help="run directory (okd train's output_dir) or its student/")
    q.add_argument("--repo", required=True, metavar="ORG/NAME", help="hub model repository")
    q.add_argument("--private", action="store_true", help="create the repository private")
    q.add_argument("--revision", help="branch to commit to (default: main)")
    q.add_argument("--message", help="commit message (default: 'okd run NAME')")
    q.add_argument("--no-online-module", action="store_true", help="leave online_module/ out")
    q.add_argument("--teacher-repo", metavar="ORG/NAME",
                   help="the teacher's hub id, for the online module's adapter_config.json and card (needed when the "
                        "teacher is a local model; a preset's is known)")
    q.add_argument("--token", help="hub token (default: huggingface_hub's login or $HF_TOKEN)")
    q.set_defaults(func=_push)


def check_figure_name(path: str) -> None:
    """The figure's file name must end with a format matplotlib writes (it picks the format by the suffix)."""
    from pathlib import Path

    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise OkdError(f"-o {path!r}: matplotlib writes {', '.join('.' + f for f in sorted(formats))} figures, "
                       f"chosen by the file name's ending; give e.g. {Path(path).with_suffix('.png').name!r}")


def _plot(args) -> int:
    from okd.eval.curves import plot_runs, resolve_run
    from okd.train.preflight import check_output_file

    for run in args.runs:  # every run exists before anything is drawn
        resolve_run(run)
    check_output_file(args.output, "-o", "curves.png")
    check_figure_name(args.output)
    path = plot_runs(args.runs, args.output, labels=args.labels, x=args.x, title=args.title)
    print(f"figure: {path}")
    return 0


def _push(args) -> int:
    from okd.cli.args import status
    from okd.hub import push_run

    url = push_run(args.run, args.repo, token=args.token, private=args.private or None, revision=args.revision,
                   commit_message=args.message, online_module=not args.no_online_module,
                   teacher_repo=args.teacher_repo, log=status)
    print(f"pushed: {url}")
    return 0
