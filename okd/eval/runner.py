"""`okd eval` as functions: sample answers over seeds, score ROUGE-L, run the teacher analyses.

ROUGE-L per dataset is the mean over examples for each seed; the reported mean and std are over
seeds (std with ddof=1, the sample std; None with a single run, e.g. greedy). Sampling is at
temperature 1, top-p 1, top-k off (DESIGN §2) unless set otherwise; seeds are 0..S−1.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from pathlib import Path

from okd.errors import OkdError
from okd.eval.config import EvalConfig
from okd.eval.follow import context_length, fit_prompts, locate_run, shared_context
from okd.eval.rouge import rouge_l_per_example, tokenizer_warning
from okd.generation import generate, generate_seeds, pad_id, sharded, static_cache_for
from okd.precision import resolve_dtype

_log = logging.getLogger(__name__)


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


def mean_std(values: list[float]) -> dict:
    """Mean and sample std (ddof=1; None for a single value) of per-seed scores, and their count."""
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
    prompts = fit_prompts(prepare_prompts(examples, tokenizer, template, max_prompt_length), context_length(model),
                          max_new_tokens, bos=getattr(tokenizer, "bos_token_id", None), log=_log.warning)
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


def _load_models(model_path: str, teacher_path: str | None, dtype: str):
    """(model, tokenizer, teacher or None, shared vocabulary size or None)."""
    model, tok = load_model_and_tokenizer(model_path, dtype)
    if teacher_path is None:
        return model, tok, None, None
    from okd.models.loading import check_compatible

    teacher, t_tok = load_model_and_tokenizer(teacher_path, dtype)
    return model, tok, teacher, check_compatible(t_tok, tok, teacher, model)


def _sample_and_score(model, tok, examples, prompts, name: str, output: Path, s: EvalConfig, *,
                      progress: bool, log) -> dict:
    """One generation pass per seed (or one greedy pass): ROUGE-L per run and the prediction files."""
    runs = [("greedy", None)] if s.greedy else [(f"seed{k}", k) for k in range(s.seeds)]
    refs = [ex.response for ex in examples]
    if warning := tokenizer_warning(name, refs, s.rouge_tokenizer):
        log(f"warning: {warning}")
    entry: dict = {"examples": len(examples), "predictions": []}
    per_run, tokens, gen_s = [], 0, 0.0
    # every seed in one call: each batch's prompts are read once for all seeds (okd.generation)
    gens = generate_seeds(model, tok, prompts, seeds=[seed for _, seed in runs], max_new_tokens=s.max_new_tokens,
                          temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, greedy=s.greedy,
                          batch_size=s.batch_size, progress=progress,
                          compact=not (static_cache_for(model) or sharded(model)))  # rows leave as they end
    for (run_name, seed), gen in zip(runs, gens):
        scores = rouge_l_per_example(gen.texts, refs, s.rouge_tokenizer)
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
    entry["rougeL"] = {**mean_std(per_run), "per_seed": per_run}
    entry["generation"] = {"tokens": tokens, "seconds": gen_s, "tokens_per_s": tokens / gen_s if gen_s else 0.0}
    return entry


def _teacher_analyses(model, tok, teacher, vocab, examples, prompts, name: str, s: EvalConfig, *,
                      progress: bool, log) -> dict:
    """Exposure bias on (the first exposure.prompts of) the prompts and teacher-forced stats on the references."""
    from okd.eval.exposure import exposure_bias
    from okd.eval.teacher_forced import teacher_forced_stats

    x = s.exposure
    t1 = time.perf_counter()
    context = shared_context(model, teacher)
    ex_prompts = fit_prompts(prompts[:x.prompts] if x.prompts else prompts, context, x.max_len,
                             bos=getattr(tok, "bos_token_id", None), what="exposure.max_len", log=log)
    out: dict = {"exposure_bias": exposure_bias(
        model, teacher, ex_prompts, tokenizer=tok, samples=x.samples, max_len=x.max_len, length=x.length,
        seed=0, batch_size=s.batch_size, vocab_size=vocab, progress=progress)}
    out["exposure_bias"]["seconds"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    batches = reference_batches(examples, tok, s.template, min(s.max_length, context or s.max_length),
                                max(1, s.batch_size // 2))
    out["teacher_forced"] = teacher_forced_stats(model, teacher, batches, vocab_size=vocab)
    out["teacher_forced"]["seconds"] = time.perf_counter() - t1
    at = out["exposure_bias"]["at_l"]
    log(f"{name}: ExAccErr@{x.length} = {'n/a' if at is None else f'{at:.1f}%'}, "
        f"top-1 agreement {100 * out['teacher_forced']['overall']['top1_agreement']:.1f}%")
    return out


def run_eval(model_path: str, data: list[str], output: str | Path, settings: EvalConfig | None = None, *,
             teacher_path: str | None = None, progress: bool = False, log=print) -> dict:
    """Evaluate a model on datasets; writes results JSON and per-seed predictions; returns results.

    With a teacher, also exposure bias and teacher-forced stats (settings.exposure).
    """
    from okd.data import load_examples

    s = settings if settings is not None else EvalConfig()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_path, _ = locate_run(model_path)  # a run directory: its student/
    dtype = resolve_dtype(s.dtype)
    model, tok, teacher, vocab = _load_models(model_path, teacher_path, dtype)
    context = shared_context(model, teacher)
    fit_prompts([], context, s.max_new_tokens, what="max_new_tokens")  # no room at all: stop before generating
    results: dict = {"model": str(model_path), "teacher": teacher_path, "settings": s.results_settings(),
                     "dtype": dtype, "datasets": {}}
    total_tokens = total_gen_s = 0.0
    taken: set[str] = set()
    for source in data:
        name = dataset_name(source, taken)
        examples = load_examples(source, split=s.split, limit=s.limit)
        prompts = fit_prompts(prepare_prompts(examples, tok, s.template, s.max_prompt_length), context,
                              s.max_new_tokens, bos=getattr(tok, "bos_token_id", None), log=log)
        entry = {"source": str(source), **_sample_and_score(model, tok, examples, prompts, name, output, s,
                                                            progress=progress, log=log)}
        total_tokens, total_gen_s = total_tokens + entry["generation"]["tokens"], \
            total_gen_s + entry["generation"]["seconds"]
        if teacher is not None:
            entry.update(_teacher_analyses(model, tok, teacher, vocab, examples, prompts, name, s,
                                           progress=progress, log=log))
        results["datasets"][name] = entry

    curves = {n: d["exposure_bias"] for n, d in results["datasets"].items() if "exposure_bias" in d}
    if curves:
        from okd.eval.report import plot_exposure

        stem = output.stem.removesuffix(".exposure")  # compare's <label>.exposure.json: <label>.exposure.png
        fig = output.with_name(f"{stem}.exposure.png")
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
    i = 0
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("prediction"), str) \
                        or not isinstance(rec.get("output"), str):
                    raise OkdError(f"{path} line {i}: needs string fields 'prediction' and 'output' (the reference)")
                preds.append(rec["prediction"])
                refs.append(rec["output"])
    except UnicodeDecodeError as e:
        raise OkdError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); give a JSONL file of predictions") \
            from None
    except RecursionError:
        raise OkdError(f"{path} line {i}: JSON nested too deeply; give one flat object per line") from None
    except ValueError:  # json.JSONDecodeError, and json's own limits (e.g. an integer of 5000 digits)
        raise OkdError(f"{path} line {i}: not valid JSON") from None
    except OSError as e:
        raise OkdError(f"predictions file {str(path)!r} cannot be read ({e.strerror})") from None
    if not preds:
        raise OkdError(f"{path}: no predictions found")
    return preds, refs


def score_predictions(files: list[str], output: str | Path | None = None, *, rouge_tokenizer: str = "default",
                      log=_log.warning) -> dict:
    """ROUGE-L of prediction files (no model); each file is one dataset row."""
    results: dict = {"datasets": {}, "settings": {"rouge_tokenizer": rouge_tokenizer}}
    taken: set[str] = set()
    for f in files:
        preds, refs = read_predictions(f)
        if warning := tokenizer_warning(str(f), refs, rouge_tokenizer):
            log(f"warning: {warning}")
        scores = rouge_l_per_example(preds, refs, rouge_tokenizer)
        mean = sum(scores) / len(scores)
        results["datasets"][dataset_name(f, taken)] = {
            "source": str(f), "examples": len(scores), "rougeL": {**mean_std([mean]), "per_seed": [mean]},
        }
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results
