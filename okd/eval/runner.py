"""`okd eval` as functions: sample answers over seeds, score ROUGE-L, run the teacher analyses.

ROUGE-L per dataset is the mean over examples for each seed; the reported mean and std are over
seeds (std with ddof=1, the sample std; None with a single run, e.g. greedy). Sampling is at
temperature 1, top-p 1, top-k off (DESIGN §2) unless set otherwise; seeds are 0..S−1.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

from okd.errors import OkdError
from okd.eval.rouge import rouge_l_per_example
from okd.generation import generate, pad_id


def load_model_and_tokenizer(path: str, dtype: str = "float32"):
    """Model (eval mode) and tokenizer from a path, hub id, .gguf or preset."""
    from okd.config import ModelConfig
    from okd.models.loading import load_model, load_tokenizer

    cfg = ModelConfig(path=str(path), dtype=dtype)
    return load_model(cfg), load_tokenizer(cfg)


def dataset_name(source: str, taken: set[str]) -> str:
    """A short, file-name-safe name: the preset name, or the file/directory stem; made unique."""
    p = Path(source)
    base = p.stem if p.is_file() else p.name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._") or "data"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def prepare_prompts(examples, tokenizer, template: str, max_prompt_length: int) -> list[list[int]]:
    from okd.data import prompt_ids

    return [prompt_ids(ex, tokenizer, template, max_prompt_length) for ex in examples]


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else 0.0,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "runs": len(values)}


def quick_rouge(model, tokenizer, examples, template: str, *, max_new_tokens: int, max_prompt_length: int,
                seed: int = 0, batch_size: int = 16) -> float:
    """Mean ROUGE-L (×100) of one sampled answer per example (temperature 1, top-p 1, top-k off).

    For the training loop's periodic evaluation; leaves the model's train/eval mode and the global
    RNG state as they were.
    """
    examples = list(examples)
    if not examples:
        return 0.0
    prompts = prepare_prompts(examples, tokenizer, template, max_prompt_length)
    gen = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    scores = rouge_l_per_example(gen.texts, [ex.response for ex in examples])
    return sum(scores) / len(scores)


def reference_batches(examples, tokenizer, template: str, max_length: int, batch_size: int):
    """Right-padded batches of the references with response-only labels (teacher-forced analyses)."""
    from okd.data import Collator, encode_examples

    features, _ = encode_examples(examples, tokenizer, template, max_length)
    features.sort(key=lambda f: len(f["input_ids"]))  # less padding; order does not matter here
    collate = Collator(pad_id(tokenizer, [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
    return [collate(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def run_eval(model_path: str, data: list[str], output: str | Path, *, teacher_path: str | None = None,
             split: str = "test", template: str = "alpaca", seeds: int = 5, greedy: bool = False,
             max_new_tokens: int = 128, max_prompt_length: int = 256, max_length: int = 512,
             limit: int | None = None, batch_size: int = 16, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, exposure_samples: int = 4, exposure_max_len: int = 64,
             exposure_length: int = 32, exposure_prompts: int | None = None, dtype: str = "float32",
             progress: bool = False, log=print) -> dict:
    """Evaluate a model on datasets; writes results JSON and per-seed predictions; returns results."""
    from okd.data import load_examples

    if seeds < 1:
        raise OkdError(f"--seeds must be at least 1, got {seeds}")
    if not greedy and not temperature > 0:
        raise OkdError(f"--temperature must be > 0 for sampling (got {temperature}); use --greedy for argmax decoding")
    if not 0 < top_p <= 1 or top_k < 0:
        raise OkdError(f"--top-p must be in (0, 1] and --top-k >= 0 (0 = off); got {top_p} and {top_k}")
    if teacher_path is not None and not 1 <= exposure_length <= exposure_max_len:
        raise OkdError(f"--exposure-length ({exposure_length}) must be between 1 and --exposure-max-len "
                       f"({exposure_max_len})")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(model_path, dtype)
    teacher = vocab = None
    if teacher_path is not None:
        from okd.models.loading import check_compatible

        teacher, t_tok = load_model_and_tokenizer(teacher_path, dtype)
        vocab = check_compatible(t_tok, tok, teacher, model)

    runs = [("greedy", None)] if greedy else [(f"seed{s}", s) for s in range(seeds)]
    results: dict = {
        "model": str(model_path), "teacher": teacher_path,
        "settings": dict(split=split, template=template, seeds=None if greedy else seeds, greedy=greedy,
                         temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                         max_prompt_length=max_prompt_length, limit=limit, batch_size=batch_size),
        "datasets": {},
    }
    total_tokens = total_gen_s = 0.0
    taken: set[str] = set()
    for source in data:
        name = dataset_name(source, taken)
        examples = load_examples(source, split=split, limit=limit)
        prompts = prepare_prompts(examples, tok, template, max_prompt_length)
        refs = [ex.response for ex in examples]
        entry: dict = {"source": str(source), "examples": len(examples), "predictions": []}
        per_run, tokens, gen_s = [], 0, 0.0
        for run_name, seed in runs:
            gen = generate(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, greedy=greedy, seed=seed, batch_size=batch_size,
                           progress=progress)
            scores = rouge_l_per_example(gen.texts, refs)
            per_run.append(sum(scores) / len(scores))
            tokens, gen_s = tokens + gen.num_tokens, gen_s + gen.elapsed_s
            pred_path = output.with_name(f"{output.stem}.{name}.{run_name}.jsonl")
            _write_jsonl(pred_path, [
                {"instruction": ex.instruction, "input": ex.input, "output": ex.response, "prediction": text,
                 "rougeL": sc, "finished": fin, "source": ex.source}
                for ex, text, sc, fin in zip(examples, gen.texts, scores, gen.finished)])
            entry["predictions"].append(pred_path.name)
            log(f"{name} {run_name}: ROUGE-L {per_run[-1]:.2f} ({gen.num_tokens} tokens, "
                f"{gen.tokens_per_s:.0f} tokens/s)")
        entry["rougeL"] = {**_mean_std(per_run), "per_seed": per_run}
        entry["generation"] = {"tokens": tokens, "seconds": gen_s, "tokens_per_s": tokens / gen_s if gen_s else 0.0}
        total_tokens, total_gen_s = total_tokens + tokens, total_gen_s + gen_s

        if teacher is not None:
            from okd.eval.exposure import exposure_bias
            from okd.eval.teacher_forced import teacher_forced_stats

            t1 = time.perf_counter()
            ex_prompts = prompts[:exposure_prompts] if exposure_prompts else prompts
            entry["exposure_bias"] = exposure_bias(
                model, teacher, ex_prompts, tokenizer=tok, samples=exposure_samples, max_len=exposure_max_len,
                length=exposure_length, seed=0, batch_size=batch_size, vocab_size=vocab, progress=progress)
            entry["exposure_bias"]["seconds"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            batches = reference_batches(examples, tok, template, max_length, max(1, batch_size // 2))
            entry["teacher_forced"] = teacher_forced_stats(model, teacher, batches, vocab_size=vocab)
            entry["teacher_forced"]["seconds"] = time.perf_counter() - t1
            at = entry["exposure_bias"]["at_l"]
            log(f"{name}: ExAccErr@{exposure_length} = {'n/a' if at is None else f'{at:.1f}%'}, "
                f"top-1 agreement {100 * entry['teacher_forced']['overall']['top1_agreement']:.1f}%")
        results["datasets"][name] = entry

    curves = {n: d["exposure_bias"] for n, d in results["datasets"].items() if "exposure_bias" in d}
    if curves:
        from okd.eval.report import plot_exposure

        fig = output.with_name(f"{output.stem}.exposure.png")
        plot_exposure(curves, fig)
        results["exposure_plot"] = fig.name
    results["generation"] = {"tokens": int(total_tokens), "seconds": total_gen_s,
                             "tokens_per_s": total_tokens / total_gen_s if total_gen_s else 0.0}
    results["wall_s"] = time.perf_counter() - t0
    output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def read_predictions(path: str | Path) -> tuple[list[str], list[str]]:
    """(predictions, references) from a JSONL with `prediction` and `output` fields."""
    path = Path(path)
    if not path.is_file():
        raise OkdError(f"predictions file {str(path)!r} not found")
    preds, refs = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise OkdError(f"{path} line {i}: not valid JSON") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("prediction"), str) \
                    or not isinstance(rec.get("output"), str):
                raise OkdError(f"{path} line {i}: needs string fields 'prediction' and 'output' (the reference)")
            preds.append(rec["prediction"])
            refs.append(rec["output"])
    if not preds:
        raise OkdError(f"{path}: no predictions found")
    return preds, refs


def score_predictions(files: list[str], output: str | Path | None = None) -> dict:
    """ROUGE-L of prediction files (no model); each file is one dataset row."""
    results: dict = {"datasets": {}}
    taken: set[str] = set()
    for f in files:
        preds, refs = read_predictions(f)
        scores = rouge_l_per_example(preds, refs)
        results["datasets"][dataset_name(f, taken)] = {
            "source": str(f), "examples": len(scores),
            "rougeL": {"mean": sum(scores) / len(scores), "std": None, "runs": 1, "per_seed": [sum(scores) / len(scores)]},
        }
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


# ---------------------------------------------------------------------------------------------
# okd analyze: the paper's §IV-A study (divergence × temperature, teacher-forced, by difficulty)

ANALYZE_METHODS = {"fkl": "fkd", "rkl": "rkd", "jsd": "jsd"}


def train_grid(teacher: str, student: str, data: str, out_dir: str | Path, *, divergences=("fkl", "rkl", "jsd"),
               taus=(1.0, 2.0, 4.0), steps: int = 200, template: str = "alpaca",
               overrides: list[str] | None = None, log=print) -> list[tuple[str, Path]]:
    """Short training runs, one per (divergence, τ); returns (label, student directory) pairs.

    The only place `analyze` touches training, so the call can follow okd.train's API. A run whose
    directory already holds summary.json and student/ is reused, not retrained.
    """
    try:
        from okd.train import train
    except ImportError:
        raise OkdError("okd analyze: training the grid needs okd.train.train, which this build lacks; "
                       "train the students yourself and pass them with --students DIR [DIR ...]") from None
    from okd.config import build_config

    runs = []
    for div in divergences:
        if div not in ANALYZE_METHODS:
            raise OkdError(f"--divergences: {div!r} is not one of {', '.join(ANALYZE_METHODS)}")
        for tau in taus:
            label = f"{div} τ={tau:g}"
            run_dir = Path(out_dir) / f"{div}_tau{tau:g}"
            tree = {"teacher": {"path": teacher}, "student": {"path": student},
                    "data": {"train": data, "template": template},
                    "method": {"name": ANALYZE_METHODS[div], "divergence": div, "temperature": float(tau)},
                    "train": {"max_steps": steps}, "output_dir": str(run_dir)}
            if (run_dir / "summary.json").is_file() and (run_dir / "student").is_dir():
                log(f"reusing the finished run {run_dir} for {label}")  # re-running analyze is cheap
                runs.append((label, run_dir / "student"))
                continue
            log(f"training {label} for {steps} steps -> {run_dir}")
            out = Path(train(build_config(tree, overrides)))
            runs.append((label, out / "student"))
    return runs


def student_label(directory: str | Path) -> tuple[str, Path]:
    """(label, model directory) for a trained run directory or a bare model directory.

    A run directory (with config.yaml and student/) is labelled "<divergence> τ=<temperature>".
    """
    d = Path(directory)
    cfg_path = d / "config.yaml"
    if cfg_path.is_file() and (d / "student").is_dir():
        import yaml

        method = (yaml.safe_load(cfg_path.read_text()) or {}).get("method") or {}
        div = method.get("divergence") or method.get("name") or d.name
        return f"{div} τ={float(method.get('temperature', 1.0)):g}", d / "student"
    return d.name, d


def run_analysis(teacher_path: str, students: list[tuple[str, str | Path]], data: str, out_dir: str | Path, *,
                 split: str = "test", template: str = "alpaca", limit: int | None = 200, max_length: int = 512,
                 batch_size: int = 8, thresholds: tuple[float, float] | None = None, dtype: str = "float32",
                 log=print) -> dict:
    """Teacher-forced stats of each (label, student) against the teacher on the references of `data`.

    Writes analysis.json, analysis.md and analysis.png in out_dir; returns {label: stats}.
    """
    from okd.data import load_examples
    from okd.eval.report import analysis_table, plot_analysis
    from okd.eval.teacher_forced import teacher_forced_stats
    from okd.models.loading import check_compatible

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher, t_tok = load_model_and_tokenizer(teacher_path, dtype)
    examples = load_examples(data, split=split, limit=limit)
    batches = reference_batches(examples, t_tok, template, max_length, batch_size)
    stats: dict[str, dict] = {}
    for label, path in students:
        model, tok = load_model_and_tokenizer(str(path), dtype)
        vocab = check_compatible(t_tok, tok, teacher, model)
        log(f"analysing {label} ({path})")
        stats[label] = {**teacher_forced_stats(model, teacher, batches, vocab_size=vocab, thresholds=thresholds),
                        "path": str(path)}
        del model
    table = analysis_table(stats)
    (out_dir / "analysis.json").write_text(json.dumps(
        {"teacher": teacher_path, "data": data, "split": split, "examples": len(examples), "students": stats},
        indent=2, ensure_ascii=False) + "\n")
    (out_dir / "analysis.md").write_text(table + "\n")
    plot_analysis(stats, out_dir / "analysis.png")
    return stats
