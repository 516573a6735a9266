"""`okd eval`: ROUGE-L over seeds, exposure bias and teacher-forced stats (with --teacher), or scoring
existing predictions. The evaluation flags are the keys of okd.eval.EvalConfig (`--top-p` is `top_p`,
`--exposure-max-len` is `exposure.max_len`) and take its defaults."""

from __future__ import annotations

import sys
from typing import get_args

from okd.cli.args import positive_int, status
from okd.config import get_dotted, set_dotted
from okd.errors import OkdError
from okd.eval.config import DType, EvalConfig, Template, build_eval_config
from okd.eval.follow import FOLLOWED

# (EvalConfig key, argparse options, help); the flag is the key spelled with dashes.
SETTINGS: list[tuple[str, dict, str]] = [
    ("split", {}, "split for presets/directories (default: {})"),
    ("template", {"choices": list(get_args(Template))},
     "prompt template (default: a run's data.template when --model is a run or its student/, else {})"),
    ("seeds", {"type": positive_int}, "sampled runs, seeds 0..S-1 (default {})"),
    ("greedy", {"action": "store_true"}, "one greedy pass instead of sampled seeds"),
    ("temperature", {"type": float}, "sampling temperature (default {:g})"),
    ("top_p", {"type": float}, "nucleus sampling (default {:g} = off)"),
    ("top_k", {"type": int}, "top-k sampling (default {} = off)"),
    ("max_new_tokens", {"type": positive_int}, "response length cap (default {})"),
    ("max_prompt_length", {"type": positive_int},
     "prompt tokens kept, from the right (default: a run's data.max_prompt_length, else {})"),
    ("max_length", {"type": positive_int}, "prompt+reference cap for teacher-forced stats (default {})"),
    ("limit", {"type": positive_int}, "use the first N examples of each set"),
    ("batch_size", {"type": positive_int}, "generation batch size (default {})"),
    ("dtype", {"choices": list(get_args(DType))}, "model dtype (default {}); fast = bfloat16 where the CPU/GPU has native bf16, else float32"),
    ("rouge_tokenizer", {"choices": ["default", "unicode"]},
     "ROUGE-L tokenizer: default = rouge-score's, the paper's (ASCII letters and digits only); unicode = words "
     "of any script, each CJK character a word (default {})"),
    ("exposure.samples", {"type": positive_int}, "sampled prefixes per prompt and model (default {})"),
    ("exposure.max_len", {"type": positive_int}, "ExAccErr curve length in tokens (default {})"),
    ("exposure.length", {"type": positive_int}, "l of the headline ExAccErr(l) (default {})"),
    ("exposure.prompts", {"type": positive_int}, "use only the first N prompts for exposure bias"),
]


def flag(key: str) -> str:
    """The command-line flag of an EvalConfig key: exposure.max_len -> --exposure-max-len."""
    return "--" + key.replace(".", "-").replace("_", "-")


def _dest(key: str) -> str:
    return key.replace(".", "_")


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a model (ROUGE-L over sampled seeds; exposure bias with --teacher) or a predictions file",
        description="Sample answers with --model on each --data set (temperature 1, top-p 1, top-k off, "
        "seeds 0..S-1), score ROUGE-L (mean ± std over seeds), write results JSON plus per-seed predictions "
        "<stem>.<dataset>.seed<k>.jsonl beside it. With --teacher, also exposure bias (ExAccErr) and "
        "teacher-forced stats on the references. With --predictions, score existing JSONL predictions "
        "(fields 'prediction' and 'output') without a model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="student/model to evaluate: a run directory (or its student/), HF directory, "
                     "hub id, .gguf, or preset")
    src.add_argument("--predictions", nargs="+", metavar="FILE", help="JSONL file(s) with 'prediction' and 'output'")
    p.add_argument("--teacher", help="teacher (oracle) for exposure bias and teacher-forced stats")
    p.add_argument("--data", action="append", metavar="FILE_OR_PRESET",
                   help="evaluation data (file, directory or preset); repeat for several sets")
    defaults = EvalConfig().model_dump()
    for key, options, help_text in SETTINGS:
        default = get_dotted(defaults, key)
        if options.get("action") != "store_true":
            options = {**options, "default": None if key in FOLLOWED else default}  # None: follow the run
        p.add_argument(flag(key), dest=_dest(key), help=help_text.format(default), **options)
    p.add_argument("--threads", type=positive_int,
                   help="CPU threads for torch (default: torch's choice); 1 is often much faster on a busy shared CPU")
    p.add_argument("-o", "--output", required=True, metavar="RESULTS.json", help="results file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_eval)


def settings_from_args(args) -> EvalConfig:
    """The EvalConfig the flags describe; a bad value is an error naming its flag."""
    tree: dict = {}
    for key, _, _ in SETTINGS:
        value = getattr(args, _dest(key))
        if value is not None or key not in FOLLOWED:  # a followed setting not given: the default
            set_dotted(tree, key, value)
    return build_eval_config(tree, name=flag)


def _eval(args) -> int:
    from okd.eval.follow import follow_run
    from okd.eval.report import eval_table
    from okd.eval.runner import run_eval, score_predictions
    from okd.train.preflight import check_output_file

    check_output_file(args.output, "-o")  # before any model loads or anything is generated
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.predictions:
        if args.teacher or args.data:
            raise OkdError("--predictions scores existing files; drop --teacher/--data or use --model instead")
        results = score_predictions(args.predictions, args.output,
                                    rouge_tokenizer=settings_from_args(args).rouge_tokenizer, log=status)
    else:
        if not args.data:
            raise OkdError("okd eval --model needs at least one --data FILE_OR_PRESET")
        model, followed = follow_run(args.model, {k: getattr(args, k) for k in FOLLOWED}, log=status)
        for key, value in followed.items():  # the run's template and prompt length, where not given
            setattr(args, _dest(key), value)
        results = run_eval(model, args.data, args.output, settings_from_args(args), teacher_path=args.teacher,
                           progress=not args.no_progress and sys.stderr.isatty(), log=status)
    print(eval_table(results))
    if "generation" in results:
        g = results["generation"]
        print(f"\ngeneration: {g['tokens']} tokens in {g['seconds']:.1f} s ({g['tokens_per_s']:.0f} tokens/s); "
              f"wall {results['wall_s']:.1f} s")
    print(f"results: {args.output}")
    return 0
